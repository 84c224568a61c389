//! The dashboard against a real Prometheus (Debian's `prometheus` package) scraping airlock on
//! 127.0.0.1: `promtool check metrics` accepts the exposition, every PromQL expression in
//! `dashboards/airlock.json` returns data, and every metric it names is one airlock exports.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::airlock::{Airlock, client};
use support::image::{ACCEPT_ALL, Image};
use support::process::GuardedChild;
use support::registry::Registry;
use support::{push, skopeo};

/// Every `expr` of every panel (and the variables' queries are label lookups, not checked).
fn dashboard_exprs() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/airlock.json");
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("dashboard")).expect("JSON");
    assert_eq!(
        dash["templating"]["list"][0]["type"], "datasource",
        "a Prometheus datasource variable"
    );
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect()
}

/// Metric names an expression mentions (histogram series mapped to their family).
fn names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("airlock_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.insert(family.to_string());
        i = end;
    }
    out
}

async fn query(prom: &str, expr: &str) -> serde_json::Value {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), &[("query", expr)])
        .unwrap();
    let answer: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_airlock_and_every_dashboard_query_has_data() {
    let reg = Registry::start().await;
    let img = Image::oci("prom", &[100_000]);
    push::push(&reg.url(), "org/app", &["v1"], &img).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let admin = airlock::app::read_advert(airlock.data())
        .expect("advert")
        .url;
    let exposition = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // promtool's lint of the exposition.
    let mut child = crate::support::tools::PROMTOOL
        .tokio_command()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (tests/run.sh installs Debian's prometheus package)");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard names exists.
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    for expr in &exprs {
        for name in names(expr) {
            assert!(
                exported.contains(&name),
                "the dashboard names {name}, which airlock does not export ({expr})"
            );
        }
    }

    // A real Prometheus scraping airlock every second.
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let target = admin.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: airlock\n    static_configs:\n      - targets: ['{target}']\n")).unwrap();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    let _prometheus = GuardedChild::spawn(
        crate::support::tools::PROMETHEUS.path(),
        &args,
        &dir.path().join("out"),
        &dir.path().join("err"),
        &[],
        &[],
    )
    .expect("prometheus runs");
    let prom = format!("http://127.0.0.1:{port}");

    // Traffic: a pull (misses), a second pull (hits), a few manifest requests.
    for _ in 0..2 {
        let d = tempfile::tempdir().unwrap();
        skopeo::copy(&format!("{}/org/app:v1", airlock.host), d.path(), true, &[])
            .await
            .expect("pull");
    }
    // Enough scrapes that rates over 1m have two samples or more.
    let mut scraped = 0.0;
    for _ in 0..300 {
        let _ = client()
            .get(format!("{}/v2/org/app/manifests/v1", airlock.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
            .await;
        if let Ok(r) = reqwest::get(format!(
            "{prom}/api/v1/query?query=count_over_time(airlock_build_info[1m])"
        ))
        .await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            scraped = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            if scraped >= 4.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        scraped >= 4.0,
        "Prometheus scraped airlock ({scraped} samples); its log:\n{}",
        std::fs::read_to_string(dir.path().join("err")).unwrap_or_default()
    );

    for expr in &exprs {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1m")
            .replace("$registry", ".*");
        let result = query(&prom, &q).await;
        assert!(
            result.as_array().is_some_and(|r| !r.is_empty()),
            "no data for {q}"
        );
    }
}
