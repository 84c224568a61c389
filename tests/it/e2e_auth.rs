//! Real runtimes against an airlock that asks for credentials, each set up from what
//! `airlock client-config` prints: dockerd (`docker login`, then pulls by full name; and
//! `registry-mirrors`, which cannot log in, through an anonymous-by-network rule), podman (an
//! auth.json entry for the mirror), containerd (`ctr --user`) and skopeo (`--creds`). Each pulls
//! what its user may, gets a refusal without credentials, and a refusal for a repository its
//! user may not read. Every fallback to a real registry goes to a dead proxy, so a refusal
//! cannot be hidden by a silent fallback.

use crate::support;

use airlock::config::Config;
use support::airlock::Airlock;
use support::image::Image;
use support::push;
use support::registry::{Registry, htpasswd_entry};
use support::runtimes::{Containerd, Dockerd, Podman};
use support::skopeo;

/// Requests an access rule refused so far (403 DENIED).
fn denied(airlock: &Airlock) -> u64 {
    airlock
        .cache()
        .metrics()
        .auth_denials
        .with_label_values(&["rule"])
        .get()
}

/// Requests airlock refused for want of credentials so far (the refusal reached airlock; it was
/// not a fallback failing elsewhere).
fn challenged(airlock: &Airlock) -> u64 {
    airlock
        .cache()
        .metrics()
        .auth_denials
        .with_label_values(&["no_credentials"])
        .get()
}

/// docker.io with `org/app:v1` (alice only), `org/secret:v1` (nobody here) and
/// `library/alpine:3.19` (anonymous clients from `anonymous`, and any user).
struct Site {
    _hub: Registry,
    _dir: tempfile::TempDir,
    config_file: std::path::PathBuf,
    app: Image,
    alpine: Image,
}

async fn site(anonymous: &str) -> Site {
    let hub = Registry::start().await;
    let app = Image::oci("e2e-auth-app", &[120_000]);
    let alpine = Image::oci("e2e-auth-alpine", &[90_000]);
    push::push(&hub.url(), "org/app", &["v1"], &app).await;
    push::push(
        &hub.url(),
        "org/secret",
        &["v1"],
        &Image::oci("e2e-auth-secret", &[1_000]),
    )
    .await;
    push::push(&hub.url(), "library/alpine", &["3.19"], &alpine).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        htpasswd_entry("alice", "alice-pw") + &htpasswd_entry("bob", "bob-pw"),
    )
    .unwrap();
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[auth]
htpasswd = "{htpasswd}"

[[access]]
name = "app"
repositories = ["docker.io/org/app"]
users = ["alice"]

[[access]]
name = "secret"
repositories = ["docker.io/org/secret"]
users = ["carol"]

[[access]]
name = "library"
repositories = ["docker.io/library/*"]
authenticated = true
anonymous = ["{anonymous}"]

[[upstream]]
registry = "docker.io"
url = "{url}"
"#,
        htpasswd = htpasswd.display(),
        url = hub.url()
    );
    let config_file = dir.path().join("airlock.toml");
    std::fs::write(&config_file, toml).unwrap();
    Site {
        _hub: hub,
        _dir: dir,
        config_file,
        app,
        alpine,
    }
}

impl Site {
    async fn airlock(&self) -> Airlock {
        Airlock::start(Config::load(Some(&self.config_file)).expect("config loads")).await
    }

