//! Docker credential helpers, as ECR uses `docker-credential-ecr-login`: the airlock binary
//! runs `docker-credential-<name> get` from its PATH, named in the config or in Docker's
//! `config.json`, and runs it again when the upstream refuses what it gave. Against a real
//! htpasswd (Basic auth) registry; without the helper the pull fails with UNAUTHORIZED.

use crate::support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::airlock::error_code;
use support::image::{ACCEPT_ALL, Image};
use support::registry::Registry;
use support::{push, skopeo};
use tokio::process::{Child, Command};

/// A helper that logs each call and answers wrong credentials the first time (an expired
/// token, as ECR's are after 12 hours) and the right ones after.
fn helper_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "#!/bin/sh\nread server\necho \"$server\" >> {calls}\nn=$(wc -l < {calls})\n\
         if [ \"$n\" = 1 ]; then pw=expired; else pw=testpass; fi\n\
         printf '{{\"ServerURL\":\"%s\",\"Username\":\"testuser\",\"Secret\":\"%s\"}}' \"$server\" \"$pw\"\n",
        calls = dir.path().join("calls").display()
    );
    let path = dir.path().join("docker-credential-airlocktest");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn calls(helper: &Path) -> Vec<String> {
    std::fs::read_to_string(helper.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `airlock serve` with `config` (and `path_extra` first on its PATH), on a port that was free;
/// its log goes to a file in the returned directory. Ready once airlock itself logs that it
/// serves that port (a port lost to another process between choosing and binding it makes
/// airlock exit, and another port is chosen).
async fn start(config: &str, path_extra: Option<&Path>) -> (Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlock.toml");
    let data = dir.path().join("data");
    let log = dir.path().join("airlock.log");
    for _ in 0..5 {
        let port = support::free_port();
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n{config}",
                data.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
        cmd.args(["serve", "-c", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        if let Some(extra) = path_extra {
            cmd.env(
                "PATH",
                format!(
                    "{}:{}",
                    extra.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        }
        let mut child = cmd.spawn().unwrap();
        let serving = format!("addr=127.0.0.1:{port}");
        for _ in 0..300 {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&serving)
            {
                return (child, port, dir);
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("cannot listen"),
            "airlock did not start:\n{text}"
        );
    }
    panic!("no free port for airlock in 5 tries");
}

/// SIGTERM, wait for the exit, and return the log.
async fn stop(mut child: Child, dir: &tempfile::TempDir) -> String {
    let _ = crate::support::tools::KILL
        .command()
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    std::fs::read_to_string(dir.path().join("airlock.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_helper_on_path_supplies_and_refreshes_basic_credentials() {
    let plain = Registry::start().await;
    let img = Image::docker("helper", &[30_000]);
    push::push(&plain.url(), "team/app", &["v1"], &img).await;
    let registry = Registry::start_htpasswd("testuser", "testpass", &plain).await;
    let upstream = |extra: &str| {
        format!(
            "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n{extra}",
            registry.url()
        )
    };

    // No helper: the upstream refuses airlock, and the client is told so.
    let (child, port, dir) = start(&upstream(""), None).await;
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v2/team/app/manifests/v1"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(&resp.bytes().await.unwrap()), "UNAUTHORIZED");
    stop(child, &dir).await;

    // The helper named in the config.
    let helper = helper_dir();
    let (child, port, dir) = start(
        &upstream("credential_helper = \"airlocktest\""),
        Some(helper.path()),
    )
    .await;
    skopeo::pull(&format!("127.0.0.1:{port}"), "team/app:v1", &img).await;
    let log = stop(child, &dir).await;
    let seen = calls(helper.path());
    assert_eq!(seen.len(), 2, "run once, refused, run again: {seen:?}");
    assert!(
        seen.iter().all(|s| s == "https://index.docker.io/v1/"),
        "Docker's server address for Docker Hub: {seen:?}"
    );
    assert!(
        !log.contains("testpass") && !log.contains("expired"),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dockers_config_json_names_the_helper() {
    let plain = Registry::start().await;
    let img = Image::oci("helper-config", &[20_000]);
    push::push(&plain.url(), "team/app", &["v1"], &img).await;
    let registry = Registry::start_htpasswd("testuser", "testpass", &plain).await;
    let helper = helper_dir();
    let docker_config = helper.path().join("config.json");
    // Docker's config is keyed by the host airlock contacts (the url), not the registry name.
    let host = registry.url().trim_start_matches("http://").to_string();
    std::fs::write(
        &docker_config,
        format!(r#"{{"credHelpers": {{"{host}": "airlocktest"}}}}"#),
    )
    .unwrap();
    let config = format!(
        "[credentials]\ndocker_config = \"{}\"\n[[upstream]]\nregistry = \"ecr.example.internal\"\nurl = \"{}\"\n",
        docker_config.display(),
        registry.url()
    );
    let (child, port, dir) = start(&config, Some(helper.path())).await;
    skopeo::pull(
        &format!("127.0.0.1:{port}"),
        "ecr.example.internal/team/app:v1",
        &img,
    )
    .await;
    stop(child, &dir).await;
    assert_eq!(calls(helper.path()), [host.clone(), host]);
}
