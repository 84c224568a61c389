//! Reading a bundle: the archive read once, in order, as it arrives (an HTTP upload streams
//! straight through). New blobs go into a store batch, verified by their writers; blobs the
//! cache has are hashed and dropped. Only after the last entry, with every image found
//! complete, is the batch published and the index told.

use super::ImportReport;
use super::complete::{self, Content, Image};
use super::layout::{self, Entry, LAYOUT_MARKER, LayoutIndex};
use crate::cache::Exclusive;
use crate::error::{Error, Result};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, Verifier};
use crate::progress::Progress;
use crate::store::{Batch, BlobStore, CommitError, Index};
use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read};

/// The progress unit of an import.
const UNIT: &str = "import";
/// Bytes between two progress events.
const STEP: u64 = 4 << 20;
/// Copy buffer.
const CHUNK: usize = 256 << 10;

/// What the archive held, once read.
#[derive(Default)]
struct Received {
    marker: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    new: BTreeSet<Digest>,
    known: BTreeSet<Digest>,
    bytes: u64,
    last_progress: u64,
}

/// See [`super::import`].
pub fn import(
    store: &dyn BlobStore,
    index: &dyn Index,
    input: &mut dyn Read,
    progress: &Progress,
    exclusive: &dyn Fn() -> Exclusive,
) -> Result<ImportReport> {
    progress.begin(UNIT, "reading the bundle", None);
    let result = import_inner(store, index, input, progress, exclusive);
    match &result {
        Ok(r) => progress.end(
            UNIT,
            true,
            Some(format!(
                "{} images, {} new blobs, {} known",
                r.images.len(),
                r.new_blobs,
                r.known_blobs
            )),
        ),
        Err(e) => progress.end(UNIT, false, Some(e.to_string())),
    }
    result
}

fn import_inner(
    store: &dyn BlobStore,
    index: &dyn Index,
    input: &mut dyn Read,
    progress: &Progress,
    exclusive: &dyn Fn() -> Exclusive,
) -> Result<ImportReport> {
    let mut batch = store.batch()?;
    // Receiving needs no lock (the batch is private): a slow upload holds nothing up.
    let rx = receive(store, batch.as_mut(), input, progress)?;
    progress.advance(UNIT, rx.bytes, None);
    let layout = parse_layout(&rx)?;
    // From the check to the last record, nothing may remove what the check relied on.
    let _exclusive = exclusive();
    let content = Content {
        store,
        batch: batch.as_ref(),
    };
    let images = layout
        .manifests
        .iter()
        .map(|d| complete::check(&content, d))
        .collect::<Result<Vec<Image>>>()?;
    // Everything verified and complete: from here on the bundle's content is the cache's.
    batch.publish()?;
    for image in &images {
        complete::record(index, image, progress)?;
    }
    // Signatures and SBOMs came as manifests with a `subject`: list them as its referrers.
    let with_subjects: Vec<_> = images.iter().map(Image::top).collect();
    let referrers = crate::referrers::index_subjects(store, index, &with_subjects)?;
    if referrers > 0 {
        progress.note(format!(
            "{referrers} referrers (signatures, SBOMs, …) listed"
        ));
    }
    index.flush()?;
    Ok(ImportReport {
        images: images.iter().map(|i| i.reference.to_string()).collect(),
        new_blobs: rx.new.len(),
        known_blobs: rx.known.len(),
        bytes: rx.bytes,
    })
}

/// Read every entry of the archive.
fn receive(
    store: &dyn BlobStore,
    batch: &mut dyn Batch,
    input: &mut dyn Read,
    progress: &Progress,
) -> Result<Received> {
    let mut rx = Received::default();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        match layout::classify(&path)? {
            Entry::Marker => rx.marker = Some(read_small(&mut entry, &path, 4096)?),
            Entry::Index => {
                let limit = index_limit(rx.new.len() + rx.known.len());
                rx.index = Some(read_small(&mut entry, &path, limit)?)
            }
            Entry::Blob(digest) => {
                if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
                    return Err(Error::Unsupported(format!(
                        "bundle entry {path} is not a regular file ({kind:?}): the bundle is malformed"
                    )));
                }
                let size = entry.size();
                receive_blob(store, batch, (&mut entry, size), &digest, &mut rx, progress)?;
            }
            Entry::Directory | Entry::Other => {}
        }
    }
    Ok(rx)
}

