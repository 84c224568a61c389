//! The metrics count exactly what happened: a scripted set of pulls (misses, hits, joins of a
//! download in flight, stale answers while the upstream fails) and the exact counter values
//! that must follow, read from `/metrics` on the admin listener.

use crate::support;

use std::time::Duration;
use support::airlock::{Airlock, client, config, upstream};
use support::faulty::{FaultyUpstream, Gate, Mode};
use support::image::{ACCEPT_ALL, Image};

/// Admin base URL of an in-process airlock.
fn admin(a: &Airlock) -> String {
    airlock::app::read_advert(a.data())
        .expect("admin advert")
        .url
}

async fn scrape(a: &Airlock) -> String {
    reqwest::get(format!("{}/metrics", admin(a)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name{labels}` (labels in any order), or panic.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut have: Vec<String> = if l.is_empty() {
            vec![]
        } else {
            l.split(',').map(str::to_string).collect()
        };
        have.sort();
        if n == name && have == want {
            return v.parse().unwrap();
        }
    }
    panic!("no sample {name}{labels:?} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_match_a_scripted_set_of_pulls() {
    let up = FaultyUpstream::start();
    let img = Image::oci("metrics", &[300_000]);
    up.add_artifact("org/app", "v1", &img);
    let layer = img.layers[0].clone();
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].tag_ttl = Duration::ZERO; // every tag request asks the upstream
    cfg.upstream[0].failure_threshold = 100; // failures here are scripted, not a breaker test
    let airlock = Airlock::start(cfg).await;
    let manifest = || {
        client()
            .get(format!("{}/v2/org/app/manifests/v1", airlock.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    let blob_url = format!("{}/v2/org/app/blobs/{}", airlock.url(), layer.digest);

    // 1. A miss, 2. a hit (revalidated with HEAD: unchanged).
    for _ in 0..2 {
        assert_eq!(
            manifest().await.unwrap().bytes().await.unwrap(),
            img.manifest
        );
    }
    // 3. Five concurrent GETs of the uncached layer while the upstream holds it: one miss,
    //    four coalesced joins.
    let gate = Gate::new();
    up.set_mode(&layer.digest, Mode::Gate(gate.clone()));
    let gets: Vec<_> = (0..5)
        .map(|_| tokio::spawn(client().get(&blob_url).send()))
        .collect();
    // (Bounded, and checked: on a loaded machine five requests may take a while to arrive,
    // and one arriving after the gate opens would be a hit, not a join.)
    let mut joined = false;
    for _ in 0..1500 {
        if value(&scrape(&airlock).await, "airlock_requests_in_flight", &[]) == 5.0
            && gate.waiting() == 1
        {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(joined, "the five GETs never were in flight together");
    assert_eq!(
        value(&scrape(&airlock).await, "airlock_fills_in_flight", &[]),
        1.0
    );
    gate.open();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap().bytes().await.unwrap(), layer.data);
    }
    // 4. A hit from the cache.
    assert_eq!(
        client()
            .get(&blob_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        layer.data
    );
    // 5. The upstream fails: the last known tag answer is served, stale.
    up.set_mode("*", Mode::Status(503));
    assert_eq!(
        manifest().await.unwrap().bytes().await.unwrap(),
        img.manifest
    );

    let mut text = scrape(&airlock).await;
    for _ in 0..100 {
        if value(&text, "airlock_requests_in_flight", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(&airlock).await;
    }
    let cache = |kind: &str, result: &str| {
        value(
            &text,
            "airlock_cache_results_total",
            &[
                ("kind", kind),
                ("registry", "docker.io"),
                ("result", result),
            ],
        )
    };
    assert_eq!(
        [
            cache("manifest", "miss"),
            cache("manifest", "hit"),
            cache("manifest", "stale"),
            cache("manifest", "coalesced")
        ],
        [1.0, 1.0, 1.0, 0.0]
    );
    assert_eq!(
        [
            cache("blob", "miss"),
            cache("blob", "coalesced"),
            cache("blob", "hit"),
            cache("blob", "stale")
        ],
        [1.0, 4.0, 1.0, 0.0]
    );
    let (m, l) = (img.manifest.len() as f64, layer.data.len() as f64);
    assert_eq!(
        value(
            &text,
            "airlock_served_bytes_total",
            &[("source", "upstream")]
        ),
        m + l,
        "the misses"
    );
    assert_eq!(
        value(&text, "airlock_served_bytes_total", &[("source", "cache")]),
        2.0 * m + 5.0 * l,
        "saved: hit, stale, joins, hit"
    );
    let requests = |kind: &str| {
        value(
            &text,
            "airlock_requests_total",
            &[("kind", kind), ("method", "GET"), ("status", "2xx")],
        )
    };
    assert_eq!((requests("manifest"), requests("blob")), (3.0, 6.0));
    let upstream = |status: &str| {
        value(
            &text,
            "airlock_upstream_requests_total",
            &[("registry", "docker.io"), ("status", status)],
        )
    };
    assert_eq!(
        (upstream("2xx"), upstream("5xx"), upstream("error")),
        (3.0, 1.0, 0.0),
        "GET manifest, HEAD manifest, GET blob; the failed HEAD"
    );
    assert_eq!(
        value(
            &text,
            "airlock_fill_bytes_total",
            &[("registry", "docker.io")]
        ),
        l
    );
    assert_eq!(value(&text, "airlock_fills_in_flight", &[]), 0.0);
    assert_eq!(
        value(&text, "airlock_upstream_up", &[("registry", "docker.io")]),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "airlock_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_answer_and_admin_needs_the_token() {
    let up = FaultyUpstream::start();
    let airlock = Airlock::for_upstream(&up.url()).await;
    let base = admin(&airlock);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/admin/images"))
            .await
            .unwrap()
            .status(),
        401,
        "no token"
    );
    let token_file = airlock.data().join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(token_file).unwrap();
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str, body: &'static str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token.trim())
            .body(body)
            .send()
    };
    let resp = admin(reqwest::Method::GET, "/admin/images", "")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Its errors come in the registry's one shape, code and status from the one table.
    let no_token = reqwest::get(format!("{base}/admin/images")).await.unwrap();
    let post = |path| admin(reqwest::Method::POST, path, "");
    let bad_json = admin(reqwest::Method::POST, "/admin/pin", "{not json")
        .await
        .unwrap();
    let unknown = post("/admin/reticulate").await.unwrap();
    let no_cap = post("/admin/evict").await.unwrap();
    for (resp, status, code, says) in [
        (no_token, 401, "UNAUTHORIZED", "admin.token"),
        (bad_json, 400, "UNSUPPORTED", "bad request JSON"),
        (
            unknown,
            404,
            "UNSUPPORTED",
            "POST /admin/reticulate is not an admin operation",
        ),
        (
            no_cap,
            400,
            "UNSUPPORTED",
            "no storage.max_size is configured",
        ),
    ] {
        assert_eq!(resp.status(), status, "{says}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
}

/// The usage gauges skip the walk over pins while nothing changes (so an idle cache costs
/// nothing to watch), yet follow every change: a pull, a pin, an unpin.
#[tokio::test(flavor = "multi_thread")]
async fn usage_gauges_follow_pulls_and_pins() {
    let up = FaultyUpstream::start();
    let img = Image::oci("gauges", &[120_000]);
    up.add_artifact("org/gauged", "v1", &img);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.storage.eviction_interval = Duration::from_millis(100);
    let airlock = Airlock::start(cfg).await;
    let base = admin(&airlock);
    let token = std::fs::read_to_string(airlock.data().join("admin.token")).unwrap();
    let admin_post = |op: &'static str| {
        reqwest::Client::new()
            .post(format!("{base}/admin/{op}"))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({ "image": "org/gauged:v1" }))
            .send()
    };
    // Bounded: 100 scrapes, 100 ms apart.
    let gauges_become = |want: (f64, f64, f64)| {
        let airlock = &airlock;
        async move {
            let mut last = String::new();
            for _ in 0..100 {
                last = scrape(airlock).await;
                let have = (
                    value(&last, "airlock_cache_size_bytes", &[]),
                    value(&last, "airlock_cache_blobs", &[]),
                    value(&last, "airlock_cache_pinned_bytes", &[]),
                );
                if have == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the gauges never became {want:?}:\n{last}");
        }
    };
    gauges_become((0.0, 0.0, 0.0)).await;
    airlock.pull("org/gauged:v1", &img).await;
    let stored: u64 = img.manifest.len() as u64
        + img.config.data.len() as u64
        + img.layers.iter().map(|l| l.data.len() as u64).sum::<u64>();
    let blobs = 2.0 + img.layers.len() as f64;
    gauges_become((stored as f64, blobs, 0.0)).await;
    assert_eq!(admin_post("pin").await.unwrap().status(), 200);
    gauges_become((stored as f64, blobs, stored as f64)).await;
    assert_eq!(admin_post("unpin").await.unwrap().status(), 200);
    gauges_become((stored as f64, blobs, 0.0)).await;
}