    /// `airlock client-config CLIENT --url URL -c FILE [extra]`: (stdout, stderr notes).
    fn client_config(&self, airlock: &Airlock, client: &str, extra: &[&str]) -> (String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["client-config", client, "--url", &airlock.url(), "-c"])
            .arg(&self.config_file)
            .args(extra)
            .output()
            .expect("airlock client-config runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_logs_in_pulls_by_full_name_and_mirrors_by_network() {
    let site = site("127.0.0.1/32").await;
    let airlock = site.airlock().await;
    let (daemon_json, notes) = site.client_config(&airlock, "docker", &[]);
    assert!(
        notes.contains(&format!("docker login {}", airlock.host)),
        "{notes}"
    );
    let docker = Dockerd::start(&support::snippet_body(&daemon_json)).await;
    let app = format!("{}/docker.io/org/app:v1", airlock.host);
    let e = docker.pull(&app).await.expect_err("no login yet");
    assert!(
        e.contains("unauthorized") || e.contains("401") || e.contains("authentication required"),
        "{e}"
    );
    docker
        .docker(&["login", &airlock.host, "-u", "alice", "-p", "alice-pw"])
        .await
        .expect("docker login");
    assert_eq!(
        docker.pull(&app).await.expect("docker pull by full name"),
        site.app.digest
    );
    let e = docker
        .pull(&format!("{}/docker.io/org/secret:v1", airlock.host))
        .await
        .expect_err("alice may not read org/secret");
    assert!(e.contains("denied"), "{e}");
    let e = docker
        .docker(&["login", &airlock.host, "-u", "alice", "-p", "wrong"])
        .await
        .expect_err("a wrong password");
    assert!(
        e.to_lowercase().contains("unauthorized") || e.contains("incorrect"),
        "{e}"
    );
    // registry-mirrors: anonymous, let in by the daemon's network (127.0.0.1).
    assert_eq!(
        docker
            .pull("alpine:3.19")
            .await
            .expect("docker pull through the mirror"),
        site.alpine.digest
    );
    assert!(
        docker.pull("org/app:v1").await.is_err(),
        "the mirror gives anonymous clients nothing private"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_outside_the_anonymous_network_gets_nothing_through_the_mirror() {
    let site = site("127.0.0.2/32").await;
    let airlock = site.airlock().await;
    let (daemon_json, _) = site.client_config(&airlock, "docker", &[]);
    let docker = Dockerd::start(&support::snippet_body(&daemon_json)).await;
    let before = challenged(&airlock);
    docker
        .pull("alpine:3.19")
        .await
        .expect_err("127.0.0.1 is outside 127.0.0.2/32");
    assert!(
        challenged(&airlock) > before,
        "airlock refused the mirror pull itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pulls_with_an_auth_json_entry_for_the_mirror() {
    let site = site("127.0.0.2/32").await;
    let airlock = site.airlock().await;
    let (conf, notes) = site.client_config(&airlock, "podman", &[]);
    assert!(
        notes.contains(&format!("podman login {}", airlock.host)),
        "{notes}"
    );
    let podman = Podman::new(&support::snippet_body(&conf));
    let before = challenged(&airlock);
    podman
        .pull("docker.io/org/app:v1", &[])
        .await
        .expect_err("no credentials");
    assert!(challenged(&airlock) > before);
    let alice = podman.auth_file(&airlock.host, "alice", "alice-pw");
    let alice = ["--authfile", alice.to_str().unwrap()];
    assert_eq!(
        podman
            .pull("docker.io/org/app:v1", &alice)
            .await
            .expect("podman pull"),
        site.app.digest
    );
    let before = denied(&airlock);
    assert!(
        podman
            .pull("docker.io/org/secret:v1", &alice)
            .await
            .is_err(),
        "alice may not read org/secret"
    );
    assert!(denied(&airlock) > before, "refused by a rule (403)");
    let bob = podman.auth_file(&airlock.host, "bob", "bob-pw");
    let bob = ["--authfile", bob.to_str().unwrap()];
    let before = denied(&airlock);
    assert!(
        podman.pull("docker.io/org/app:v1", &bob).await.is_err(),
        "bob may not read org/app"
    );
    assert!(denied(&airlock) > before, "refused by a rule (403)");
    assert_eq!(
        podman
            .pull("docker.io/library/alpine:3.19", &bob)
            .await
            .expect("any user"),
        site.alpine.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_with_ctr_user() {
    let site = site("127.0.0.2/32").await;
    let airlock = site.airlock().await;
    let certs = tempfile::tempdir().unwrap();
    let (_, notes) = site.client_config(
        &airlock,
        "containerd",
        &["--output-dir", certs.path().to_str().unwrap()],
    );
    assert!(notes.contains("ctr image pull --user"), "{notes}");
    let ctd = Containerd::start().await;
    let before = challenged(&airlock);
    assert!(
        ctd.pull("docker.io/org/app:v1", certs.path(), &[])
            .await
            .is_err(),
        "no credentials"
    );
    assert!(challenged(&airlock) > before);
    let got = ctd
        .pull(
            "docker.io/org/app:v1",
            certs.path(),
            &["--user", "alice:alice-pw"],
        )
        .await
        .expect("ctr pull --user");
    assert_eq!(got, site.app.digest);
    let before = denied(&airlock);
    assert!(
        ctd.pull(
            "docker.io/org/secret:v1",
            certs.path(),
            &["--user", "alice:alice-pw"]
        )
        .await
        .is_err(),
        "alice may not read org/secret"
    );
    assert!(denied(&airlock) > before, "refused by a rule (403)");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_with_creds() {
    let site = site("127.0.0.2/32").await;
    let airlock = site.airlock().await;
    let src = format!("{}/org/app:v1", airlock.host);
    let dir = tempfile::tempdir().unwrap();
    skopeo::copy_with_creds(&src, dir.path(), true, "alice:alice-pw")
        .await
        .expect("skopeo --src-creds");
    skopeo::read_dir(dir.path()).assert_matches(&site.app, true);
    let none = skopeo::copy(&src, tempfile::tempdir().unwrap().path(), true, &[])
        .await
        .expect_err("no credentials");
    assert!(
        none.contains("unauthorized") || none.contains("401"),
        "{none}"
    );
    let secret = format!("{}/org/secret:v1", airlock.host);
    let denied = skopeo::copy_with_creds(
        &secret,
        tempfile::tempdir().unwrap().path(),
        true,
        "alice:alice-pw",
    )
    .await
    .expect_err("alice may not read org/secret");
    assert!(denied.contains("denied"), "{denied}");
}
