//! Pulls through airlock from a real upstream (CNCF distribution) with a real client (skopeo):
//! every manifest kind byte for byte, a 64 MiB layer, one upstream fetch per blob, the second
//! pull local, tags fresh / revalidated / stale, offline by tag.

use crate::support;

use std::time::Duration;
use support::airlock::{Airlock, config, upstream};
use support::image::{ACCEPT_ALL, Artifact, Image, Index, Platform};
use support::push;
use support::registry::Registry;
use tokio::sync::OnceCell;

static UPSTREAM: OnceCell<Registry> = OnceCell::const_new();

/// One real registry shared by the tests of this file; each test uses its own repositories.
async fn upstream_registry() -> &'static Registry {
    UPSTREAM.get_or_init(Registry::start).await
}

/// Upstream requests whose path mentions `needle`, made after `since` requests had been logged.
async fn requests_since(reg: &Registry, since: usize, needle: &str) -> Vec<String> {
    reg.wait_for_log_quiet().await;
    reg.requests()[since..]
        .iter()
        .filter(|r| r.path().contains(needle))
        .map(|r| format!("{} {} {}", r.method, r.target, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_manifest_kind_pulls_byte_for_byte_and_the_second_pull_stays_local() {
    let reg = upstream_registry().await;
    let oci = Image::oci("pull-oci", &[300_000, 20_000]);
    let docker = Image::docker("pull-docker", &[250_000, 1_000]);
    let index = Index::oci(
        "pull-index",
        &[Platform::amd64(), Platform::arm64()],
        &[100_000, 50_000],
    );
    let list = Index::docker(
        "pull-list",
        &[Platform::amd64(), Platform::arm64()],
        &[80_000],
    );
    let large = Image::oci("pull-large", &[64 << 20]);
    let images: [(&str, &dyn Artifact); 5] = [
        ("kinds/oci", &oci),
        ("kinds/docker", &docker),
        ("kinds/index", &index),
        ("kinds/list", &list),
        ("kinds/large", &large),
    ];
    for (repo, a) in images {
        push::push(&reg.url(), repo, &["v1"], a).await;
    }
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let since = reg.requests().len();
    for (repo, a) in images {
        airlock.pull(&format!("{repo}:v1"), a).await;
    }
    for (repo, a) in images {
        for digest in a.blobs().keys() {
            assert_eq!(
                reg.blob_gets(repo, digest).await,
                1,
                "{repo} {digest} fetched once upstream"
            );
            assert!(airlock.has_blob(digest), "{digest} stored");
        }
    }
    assert!(!requests_since(reg, since, "/v2/kinds/").await.is_empty());

    let since = reg.requests().len();
    for (repo, a) in images {
        airlock.pull(&format!("{repo}:v1"), a).await;
    }
    let seen = requests_since(reg, since, "/v2/kinds/").await;
    assert!(
        seen.is_empty(),
        "the second pull reached the upstream: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_concurrent_gets_of_an_uncached_blob_make_one_upstream_fetch() {
    let reg = upstream_registry().await;
    let img = Image::oci("herd", &[64 << 20]);
    push::push(&reg.url(), "herd/app", &["v1"], &img).await;
    let layer = img.layers[0].clone();
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let url = format!("{}/v2/herd/app/blobs/{}", airlock.url(), layer.digest);
    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let url = url.clone();
        gets.spawn(async move {
            use futures_util::StreamExt;
            use sha2::Digest as _;
            let resp = reqwest::get(&url).await.expect("GET blob");
            assert_eq!(resp.status(), 200);
            let mut hasher = sha2::Sha256::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                hasher.update(chunk.expect("body chunk"));
            }
            format!("sha256:{}", hex::encode(hasher.finalize()))
        });
    }
    let mut ok = 0;
    while let Some(digest) = gets.join_next().await {
        assert_eq!(digest.expect("task"), layer.digest);
        ok += 1;
    }
    assert_eq!(ok, 32);
    assert_eq!(
        reg.blob_gets("herd/app", &layer.digest).await,
        1,
        "exactly one upstream GET"
    );
    assert!(airlock.has_blob(&layer.digest));
    assert_eq!(airlock.spools(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_upstream_stopped_a_pulled_image_still_pulls_by_tag() {
    let reg = Registry::start().await;
    let index = Index::oci(
        "offline",
        &[Platform::amd64(), Platform::arm64()],
        &[200_000],
    );
    let app = Image::docker("offline-app", &[100_000]);
    push::push(&reg.url(), "library/nginx", &["1.25"], &index).await;
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    // A zero TTL makes every tag request ask the upstream: the stale-if-error path.
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.upstream[0].tag_ttl = Duration::ZERO;
    cfg.upstream[0].connect_timeout = Duration::from_secs(2);
    let airlock = Airlock::start(cfg).await;
    airlock.pull("nginx:1.25", &index).await;
    airlock.pull("org/app:v1", &app).await;

    reg.stop().await;
    airlock.pull("nginx:1.25", &index).await;
    airlock.pull("library/nginx:1.25", &index).await;
    airlock.pull("org/app:v1", &app).await;

    // After a restart too: the answers live in the index, not only in memory.
    let airlock = airlock.restart().await;
    airlock.pull("org/app:v1", &app).await;

    // What was never pulled fails with a registry error that says why.
    let resp = support::airlock::client()
        .get(format!("{}/v2/org/app/manifests/v9", airlock.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        support::airlock::error_code(&body),
        "UNAVAILABLE",
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_tags_cost_no_request_and_stale_ones_a_head() {
    let reg = upstream_registry().await;
    let v1 = Image::oci("ttl-v1", &[10_000]);
    let v2 = Image::oci("ttl-v2", &[10_000]);
    push::push(&reg.url(), "ttl/fresh", &["t"], &v1).await;
    push::push(&reg.url(), "ttl/stale", &["t"], &v1).await;
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.upstream[0].tag_ttl = Duration::from_secs(3600);
    let fresh = Airlock::start(cfg.clone()).await;
    cfg.upstream[0].tag_ttl = Duration::ZERO;
    let stale = Airlock::start(cfg).await;
    let client = support::airlock::client();
    let get = |a: &Airlock, repo: &str| {
        client
            .get(format!("{}/v2/{repo}/manifests/t", a.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    let digest_of = |r: reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };

    let since = reg.requests().len();
    for _ in 0..3 {
        assert_eq!(
            digest_of(get(&fresh, "ttl/fresh").await.unwrap()),
            v1.digest
        );
    }
    let seen = requests_since(reg, since, "/v2/ttl/fresh/manifests/").await;
    assert_eq!(seen.len(), 1, "one GET, then fresh answers: {seen:?}");

    let since = reg.requests().len();
    for _ in 0..3 {
        assert_eq!(
            digest_of(get(&stale, "ttl/stale").await.unwrap()),
            v1.digest
        );
    }
    let seen = requests_since(reg, since, "/v2/ttl/stale/manifests/").await;
    assert_eq!(
        seen.iter().filter(|r| r.starts_with("GET")).count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|r| r.starts_with("HEAD")).count(),
        2,
        "revalidated by HEAD: {seen:?}"
    );

    // The tag moves upstream: a stale answer is replaced, a fresh one is kept until its TTL.
    push::push(&reg.url(), "ttl/stale", &["t"], &v2).await;
    push::push(&reg.url(), "ttl/fresh", &["t"], &v2).await;
    assert_eq!(
        digest_of(get(&stale, "ttl/stale").await.unwrap()),
        v2.digest
    );
    assert_eq!(
        digest_of(get(&fresh, "ttl/fresh").await.unwrap()),
        v1.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_come_back_exactly_with_type_and_digest_by_tag_and_by_digest() {
    let reg = upstream_registry().await;
    let list = Index::docker(
        "exact-list",
        &[Platform::amd64(), Platform::arm64()],
        &[5_000],
    );
    push::push(&reg.url(), "exact/list", &["v1"], &list).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let client = support::airlock::client();
    for reference in ["v1".to_string(), list.digest.clone()] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let resp = client
                .request(
                    method.clone(),
                    format!("{}/v2/exact/list/manifests/{reference}", airlock.url()),
                )
                .header("Accept", ACCEPT_ALL)
                .send()
                .await
                .expect("manifest");
            assert_eq!(resp.status(), 200, "{method} {reference}");
            let h = resp.headers().clone();
            assert_eq!(h["content-type"], list.media_type());
            assert_eq!(h["docker-content-digest"], list.digest.as_str());
            assert_eq!(
                h["content-length"],
                list.manifest.len().to_string().as_str()
            );
            assert_eq!(h["docker-distribution-api-version"], "registry/2.0");
            let body = resp.bytes().await.expect("body");
            if method == reqwest::Method::GET {
                assert_eq!(body, list.manifest, "byte for byte");
            } else {
                assert!(body.is_empty());
            }
        }
    }
    // Children of the list by digest, and HEAD of a blob.
    let child = &list.children()[0];
    let resp = client
        .get(format!(
            "{}/v2/exact/list/manifests/{}",
            airlock.url(),
            child.digest
        ))
        .send()
        .await
        .expect("child");
    assert_eq!(resp.headers()["content-type"], child.media_type);
    assert_eq!(resp.bytes().await.expect("body"), child.manifest);
    let layer = &child.layers[0];
    let resp = client
        .head(format!(
            "{}/v2/exact/list/blobs/{}",
            airlock.url(),
            layer.digest
        ))
        .send()
        .await
        .expect("HEAD blob");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        layer.data.len().to_string().as_str()
    );
    assert_eq!(
        resp.headers()["docker-content-digest"],
        layer.digest.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_lists_page_with_n_and_last() {
    let reg = upstream_registry().await;
    let img = Image::oci("tags", &[1_000]);
    push::push(&reg.url(), "tags/app", &["a", "b", "c", "d"], &img).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let client = support::airlock::client();
    let list = |q: &'static str| {
        let url = format!("{}/v2/tags/app/tags/list{q}", airlock.url());
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.expect("tags");
            assert_eq!(resp.status(), 200);
            let link = resp
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_string());
            let v: serde_json::Value = resp.json().await.expect("json");
            assert_eq!(v["name"], "tags/app");
            let tags: Vec<String> = serde_json::from_value(v["tags"].clone()).expect("tags");
            (tags, link)
        }
    };
    assert_eq!(
        list("").await,
        (vec!["a".into(), "b".into(), "c".into(), "d".into()], None)
    );
    let (tags, link) = list("?n=2").await;
    assert_eq!(tags, ["a", "b"]);
    assert_eq!(
        link.as_deref(),
        Some("</v2/tags/app/tags/list?n=2&last=b>; rel=\"next\"")
    );
    assert_eq!(
        list("?n=2&last=b").await,
        (vec!["c".into(), "d".into()], None)
    );
    let resp = client
        .get(format!("{}/v2/tags/nothere/tags/list", airlock.url()))
        .send()
        .await
        .expect("tags");
    assert_eq!(resp.status(), 404);
    assert_eq!(
        support::airlock::error_code(&resp.bytes().await.unwrap()),
        "NAME_UNKNOWN"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narrow_accept_never_changes_the_tag_for_other_clients() {
    let reg = upstream_registry().await;
    let list = Index::docker("narrow", &[Platform::amd64(), Platform::arm64()], &[5_000]);
    push::push(&reg.url(), "narrow/app", &["v1"], &list).await;
    // A long TTL: a wrongly replaced tag answer would be served as fresh.
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let get = |accept: &'static str| {
        support::airlock::client()
            .get(format!("{}/v2/narrow/app/manifests/v1", airlock.url()))
            .header("Accept", accept)
            .send()
    };
    let digest_of = |r: reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest_of(get(ACCEPT_ALL).await.unwrap()), list.digest);
    // A client that reads only single manifests gets the upstream's pick for it...
    let narrow = digest_of(get(support::image::DOCKER_MANIFEST).await.unwrap());
    assert_ne!(narrow, list.digest);
    assert!(list.children().iter().any(|c| c.digest == narrow));
    // ...and every other client still gets the list, also when the upstream is gone.
    assert_eq!(digest_of(get(ACCEPT_ALL).await.unwrap()), list.digest);
    let airlock = airlock.restart().await;
    let resp = support::airlock::client()
        .get(format!("{}/v2/narrow/app/manifests/v1", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(digest_of(resp), list.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_misses_and_concurrent_tag_lists_cost_the_upstream_one_request_each() {
    let reg = upstream_registry().await;
    let img = Image::oci("negative", &[1_000]);
    push::push(&reg.url(), "neg/app", &["v1", "v2"], &img).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    reg.wait_for_log_quiet().await;
    let since = reg.requests().len();
    let unknown_digest = format!("sha256:{}", "ab".repeat(32));
    let unknown_manifest = format!("sha256:{}", "cd".repeat(32));
    for _ in 0..5 {
        for path in [
            "/v2/neg/app/manifests/nope".to_string(),
            format!("/v2/neg/app/blobs/{unknown_digest}"),
            format!("/v2/neg/app/manifests/{unknown_manifest}"),
            "/v2/neg/none/tags/list".to_string(),
        ] {
            let resp = support::airlock::client()
                .get(format!("{}{path}", airlock.url()))
                .header("Accept", ACCEPT_ALL)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 404, "{path}");
        }
    }
    // Twenty clients listing the same repository's tags at once.
    let lists = (0..20).map(|_| {
        let url = format!("{}/v2/neg/app/tags/list", airlock.url());
        tokio::spawn(async move {
            support::airlock::client()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    for l in lists {
        assert_eq!(l.await.unwrap(), 200);
    }
    let count = |needle: String| {
        let needle = needle.clone();
        async move { requests_since(reg, since, &needle).await.len() }
    };
    assert_eq!(
        count("/v2/neg/app/manifests/nope".into()).await,
        1,
        "an unknown tag"
    );
    assert_eq!(
        count(format!("/v2/neg/app/blobs/{unknown_digest}")).await,
        1,
        "an unknown blob"
    );
    assert_eq!(
        count(format!("/v2/neg/app/manifests/{unknown_manifest}")).await,
        1,
        "an unknown digest"
    );
    assert_eq!(
        count("/v2/neg/none/tags/list".into()).await,
        1,
        "an unknown repository"
    );
    assert_eq!(
        count("/v2/neg/app/tags/list".into()).await,
        1,
        "twenty concurrent tag lists"
    );
}
