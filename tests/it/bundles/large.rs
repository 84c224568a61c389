//! A cache larger than a bundle's old fixed `index.json` limit (4 MiB, about 17 000 images)
//! exports and imports back whole. The cache is seeded straight through the store and the
//! index (pushing this many images would take minutes), on tmpfs so that 30 000 fsyncs cost
//! nothing, with long repository names so fewer images make a large `index.json`.

use crate::support;

use airlock::bundle::{self, Selection};
use airlock::oci::{Digest, Repository};
use airlock::store::{BlobInfo, TagRecord};
use std::collections::HashSet;
use support::airlock::{Airlock, config};
use support::tmpfs::Tmpfs;

const IMAGES: usize = 11_000;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn put(airlock: &Airlock, repo: &Repository, bytes: &[u8], media_type: &str) -> (Digest, u64) {
    let digest = Digest::of(bytes);
    let (store, index) = (airlock.store(), airlock.index());
    store.put(&digest, bytes).unwrap();
    let info = BlobInfo {
        size: bytes.len() as u64,
        media_type: Some(media_type.into()),
    };
    index.set_blob_info(&digest, &info).unwrap();
    index.link(repo, &digest).unwrap();
    (digest, bytes.len() as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_past_the_old_index_limit_exports_and_imports_back() {
    let fs = Tmpfs::mount("1g");
    let source = Airlock::start_in(config(vec![]), tempfile::tempdir_in(fs.path()).unwrap()).await;
    let layer = b"one layer every image shares".to_vec();
    let long = "x".repeat(160);
    for i in 0..IMAGES {
        let repo = Repository {
            registry: "docker.io".parse().unwrap(),
            name: format!("org/{long}-{i}").parse().unwrap(),
        };
        let (l, lsize) = put(
            &source,
            &repo,
            &layer,
            "application/vnd.oci.image.layer.v1.tar",
        );
        let config_json = format!(r#"{{"architecture":"amd64","os":"linux","seq":{i}}}"#);
        let (c, csize) = put(
            &source,
            &repo,
            config_json.as_bytes(),
            "application/vnd.oci.image.config.v1+json",
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{csize}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{lsize}}}]}}"#
        );
        let (m, _) = put(&source, &repo, manifest.as_bytes(), MANIFEST);
        let record = TagRecord {
            digest: m,
            media_type: MANIFEST.into(),
            fetched_at_ms: airlock::store::now_ms(),
        };
        source
            .index()
            .set_tag(&repo, &"v1".parse().unwrap(), &record)
            .unwrap();
    }

    let selection = Selection {
        images: Vec::new(),
        all: true,
        pinned: false,
    };
    let plan = bundle::plan_export(source.cache(), &selection, &HashSet::new()).unwrap();
    let archive = fs.path().join("all.tar");
    let mut out = std::fs::File::create(&archive).unwrap();
    bundle::write_export(
        source.cache(),
        &plan,
        &mut out,
        &airlock::progress::Progress::none(),
    )
    .unwrap();
    drop(out);
    let index_json = index_json_size(&archive);
    assert!(
        index_json > 4 << 20,
        "index.json has {index_json} bytes: past the old limit"
    );

    let target = Airlock::start_in(config(vec![]), tempfile::tempdir_in(fs.path()).unwrap()).await;
    let mut input = std::fs::File::open(&archive).unwrap();
    let cache = target.cache().clone();
    let report = tokio::task::spawn_blocking(move || {
        bundle::import(&cache, &mut input, &airlock::progress::Progress::none())
    })
    .await
    .unwrap()
    .expect("the bundle airlock wrote is one it imports");
    assert_eq!(report.images.len(), IMAGES);
    assert_eq!(
        target.index().all_tags().unwrap().len(),
        IMAGES,
        "every tag arrived"
    );
}

/// Size of the `index.json` entry of a tar archive.
fn index_json_size(archive: &std::path::Path) -> u64 {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.json") {
            return entry.size();
        }
    }
    panic!("no index.json in the archive");
}
