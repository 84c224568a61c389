//! Faults a real registry will not produce, from a scripted upstream: wrong bytes, short
//! bodies, 429 and 5xx, stalls, a client that leaves mid-fill. Whatever happens, the client's
//! transfer fails loudly, nothing unverified is cached, and a healthy upstream heals it.

use crate::support;

use bytes::Bytes;
use std::time::Duration;
use support::airlock::{Airlock, client, config, error_code, upstream};
use support::faulty::{FaultyUpstream, Gate, Mode};
use support::image::{ACCEPT_ALL, Image};

/// Read a whole body; `Err` when the transfer broke (a clean end is `Ok`).
async fn body(resp: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    resp.bytes().await
}

/// Poll (bounded) until no spool is left: a failed fill cleans up after itself.
async fn wait_no_spools(airlock: &Airlock) {
    for _ in 0..200 {
        if airlock.spools() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("spools left behind: {}", airlock.spools());
}

fn random(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_short_bytes_fail_the_transfer_and_cache_nothing() {
    let up = FaultyUpstream::start();
    let airlock = Airlock::for_upstream(&up.url()).await;
    for (seed, mode) in [
        (1u8, Mode::WrongBytes),
        (2, Mode::ShortBody(300_000)),
        (3, Mode::ShortBody(0)),
        (4, Mode::ChunkedCut(300_000)),
        (5, Mode::ChunkedCut(0)),
    ] {
        let data = random(seed, 1 << 20);
        let digest = up.add_blob(data.clone());
        up.set_mode(&digest, mode.clone());
        let url = format!("{}/v2/fault/app/blobs/{digest}", airlock.url());
        let resp = client().get(&url).send().await.expect("headers arrive");
        let got = body(resp).await;
        assert!(
            got.is_err(),
            "{mode:?}: the transfer must fail, got {} bytes cleanly",
            got.map(|b| b.len()).unwrap_or(0)
        );
        wait_no_spools(&airlock).await;
        assert!(!airlock.has_blob(&digest), "{mode:?}: nothing cached");

        // The upstream heals: the next pull gets the right bytes and caches them.
        up.clear_modes();
        let resp = client().get(&url).send().await.expect("GET");
        assert_eq!(resp.status(), 200);
        assert_eq!(body(resp).await.expect("clean body"), data);
        assert!(airlock.has_blob(&digest));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let up = FaultyUpstream::start();
    let img = Image::oci("bad-manifest", &[1_000]);
    up.add_artifact("fault/m", "v1", &img);
    up.set_mode(&img.digest, Mode::WrongBytes);
    let airlock = Airlock::for_upstream(&up.url()).await;
    let resp = client()
        .get(format!(
            "{}/v2/fault/m/manifests/{}",
            airlock.url(),
            img.digest
        ))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 502);
    assert_eq!(error_code(&body(resp).await.unwrap()), "UNKNOWN");
    assert!(!airlock.has_blob(&img.digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_upstream_become_oci_errors_for_uncached_content() {
    let up = FaultyUpstream::start();
    let img = Image::oci("uncached", &[1_000]);
    up.add_artifact("fault/u", "v1", &img);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].request_timeout = Duration::from_secs(1);
    // One failure after another on purpose: the circuit breaker has its own test.
    cfg.upstream[0].failure_threshold = 100;
    let airlock = Airlock::start(cfg).await;
    let get = |path: String| {
        client()
            .get(format!("{}{path}", airlock.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    for (mode, status, code) in [
        (Mode::Status(429), 429, "TOOMANYREQUESTS"),
        (Mode::Status(503), 503, "UNAVAILABLE"),
        (Mode::Status(500), 503, "UNAVAILABLE"),
        (Mode::StallBeforeHeaders, 503, "UNAVAILABLE"),
        (Mode::Status(404), 404, "MANIFEST_UNKNOWN"),
    ] {
        up.set_mode("*", mode.clone());
        let resp = get("/v2/fault/u/manifests/v1".into()).await.expect("GET");
        assert_eq!(resp.status(), status, "{mode:?}");
        assert_eq!(error_code(&body(resp).await.unwrap()), code, "{mode:?}");
    }
    up.set_mode("*", Mode::Status(404));
    let resp = get(format!("/v2/fault/u/blobs/{}", img.layers[0].digest))
        .await
        .expect("GET");
    assert_eq!(
        (
            resp.status().as_u16(),
            error_code(&body(resp).await.unwrap()).as_str()
        ),
        (404, "BLOB_UNKNOWN")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_upstream_fails_the_last_known_tag_answer_is_served() {
    let up = FaultyUpstream::start();
    let img = Image::oci("stale", &[1_000]);
    up.add_artifact("fault/s", "v1", &img);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].tag_ttl = Duration::ZERO;
    cfg.upstream[0].request_timeout = Duration::from_secs(1);
    cfg.upstream[0].failure_threshold = 100;
    // Every answer goes to the upstream here: no negative caching of the 404 below.
    cfg.cache.negative_ttl = Duration::ZERO;
    let airlock = Airlock::start(cfg).await;
    let get = || {
        client()
            .get(format!("{}/v2/fault/s/manifests/v1", airlock.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    for mode in [
        Mode::Status(503),
        Mode::Status(500),
        Mode::Status(429),
        Mode::StallBeforeHeaders,
    ] {
        up.set_mode("v1", mode.clone());
        let resp = get().await.expect("GET");
        assert_eq!(resp.status(), 200, "{mode:?}: stale-if-error");
        assert_eq!(resp.headers()["docker-content-digest"], img.digest.as_str());
        assert_eq!(body(resp).await.unwrap(), img.manifest);
    }
    // An authoritative "gone" is not an error: the tag is forgotten.
    up.set_mode("v1", Mode::Status(404));
    assert_eq!(get().await.unwrap().status(), 404);
    up.set_mode("v1", Mode::Status(503));
    assert_eq!(
        get().await.unwrap().status(),
        503,
        "nothing stale left to serve"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fill_outlives_the_client_that_started_it() {
    let up = FaultyUpstream::start();
    let data = random(9, 2 << 20);
    let digest = up.add_blob(data.clone());
    let gate = Gate::new();
    up.set_mode(&digest, Mode::Gate(gate.clone()));
    let airlock = Airlock::for_upstream(&up.url()).await;
    let url = format!("{}/v2/fault/gone/blobs/{digest}", airlock.url());
    let first = tokio::spawn(client().get(url.clone()).send());
    assert!(
        gate.wait_for_waiting(1, Duration::from_secs(10)).await,
        "the fill reached the upstream"
    );
    first.abort();
    let _ = first.await;
    gate.open();
    for _ in 0..400 {
        if airlock.has_blob(&digest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        airlock.has_blob(&digest),
        "the fill finished without its client"
    );
    let resp = client().get(&url).send().await.expect("GET");
    assert_eq!(body(resp).await.unwrap(), data);
    assert_eq!(
        up.count("GET", &digest),
        1,
        "the second client was served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_ends_in_an_error_after_the_read_timeout() {
    let up = FaultyUpstream::start();
    let data = random(5, 1 << 20);
    let digest = up.add_blob(data.clone());
    up.set_mode(&digest, Mode::StallMidBody(100_000));
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].read_timeout = Duration::from_secs(1);
    let airlock = Airlock::start(cfg).await;
    let url = format!("{}/v2/fault/stall/blobs/{digest}", airlock.url());
    let resp = client().get(&url).send().await.expect("headers");
    assert!(body(resp).await.is_err(), "a stall is a failed transfer");
    wait_no_spools(&airlock).await;
    assert!(!airlock.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn range_requests_get_206_and_416() {
    let up = FaultyUpstream::start();
    let data = random(7, 100_000);
    let digest = up.add_blob(data.clone());
    let airlock = Airlock::for_upstream(&up.url()).await;
    let url = format!("{}/v2/fault/range/blobs/{digest}", airlock.url());
    let range = |r: &'static str| client().get(&url).header("Range", r).send();
    // The first request is a range on a miss: it waits for the verified file.
    let resp = range("bytes=10-19").await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(body(resp).await.unwrap(), data.slice(10..20));
    let resp = range("bytes=99990-").await.unwrap();
    assert_eq!(resp.headers()["content-range"], "bytes 99990-99999/100000");
    assert_eq!(body(resp).await.unwrap(), data.slice(99990..));
    let resp = range("bytes=-5").await.unwrap();
    assert_eq!(body(resp).await.unwrap(), data.slice(99995..));
    let resp = range("bytes=100000-").await.unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */100000");
    assert_eq!(error_code(&body(resp).await.unwrap()), "BLOB_UNKNOWN");
    let resp = range("bytes=0-1,5-6").await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), body(resp).await.unwrap()),
        (200, data.clone()),
        "several ranges: the whole blob"
    );
    assert_eq!(up.count("GET", &digest), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_layer_in_a_manifest_does_not_make_a_cached_blob_visible() {
    let up = FaultyUpstream::start();
    let secret = random(11, 50_000);
    let digest = up.add_blob(secret.clone());
    let airlock = Airlock::for_upstream(&up.url()).await;
    // Cached for the repository it belongs to.
    let resp = client()
        .get(format!("{}/v2/team/private/blobs/{digest}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(body(resp).await.unwrap(), secret);
    // Another repository's manifest names it as a non-distributable layer (with `urls`),
    // which registries accept without the blob being there.
    let config = support::image::sha256_digest(b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{digest}","size":50000,"urls":["https://example.com/layer"]}}]}}"#,
        m = support::image::OCI_MANIFEST
    );
    up.add_manifest("team/public", "v1", support::image::OCI_MANIFEST, manifest);
    up.set_mode(
        &format!("/v2/team/public/blobs/{digest}"),
        Mode::Status(404),
    );
    let resp = client()
        .get(format!("{}/v2/team/public/manifests/v1", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(format!("{}/v2/team/public/blobs/{digest}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "the private blob leaked through a foreign-layer descriptor"
    );
    assert_eq!(error_code(&body(resp).await.unwrap()), "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_joined_another_repositorys_failed_fill_fetches_for_itself() {
    let up = FaultyUpstream::start();
    let data = random(13, 300_000);
    let digest = up.add_blob(data.clone());
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].read_timeout = Duration::from_secs(1);
    let airlock = Airlock::start(cfg).await;
    // Repository a's download hangs until the read timeout fails it.
    let a_path = format!("/v2/fault/a/blobs/{digest}");
    up.set_mode(&a_path, Mode::StallBeforeHeaders);
    let a = tokio::spawn(client().get(format!("{}{a_path}", airlock.url())).send());
    for _ in 0..200 {
        if up.count("GET", &a_path) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count("GET", &a_path), 1, "a's fill reached the upstream");
    // Repository b joins that fill (the upstream confirms b has the blob), sees it fail, and
    // fetches for itself instead of failing with a's error.
    let resp = client()
        .get(format!("{}/v2/fault/b/blobs/{digest}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await.unwrap(), data);
    assert_eq!(up.count("GET", &format!("/v2/fault/b/blobs/{digest}")), 1);
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status(), 503, "a's own request reports a's failure");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_of_an_uncached_blob_gives_the_upstream_size() {
    let up = FaultyUpstream::start();
    let data = random(17, 123_457);
    let digest = up.add_blob(data);
    let airlock = Airlock::for_upstream(&up.url()).await;
    let resp = client()
        .head(format!("{}/v2/fault/head/blobs/{digest}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "123457");
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    assert!(!airlock.has_blob(&digest), "HEAD downloads nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_give_up_never_mark_the_upstream_down() {
    let up = FaultyUpstream::start();
    let img = Image::oci("fault-giveup", &[3_000]);
    up.add_artifact("fault/giveup", "v1", &img);
    let airlock = Airlock::for_upstream(&up.url()).await; // failure_threshold 3
    // A slow upstream, and clients that each give up after 0.3 s: HEADs of random digests.
    let gate = Gate::new();
    up.set_mode("*", Mode::Gate(gate.clone()));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for i in 0..6u8 {
        let digest = format!("sha256:{}", hex::encode([i; 32]));
        let sent = impatient
            .head(format!("{}/v2/fault/giveup/blobs/{digest}", airlock.url()))
            .send()
            .await;
        assert!(sent.is_err(), "the client gave up");
    }
    assert!(up.count("HEAD", "*") >= 6, "each reached the upstream");
    let metrics = airlock.cache().metrics();
    // Their requests are no longer counted as in flight (bounded wait: the server notices the
    // client gone on its own schedule).
    let mut settled = false;
    for _ in 0..200 {
        if metrics.requests_in_flight.get() == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(settled, "in flight: {}", metrics.requests_in_flight.get());
    assert_eq!(
        metrics.upstream_up.with_label_values(&["docker.io"]).get(),
        1
    );
    // The next legitimate pull of an uncached image goes to the upstream and succeeds.
    gate.open();
    up.clear_modes();
    airlock.pull("fault/giveup:v1", &img).await;
    assert_eq!(
        metrics.upstream_up.with_label_values(&["docker.io"]).get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_captive_portal_page_never_replaces_a_tag_answer() {
    let up = FaultyUpstream::start();
    let img = Image::oci("fault-portal", &[2_000]);
    up.add_artifact("fault/portal", "v1", &img);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].tag_ttl = Duration::ZERO; // every request revalidates
    cfg.upstream[0].failure_threshold = 100;
    let airlock = Airlock::start(cfg).await;
    airlock.pull("fault/portal:v1", &img).await;
    up.set_mode("*", Mode::CaptivePortal);
    let resp = client()
        .get(format!("{}/v2/fault/portal/manifests/v1", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the last known answer");
    assert_eq!(resp.headers()["docker-content-digest"], img.digest.as_str());
    assert_eq!(body(resp).await.unwrap(), img.manifest);
    // Uncached content gets a clear error, and nothing of the page is stored.
    let resp = client()
        .get(format!("{}/v2/fault/portal/manifests/v2", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(error_code(&body(resp).await.unwrap()), "UNAVAILABLE");
    up.clear_modes();
    airlock.pull("fault/portal:v1", &img).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_wait_their_turn_and_are_counted_while_they_wait() {
    let up = FaultyUpstream::start();
    let (a, b) = (random(7, 300_000), random(9, 300_000));
    let (da, db) = (up.add_blob(a.clone()), up.add_blob(b.clone()));
    let gate = Gate::new();
    up.set_mode("*", Mode::Gate(gate.clone()));
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.storage.max_downloads = 1;
    let airlock = Airlock::start(cfg).await;
    let m = airlock.cache().metrics().clone();
    let get = |d: String| {
        let url = format!("{}/v2/fault/turns/blobs/{d}", airlock.url());
        tokio::spawn(async move { body(client().get(url).send().await.unwrap()).await })
    };
    let (ga, gb) = (get(da.clone()), get(db.clone()));
    let mut waiting = false;
    for _ in 0..400 {
        if m.fills_in_flight.get() == 1 && m.fills_queued.get() == 1 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        waiting,
        "one downloads, one waits: {} running, {} queued",
        m.fills_in_flight.get(),
        m.fills_queued.get()
    );
    assert_eq!(
        up.count("GET", "*"),
        1,
        "only one download reached the upstream"
    );
    gate.open();
    assert_eq!(ga.await.unwrap().expect("first body"), a);
    assert_eq!(gb.await.unwrap().expect("second body"), b);
    for _ in 0..200 {
        if m.fills_in_flight.get() == 0 && m.fills_queued.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!((m.fills_in_flight.get(), m.fills_queued.get()), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_free_space_reserve_new_downloads_are_refused_and_the_cache_still_serves() {
    let up = FaultyUpstream::start();
    let img = Image::oci("fault-reserve", &[4_000]);
    up.add_artifact("fault/reserve", "v1", &img);
    let other = up.add_blob(random(3, 5_000));
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.storage.min_free = airlock::config::ByteSize(0);
    let airlock = Airlock::start(cfg.clone()).await;
    airlock.pull("fault/reserve:v1", &img).await;
    let data = airlock.stop().await;
    // The same cache, with a reserve no disk can meet.
    cfg.storage.min_free = airlock::config::ByteSize(u64::MAX / 2);
    let airlock = Airlock::start_in(cfg, data).await;
    airlock.pull("fault/reserve:v1", &img).await;
    let resp = client()
        .get(format!("{}/v2/fault/reserve/blobs/{other}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let text = String::from_utf8_lossy(&body(resp).await.unwrap()).into_owned();
    assert!(
        text.contains("UNAVAILABLE") && text.contains("min_free"),
        "{text}"
    );
    assert_eq!(airlock.spools(), 0, "nothing was started");
    // A bundle import is refused the same way, before it reads a byte.
    let e = airlock::bundle::import(
        airlock.cache(),
        &mut std::io::empty(),
        &airlock::progress::Progress::none(),
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("not imported") && e.contains("min_free"), "{e}");
}
