//! The container image and the compose stack under `docker/`. No container engine runs here, so
//! nothing is built or started: each file is checked offline by the tool that reads it
//! (hadolint for the Dockerfile, `docker-compose config` for the stack, `promtool check config`
//! for Prometheus, `airlock check-config` for the configuration baked into the image), every
//! file the stack names must exist in the repository, and the files must agree with each other
//! (ports, paths, the datasource uid).
//!
//! hadolint runs with `--failure-threshold style`: any finding at all fails the test. The
//! tools come from tests/run.sh (Debian docker-compose and prometheus, and hadolint from PyPI
//! under `target/tools/`), by the absolute paths in [`tools`]; YAML is parsed here.

use crate::support::tools;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_airlock");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `program` in the repository root, with `stdin` as its input.
fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The tests' own AIRLOCK_* and COMPOSE_* variables must not change what the tools read.
    for (k, _) in std::env::vars() {
        if k.starts_with("AIRLOCK_") || k.starts_with("COMPOSE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait for the tool")
}

/// Run `program` and require exit 0; its stdout.
fn run_ok(program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(program, args, stdin);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// YAML to JSON (serde_yaml_ng, straight into a `serde_json::Value`).
fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{text}"))
}

fn yaml_file(rel: &str) -> Value {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml(&text)
}

/// `docker-compose config` of docker/compose.yaml: validated and normalised (relative paths
/// resolved against docker/), as JSON.
fn compose() -> Value {
    yaml(&run_ok(
        tools::COMPOSE.path(),
        &["-f", "docker/compose.yaml", "config"],
        None,
    ))
}

