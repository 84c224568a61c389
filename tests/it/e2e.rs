//! End to end with real runtimes, each set up from what `airlock client-config` prints:
//! dockerd (registry-mirrors), containerd (`ctr --hosts-dir`, two registries through one
//! airlock by `?ns=`), podman (registries.conf: the default registry bare, the other by path
//! prefix) and skopeo. Two real registries, one behind token auth, hold the same repository
//! name with different content: every client must get the right content for the registry it
//! asked for. Every fallback to a real registry goes to a dead proxy, so a broken mirror
//! cannot hide.

use crate::support;

use airlock::config::Config;
use support::airlock::Airlock;
use support::image::{Artifact, Image, Index, Platform};
use support::registry::Registry;
use support::runtimes::{Containerd, Dockerd, Podman};
use support::token::TokenIssuer;
use support::{push, skopeo};
use tokio::sync::OnceCell;

/// Two registries (processes, so they outlive any one test's runtime) and the config file of
/// an airlock in front of both. Each test starts its own airlock: an in-process server lives
/// only as long as the runtime of the test that started it.
struct Site {
    _hub: Registry,
    _ghcr_storage: Registry,
    _ghcr: Registry,
    _issuer: TokenIssuer,
    config_file: tempfile::TempPath,
    /// docker.io/org/app:v1, an OCI index.
    hub_app: Index,
    /// ghcr.io/org/app:v1, a Docker schema 2 image.
    ghcr_app: Image,
    /// docker.io/library/alpine:3.19.
    alpine: Image,
}

static SITE: OnceCell<Site> = OnceCell::const_new();

async fn site() -> &'static Site {
    SITE.get_or_init(|| async {
        let hub = Registry::start().await;
        let ghcr_storage = Registry::start().await;
        let issuer = TokenIssuer::start();
        let ghcr = Registry::start_token(&issuer, &ghcr_storage).await;
        let hub_app = Index::oci("e2e-hub-app", &[Platform::amd64(), Platform::arm64()], &[300_000, 40_000]);
        let ghcr_app = Image::docker("e2e-ghcr-app", &[250_000]);
        let alpine = Image::oci("e2e-alpine", &[200_000]);
        push::push(&hub.url(), "org/app", &["v1"], &hub_app).await;
        push::push(&hub.url(), "library/alpine", &["3.19"], &alpine).await;
        push::push(&ghcr_storage.url(), "org/app", &["v1"], &ghcr_app).await;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n\n[[upstream]]\nregistry = \"ghcr.io\"\nurl = \"{}\"\n",
            hub.url(),
            ghcr.url()
        );
        let config_file = tempfile::NamedTempFile::new().expect("tempfile").into_temp_path();
        std::fs::write(&config_file, toml).expect("write config");
        Site { _hub: hub, _ghcr_storage: ghcr_storage, _ghcr: ghcr, _issuer: issuer, config_file, hub_app, ghcr_app, alpine }
    })
    .await
}

impl Site {
    /// An airlock started from the site's config file, on a fresh data directory.
    async fn airlock(&self) -> Airlock {
        Airlock::start(Config::load(Some(&self.config_file)).expect("config loads")).await
    }
}

/// Run `airlock client-config CLIENT --url … -c FILE [extra]` and return its stdout.
fn client_config(site: &Site, airlock: &Airlock, client: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["client-config", client, "--url", &airlock.url(), "-c"])
        .arg(&*site.config_file)
        .args(extra)
        .output()
        .expect("airlock client-config runs");
    assert!(
        out.status.success(),
        "client-config {client}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_pulls_through_registry_mirrors_and_by_full_name() {
    let site = site().await;
    let airlock = site.airlock().await;
    let daemon_json = support::snippet_body(&client_config(site, &airlock, "docker", &[]));
    let docker = Dockerd::start(&daemon_json).await;
    assert_eq!(
        docker
            .pull("org/app:v1")
            .await
            .expect("docker pull org/app:v1"),
        site.hub_app.digest
    );
    assert_eq!(
        docker
            .pull("alpine:3.19")
            .await
            .expect("docker pull alpine"),
        site.alpine.digest
    );
    let by_name = format!("{}/ghcr.io/org/app:v1", airlock.host);
    assert_eq!(
        docker
            .pull(&by_name)
            .await
            .expect("docker pull by full name"),
        site.ghcr_app.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_two_registries_through_one_airlock_by_ns() {
    let site = site().await;
    let airlock = site.airlock().await;
    let certs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "client-config",
            "containerd",
            "--url",
            &airlock.url(),
            "--output-dir",
        ])
        .arg(certs.path())
        .arg("-c")
        .arg(&*site.config_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "docker.io/hosts.toml",
        "ghcr.io/hosts.toml",
        "_default/hosts.toml",
    ] {
        assert!(certs.path().join(f).is_file(), "{f} written");
    }
    let ctd = Containerd::start().await;
    let hub = ctd
        .pull("docker.io/org/app:v1", certs.path(), &[])
        .await
        .expect("ctr pull docker.io");
    let ghcr = ctd
        .pull("ghcr.io/org/app:v1", certs.path(), &[])
        .await
        .expect("ctr pull ghcr.io");
    assert_eq!(
        (hub, ghcr),
        (site.hub_app.digest.clone(), site.ghcr_app.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pulls_the_default_registry_bare_and_the_other_by_prefix() {
    let site = site().await;
    let airlock = site.airlock().await;
    for extra in [&[][..], &["--airgap"][..]] {
        let conf = support::snippet_body(&client_config(site, &airlock, "podman", extra));
        assert!(
            conf.contains(&format!("location = \"{}/ghcr.io\"", airlock.host)),
            "{conf}"
        );
        let podman = Podman::new(&conf);
        let hub = podman
            .pull("docker.io/org/app:v1", &[])
            .await
            .expect("podman pull docker.io");
        let ghcr = podman
            .pull("ghcr.io/org/app:v1", &[])
            .await
            .expect("podman pull ghcr.io");
        let alpine = podman
            .pull("alpine:3.19", &[])
            .await
            .expect("podman pull a short name");
        assert_eq!(
            (hub, ghcr, alpine),
            (
                site.hub_app.digest.clone(),
                site.ghcr_app.digest.clone(),
                site.alpine.digest.clone()
            ),
            "{extra:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_each_registry_by_path() {
    let site = site().await;
    let airlock = site.airlock().await;
    for (reference, want) in [
        ("org/app:v1", &site.hub_app as &dyn Artifact),
        ("docker.io/org/app:v1", &site.hub_app),
        ("ghcr.io/org/app:v1", &site.ghcr_app),
    ] {
        let dir = tempfile::tempdir().unwrap();
        skopeo::copy(
            &format!("{}/{reference}", airlock.host),
            dir.path(),
            true,
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("skopeo {reference}: {e}"));
        skopeo::read_dir(dir.path()).assert_matches(want, true);
    }
}
