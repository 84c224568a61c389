//! Helpers of the bundle tests: exporting and importing off the async threads, reading an
//! archive back (entries, blobs, `index.json`), a cache's contents, skopeo on any transport.

use airlock::bundle::{self, ExportPlan, ImportReport, Selection};
use airlock::cache::Cache;
use airlock::oci::Digest;
use airlock::progress::{Event, Progress};
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::support::airlock::Airlock;
use super::support::image::{Artifact, Platform};

/// Plan and write an export of `selection` to `path`; the plan and the progress events.
pub async fn export(
    cache: &Cache,
    selection: Selection,
    exclude: HashSet<Digest>,
    path: &Path,
) -> (ExportPlan, Vec<Event>) {
    let (cache, path) = (cache.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let plan = bundle::plan_export(&cache, &selection, &exclude).expect("plan export");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        bundle::write_export(&cache, &plan, &mut out, &Progress::to(tx)).expect("write export");
        drop(out);
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (plan, events)
    })
    .await
    .expect("export task")
}

/// Import the archive at `path` into `cache`; the error as text.
pub async fn import(cache: &Cache, path: &Path) -> Result<ImportReport, String> {
    let (cache, path) = (cache.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).expect("open bundle");
        bundle::import(&cache, &mut file, &Progress::none()).map_err(|e| e.to_string())
    })
    .await
    .expect("import task")
}

/// Every digest an artifact consists of: its manifests and blobs.
pub fn digests_of(artifacts: &[&dyn Artifact]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in artifacts {
        out.extend(a.manifests().into_keys());
        out.extend(a.blobs().into_keys());
    }
    out
}

/// The archive's entries: path, size, mode, mtime, offset of the data.
pub fn entries(path: &Path) -> Vec<(String, u64, u32, u64, u64)> {
    let file = std::fs::File::open(path).expect("open bundle");
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (
                e.path().expect("path").display().to_string(),
                e.size(),
                h.mode().expect("mode"),
                h.mtime().expect("mtime"),
                e.raw_file_position(),
            )
        })
        .collect()
}

/// The blob digests in the archive.
pub fn blobs_in(path: &Path) -> BTreeSet<String> {
    entries(path)
        .into_iter()
        .filter_map(|(p, ..)| {
            p.strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"))
        })
        .filter(|d| d.len() == 71)
        .collect()
}

/// `index.json` of the archive.
pub fn index_json(path: &Path) -> serde_json::Value {
    let file = std::fs::File::open(path).expect("open bundle");
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").to_str() == Some("index.json") {
            let mut s = String::new();
            entry.read_to_string(&mut s).expect("read index.json");
            return serde_json::from_str(&s).expect("index.json parses");
        }
    }
    panic!("no index.json in {}", path.display());
}

/// What a cache holds: stored blobs, tags, pins.
pub fn snapshot(airlock: &Airlock) -> (Vec<(Digest, u64)>, Vec<String>, Vec<String>) {
    let mut blobs = airlock.store().list().expect("list");
    blobs.sort();
    let tags = airlock
        .index()
        .all_tags()
        .expect("tags")
        .into_iter()
        .map(|(repo, tag, rec)| format!("{repo}:{tag}={}", rec.digest))
        .collect();
    (blobs, tags, airlock.index().pins().expect("pins"))
}

pub fn selection(images: &[&str]) -> Selection {
    Selection {
        images: images.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `skopeo copy --all oci-archive:ARCHIVE:REF dir:DST` (no registry involved).
pub async fn skopeo_from_archive(
    archive: &Path,
    reference: &str,
    dst: &Path,
) -> Result<(), String> {
    let src = format!("oci-archive:{}:{reference}", archive.display());
    skopeo_copy(&src, &format!("dir:{}", dst.display())).await
}

/// `skopeo copy --all --src-tls-verify=false SRC DST`, any transports.
pub async fn skopeo_copy(src: &str, dst: &str) -> Result<(), String> {
    let mut cmd = crate::support::tools::SKOPEO.tokio_command();
    cmd.args(["copy", "--all", "--src-tls-verify=false", src, dst])
        .stdin(std::process::Stdio::null())
        .env("NO_PROXY", "*")
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(120), cmd.output()).await {
        Err(_) => Err("skopeo timed out".into()),
        Ok(Err(e)) => Err(format!("cannot run skopeo: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

pub fn platforms() -> [Platform; 2] {
    [Platform::amd64(), Platform::arm64()]
}

/// Write `bytes` as a bundle next to the others.
pub fn write_bundle(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write bundle");
    p
}