/// `airlock check-config` of the baked configuration: its `key value` lines.
fn baked_config() -> BTreeMap<String, String> {
    let out = run_ok(BIN, &["check-config", "-c", "docker/airlock.toml"], None);
    assert!(
        out.starts_with("configuration OK"),
        "unexpected check-config output:\n{out}"
    );
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(char::is_whitespace)?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The port of a `host:port` address.
fn port(addr: &str) -> &str {
    addr.rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {addr}"))
        .1
}

/// The Dockerfile's instructions: continuation lines joined, comments left out, the keyword
/// upper-cased.
fn dockerfile() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(root().join("docker/Dockerfile")).expect("docker/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (kw, rest) = current
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((current.trim(), ""));
                out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

fn instructions<'a>(df: &'a [(String, String)], kw: &str) -> Vec<&'a str> {
    df.iter()
        .filter(|(k, _)| k == kw)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = run(
        tools::HADOLINT.path(),
        &[
            "--no-color",
            "--failure-threshold",
            "style",
            "docker/Dockerfile",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "hadolint found problems in docker/Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_builds_what_the_issue_asks_for_from_files_that_exist() {
    let df = dockerfile();
    let cfg = baked_config();

    // Multi-stage: a build stage, then a small runtime.
    let from = instructions(&df, "FROM");
    assert!(from.len() >= 2, "not multi-stage: {from:?}");
    assert!(
        from.last().unwrap().contains("slim") || from.last().unwrap().contains("distroless"),
        "the final image is not a small base: {from:?}"
    );

    // A non-root user with a fixed uid.
    let user = instructions(&df, "USER");
    let user = user.last().expect("a USER instruction");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: not a fixed non-root uid"
    );

    // The data directory is the volume, the ports are exposed, and the health check probes the
    // admin listener of the baked configuration.
    let data = &cfg["data"];
    assert!(
        instructions(&df, "VOLUME")
            .iter()
            .any(|v| v.contains(&format!("\"{data}\"")) || v.split_whitespace().any(|w| w == data)),
        "no VOLUME for the data directory {data}"
    );
    let exposed: Vec<&str> = instructions(&df, "EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for p in [port(&cfg["listen"]), port(&cfg["admin"])] {
        assert!(exposed.contains(&p), "port {p} is not EXPOSEd: {exposed:?}");
    }
    let health = instructions(&df, "HEALTHCHECK");
    let health = health.first().expect("a HEALTHCHECK");
    assert!(
        health.contains(r#"["airlock", "health", "-c", "/etc/airlock/airlock.toml"]"#),
        "the HEALTHCHECK runs `airlock health` with the baked config (which names the admin port {}): {health}",
        cfg["admin"]
    );

    // The entry point serves the configuration the image bakes in.
    assert_eq!(instructions(&df, "ENTRYPOINT"), ["[\"airlock\"]"]);
    let cmd = instructions(&df, "CMD");
    let cmd = cmd.last().expect("a CMD");
    let baked = "/etc/airlock/airlock.toml";
    assert!(
        cmd.contains("\"serve\"") && cmd.contains(baked),
        "CMD does not serve {baked}: {cmd}"
    );

    // Every COPY from the build context names a file that exists and that .dockerignore (an
    // allow-list) lets into the context; the baked configuration lands where CMD reads it.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore is expected to start from `*` (an allow-list)"
    );
    let mut copied_config = false;
    for copy in instructions(&df, "COPY") {
        if copy.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (dest, sources) = words.split_last().expect("COPY src dest");
        for src in sources {
            assert!(
                root().join(src).exists(),
                "COPY {src}: no such file in the repository"
            );
            assert!(
                allowed.contains(&src.trim_end_matches('/')),
                "COPY {src}: .dockerignore leaves it out of the build context (allowed: {allowed:?})"
            );
            if *src == "docker/airlock.toml" && *dest == baked {
                copied_config = true;
            }
        }
    }
    assert!(
        copied_config,
        "docker/airlock.toml is not copied to {baked}"
    );
}

/// A compose volume entry as (source, target); sources of bind mounts are absolute paths.
fn volume(v: &Value) -> (String, String) {
    match v {
        Value::String(s) => {
            let mut parts = s.split(':');
            let src = parts.next().unwrap_or_default().to_string();
            let dst = parts
                .next()
                .unwrap_or_else(|| panic!("volume without a target: {s}"));
            (src, dst.to_string())
        }
        Value::Object(m) => (
            m.get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            m["target"].as_str().expect("volume target").to_string(),
        ),
        other => panic!("unexpected volume entry {other}"),
    }
}

fn volumes(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|a| a.iter().map(volume).collect())
        .unwrap_or_default()
}

