//! The self-managing cache against a real registry and a real client (skopeo): a size cap
//! with least-recently-used eviction (never pins, never a shared layer still in use, never a
//! blob being served, and every listed image still pulls offline), purges, garbage collection
//! and verification (a corrupted blob is quarantined and fetched again).

use crate::support;

use airlock::gc::{self, Cap};
use airlock::inventory;
use airlock::oci::{ImageRef, Registry as RegistryName};
use airlock::progress::{Event, Progress};
use std::collections::BTreeSet;
use std::time::Duration;
use support::airlock::{Airlock, config, upstream};
use support::image::{Artifact, Image, ImageBuilder, Index, Platform};
use support::push;
use support::registry::Registry;
use tokio::sync::OnceCell;

const MIB: usize = 1 << 20;

static UPSTREAM: OnceCell<Registry> = OnceCell::const_new();

/// One real registry shared by the tests that never stop it; each uses its own repositories.
async fn upstream_registry() -> &'static Registry {
    UPSTREAM.get_or_init(Registry::start).await
}

/// An airlock for `reg` that fails fast once `reg` is stopped and never evicts on its own.
async fn airlock_for(reg: &Registry, max_size: Option<u64>) -> Airlock {
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.upstream[0].connect_timeout = Duration::from_secs(2);
    cfg.storage.max_size = max_size.map(airlock::config::ByteSize);
    cfg.storage.eviction_interval = Duration::from_secs(3600);
    Airlock::start(cfg).await
}

/// A cap of `max` bytes with the default watermarks.
fn watermarks(max: u64) -> Cap {
    Cap {
        max,
        high: 0.95,
        low: 0.85,
    }
}

fn image_ref(s: &str) -> ImageRef {
    ImageRef::parse(s, &RegistryName::docker_hub()).expect("image reference")
}

/// `docker.io/<s>`, as the cache names it.
fn full(s: &str) -> String {
    image_ref(s).to_string()
}

/// The images `cache ls` lists, each checked to be complete (every blob stored).
fn listed(airlock: &Airlock) -> BTreeSet<String> {
    let images = inventory::images(airlock.store().as_ref(), airlock.index().as_ref()).expect("ls");
    for i in &images {
        assert!(
            i.closure.missing.is_empty(),
            "{} is listed but misses {:?}",
            i.reference,
            i.closure.missing
        );
    }
    images.iter().map(|i| i.reference.to_string()).collect()
}

/// Every blob and manifest of `image`.
fn digests(image: &Image) -> Vec<String> {
    let mut all: Vec<String> = image.blobs().into_keys().collect();
    all.push(image.digest.clone());
    all
}

