//! The referrers API (OCI distribution 1.1) through the cache: from the tag schema of a real
//! registry without the API (distribution 2.8, like Docker Hub and GHCR), from a scripted
//! upstream that has the API, merged, filtered by `artifactType`, paged, asked upstream once
//! per tag TTL and once for many clients, and served when the upstream is gone (also after a
//! restart, and after gc). Artifacts that are not images (an SBOM, a Helm chart, an unknown config type)
//! pass through byte for byte.

use crate::support;

use std::time::Duration;
use support::airlock::{Airlock, client, config, error_code, upstream};
use support::artifact::{OciArtifact, SIGSTORE_BUNDLE, SPDX, referrers_index, schema_tag};
use support::faulty::{FaultyUpstream, Mode};
use support::image::{Artifact, Image, OCI_INDEX};
use support::push;
use support::registry::Registry;

/// GET `path` on airlock: status, headers, body.
async fn get(airlock: &Airlock, path: &str) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    get_at(&airlock.url(), path).await
}

/// GET `base` + `path`, accepting every manifest type: status, headers, body.
async fn get_at(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let r = client()
        .get(format!("{base}{path}"))
        .header("accept", support::image::ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.bytes().await.unwrap())
}

/// The digests an answer lists, after checking it is an image index.
fn listed(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Vec<String> {
    assert_eq!(headers["content-type"], OCI_INDEX);
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

fn sbom_of(image: &dyn Artifact, seed: &str) -> OciArtifact {
    let doc = format!(r#"{{"spdxVersion":"SPDX-2.3","name":"{seed}"}}"#);
    OciArtifact::referrer(image, SPDX, SPDX, doc.as_bytes())
}

fn bundle_of(image: &dyn Artifact, seed: &str) -> OciArtifact {
    let doc = format!(r#"{{"mediaType":"{SIGSTORE_BUNDLE}","seed":"{seed}"}}"#);
    OciArtifact::referrer(image, SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, doc.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_come_from_the_tag_schema_and_are_served_when_the_upstream_is_gone() {
    let reg = Registry::start().await;
    let app = Image::oci("referrers-schema", &[20_000]);
    let bare = Image::oci("referrers-none", &[10_000]);
    let sbom = sbom_of(&app, "schema");
    let sig = bundle_of(&app, "schema");
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    push::push(&reg.url(), "org/app", &["bare"], &bare).await;
    push::push(&reg.url(), "org/app", &[], &sbom).await;
    push::push(&reg.url(), "org/app", &[], &sig).await;
    // What a pusher (oras, cosign) does on a registry without the referrers API.
    let index = referrers_index(&[&sbom, &sig]);
    push::push_manifest(
        &push::client(),
        &reg.url(),
        "org/app",
        &schema_tag(&app.digest),
        OCI_INDEX,
        index,
    )
    .await;

    let airlock = Airlock::for_upstream(&reg.url()).await;
    // A client pulls the image, then asks for what refers to it (as cosign and notation do).
    airlock.pull("org/app:v1", &app).await;
    airlock.pull("org/app:bare", &bare).await;
    let path = format!("/v2/org/app/referrers/{}", app.digest);
    let (status, h, body) = get(&airlock, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        listed(&h, &body),
        [sbom.digest.as_str(), sig.digest.as_str()]
    );
    assert!(h.get("oci-filters-applied").is_none());
    // Stored as the index it answers with.
    let answer = support::image::sha256_digest(&body);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["manifests"][0]["artifactType"], SPDX);
    assert_eq!(
        v["manifests"][0]["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );

    // Filtered: only the SBOM, and the header says a filter was applied.
    let (status, h, body) = get(&airlock, &format!("{path}?artifactType={SPDX}")).await;
    assert_eq!(status, 200);
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    assert_eq!(h["oci-filters-applied"], "artifactType");

    // Paged: one per page, the Link leads to the rest and then ends.
    let (_, h, body) = get(&airlock, &format!("{path}?n=1")).await;
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    let link = h["link"].to_str().unwrap().to_string();
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| panic!("not a Link: {link}"));
    let (_, h, body) = get(&airlock, &next).await;
    assert_eq!(listed(&h, &body), [sig.digest.as_str()]);
    assert!(h.get("link").is_none(), "the last page links nowhere");

    // None at all: an empty index, never a 404.
    let (status, h, body) = get(&airlock, &format!("/v2/org/app/referrers/{}", bare.digest)).await;
    assert_eq!(status, 200);
    assert!(listed(&h, &body).is_empty());

    // The referrers themselves pull byte for byte, by digest.
    for r in [&sbom, &sig] {
        let (status, _, body) = get(&airlock, &format!("/v2/org/app/manifests/{}", r.digest)).await;
        assert_eq!(status, 200);
        assert_eq!(body, r.manifest);
        let layer = &r.layers[0];
        let (_, _, body) = get(&airlock, &format!("/v2/org/app/blobs/{}", layer.digest)).await;
        assert_eq!(body, layer.data);
    }

    // gc keeps what answers for a kept image; the upstream is gone, and airlock restarts:
    // the answers it had are still given.
    airlock::gc::collect(airlock.cache()).await.expect("gc");
    assert!(
        airlock.has_blob(&answer),
        "gc removed the answer of a kept image"
    );
    reg.stop().await;
    let airlock = airlock.restart().await;
    let (status, h, body) = get(&airlock, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        listed(&h, &body),
        [sbom.digest.as_str(), sig.digest.as_str()]
    );
    let (_, h, body) = get(&airlock, &format!("{path}?artifactType={SPDX}")).await;
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    // One never asked cannot be answered, and says why rather than claim there are none.
    let unknown = format!("/v2/org/app/referrers/sha256:{}", "e".repeat(64));
    let (status, _, body) = get(&airlock, &unknown).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&body), "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_referrers_api_upstream_is_merged_with_the_tag_schema_and_asked_once_per_ttl() {
    let up = FaultyUpstream::start();
    let app = Image::oci("referrers-api", &[10_000]);
    let sbom = sbom_of(&app, "api");
    let sig = bundle_of(&app, "api");
    let old = bundle_of(&app, "api-old");
    up.add_artifact("org/app", "v1", &app);
    for r in [&sbom, &sig, &old] {
        up.add_artifact("org/app", &r.digest, r);
    }
    // The API knows two; an older pusher left the tag schema with one of them and another.
    up.add_referrers("org/app", &app.digest, referrers_index(&[&sbom, &sig]));
    up.add_manifest(
        "org/app",
        &schema_tag(&app.digest),
        OCI_INDEX,
        referrers_index(&[&sig, &old]),
    );
    let mut u = upstream("docker.io", &up.url());
    u.tag_ttl = Duration::from_secs(3600);
    let airlock = Airlock::start(config(vec![u])).await;
    let path = format!("/v2/org/app/referrers/{}", app.digest);

    // Many clients at once: one question upstream.
    let answers = futures_util::future::join_all((0..8).map(|_| get(&airlock, &path))).await;
    for (status, h, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(
            listed(h, body),
            [
                sbom.digest.as_str(),
                sig.digest.as_str(),
                old.digest.as_str()
            ]
        );
    }
    assert_eq!(up.count("GET", &path), 1);
    // Within the TTL: none.
    let (_, h, body) = get(&airlock, &path).await;
    assert_eq!(listed(&h, &body).len(), 3);
    assert_eq!(up.count("GET", &path), 1);

    // A referrers index of 100 000 entries: refused with a reason, the rest still answered.
    let other = Image::oci("referrers-huge", &[1_000]);
    up.add_artifact("org/app", "huge", &other);
    let huge: Vec<serde_json::Value> = (0..100_000)
        .map(|i| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{i:064x}"), "size": 500, "artifactType": SPDX})
        })
        .collect();
    let huge =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": huge})).unwrap();
    up.add_referrers("org/app", &other.digest, huge);
    let (status, h, body) = get(&airlock, &format!("/v2/org/app/referrers/{}", other.digest)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(listed(&h, &body).is_empty());
    let (status, _, _) = get(&airlock, "/v2/").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_referrers_answer_is_served_while_the_upstream_fails() {
    let up = FaultyUpstream::start();
    let app = Image::oci("referrers-stale", &[10_000]);
    let sbom = sbom_of(&app, "stale");
    up.add_artifact("org/app", "v1", &app);
    up.add_artifact("org/app", &sbom.digest, &sbom);
    up.add_referrers("org/app", &app.digest, referrers_index(&[&sbom]));
    let mut u = upstream("docker.io", &up.url());
    u.tag_ttl = Duration::ZERO;
    let airlock = Airlock::start(config(vec![u])).await;
    let path = format!("/v2/org/app/referrers/{}", app.digest);
    let (status, h, body) = get(&airlock, &path).await;
    assert_eq!(status, 200);
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);

    up.set_mode("*", Mode::Status(503));
    let asked = up.count("GET", &path);
    let (status, h, body) = get(&airlock, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    assert!(up.count("GET", &path) > asked, "it asked, being stale");

    // A subject seen for the first time while the upstream fails: an error, not "none".
    let (status, _, body) = get(
        &airlock,
        &format!("/v2/org/app/referrers/sha256:{}", "d".repeat(64)),
    )
    .await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_that_are_not_images_pull_byte_for_byte() {
    let reg = Registry::start().await;
    let chart = OciArtifact::new(
        "application/vnd.cncf.helm.config.v1+json",
        br#"{"name":"web","version":"1.2.3","apiVersion":"v2"}"#,
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        &support::image::random_bytes("helm-chart", 30_000),
    );
    let unknown = OciArtifact::new(
        "application/vnd.example.never-heard-of+json",
        br#"{"what":"no runtime knows"}"#,
        "application/vnd.example.blob",
        &support::image::random_bytes("unknown-artifact", 5_000),
    );
    push::push(&reg.url(), "charts/web", &["1.2.3"], &chart).await;
    push::push(&reg.url(), "org/thing", &["v1"], &unknown).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    for (repo, tag, a) in [
        ("charts/web", "1.2.3", &chart),
        ("org/thing", "v1", &unknown),
    ] {
        let r = client()
            .get(format!("{}/v2/{repo}/manifests/{tag}", airlock.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            a.digest
        );
        assert_eq!(r.bytes().await.unwrap(), a.manifest);
        for (digest, data) in a.blobs() {
            let (status, _, body) = get(&airlock, &format!("/v2/{repo}/blobs/{digest}")).await;
            assert_eq!(status, 200);
            assert_eq!(body, data);
        }
    }
}

/// A cosign-style signature for the tag `sha256-<hex>.sig`: a manifest whose layer is the
/// simple-signing payload naming `image`'s digest (what it signs is checked in policy tests).
fn cosign_sig_of(image: &dyn Artifact) -> OciArtifact {
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"org/app"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
        image.digest()
    );
    OciArtifact::new(
        support::image::OCI_CONFIG,
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        payload.as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn preload_brings_signatures_and_sboms_so_they_are_served_with_the_upstream_gone() {
    let reg = Registry::start().await;
    let signed = Image::oci("referrers-preload", &[20_000]);
    let plain = Image::oci("referrers-preload-plain", &[10_000]);
    let sig = cosign_sig_of(&signed);
    let sbom = sbom_of(&signed, "preload");
    push::push(&reg.url(), "org/app", &["v1"], &signed).await;
    push::push(&reg.url(), "org/plain", &["v1"], &plain).await;
    push::push(&reg.url(), "org/app", &[], &sbom).await;
    let index = referrers_index(&[&sbom]);
    push::push_manifest(
        &push::client(),
        &reg.url(),
        "org/app",
        &schema_tag(&signed.digest),
        OCI_INDEX,
        index,
    )
    .await;
    push::push(
        &reg.url(),
        "org/app",
        &[&format!("{}.sig", schema_tag(&signed.digest)) as &str],
        &sig,
    )
    .await;
    // And one signed the same way, preloaded without its signatures.
    let other = Image::oci("referrers-preload-other", &[10_000]);
    let other_sig = cosign_sig_of(&other);
    push::push(&reg.url(), "org/other", &["v1"], &other).await;
    let other_tag = format!("{}.sig", schema_tag(&other.digest));
    push::push(&reg.url(), "org/other", &[&other_tag as &str], &other_sig).await;

    let toml = format!(
        "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n",
        reg.url()
    );
    let daemon = support::daemon::Daemon::start(&toml, &[]).await;
    let out = daemon.cli(&["preload", "org/app:v1", "org/plain:v1"]).await;
    let report = support::daemon::text(&out);
    assert!(out.status.success(), "{report}");
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // IMAGE PLATFORM SIGNED ATTEST SBOM OFFLINE
    assert_eq!(line("docker.io/org/app:v1")[2..6], ["1", "-", "1", "ready"]);
    assert_eq!(
        line("docker.io/org/plain:v1")[2..6],
        ["-", "-", "-", "ready"]
    );
    let before = reg.count_requests("", &other_tag, &[]).await;
    let out = daemon
        .cli(&["preload", "--no-signatures", "org/other:v1"])
        .await;
    assert!(out.status.success(), "{}", support::daemon::text(&out));
    assert_eq!(
        reg.count_requests("", &other_tag, &[]).await,
        before,
        "--no-signatures asked for no signature"
    );

    reg.stop().await;
    let base = daemon.url();
    let get = |path: String| {
        let base = base.clone();
        async move { get_at(&base, &path).await }
    };
    let (status, h, body) = get(format!("/v2/org/app/referrers/{}", signed.digest)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    let (status, _, body) = get(format!(
        "/v2/org/app/manifests/{}.sig",
        schema_tag(&signed.digest)
    ))
    .await;
    assert_eq!((status, body), (200, sig.manifest.clone()));
    for a in [&sig, &sbom] {
        for (digest, data) in a.blobs() {
            let (status, _, body) = get(format!("/v2/org/app/blobs/{digest}")).await;
            assert_eq!((status, body), (200, data), "{digest}");
        }
    }
    let (status, _, _) = get(format!("/v2/org/other/manifests/{other_tag}")).await;
    assert_ne!(status, 200, "not preloaded, not cached");

    // Removing the image removes what preload brought and pinned for it.
    let out = daemon.cli(&["cache", "rm", "org/app:v1"]).await;
    let text = support::daemon::text(&out);
    assert!(out.status.success() && text.contains(".sig"), "{text}");
    let sig_path = format!("/v2/org/app/manifests/{}.sig", schema_tag(&signed.digest));
    let (status, _, _) = get(sig_path).await;
    assert_ne!(status, 200, "the signature went with its image");
    let out = daemon.cli(&["cache", "ls", "--json"]).await;
    let text = support::daemon::text(&out);
    assert!(!text.contains(".sig"), "{text}");
    assert!(
        !text.contains(&schema_tag(&signed.digest)),
        "the referrers index went too: {text}"
    );
    let sbom_path = format!("/v2/org/app/manifests/{}", sbom.digest);
    let (status, _, _) = get(sbom_path).await;
    assert_ne!(status, 200, "the SBOM went with its image");
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_carry_signatures_and_sboms_to_a_site_without_an_upstream() {
    let reg = Registry::start().await;
    let app = Image::oci("referrers-bundle", &[40_000]);
    let sig = cosign_sig_of(&app);
    let sig_tag = format!("{}.sig", schema_tag(&app.digest));
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    push::push(&reg.url(), "org/app", &[&sig_tag as &str], &sig).await;
    // Every preload asks again (tag TTL 0, nothing remembered as unknown), as a later
    // week's would.
    let toml = format!(
        "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\ntag_ttl = \"0s\"\n\n[cache]\nnegative_ttl = \"0s\"\n",
        reg.url()
    );
    let site = support::daemon::Daemon::start(&toml, &[]).await;
    let cli = |args: Vec<String>| {
        let site = &site;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = site.cli(&args).await;
            assert!(
                out.status.success(),
                "{args:?}: {}",
                support::daemon::text(&out)
            );
            support::daemon::text(&out)
        }
    };
    let dir = site.dir.path();
    let (week1, week2) = (dir.join("week1.tar"), dir.join("week2.tar"));
    let (week1, week2) = (week1.to_str().unwrap(), week2.to_str().unwrap());
    cli(vec!["preload".into(), "org/app:v1".into()]).await;
    cli(vec![
        "export".into(),
        "org/app:v1".into(),
        "-o".into(),
        week1.into(),
    ])
    .await;

    // Later an SBOM is attached upstream; the next week's bundle carries only what is new.
    let sbom = sbom_of(&app, "bundle");
    push::push(&reg.url(), "org/app", &[], &sbom).await;
    push::push_manifest(
        &push::client(),
        &reg.url(),
        "org/app",
        &schema_tag(&app.digest),
        OCI_INDEX,
        referrers_index(&[&sbom]),
    )
    .await;
    cli(vec!["preload".into(), "org/app:v1".into()]).await;
    let since = vec!["export", "org/app:v1", "--since", week1, "-o", week2];
    cli(since.into_iter().map(String::from).collect()).await;
    let layer = &app.layers[0];
    let week2_bytes = std::fs::read(week2).unwrap();
    assert!(
        !week2_bytes
            .windows(layer.data.len().min(4096))
            .any(|w| w == &layer.data[..w.len()]),
        "the image's layer is in week 1's bundle, not week 2's"
    );

    let far = support::daemon::Daemon::start_with_top("upstream = []", "", &[]).await;
    for bundle in [week1, week2] {
        let out = far.cli(&["import", bundle]).await;
        assert!(out.status.success(), "{}", support::daemon::text(&out));
    }
    let base = far.url();
    let get = |path: String| {
        let base = base.clone();
        async move { get_at(&base, &path).await }
    };
    let (status, h, body) = get(format!("/v2/org/app/referrers/{}", app.digest)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["manifests"][0]["artifactType"], SPDX);
    let (status, _, body) = get(format!("/v2/org/app/manifests/{sig_tag}")).await;
    assert_eq!((status, body), (200, sig.manifest.clone()));
    let (status, _, body) = get(format!("/v2/org/app/manifests/{}", sbom.digest)).await;
    assert_eq!((status, body), (200, sbom.manifest.clone()));
    for a in [&sig, &sbom] {
        for (digest, data) in a.blobs() {
            let (status, _, body) = get(format!("/v2/org/app/blobs/{digest}")).await;
            assert_eq!((status, body), (200, data), "{digest}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_answers_501_for_referrers_falls_back_to_the_tag_schema_and_stays_up() {
    let up = FaultyUpstream::start();
    let app = Image::oci("referrers-501", &[10_000]);
    let sbom = sbom_of(&app, "501");
    up.add_artifact("org/app", "v1", &app);
    up.add_artifact("org/app", &sbom.digest, &sbom);
    up.add_manifest(
        "org/app",
        &schema_tag(&app.digest),
        OCI_INDEX,
        referrers_index(&[&sbom]),
    );
    let path = format!("/v2/org/app/referrers/{}", app.digest);
    up.set_mode(&path, Mode::Status(501));
    let mut u = upstream("docker.io", &up.url());
    u.tag_ttl = Duration::ZERO;
    u.failure_threshold = 2;
    let airlock = Airlock::start(config(vec![u])).await;
    for _ in 0..4 {
        let (status, h, body) = get(&airlock, &path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(listed(&h, &body), [sbom.digest.as_str()]);
    }
    assert!(up.count("GET", &path) >= 4, "asked each time (TTL 0)");
    // Not an outage: the upstream is not marked down, and pulls go on.
    airlock.pull("org/app:v1", &app).await;
}
