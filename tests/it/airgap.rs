//! The air gap, with the airlock binary as operators run it: preload a list (while `serve`
//! runs, through its admin API) with a platform filter, cut the upstream, and every runtime
//! still pulls every listed image by tag; an unlisted image fails fast with an OCI error.
//! `serve --offline` never contacts its upstream. A blackholed upstream (accepts, never
//! answers) is marked down, cached tags keep pulling, and it is marked up when it heals.

use crate::support;

use std::time::Duration;
use support::airlock::error_code;
use support::daemon::{Daemon, run_cli, text};
use support::faulty::{FaultyUpstream, Mode};
use support::image::{ACCEPT_ALL, Image, Index, Platform};
use support::registry::Registry;
use support::runtimes::{Containerd, Dockerd, Podman};
use support::{push, skopeo};

fn upstream_toml(url: &str, extra: &str) -> String {
    format!("[[upstream]]\nregistry = \"docker.io\"\nurl = \"{url}\"\n{extra}")
}

/// Run `airlock client-config CLIENT --airgap` for `daemon` and return the snippet text.
async fn client_config(daemon: &Daemon, client: &str) -> String {
    let out = daemon
        .cli(&["client-config", client, "--airgap", "--url", &daemon.url()])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    support::snippet_body(&String::from_utf8(out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn preloaded_images_pull_with_every_client_after_the_upstream_is_cut() {
    let reg = Registry::start().await;
    let web = Index::oci(
        "gap-web",
        &[Platform::amd64(), Platform::arm64()],
        &[300_000, 30_000],
    );
    let app = Image::docker("gap-app", &[200_000]);
    let unlisted = Image::oci("gap-unlisted", &[10_000]);
    push::push(&reg.url(), "library/web", &["1.25"], &web).await;
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    push::push(&reg.url(), "org/unlisted", &["v1"], &unlisted).await;
    let daemon = Daemon::start(&upstream_toml(&reg.url(), ""), &[]).await;
    let list = daemon.dir.path().join("images.txt");
    std::fs::write(
        &list,
        "# what the site needs\nweb:1.25   # the web tier\n\ndocker.io/org/app:v1\n",
    )
    .unwrap();

    let out = daemon
        .cli(&[
            "preload",
            list.to_str().unwrap(),
            "--platform",
            "linux/amd64",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("docker.io/library/web:1.25")
            && report.contains("linux/amd64")
            && report.contains("ready"),
        "{report}"
    );
    assert!(!report.contains("linux/arm64"), "filtered out: {report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("using the airlock serving"),
        "it went through the running server"
    );
    let arm = web.image_for(&Platform::arm64()).unwrap();
    assert_eq!(
        reg.blob_gets("library/web", &arm.layers[0].digest).await,
        0,
        "arm64 was not downloaded"
    );

    let ls = daemon.cli(&["cache", "ls"]).await;
    assert!(ls.status.success(), "{}", text(&ls));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.lines()
            .any(|l| l.contains("docker.io/org/app:v1") && l.trim_end().ends_with("yes")),
        "pinned: {ls}"
    );

    // A reference that does not exist: the preload says so and exits non-zero.
    let out = daemon.cli(&["preload", "org/nothere:v1"]).await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("NO"),
        "{}",
        text(&out)
    );

    reg.stop().await;
    let dir = tempfile::tempdir().unwrap();
    skopeo::copy(
        &format!("{}/org/app:v1", daemon.host()),
        dir.path(),
        false,
        &[],
    )
    .await
    .expect("skopeo after the cut");
    skopeo::read_dir(dir.path()).assert_matches(&app, false);
    let docker = Dockerd::start(&client_config(&daemon, "docker").await).await;
    let ctd = Containerd::start().await;
    let certs = tempfile::tempdir().unwrap();
    let out = daemon
        .cli(&[
            "client-config",
            "containerd",
            "--airgap",
            "--url",
            &daemon.url(),
            "--output-dir",
            certs.path().to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let podman = Podman::new(&client_config(&daemon, "podman").await);
    for (image, digest) in [("web:1.25", &web.digest), ("org/app:v1", &app.digest)] {
        assert_eq!(
            &docker.pull(image).await.expect("docker pull"),
            digest,
            "docker {image}"
        );
        assert_eq!(
            &ctd.pull(
                &format!("docker.io/{image}"),
                certs.path(),
                &["--platform", "linux/amd64"]
            )
            .await
            .expect("ctr pull"),
            digest
        );
        assert_eq!(
            &podman
                .pull(&format!("docker.io/{image}"), &[])
                .await
                .expect("podman pull"),
            digest,
            "podman {image}"
        );
    }
    // The unlisted image: a registry error, at once (the upstream refuses connections).
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/org/unlisted/manifests/v1", daemon.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(error_code(&resp.bytes().await.unwrap()), "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_offline_never_contacts_its_upstream() {
    let up = FaultyUpstream::start();
    let img = Image::oci("offline-img", &[50_000]);
    up.add_artifact("org/app", "v1", &img);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n{}",
            dir.path().join("data").display(),
            upstream_toml(&up.url(), "")
        ),
    )
    .unwrap();
    // No server runs: the preload opens the data directory itself.
    let out = run_cli(&config, &["preload", "org/app:v1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let seen = up.request_log().len();

    let port = support::free_port();
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{text_config}"),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--offline", "-c", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        tokio::task::spawn_blocking(move || support::wait_http_ready(
            port,
            Duration::from_secs(20)
        ))
        .await
        .unwrap()
    );
    let pulled = tempfile::tempdir().unwrap();
    skopeo::copy(
        &format!("127.0.0.1:{port}/org/app:v1"),
        pulled.path(),
        true,
        &[],
    )
    .await
    .expect("offline pull");
    skopeo::read_dir(pulled.path()).assert_matches(&img, true);
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v2/org/other/manifests/v1"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("offline"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        up.request_log().len(),
        seen,
        "no request reached the upstream: {:?}",
        &up.request_log()[seen..]
    );
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_upstream_is_marked_down_and_cached_tags_keep_pulling() {
    let up = FaultyUpstream::start();
    let img = Image::oci("blackhole", &[80_000]);
    up.add_artifact("org/app", "v1", &img);
    // Tags are always stale, so every pull asks the upstream first.
    let tuning = "tag_ttl = \"0s\"\nstale_timeout = \"300ms\"\nrequest_timeout = \"2s\"\nfailure_threshold = 2\nbackoff = \"1s\"\n";
    let daemon = Daemon::start(&upstream_toml(&up.url(), tuning), &[]).await;
    let pull = || async {
        let dir = tempfile::tempdir().unwrap();
        skopeo::copy(
            &format!("{}/org/app:v1", daemon.host()),
            dir.path(),
            true,
            &[],
        )
        .await
        .map(|_| skopeo::read_dir(dir.path()))
    };
    pull().await.expect("first pull").assert_matches(&img, true);

    up.set_mode("*", Mode::StallBeforeHeaders);
    pull()
        .await
        .expect("a cached tag pulls while the upstream hangs")
        .assert_matches(&img, true);
    let get = || {
        reqwest::Client::new()
            .get(format!("{}/v2/org/app/manifests/v1", daemon.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    for _ in 0..20 {
        assert_eq!(
            get().await.unwrap().status(),
            200,
            "stale answers while it hangs"
        );
        if daemon.log().contains("upstream marked down") {
            break;
        }
    }
    assert!(
        daemon.wait_log("upstream marked down", 50).await,
        "{}",
        daemon.log()
    );
    // While down: uncached content fails at once with an error that says why.
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/org/app/manifests/v2", daemon.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(String::from_utf8_lossy(&resp.bytes().await.unwrap()).contains("marked down"));

    up.clear_modes();
    for _ in 0..60 {
        let _ = get().await;
        if daemon.log().contains("upstream is back up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        daemon.log().contains("upstream is back up"),
        "{}",
        daemon.log()
    );
    pull()
        .await
        .expect("pull after recovery")
        .assert_matches(&img, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preload_interrupted_with_ctrl_c_is_cancelled_in_the_running_server() {
    let up = FaultyUpstream::start();
    let names: Vec<String> = (0..6).map(|i| format!("cut/app{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        up.add_artifact(name, "v1", &Image::oci(&format!("ctrl-c-{i}"), &[20_000]));
    }
    let gate = support::faulty::Gate::new();
    up.set_mode("*", Mode::Gate(gate.clone()));
    let daemon = Daemon::start(&upstream_toml(&up.url(), ""), &[]).await;
    let images: Vec<String> = names.iter().map(|n| format!("{n}:v1")).collect();
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .arg("preload")
        .args(&images)
        .arg("-c")
        .arg(&daemon.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        gate.wait_for_waiting(1, Duration::from_secs(20)).await,
        "the preload reached the upstream"
    );
    let pid = cli.id().unwrap().to_string();
    let sent = support::tools::KILL
        .command()
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), cli.wait())
        .await
        .expect("the CLI stops on Ctrl-C")
        .unwrap();
    assert!(!status.success());
    assert!(
        daemon
            .wait_log("the client went away: preload cancelled", 100)
            .await,
        "{}",
        daemon.log()
    );
    // The held requests are answered now, but nothing asks for more: no blob is fetched and
    // the images not yet started are never asked for.
    gate.open();
    let _ = reqwest::get(format!("{}/v2/", daemon.url())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blobs = up
        .request_log()
        .iter()
        .filter(|(_, path)| path.contains("/blobs/"))
        .count();
    assert_eq!(blobs, 0, "{:?}", up.request_log());
    let asked: std::collections::HashSet<String> = up
        .request_log()
        .iter()
        .filter(|(_, p)| p.contains("/manifests/"))
        .map(|(_, p)| p.clone())
        .collect();
    assert!(asked.len() < names.len(), "{asked:?}");
}