/// One blob: into the batch (verified), also when the cache has it — publishing then
/// replaces a cached copy that went bad with the verified one; hashed only when the batch
/// already holds it (a duplicate entry).
fn receive_blob(
    store: &dyn BlobStore,
    batch: &mut dyn Batch,
    (entry, size): (&mut dyn Read, u64),
    digest: &Digest,
    rx: &mut Received,
    progress: &Progress,
) -> Result<()> {
    let known = store.stat(digest)?.is_some();
    if batch.contains(digest) {
        let mut verifier = Verifier::new();
        let n = copy(entry, rx, progress, |b| {
            verifier.update(b);
            Ok(())
        })?;
        if n != size {
            return Err(truncated());
        }
        let actual = verifier.finish();
        if actual != *digest {
            return Err(corrupt(digest, &actual));
        }
        if known {
            rx.known.insert(digest.clone());
        }
        return Ok(());
    }
    let mut writer = batch.add(digest)?;
    if copy(entry, rx, progress, |b| writer.write(b))? != size {
        return Err(truncated());
    }
    match writer.commit() {
        Ok(_) => {
            if known {
                rx.known.insert(digest.clone());
            } else {
                rx.new.insert(digest.clone());
            }
            Ok(())
        }
        Err(CommitError::Mismatch { expected, actual }) => Err(corrupt(&expected, &actual)),
        Err(CommitError::Io(e)) => Err(Error::internal(format!("storing {digest}: {e}"))),
    }
}

/// Copy an entry's data to `sink`, counting it; returns the bytes copied.
fn copy(
    entry: &mut dyn Read,
    rx: &mut Received,
    progress: &Progress,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    loop {
        let n = entry.read(&mut buf).map_err(malformed)?;
        if n == 0 {
            return Ok(copied);
        }
        copied += n as u64;
        sink(&buf[..n])?;
        rx.bytes += n as u64;
        if rx.bytes - rx.last_progress >= STEP {
            rx.last_progress = rx.bytes;
            progress.advance(UNIT, rx.bytes, None);
        }
    }
}

/// Bytes `index.json` may have after `blobs` blobs: it comes last and names images whose
/// manifests came before it, so its bound grows with them (a descriptor with its annotations
/// takes a few hundred bytes; 1 KiB per blob is generous), over a floor for the empty bundle.
fn index_limit(blobs: usize) -> usize {
    MAX_MANIFEST_BYTES
        .saturating_add(blobs.saturating_mul(1024))
        .min(MAX_INDEX_BYTES)
}

/// No `index.json` is larger than this, whatever came before it (a million images take
/// about 300 MB).
const MAX_INDEX_BYTES: usize = 1 << 30;

/// A small entry (`oci-layout`, `index.json`), bounded.
fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str, limit: usize) -> Result<Vec<u8>> {
    let size = entry.size();
    if size > limit as u64 {
        return Err(Error::Unsupported(format!(
            "bundle entry {path} has {size} bytes, more than the {limit} allowed"
        )));
    }
    // Grown as bytes arrive, not reserved from what the header claims.
    let mut buf = Vec::with_capacity((size as usize).min(1 << 20));
    entry.read_to_end(&mut buf).map_err(malformed)?;
    if buf.len() as u64 != size {
        return Err(truncated());
    }
    Ok(buf)
}

/// `oci-layout` and `index.json`, both required.
fn parse_layout(rx: &Received) -> Result<LayoutIndex> {
    let not_layout = |why: &str| {
        Error::Unsupported(format!(
            "not an OCI image layout ({why}): the bundle is truncated or was not made by `airlock export`"
        ))
    };
    let marker = rx
        .marker
        .as_deref()
        .ok_or_else(|| not_layout("no oci-layout"))?;
    let version = serde_json::from_slice::<serde_json::Value>(marker)
        .ok()
        .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string))
        .ok_or_else(|| not_layout("oci-layout is not JSON with imageLayoutVersion"))?;
    if !version.starts_with("1.") {
        let ours = String::from_utf8_lossy(LAYOUT_MARKER);
        return Err(not_layout(&format!(
            "layout version {version}, this airlock reads {ours}"
        )));
    }
    let index = rx
        .index
        .as_deref()
        .ok_or_else(|| not_layout("no index.json"))?;
    let index: LayoutIndex = serde_json::from_slice(index)
        .map_err(|e| not_layout(&format!("index.json does not parse: {e}")))?;
    if index.manifests.is_empty() {
        return Err(not_layout("index.json names no image"));
    }
    Ok(index)
}

/// See [`super::bundle_digests`].
pub fn digests(input: &mut dyn Read) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    let mut layout = false;
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(malformed)? {
        let entry = entry.map_err(malformed)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match layout::classify(&path)? {
            Entry::Blob(d) => {
                out.insert(d);
            }
            Entry::Index => layout = true,
            _ => {}
        }
    }
    if !layout {
        return Err(Error::Unsupported(
            "not an OCI image layout (no index.json): the previous bundle is truncated or not a bundle".into(),
        ));
    }
    Ok(out)
}

fn corrupt(expected: &Digest, actual: &Digest) -> Error {
    Error::DigestInvalid(format!(
        "blob {expected} in the bundle hashes to {actual}: the bundle is corrupt, nothing was imported"
    ))
}

fn truncated() -> Error {
    Error::Unsupported(
        "the bundle is truncated or malformed: nothing was imported; copy it again".into(),
    )
}

fn malformed(e: io::Error) -> Error {
    Error::Unsupported(format!(
        "the bundle is truncated or malformed ({e}): nothing was imported; copy it again"
    ))
}
