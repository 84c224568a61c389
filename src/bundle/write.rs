//! Writing the archive: a ustar tar in a fixed order (`oci-layout`, the layout directories,
//! blobs by digest, `index.json` last), every entry mode 0644 (directories 0755), owner 0,
//! mtime 0, so the same plan over the same cache gives the same bytes.

use super::ExportPlan;
use super::layout::{
    CONTAINERD_NAME, LAYOUT_MARKER, LayoutDescriptor, LayoutIndex, PLATFORMS, REF_NAME, blob_path,
};
use crate::error::{Error, Result};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, Verifier};
use crate::progress::Progress;
use crate::store::BlobStore;
use std::io::{self, Read, Write};
use tar::{EntryType, Header};

/// The progress unit of an export.
const UNIT: &str = "export";
/// Bytes between two progress events.
const STEP: u64 = 4 << 20;

/// See [`super::write_export`].
pub fn write(
    store: &dyn BlobStore,
    plan: &ExportPlan,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<()> {
    if plan.entries.len() != plan.images.len() {
        return Err(Error::internal(
            "the export plan does not describe its images: plan the export again",
        ));
    }
    let label = format!("{} images, {} blobs", plan.images.len(), plan.blobs.len());
    progress.begin(UNIT, label, Some(plan.total_bytes));
    let mut tar = tar::Builder::new(Sink { out, failed: false });
    let result = write_entries(&mut tar, store, plan, progress);
    match &result {
        Ok(()) => progress.end(UNIT, true, None),
        Err(e) => {
            // The builder finishes the archive when dropped: after a failure that would make
            // a short archive look whole, so the sink refuses every later write.
            tar.get_mut().failed = true;
            progress.end(UNIT, false, Some(e.to_string()));
        }
    }
    result
}

fn write_entries(
    tar: &mut tar::Builder<Sink<'_>>,
    store: &dyn BlobStore,
    plan: &ExportPlan,
    progress: &Progress,
) -> Result<()> {
    append_bytes(tar, "oci-layout", LAYOUT_MARKER)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(0, EntryType::Directory, 0o755);
        tar.append_data(&mut h, dir, io::empty())?;
    }
    let mut meter = Meter {
        done: 0,
        last: 0,
        progress,
    };
    for (digest, size) in &plan.blobs {
        append_blob(tar, store, digest, *size, &mut meter)?;
    }
    progress.advance(UNIT, meter.done, None);
    append_bytes(tar, "index.json", &index_json(plan)?)?;
    tar.finish()?;
    tar.get_mut().out.flush()?;
    Ok(())
}

/// Stream one stored blob into the archive, hashing it on the way.
fn append_blob(
    tar: &mut tar::Builder<Sink<'_>>,
    store: &dyn BlobStore,
    digest: &Digest,
    size: u64,
    meter: &mut Meter<'_>,
) -> Result<()> {
    let gone = || {
        Error::BlobUnknown(format!(
            "{digest} left the cache during the export (evicted?): export again"
        ))
    };
    let file = store.open(digest)?.ok_or_else(gone)?;
    if file.metadata()?.len() != size {
        return Err(gone());
    }
    let mut reader = Hashing {
        inner: file.take(size),
        verifier: Verifier::new(),
        read: 0,
        meter,
    };
    let mut h = header(size, EntryType::Regular, 0o644);
    tar.append_data(&mut h, blob_path(digest), &mut reader)?;
    if reader.read != size {
        return Err(gone());
    }
    let actual = reader.verifier.finish();
    if actual != *digest {
        return Err(Error::internal(format!(
            "stored blob {digest} hashes to {actual}: the cache is damaged, run `airlock cache verify` and export again"
        )));
    }
    Ok(())
}

fn append_bytes(tar: &mut tar::Builder<Sink<'_>>, path: &str, bytes: &[u8]) -> Result<()> {
    let mut h = header(bytes.len() as u64, EntryType::Regular, 0o644);
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

fn header(size: u64, kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// `index.json`: one descriptor per image, named by its full reference for OCI tools and
/// containerd alike; an index also lists the platforms the bundle carries.
fn index_json(plan: &ExportPlan) -> Result<Vec<u8>> {
    let manifests = plan
        .entries
        .iter()
        .map(|e| {
            let mut annotations = std::collections::BTreeMap::new();
            annotations.insert(REF_NAME.to_string(), e.reference.clone());
            annotations.insert(CONTAINERD_NAME.to_string(), e.reference.clone());
            if !e.platforms.is_empty() {
                let list: Vec<String> = e.platforms.iter().map(Digest::to_string).collect();
                annotations.insert(PLATFORMS.to_string(), list.join(","));
            }
            LayoutDescriptor {
                media_type: e.media_type.clone(),
                digest: e.digest.clone(),
                size: e.size,
                annotations,
            }
        })
        .collect();
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_string()),
        manifests,
    };
    serde_json::to_vec(&index).map_err(Error::internal)
}

/// The output, which refuses writes once the export failed.
struct Sink<'a> {
    out: &'a mut dyn Write,
    failed: bool,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("the export failed"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Bytes written so far, reported every [`STEP`] bytes.
struct Meter<'a> {
    done: u64,
    last: u64,
    progress: &'a Progress,
}

impl Meter<'_> {
    fn add(&mut self, n: u64) {
        self.done += n;
        if self.done - self.last >= STEP {
            self.last = self.done;
            self.progress.advance(UNIT, self.done, None);
        }
    }
}

/// Hashes and counts what it reads.
struct Hashing<'a, 'p, R> {
    inner: R,
    verifier: Verifier,
    read: u64,
    meter: &'a mut Meter<'p>,
}

impl<R: Read> Read for Hashing<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.verifier.update(&buf[..n]);
        self.read += n as u64;
        self.meter.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::ExportImage;
    use crate::oci::manifest::OCI_MANIFEST;
    use crate::store::fs::FsStore;

    fn plan(blobs: Vec<(Digest, u64)>) -> ExportPlan {
        let manifest = blobs[0].clone();
        ExportPlan {
            images: vec!["docker.io/library/x:1".into()],
            total_bytes: blobs.iter().map(|b| b.1).sum(),
            blobs,
            notes: vec![],
            entries: vec![ExportImage {
                reference: "docker.io/library/x:1".into(),
                digest: manifest.0,
                media_type: OCI_MANIFEST.into(),
                size: manifest.1,
                platforms: vec![],
            }],
        }
    }

    #[test]
    fn an_export_that_fails_leaves_no_index_and_no_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let (a, gone) = (Digest::of(b"a"), Digest::of(b"gone"));
        store.put(&a, b"a").unwrap();
        let mut out = Vec::new();
        write(
            &store,
            &plan(vec![(a.clone(), 1)]),
            &mut out,
            &Progress::none(),
        )
        .unwrap();
        assert_eq!(out.len() % 512, 0);
        assert!(
            out.ends_with(&[0; 1024]),
            "a whole archive ends with two zero blocks"
        );

        let mut short = Vec::new();
        let bad = plan(vec![(a, 1), (gone.clone(), 4)]);
        let e = write(&store, &bad, &mut short, &Progress::none()).unwrap_err();
        assert!(e.to_string().contains(&gone.to_string()), "{e}");
        assert!(
            !short.ends_with(&[0; 1024]),
            "no end-of-archive after a failure"
        );
        let text = String::from_utf8_lossy(&short);
        assert!(text.contains("oci-layout") && !text.contains("index.json"));
    }
}
