//! The `airlock` binary as a user runs it: `check-config` on good and bad files, `serve` from
//! the README's minimal file and from the built-in defaults, graceful exit on SIGTERM.

use crate::support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_airlock");

fn airlock(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The tests' own AIRLOCK_* variables must not leak into the child's configuration.
    for (k, _) in std::env::vars() {
        if k.starts_with("AIRLOCK_") {
            c.env_remove(k);
        }
    }
    // Tests run side by side: each admin API on a port of its own (the default is 5001).
    c.env("AIRLOCK_ADMIN__LISTEN", "127.0.0.1:0");
    c
}

async fn output(mut c: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("exits")
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn minimal(dir: &Path, port: u16, data: &Path) -> std::path::PathBuf {
    let file = dir.join("airlock.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\npath = \"{}\"\n\n[[upstream]]\nregistry = \"docker.io\"\nurl = \"http://127.0.0.1:15000\"\n",
            data.display()
        ),
    )
    .expect("write config");
    file
}

#[tokio::test]
async fn check_config_accepts_the_minimal_file_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = minimal(dir.path(), 16000, &dir.path().join("data"));
    let (code, out, _) = output(airlock(&["check-config", "-c", good.to_str().unwrap()])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("127.0.0.1:16000") && out.contains("http://127.0.0.1:15000"),
        "{out}"
    );

    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/airlock.toml");
    let (code, _, err) = output(airlock(&[
        "check-config",
        "-c",
        reference.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");

    for (text, key) in [
        ("[server]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
        ("[storage]\nfill_timeout = \"forever\"\n", "fill_timeout"),
        (
            "[[upstream]]\nregistry = \"docker.io\"\nurl = \"gopher://x\"\n",
            "upstream[0].url",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let (code, _, err) = output(airlock(&["check-config", "-c", bad.to_str().unwrap()])).await;
        assert_ne!(code, 0, "{text}");
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "names the key and the file: {err}"
        );
    }
    let (code, _, err) = output(airlock(&["check-config", "-c", "/nonexistent.toml"])).await;
    assert!(code != 0 && err.contains("/nonexistent.toml"), "{err}");
}

/// Wait (bounded) until the server answers, then return its `/v2/` status.
async fn wait_ready(child: &mut Child, port: u16) {
    for _ in 0..300 {
        if support::http_answers(port) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            panic!("airlock exited with {status}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("airlock did not answer on port {port}");
}

async fn stop_with(child: &mut Child, signal: &str) -> String {
    let pid = child.id().expect("pid").to_string();
    let sent = crate::support::tools::KILL
        .command()
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(
        status.success(),
        "graceful exit on {signal}: {status} {err}"
    );
    err
}

#[tokio::test]
async fn serve_runs_from_the_minimal_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let data = dir.path().join("data");
    let file = minimal(dir.path(), port, &data);
    let mut child = airlock(&["serve", "-c", file.to_str().unwrap()])
        .spawn()
        .expect("spawn");
    wait_ready(&mut child, port).await;
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/v2/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert!(
        data.join("index").is_dir()
            && data.join("blobs/sha256").is_dir()
            && data.join("tmp").is_dir()
    );
    // `airlock health` (the container health check) reaches the admin listener.
    let advert = airlock::app::read_advert(&data).expect("the server advertises its admin API");
    let health_url = format!("{}/healthz", advert.url);
    let (code, _, err) = output(airlock(&["health", "--url", &health_url])).await;
    assert_eq!(code, 0, "{err}");
    let log = stop_with(&mut child, "-TERM").await;
    assert!(
        log.contains("GET") && log.contains("/v2/") && log.contains("status=200"),
        "one line per request: {log}"
    );
    assert!(log.contains("stopped"), "{log}");
    let (code, _, err) = output(airlock(&["health", "--url", &health_url])).await;
    assert_ne!(code, 0, "nothing answers any more: {err}");
}

#[tokio::test]
async fn serve_without_a_file_uses_the_documented_defaults() {
    let home = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut cmd = airlock(&["serve"]);
    // Only the port is moved (5000 may be taken here); the rest are the built-in defaults.
    cmd.env("AIRLOCK_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME");
    let mut child = cmd.spawn().expect("spawn");
    wait_ready(&mut child, port).await;
    assert!(
        home.path().join(".local/share/airlock/index").is_dir(),
        "data in $HOME/.local/share/airlock"
    );
    let log = stop_with(&mut child, "-INT").await;
    assert!(
        log.contains("https://registry-1.docker.io"),
        "Docker Hub is the default upstream: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_commands_reach_the_server_without_any_proxy_from_the_environment() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let daemon = support::daemon::Daemon::start_with_top("upstream = []", "", &[]).await;
    // A "proxy" that counts every connection it gets.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((_s, _)) = proxy.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
    c.args(["cache", "ls", "-c"]).arg(&daemon.config);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env(var, &proxy_url);
    }
    c.env_remove("NO_PROXY").env_remove("no_proxy");
    let (code, out, err) = output(c).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the proxy was used");
    accepting.abort();
}