/// Where a path inside a service's container comes from on the host, through its bind mounts.
fn host_path(service: &Value, container: &str) -> Option<PathBuf> {
    volumes(service)
        .into_iter()
        .filter(|(src, _)| src.starts_with('/'))
        .filter_map(|(src, dst)| {
            let rest = Path::new(container).strip_prefix(&dst).ok()?;
            // Joining an empty rest would add a trailing `/`, wrong for a file mount.
            let host = if rest.as_os_str().is_empty() {
                PathBuf::from(&src)
            } else {
                Path::new(&src).join(rest)
            };
            Some((dst.len(), host))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A published port as (host ip, host port, container port).
fn published(p: &Value) -> (String, String, String) {
    match p {
        Value::String(s) => {
            let s = s.split('/').next().unwrap();
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [ip, host, target] => (ip.to_string(), host.to_string(), target.to_string()),
                [host, target] => (String::new(), host.to_string(), target.to_string()),
                [target] => (String::new(), String::new(), target.to_string()),
                _ => panic!("unexpected port {s}"),
            }
        }
        Value::Object(m) => {
            let s = |k: &str| match m.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (s("host_ip"), s("published"), s("target"))
        }
        other => panic!("unexpected port entry {other}"),
    }
}

#[test]
fn compose_file_parses_and_every_path_it_names_exists() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for name in ["airlock", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no `{name}` service");
    }
    let named: Vec<&String> = c["volumes"]
        .as_object()
        .map(|v| v.keys().collect())
        .unwrap_or_default();

    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = PathBuf::from(build["context"].as_str().expect("build.context"));
            assert!(
                context.is_dir(),
                "{name}: build context {} does not exist",
                context.display()
            );
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(
                dockerfile.is_file(),
                "{name}: {} does not exist",
                dockerfile.display()
            );
        }
        for (src, dst) in volumes(service) {
            if src.starts_with('/') || src.starts_with('.') {
                assert!(
                    Path::new(&src).exists(),
                    "{name}: bind mount {src} -> {dst}: {src} does not exist"
                );
            } else {
                assert!(
                    named.contains(&&src),
                    "{name}: volume {src} -> {dst} is not declared under `volumes:`"
                );
            }
        }
    }

    // airlock: built from this repository, data on a named volume, the admin port on
    // localhost only.
    let airlock = &c["services"]["airlock"];
    let build = &airlock["build"];
    assert!(
        same_file(
            &Path::new(build["context"].as_str().unwrap())
                .join(build["dockerfile"].as_str().unwrap()),
            &root().join("docker/Dockerfile")
        ),
        "airlock is not built from docker/Dockerfile with the repository root as context"
    );
    let cfg = baked_config();
    assert!(
        volumes(airlock)
            .iter()
            .any(|(src, dst)| *dst == cfg["data"] && !src.starts_with('/')),
        "airlock's data directory {} is not on a named volume",
        cfg["data"]
    );
    let ports: Vec<_> = airlock["ports"]
        .as_array()
        .expect("airlock publishes ports")
        .iter()
        .map(published)
        .collect();
    let (registry, admin) = (port(&cfg["listen"]), port(&cfg["admin"]));
    assert!(
        ports.iter().any(|(_, _, t)| t == registry),
        "the registry port {registry} is not published: {ports:?}"
    );
    for (ip, host, target) in &ports {
        if target == admin {
            assert_eq!(
                ip, "127.0.0.1",
                "the admin port (unauthenticated /metrics) is published beyond localhost as {host}"
            );
        }
    }

    // Prometheus reads docker/prometheus.yml.
    let prom = host_path(
        &c["services"]["prometheus"],
        "/etc/prometheus/prometheus.yml",
    )
    .expect("prometheus.yml is mounted at /etc/prometheus/prometheus.yml");
    assert!(
        same_file(&prom, &root().join("docker/prometheus.yml")),
        "Prometheus reads {} instead of docker/prometheus.yml",
        prom.display()
    );
}