fn bytes_of(image: &Image) -> u64 {
    image.blobs().values().map(|b| b.len() as u64).sum::<u64>() + image.manifest.len() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_size_cap_evicts_least_recently_used_images_but_never_pins_or_shared_layers_in_use() {
    let reg = Registry::start().await;
    let pinned = Image::oci("evict-pinned", &[MIB]);
    // d and e share a base layer: together 1.4 MiB, each alone 1 MiB.
    let shared = |seed| {
        ImageBuilder::new(seed)
            .shared_layer("evict-base", 600 << 10)
            .layer(400 << 10)
            .build()
    };
    let (d, e) = (shared("evict-d"), shared("evict-e"));
    let base = d.layers[0].digest.clone();
    assert_eq!(e.layers[0].digest, base);
    let (a, b, c) = (
        Image::oci("evict-a", &[MIB]),
        Image::oci("evict-b", &[MIB]),
        Image::oci("evict-c", &[MIB]),
    );
    let order = [
        ("pinned", &pinned),
        ("d", &d),
        ("a", &a),
        ("e", &e),
        ("b", &b),
        ("c", &c),
    ];
    for (name, image) in order {
        push::push(&reg.url(), &format!("evict/{name}"), &["v1"], image).await;
    }
    // Three and a half MiB: eviction above 3.325 MiB, down to 2.975 MiB (the defaults).
    let max = 7 * MIB as u64 / 2;
    let airlock = airlock_for(&reg, Some(max)).await;
    let cap = watermarks(max);
    let cache = airlock.cache();
    airlock
        .index()
        .set_pinned(&full("evict/pinned:v1"), true)
        .expect("pin");

    // (pulled, evicted by the eviction that follows it, least recently used first, listed after)
    let steps: [(&str, &[&str], &[&str]); 6] = [
        ("pinned", &[], &["pinned"]),
        ("d", &[], &["pinned", "d"]),
        ("a", &[], &["pinned", "d", "a"]),
        ("e", &["d", "a"], &["pinned", "e"]),
        ("b", &[], &["pinned", "e", "b"]),
        ("c", &["e", "b"], &["pinned", "c"]),
    ];
    for ((name, image), (pulled, evicted, kept)) in order.iter().zip(steps) {
        assert_eq!(*name, pulled);
        airlock.pull(&format!("evict/{name}:v1"), *image).await;
        let removal = gc::evict(cache, cap).await.expect("evict");
        let tag = |n: &&str| full(&format!("evict/{n}:v1"));
        assert_eq!(
            removal.images,
            evicted.iter().map(tag).collect::<Vec<_>>(),
            "after pulling {name}: least recently used first"
        );
        let usage = gc::usage(cache).expect("usage");
        assert!(
            usage.bytes as f64 <= max as f64 * cap.high,
            "after pulling {name}: {} bytes stored, cap {max}",
            usage.bytes
        );
        assert_eq!(
            usage.pinned_bytes,
            bytes_of(&pinned),
            "the pin covers it all"
        );
        assert_eq!(
            listed(&airlock),
            kept.iter().map(tag).collect(),
            "after {name}"
        );
        for (n, img) in order {
            let unique: Vec<String> = digests(img).into_iter().filter(|x| *x != base).collect();
            let stored = unique.iter().filter(|x| airlock.has_blob(x)).count();
            let want = if kept.contains(&n) { unique.len() } else { 0 };
            assert_eq!(stored, want, "blobs of {n} stored after pulling {name}");
        }
        let base_users = kept.iter().any(|n| *n == "d" || *n == "e");
        assert_eq!(
            airlock.has_blob(&base),
            base_users,
            "the shared base stays exactly while an image uses it (after {name})"
        );
    }

    // Everything listed pulls completely from the cache alone; nothing else does.
    reg.stop().await;
    let name_of = |reference: &String| {
        order
            .iter()
            .find(|(n, _)| full(&format!("evict/{n}:v1")) == *reference)
    };
    for reference in listed(&airlock) {
        let (name, image) = name_of(&reference).expect("an image of this test");
        airlock.pull(&format!("evict/{name}:v1"), *image).await;
    }
    for name in ["d", "a", "e", "b"] {
        assert!(
            airlock.try_pull(&format!("evict/{name}:v1")).await.is_err(),
            "{name} is gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_being_served_survives_evict_remove_and_collect() {
    let reg = upstream_registry().await;
    // Larger than any socket buffers: the transfer cannot finish while the client waits.
    let big = Image::oci("inuse-big", &[64 * MIB]);
    let small = Image::oci("inuse-small", &[100_000]);
    push::push(&reg.url(), "inuse/big", &["v1"], &big).await;
    push::push(&reg.url(), "inuse/small", &["v1"], &small).await;
    let airlock = airlock_for(reg, None).await;
    let cache = airlock.cache();
    airlock.pull("inuse/big:v1", &big).await;
    airlock.pull("inuse/small:v1", &small).await;
    let layer = &big.layers[0];
    let digest = layer.digest.parse().expect("digest");

    let url = format!("{}/v2/inuse/big/blobs/{}", airlock.url(), layer.digest);
    let mut resp = support::airlock::client()
        .get(url)
        .send()
        .await
        .expect("GET blob");
    assert_eq!(resp.status(), 200);
    let mut body = resp
        .chunk()
        .await
        .expect("first chunk")
        .expect("a chunk")
        .to_vec();
    assert!(cache.in_use(&digest), "the blob is being served");

    let removal = gc::evict(cache, watermarks(1)).await.expect("evict");
    assert_eq!(
        removal.images,
        [full("inuse/small:v1")],
        "the image being served waits"
    );
    assert!(!airlock.has_blob(&small.layers[0].digest));
    assert!(airlock.has_blob(&layer.digest));
    // The index forgets what was deleted, and keeps what was not.
    let small_layer: airlock::oci::Digest = small.layers[0].digest.parse().unwrap();
    assert_eq!(airlock.index().blob_info(&small_layer).unwrap(), None);
    assert!(airlock.index().blob_info(&digest).unwrap().is_some());

    let removal = gc::remove(cache, &image_ref("inuse/big:v1"))
        .await
        .expect("rm");
    assert_eq!(removal.images, [full("inuse/big:v1")]);
    assert_eq!(removal.blobs, 2, "manifest and config go, the layer stays");
    assert!(!airlock.has_blob(&big.digest) && !airlock.has_blob(&big.config.digest));
    assert!(airlock.has_blob(&layer.digest));

    let removal = gc::collect(cache).await.expect("gc");
    assert_eq!(removal.blobs, 0);
    assert!(airlock.has_blob(&layer.digest));
    assert!(cache.in_use(&digest), "still being served");

    while let Some(chunk) = resp.chunk().await.expect("rest of the body") {
        body.extend_from_slice(&chunk);
    }
    assert!(body == layer.data, "the client got the right bytes");
    // The server lets go of the blob once its response body is done (bounded wait).
    for _ in 0..200 {
        if !cache.in_use(&digest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let removal = gc::collect(cache).await.expect("gc");
    assert_eq!((removal.blobs, removal.bytes), (1, layer.size()));
    assert!(!airlock.has_blob(&layer.digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_an_image_keeps_what_another_image_shares() {
    let reg = Registry::start().await;
    let one = ImageBuilder::new("rm-one")
        .shared_layer("rm-base", 300_000)
        .layer(200_000)
        .build();
    let two = ImageBuilder::new("rm-two")
        .shared_layer("rm-base", 300_000)
        .layer(100_000)
        .build();
    let base = one.layers[0].digest.clone();
    push::push(&reg.url(), "rm/one", &["v1"], &one).await;
    push::push(&reg.url(), "rm/two", &["v1"], &two).await;
    let airlock = airlock_for(&reg, None).await;
    let cache = airlock.cache();
    airlock.pull("rm/one:v1", &one).await;
    airlock.pull("rm/two:v1", &two).await;
    airlock
        .index()
        .set_pinned(&full("rm/one:v1"), true)
        .expect("pin");

    let err = gc::remove(cache, &image_ref("rm/nothere:v1"))
        .await
        .expect_err("not cached");
    assert_eq!(err.code(), "MANIFEST_UNKNOWN");
    assert!(err.to_string().contains("rm/nothere:v1"), "{err}");

    let removal = gc::remove(cache, &image_ref("rm/one:v1"))
        .await
        .expect("rm");
    assert_eq!(removal.images, [full("rm/one:v1")]);
    let unique = [&one.digest, &one.config.digest, &one.layers[1].digest];
    assert_eq!(removal.blobs, unique.len());
    assert_eq!(removal.bytes, bytes_of(&one) - one.layers[0].size());
    for d in unique {
        assert!(!airlock.has_blob(d), "{d} of the purged image is deleted");
    }
    assert!(airlock.has_blob(&base), "the shared base stays");
    assert!(airlock.index().pins().expect("pins").is_empty(), "unpinned");
    assert_eq!(listed(&airlock), BTreeSet::from([full("rm/two:v1")]));

    reg.stop().await;
    airlock.pull("rm/two:v1", &two).await;
    assert!(airlock.try_pull("rm/one:v1").await.is_err());

    // By digest: the tags naming it go too, and with the last user the base.
    let removal = gc::remove(cache, &image_ref(&format!("rm/two@{}", two.digest)))
        .await
        .expect("rm by digest");
    assert_eq!(removal.images, [full("rm/two:v1")]);
    assert!(!airlock.has_blob(&base));
    assert_eq!(gc::usage(cache).expect("usage").bytes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_removes_what_no_tag_or_pin_reaches() {
    let reg = upstream_registry().await;
    let tagged = Image::oci("gc-tagged", &[50_000]);
    let pinned = Image::oci("gc-pinned", &[60_000]);
    let loose = Image::oci("gc-loose", &[70_000]);
    for (repo, image) in [
        ("gc/tagged", &tagged),
        ("gc/pinned", &pinned),
        ("gc/loose", &loose),
    ] {
        push::push(&reg.url(), repo, &["v1"], image).await;
    }
    let airlock = airlock_for(reg, None).await;
    let cache = airlock.cache();
    airlock.pull("gc/tagged:v1", &tagged).await;
    // Pulled by digest and pinned by digest.
    let by_digest = format!("gc/pinned@{}", pinned.digest);
    airlock.pull(&by_digest, &pinned).await;
    airlock
        .index()
        .set_pinned(&full(&by_digest), true)
        .expect("pin");
    // Loose: pulled by digest, then its record is gone (as when an image is removed while
    // one of its blobs is being served): nothing reaches it any more.
    airlock
        .pull(&format!("gc/loose@{}", loose.digest), &loose)
        .await;
    let loose_repo = image_ref(&format!("gc/loose@{}", loose.digest)).repo;
    airlock
        .index()
        .remove_digest_pull(&loose_repo, &loose.digest.parse().unwrap())
        .expect("forget the pull");

    let removal = gc::collect(cache).await.expect("gc");
    assert!(removal.images.is_empty());
    assert_eq!(
        (removal.blobs, removal.bytes),
        (digests(&loose).len(), bytes_of(&loose))
    );
    for d in digests(&loose) {
        assert!(!airlock.has_blob(&d), "loose {d} collected");
    }
    for d in digests(&tagged).into_iter().chain(digests(&pinned)) {
        assert!(airlock.has_blob(&d), "{d} is reached by a tag or a pin");
    }
    assert_eq!(gc::collect(cache).await.expect("gc").blobs, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_quarantines_a_corrupt_blob_and_the_next_pull_fetches_it_again() {
    let reg = upstream_registry().await;
    let image = Image::oci("verify", &[300_000, 20_000]);
    push::push(&reg.url(), "verify/app", &["v1"], &image).await;
    let airlock = airlock_for(reg, None).await;
    let cache = airlock.cache();
    airlock.pull("verify/app:v1", &image).await;
    let layer = &image.layers[0];
    let path = airlock.blob_path(&layer.digest);
    let mut bytes = std::fs::read(&path).expect("stored layer");
    bytes[1000] ^= 0x01;
    std::fs::write(&path, &bytes).expect("corrupt the layer");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = gc::verify(cache, &Progress::to(tx)).await.expect("verify");
    assert_eq!(report.corrupt, std::slice::from_ref(&layer.digest));
    assert_eq!(report.checked, digests(&image).len());
    assert_eq!(report.bytes, bytes_of(&image));
    assert!(!airlock.has_blob(&layer.digest), "no longer served");
    let quarantined: Vec<_> = std::fs::read_dir(airlock.data().join("quarantine"))
        .expect("quarantine dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(
        std::fs::read(&quarantined[0]).expect("kept") == bytes,
        "kept for inspection"
    );
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(
        matches!(events.first(), Some(Event::Begin { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::End { ok: false, .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Note { text } if text.contains(&layer.digest))),
        "{events:?}"
    );

    assert_eq!(reg.blob_gets("verify/app", &layer.digest).await, 1);
    airlock.pull("verify/app:v1", &image).await;
    assert_eq!(
        reg.blob_gets("verify/app", &layer.digest).await,
        2,
        "fetched again from the upstream"
    );
    assert!(std::fs::read(&path).expect("stored again") == layer.data);
    let report = gc::verify(cache, &Progress::none()).await.expect("verify");
    assert!(report.corrupt.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_by_digest_is_listed_survives_gc_and_pulls_offline() {
    let reg = Registry::start().await;
    let img = Image::oci("evict-by-digest", &[30_000, 20_000]);
    let tagged = Index::oci(
        "evict-by-digest-tagged",
        &[Platform::amd64(), Platform::arm64()],
        &[10_000],
    );
    push::push(&reg.url(), "org/pinned", &["v1"], &img).await;
    push::push(&reg.url(), "org/multi", &["v1"], &tagged).await;
    let airlock = airlock_for(&reg, None).await;
    let by_digest = format!("org/pinned@{}", img.digest);
    // As Kubernetes pulls a pinned reference; and an index by tag, whose platform manifests
    // every client fetches by digest.
    airlock.pull(&by_digest, &img).await;
    airlock.pull("org/multi:v1", &tagged).await;
    let ls = listed(&airlock);
    assert_eq!(
        ls,
        BTreeSet::from([full(&by_digest), full("org/multi:v1")]),
        "one entry per image"
    );
    let removal = gc::collect(airlock.cache()).await.expect("gc");
    assert_eq!(removal.blobs, 0, "gc removes nothing of either");
    for d in digests(&img) {
        assert!(airlock.has_blob(&d), "{d} survived gc");
    }
    reg.stop().await;
    airlock.pull(&by_digest, &img).await;
    // `cache rm` takes it by its digest, as it is listed.
    let removal = gc::remove(airlock.cache(), &image_ref(&by_digest))
        .await
        .expect("rm");
    assert_eq!(removal.images, [full(&by_digest)]);
    assert_eq!(listed(&airlock), BTreeSet::from([full("org/multi:v1")]));
    assert!(!airlock.has_blob(&img.layers[0].digest));
}
