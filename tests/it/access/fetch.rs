//! The fetch policy against a real registry: a refused tag, repository, tag list or oversized
//! blob costs the upstream no GET (counted in its access log).

use super::get;
use crate::support::airlock::{Airlock, config, upstream};
use crate::support::image::Image;
use crate::support::push;
use crate::support::registry::Registry;
use airlock::config::ByteSize;

#[tokio::test(flavor = "multi_thread")]
async fn refused_fetches_cost_the_upstream_no_get() {
    let hub = Registry::start().await;
    let small = Image::oci("fetch-small", &[10_000]);
    let big = Image::oci("fetch-big", &[2 << 20]);
    push::push(&hub.url(), "library/small", &["v1", "latest"], &small).await;
    push::push(&hub.url(), "library/big", &["v1"], &big).await;
    let evil = Image::oci("fetch-evil", &[10_000]);
    push::push(&hub.url(), "evil/app", &["v1"], &evil).await;
    // The pushes GET their manifests back: count from here.
    let before_latest = hub
        .count_requests("GET", "/v2/library/small/manifests/latest", &[200])
        .await;
    let before_evil = hub
        .count_requests("GET", "/v2/evil/app/", &[200, 307])
        .await;
    let mut c = config(vec![upstream("docker.io", &hub.url())]);
    c.fetch.allow = vec!["docker.io/library/*".into()];
    c.fetch.deny = vec!["**:latest".into()];
    c.fetch.max_blob_size = Some(ByteSize(1 << 20));
    let airlock = Airlock::start(c).await;
    airlock.pull("library/small:v1", &small).await;
    for (path, what) in [
        ("library/small/manifests/latest", "a denied tag"),
        ("evil/app/manifests/v1", "a repository not allowed"),
        (
            &format!("evil/app/blobs/{}", evil.layers[0].digest)[..],
            "a blob of it",
        ),
        (
            &format!("library/big/blobs/{}", big.layers[0].digest)[..],
            "a blob over the size limit",
        ),
    ] {
        let (status, code, _) = get(&format!("{}/v2/{path}", airlock.url()), None).await;
        assert_eq!((status, code.as_str()), (403, "DENIED"), "{what}");
    }
    // The big image's manifest is allowed; its layer is not, so the pull fails.
    let e = airlock
        .try_pull("library/big:v1")
        .await
        .expect_err("a layer over the limit");
    assert!(e.contains("denied") || e.contains("403"), "{e}");
    let latest = hub
        .count_requests("GET", "/v2/library/small/manifests/latest", &[200])
        .await;
    assert_eq!(latest, before_latest, "no GET of a denied tag");
    let (status, code, _) = get(&format!("{}/v2/evil/app/tags/list", airlock.url()), None).await;
    assert_eq!((status, code.as_str()), (403, "DENIED"), "a tag list of it");
    let evil_gets = hub
        .count_requests("GET", "/v2/evil/app/", &[200, 307])
        .await;
    assert_eq!(evil_gets, before_evil, "no GET of a repository not allowed");
    assert_eq!(
        hub.blob_gets("*", &big.layers[0].digest).await,
        0,
        "the big layer is never downloaded"
    );
}
