//! Bundles across an air gap: images pulled through one airlock from a real registry are
//! exported, imported into a second airlock that has no upstream at all, and pulled from it
//! byte for byte with skopeo; skopeo reads the archive directly; an incremental bundle
//! carries only what the previous one lacks; a corrupt, truncated or incomplete bundle is
//! refused and leaves the target cache exactly as it was.

mod archive;
mod large;
use crate::support;

use airlock::bundle::{self, Selection};
use airlock::oci::Digest;
use airlock::progress::Event;
use archive::*;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use support::airlock::{Airlock, config};
use support::image::{Artifact, Format, Image, ImageBuilder, Index};
use support::registry::Registry;
use support::{push, skopeo};
use tokio::sync::OnceCell;

static UPSTREAM: OnceCell<Registry> = OnceCell::const_new();

/// One real registry shared by the tests of this file; each test uses its own repositories.
async fn upstream_registry() -> &'static Registry {
    UPSTREAM.get_or_init(Registry::start).await
}

/// `skopeo copy --all` `reference` from `airlock` and compare every byte with `artifact`.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_carries_images_to_an_airlock_without_upstream() {
    let reg = upstream_registry().await;
    let nginx = Index::oci("bundle-rt-nginx", &platforms(), &[120_000, 30_000]);
    let app = Image::docker("bundle-rt-app", &[90_000, 5_000]);
    let redis = Index::docker("bundle-rt-redis", &platforms(), &[40_000]);
    let images: [(&str, &str, &dyn Artifact); 3] = [
        ("library/rt-nginx", "1.25", &nginx),
        ("org/rt-app", "v1", &app),
        ("library/rt-redis", "7", &redis),
    ];
    for (repo, tag, a) in images {
        push::push(&reg.url(), repo, &[tag], a).await;
    }
    let src = Airlock::for_upstream(&reg.url()).await;
    for (repo, tag, a) in images {
        src.pull(&format!("{repo}:{tag}"), a).await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bundle.tar");
    // Short, full and docker.io-qualified names all name the same images.
    let chosen = selection(&[
        "rt-nginx:1.25",
        "docker.io/org/rt-app:v1",
        "library/rt-redis:7",
    ]);
    let (plan, events) = export(src.cache(), chosen.clone(), HashSet::new(), &path).await;
    let full: Vec<String> = images
        .iter()
        .map(|(repo, tag, _)| format!("docker.io/{repo}:{tag}"))
        .collect();
    assert_eq!(plan.images, full);
    let expected = digests_of(&[&nginx, &app, &redis]);
    assert_eq!(blobs_in(&path), expected, "the archive holds every blob");
    let sizes: u64 = [&nginx as &dyn Artifact, &app, &redis]
        .iter()
        .flat_map(|a| {
            let m = a.manifests().into_values().map(|(_, b)| b.len() as u64);
            m.chain(a.blobs().into_values().map(|b| b.len() as u64))
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(plan.total_bytes, sizes);

    // An OCI layout: oci-layout first, index.json last, deterministic headers.
    let list = entries(&path);
    assert_eq!(list.first().map(|e| e.0.as_str()), Some("oci-layout"));
    assert_eq!(list.last().map(|e| e.0.as_str()), Some("index.json"));
    for (p, _, mode, mtime, _) in &list {
        let want = if p.ends_with('/') { 0o755 } else { 0o644 };
        assert_eq!((*mode, *mtime), (want, 0), "{p}");
    }
    let index = index_json(&path);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    for (i, (_, _, a)) in images.iter().enumerate() {
        let d = &index["manifests"][i];
        assert_eq!(d["digest"], a.digest());
        assert_eq!(d["mediaType"], a.media_type());
        assert_eq!(d["size"], a.size());
        assert_eq!(
            d["annotations"]["org.opencontainers.image.ref.name"],
            full[i]
        );
        assert_eq!(d["annotations"]["io.containerd.image.name"], full[i]);
    }
    // Progress: one unit, sized up front, advanced to the end, ended well.
    assert!(events.iter().any(|e| matches!(e,
        Event::Begin { id, total: Some(t), .. } if id == "export" && *t == plan.total_bytes)));
    assert!(events.iter().any(|e| matches!(e,
        Event::Advance { id, done, .. } if id == "export" && *done == plan.total_bytes)));
    assert!(matches!(events.last(), Some(Event::End { ok: true, .. })));

    // The same selection over the same cache gives the same bytes.
    let again = dir.path().join("again.tar");
    export(src.cache(), chosen, HashSet::new(), &again).await;
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap());

    let dst = Airlock::start(config(vec![])).await;
    let report = import(dst.cache(), &path).await.expect("import");
    assert_eq!(report.images, full);
    assert_eq!((report.new_blobs, report.known_blobs), (expected.len(), 0));
    assert_eq!(report.bytes, sizes);
    let mut pins = full.clone();
    pins.sort();
    assert_eq!(dst.index().pins().unwrap(), pins, "imports are pinned");
    for (repo, tag, a) in images {
        dst.pull(&format!("{repo}:{tag}"), a).await;
    }
    // Importing again changes nothing and counts everything as known.
    let before = snapshot(&dst);
    let report = import(dst.cache(), &path).await.expect("import again");
    assert_eq!((report.new_blobs, report.known_blobs), (0, expected.len()));
    assert_eq!(snapshot(&dst).0, before.0);
    assert_eq!(snapshot(&dst).2, before.2);
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_reads_images_straight_from_a_bundle() {
    let reg = upstream_registry().await;
    let index = Index::oci("bundle-sk-index", &platforms(), &[70_000]);
    let image = Image::oci("bundle-sk-image", &[50_000, 2_000]);
    push::push(&reg.url(), "library/sk-index", &["1.25"], &index).await;
    push::push(&reg.url(), "org/sk-image", &["v2"], &image).await;
    let src = Airlock::for_upstream(&reg.url()).await;
    src.pull("sk-index:1.25", &index).await;
    src.pull("org/sk-image:v2", &image).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bundle.tar");
    let chosen = selection(&["sk-index:1.25", "org/sk-image:v2"]);
    export(src.cache(), chosen, HashSet::new(), &path).await;

    let refs: [(&str, &dyn Artifact); 2] = [
        ("docker.io/library/sk-index:1.25", &index),
        ("docker.io/org/sk-image:v2", &image),
    ];
    for (reference, artifact) in refs {
        let out = tempfile::tempdir().expect("tempdir");
        skopeo_from_archive(&path, reference, out.path())
            .await
            .unwrap_or_else(|e| panic!("skopeo copy oci-archive:…:{reference}: {e}"));
        skopeo::read_dir(out.path()).assert_matches(artifact, true);
    }
    let out = tempfile::tempdir().expect("tempdir");
    let missing = skopeo_from_archive(&path, "docker.io/library/sk-index:9", out.path()).await;
    assert!(missing.is_err(), "a name the bundle lacks is not found");

    // The other way round: an archive skopeo wrote (no airlock annotations) imports too.
    let theirs = dir.path().join("skopeo.tar");
    let name = "docker.io/library/sk-index:1.25";
    skopeo_copy(
        &format!("docker://{}/sk-index:1.25", src.host),
        &format!("oci-archive:{}:{name}", theirs.display()),
    )
    .await
    .expect("skopeo writes an oci-archive");
    let dst = Airlock::start(config(vec![])).await;
    let report = import(dst.cache(), &theirs)
        .await
        .expect("import skopeo's archive");
    assert_eq!(report.images, [name]);
    dst.pull("sk-index:1.25", &index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_bundle_carries_only_what_the_previous_one_lacks() {
    let reg = upstream_registry().await;
    let base = ImageBuilder::new("bundle-inc-base")
        .shared_layer("bundle-inc-shared", 60_000)
        .layer(20_000)
        .build();
    let idx = Index::oci("bundle-inc-idx", &platforms(), &[30_000]);
    let new = ImageBuilder::new("bundle-inc-new")
        .format(Format::Docker)
        .shared_layer("bundle-inc-shared", 60_000)
        .layer(25_000)
        .build();
    push::push(&reg.url(), "org/inc-base", &["1"], &base).await;
    push::push(&reg.url(), "library/inc-idx", &["2"], &idx).await;
    push::push(&reg.url(), "org/inc-new", &["3"], &new).await;
    let src = Airlock::for_upstream(&reg.url()).await;
    src.pull("org/inc-base:1", &base).await;
    src.pull("inc-idx:2", &idx).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    let all = Selection {
        all: true,
        ..Default::default()
    };
    let (plan_a, _) = export(src.cache(), all.clone(), HashSet::new(), &a).await;
    assert_eq!(
        plan_a.images,
        ["docker.io/library/inc-idx:2", "docker.io/org/inc-base:1"]
    );
    assert_eq!(blobs_in(&a), digests_of(&[&base, &idx]));

    src.pull("org/inc-new:3", &new).await;
    let since = bundle::bundle_digests(&mut std::fs::File::open(&a).unwrap()).expect("digests");
    let since_text: BTreeSet<String> = since.iter().map(Digest::to_string).collect();
    assert_eq!(since_text, blobs_in(&a));
    let (plan_b, _) = export(src.cache(), all, since, &b).await;
    let only_new: BTreeSet<String> = [&new.digest, &new.config.digest, &new.layers[1].digest]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(blobs_in(&b), only_new, "the shared layer stays out");
    assert_eq!(plan_b.images.len(), 3, "{:?}", plan_b.images);
    assert_eq!(
        index_json(&b)["manifests"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(
        plan_b.notes.iter().any(|n| n.contains("left out")),
        "{:?}",
        plan_b.notes
    );

    // Without the previous bundle, the update cannot be imported, and nothing changes.
    let dst = Airlock::start(config(vec![])).await;
    let err = import(dst.cache(), &b)
        .await
        .expect_err("B alone is incomplete");
    assert!(
        err.contains("bundle lacks") && err.contains("--since"),
        "{err}"
    );
    assert_eq!(snapshot(&dst), (vec![], vec![], vec![]));
    assert_eq!(dst.spools(), 0, "the batch was discarded");

    // In order, both bring everything.
    import(dst.cache(), &a).await.expect("import A");
    let report = import(dst.cache(), &b).await.expect("import B after A");
    assert_eq!((report.new_blobs, report.known_blobs), (3, 0));
    dst.pull("org/inc-base:1", &base).await;
    dst.pull("inc-idx:2", &idx).await;
    dst.pull("org/inc-new:3", &new).await;

    // An image the cache does not hold is named in the error.
    let err = bundle::plan_export(src.cache(), &selection(&["nope:1"]), &HashSet::new())
        .expect_err("not cached");
    assert_eq!(err.code(), "MANIFEST_UNKNOWN");
    assert!(
        err.to_string().contains("docker.io/library/nope:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_and_truncated_bundles_leave_the_cache_unchanged() {
    let reg = upstream_registry().await;
    let one = Image::oci("bundle-bad-one", &[50_000]);
    let two = Image::oci("bundle-bad-two", &[200_000, 10_000]);
    push::push(&reg.url(), "org/bad-one", &["1"], &one).await;
    push::push(&reg.url(), "org/bad-two", &["2"], &two).await;
    let src = Airlock::for_upstream(&reg.url()).await;
    src.pull("org/bad-one:1", &one).await;
    src.pull("org/bad-two:2", &two).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (b1, b2) = (dir.path().join("one.tar"), dir.path().join("two.tar"));
    export(
        src.cache(),
        selection(&["org/bad-one:1"]),
        HashSet::new(),
        &b1,
    )
    .await;
    export(
        src.cache(),
        selection(&["org/bad-two:2"]),
        HashSet::new(),
        &b2,
    )
    .await;

    let dst = Airlock::start(config(vec![])).await;
    import(dst.cache(), &b1).await.expect("import one");
    let before = snapshot(&dst);
    assert_eq!(before.0.len(), 3);
    let intact = std::fs::read(&b2).expect("read bundle");
    let offset_of = |path: &Path, digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        entries(path)
            .into_iter()
            .find(|e| e.0.ends_with(hex))
            .map(|e| (e.4 as usize, e.1 as usize))
            .expect("entry in bundle")
    };

    // One flipped byte in a layer: refused, naming the layer.
    let layer = &two.layers[0].digest;
    let (at, size) = offset_of(&b2, layer);
    let mut bytes = intact.clone();
    bytes[at + size / 2] ^= 0x01;
    let corrupt = write_bundle(dir.path(), "corrupt.tar", &bytes);
    let err = import(dst.cache(), &corrupt).await.expect_err("corrupt");
    assert!(err.contains(layer.as_str()), "{err}");
    assert_eq!(snapshot(&dst), before);
    assert_eq!(dst.spools(), 0);

    // Cut in half, or cut cleanly between two entries before index.json: refused.
    let half = write_bundle(dir.path(), "half.tar", &intact[..intact.len() / 2]);
    let err = import(dst.cache(), &half).await.expect_err("truncated");
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(snapshot(&dst), before);
    let index_at = entries(&b2)
        .into_iter()
        .find(|e| e.0 == "index.json")
        .map(|e| e.4 as usize - 512)
        .expect("index.json");
    let cut = write_bundle(dir.path(), "cut.tar", &intact[..index_at]);
    let err = import(dst.cache(), &cut).await.expect_err("no index.json");
    assert!(err.contains("not an OCI image layout"), "{err}");
    assert_eq!(snapshot(&dst), before);

    // A corrupt copy of a blob the cache already has is refused as well.
    let known = &one.layers[0].digest;
    let mut bytes = std::fs::read(&b1).expect("read bundle");
    let (at, _) = offset_of(&b1, known);
    bytes[at] ^= 0x80;
    let corrupt = write_bundle(dir.path(), "corrupt-known.tar", &bytes);
    let err = import(dst.cache(), &corrupt)
        .await
        .expect_err("corrupt known blob");
    assert!(err.contains(known.as_str()), "{err}");
    assert_eq!(snapshot(&dst), before);
    assert_eq!(dst.spools(), 0);

    // The intact bundle still imports, and both images pull.
    import(dst.cache(), &b2).await.expect("import two");
    dst.pull("org/bad-one:1", &one).await;
    dst.pull("org/bad-two:2", &two).await;
}