#[test]
fn grafana_provisioning_names_files_that_exist() {
    let c = compose();
    let grafana = &c["services"]["grafana"];
    let provisioning = host_path(grafana, "/etc/grafana/provisioning")
        .expect("Grafana's /etc/grafana/provisioning is mounted");
    assert!(
        same_file(&provisioning, &root().join("docker/grafana/provisioning")),
        "Grafana's provisioning comes from {} instead of docker/grafana/provisioning",
        provisioning.display()
    );

    // The datasource: uid `prometheus`, the compose service's Prometheus.
    let ds = yaml_file("docker/grafana/provisioning/datasources/prometheus.yaml");
    let ds = ds["datasources"]
        .as_array()
        .expect("datasources")
        .iter()
        .find(|d| d["type"] == "prometheus")
        .expect("a prometheus datasource");
    assert_eq!(ds["uid"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090");
    assert!(
        c["services"].get("prometheus").is_some(),
        "the datasource's host `prometheus` is not a compose service"
    );

    // The dashboards: every file provider's path is mounted from the repository's dashboards/,
    // which holds airlock.json.
    let providers = yaml_file("docker/grafana/provisioning/dashboards/airlock.yaml");
    let providers = providers["providers"].as_array().expect("providers");
    assert!(!providers.is_empty(), "no dashboard provider");
    for p in providers {
        let path = p["options"]["path"].as_str().expect("options.path");
        let host = host_path(grafana, path)
            .unwrap_or_else(|| panic!("dashboard path {path} is not mounted into Grafana"));
        assert!(
            same_file(&host, &root().join("dashboards")),
            "dashboard path {path} comes from {} instead of the repository's dashboards/",
            host.display()
        );
        let dashboard = host.join("airlock.json");
        assert!(
            dashboard.is_file(),
            "{} does not exist (the Grafana dashboard the stack provisions)",
            dashboard.display()
        );
    }
    if let Some(home) = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str()
    {
        let host = host_path(grafana, home)
            .unwrap_or_else(|| panic!("home dashboard {home} is not mounted into Grafana"));
        assert!(
            host.is_file(),
            "home dashboard {home} ({}) does not exist",
            host.display()
        );
    }
}

/// Every `datasource` a dashboard names.
fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "datasource" {
                    out.push(v);
                }
                datasources(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| datasources(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_the_provisioned_datasource() {
    let path = root().join("dashboards/airlock.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the dashboard the stack provisions)",
            path.display()
        )
    });
    let dashboard: Value = serde_json::from_str(&text).expect("dashboards/airlock.json is JSON");
    // A `$var` reference must name a datasource template variable; anything else that names a
    // Prometheus datasource must name the provisioned one (uid `prometheus`): provisioning does
    // not substitute `__inputs` such as ${DS_PROMETHEUS}.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|v| v["type"] == "datasource")
                .filter_map(|v| v["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let ok_ref = |s: &str| match s.strip_prefix('$') {
        Some(var) => variables.contains(&var.trim_start_matches('{').trim_end_matches('}')),
        None => s == "prometheus" || s.starts_with("-- "),
    };
    let mut found = Vec::new();
    datasources(&dashboard, &mut found);
    let mut prometheus = 0;
    for ds in found {
        match ds {
            Value::Null => {}
            Value::String(s) => assert!(ok_ref(s), "dashboard names datasource {s:?}"),
            Value::Object(m) => {
                let uid = m.get("uid").and_then(Value::as_str).unwrap_or_default();
                if m.get("type").and_then(Value::as_str) == Some("prometheus") {
                    prometheus += 1;
                    assert!(
                        ok_ref(uid),
                        "a panel names Prometheus datasource uid {uid:?}, not the provisioned `prometheus`"
                    );
                }
            }
            other => panic!("unexpected datasource {other}"),
        }
    }
    assert!(
        prometheus > 0 || !variables.is_empty(),
        "the dashboard names no Prometheus datasource"
    );
}

#[test]
fn prometheus_config_is_valid_and_scrapes_the_admin_listener() {
    let out = run_ok(
        tools::PROMTOOL.path(),
        &["check", "config", "docker/prometheus.yml"],
        None,
    );
    assert!(out.contains("SUCCESS"), "promtool: {out}");

    let cfg = baked_config();
    let target = format!("airlock:{}", port(&cfg["admin"]));
    let prom = yaml_file("docker/prometheus.yml");
    let job = prom["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| {
            j["static_configs"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["targets"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| *t == target.as_str()))
                })
            })
        })
        .unwrap_or_else(|| panic!("no scrape job has the target {target}"));
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    let interval = job["scrape_interval"]
        .as_str()
        .or(prom["global"]["scrape_interval"].as_str());
    assert_eq!(interval, Some("15s"));
    let c = compose();
    assert!(
        c["services"].get("airlock").is_some(),
        "the scrape target's host `airlock` is not a compose service"
    );
}

#[test]
fn baked_config_is_valid_and_listens_for_the_stack() {
    let cfg = baked_config();
    assert_eq!(cfg["listen"], "0.0.0.0:5000");
    assert_eq!(cfg["admin"], "0.0.0.0:5001");
    assert_eq!(cfg["data"], "/var/lib/airlock");
    assert!(
        cfg.get("upstream")
            .is_some_and(|u| u.starts_with("docker.io -> https://registry-1.docker.io")),
        "the default upstream is not Docker Hub: {cfg:?}"
    );
}
