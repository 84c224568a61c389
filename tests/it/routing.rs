//! One endpoint for every registry, against real registries: `?ns=` (containerd), a
//! `/v2/<registry>/…` path prefix (podman, CRI-O), operator aliases and bare paths (Docker)
//! each reach the right upstream; the same repository name on two registries never mixes;
//! a registry without an upstream is named in the error; airlocks chain.

use crate::support;

use support::airlock::{Airlock, client, config, error_code, upstream};
use support::image::{ACCEPT_ALL, Image, Index, Platform};
use support::push;
use support::registry::Registry;
use support::token::TokenIssuer;

async fn digest(airlock: &Airlock, path_and_query: &str, accept: &str) -> (u16, String, String) {
    let resp = client()
        .get(format!("{}{path_and_query}", airlock.url()))
        .header("Accept", accept)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|d| d.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned();
    (status, digest, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_name_on_two_registries_never_mixes_whatever_the_route() {
    let hub = Registry::start().await;
    let ghcr_storage = Registry::start().await;
    let issuer = TokenIssuer::start();
    let ghcr = Registry::start_token(&issuer, &ghcr_storage).await;
    let hub_img = Image::oci("route-hub", &[40_000]);
    let ghcr_img = Index::docker(
        "route-ghcr",
        &[Platform::amd64(), Platform::arm64()],
        &[30_000],
    );
    push::push(&hub.url(), "org/app", &["v1"], &hub_img).await;
    push::push(&ghcr_storage.url(), "org/app", &["v1"], &ghcr_img).await;
    let mut ghcr_upstream = upstream("ghcr.io", &ghcr.url());
    ghcr_upstream.aliases = vec!["gh".into()];
    let airlock = Airlock::start(config(vec![
        upstream("docker.io", &hub.url()),
        ghcr_upstream,
    ]))
    .await;

    // skopeo (podman's library): bare → the default registry, prefix and alias → ghcr.io.
    airlock.pull("org/app:v1", &hub_img).await;
    airlock.pull("ghcr.io/org/app:v1", &ghcr_img).await;
    airlock.pull("gh/org/app:v1", &ghcr_img).await;
    // containerd's ?ns=, and curl's Accept: */* (asks upstream for current types, not schema 1).
    let m = "/v2/org/app/manifests/v1";
    assert_eq!(
        digest(&airlock, &format!("{m}?ns=ghcr.io"), ACCEPT_ALL)
            .await
            .1,
        ghcr_img.digest
    );
    assert_eq!(
        digest(&airlock, &format!("{m}?ns=docker.io"), ACCEPT_ALL)
            .await
            .1,
        hub_img.digest
    );
    assert_eq!(digest(&airlock, m, "*/*").await.1, hub_img.digest);
    assert_eq!(
        digest(&airlock, &format!("{m}?ns=gh"), "*/*").await.1,
        ghcr_img.digest
    );

    // Content fetched for one registry is not served under the other's name.
    let hub_layer = &hub_img.layers[0].digest;
    let (status, _, body) = digest(
        &airlock,
        &format!("/v2/org/app/blobs/{hub_layer}?ns=ghcr.io"),
        "*/*",
    )
    .await;
    assert_eq!(
        (status, error_code(body.as_bytes()).as_str()),
        (404, "BLOB_UNKNOWN"),
        "{body}"
    );

    // A registry without an upstream: an error that names it, never a fetch elsewhere.
    for path in [
        format!("{m}?ns=quay.io"),
        "/v2/quay.io/org/app/manifests/v1".to_string(),
    ] {
        let (status, _, body) = digest(&airlock, &path, ACCEPT_ALL).await;
        assert_eq!(
            (status, error_code(body.as_bytes()).as_str()),
            (404, "NAME_UNKNOWN"),
            "{path}"
        );
        assert!(body.contains("quay.io"), "{body}");
    }
    assert!(
        issuer.token_requests() >= 1,
        "ghcr.io went through its token flow"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_airlock_chained_to_a_central_one_needs_no_upstream_once_central_has_it() {
    let hub = Registry::start().await;
    let ghcr = Registry::start().await;
    let hub_img = Image::docker("chain-hub", &[60_000]);
    let ghcr_img = Image::oci("chain-ghcr", &[50_000]);
    let later = Image::oci("chain-later", &[20_000]);
    push::push(&hub.url(), "org/app", &["v1"], &hub_img).await;
    push::push(&ghcr.url(), "org/app", &["v1"], &ghcr_img).await;
    push::push(&ghcr.url(), "org/later", &["v1"], &later).await;
    let central = Airlock::start(config(vec![
        upstream("docker.io", &hub.url()),
        upstream("ghcr.io", &ghcr.url()),
    ]))
    .await;
    let via_central = |registry: &str| {
        let mut u = upstream(registry, &central.url());
        u.mirror = true;
        u
    };
    let site = Airlock::start(config(vec![
        via_central("docker.io"),
        via_central("ghcr.io"),
    ]))
    .await;

    // The central cache gets the images first.
    central.pull("org/app:v1", &hub_img).await;
    central.pull("ghcr.io/org/app:v1", &ghcr_img).await;
    let (hub_seen, ghcr_seen) = (hub.requests().len(), ghcr.requests().len());
    // The site cache misses, asks central, and central answers from its cache.
    site.pull("org/app:v1", &hub_img).await;
    site.pull("ghcr.io/org/app:v1", &ghcr_img).await;
    hub.wait_for_log_quiet().await;
    ghcr.wait_for_log_quiet().await;
    assert_eq!(
        hub.requests().len(),
        hub_seen,
        "no request reached docker.io's upstream"
    );
    assert_eq!(
        ghcr.requests().len(),
        ghcr_seen,
        "no request reached ghcr.io's upstream"
    );
    // What central does not have yet passes through it, to the right registry.
    site.pull("ghcr.io/org/later:v1", &later).await;
    assert_eq!(
        ghcr.blob_gets("org/later", &later.layers[0].digest).await,
        1
    );
}
