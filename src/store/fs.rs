//! [`FsStore`]: blobs as files named by digest under `<data>/blobs/sha256/<2 hex>/<64 hex>`,
//! written through spools in `<data>/tmp/`.

use super::{BlobStore, BlobWriter, CommitError};
use crate::oci::{Digest, Verifier};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file-backed blob store.
#[derive(Debug)]
pub struct FsStore {
    blobs: PathBuf,
    tmp: PathBuf,
    seq: AtomicU64,
}

impl FsStore {
    /// Open (creating) the store under `root`, and delete leftover spools from a previous run:
    /// they were never verified.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(FsStore {
            blobs,
            tmp,
            seq: AtomicU64::new(0),
        })
    }

    /// Where a verified blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs.join(&hex[..2]).join(hex)
    }
}

impl BlobStore for FsStore {
    fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, digest: &Digest) -> io::Result<Option<File>> {
        match File::open(self.path(digest)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&self, digest: &Digest) -> io::Result<Box<dyn BlobWriter>> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let spool = self
            .tmp
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&spool)?;
        Ok(Box::new(FsWriter {
            file,
            spool,
            target: self.path(digest),
            expected: digest.clone(),
            verifier: Verifier::new(),
            written: 0,
            committed: false,
        }))
    }

    fn remove(&self, digest: &Digest) -> io::Result<bool> {
        match fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

struct FsWriter {
    file: File,
    spool: PathBuf,
    target: PathBuf,
    expected: Digest,
    verifier: Verifier,
    written: u64,
    committed: bool,
}

impl BlobWriter for FsWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.verifier.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn reader(&self) -> io::Result<File> {
        File::open(&self.spool)
    }

    fn commit(mut self: Box<Self>) -> Result<u64, CommitError> {
        let actual = std::mem::take(&mut self.verifier).finish();
        if actual != self.expected {
            return Err(CommitError::Mismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        self.file.sync_all()?;
        let dir = self
            .target
            .parent()
            .expect("blob paths have a shard directory");
        fs::create_dir_all(dir)?;
        fs::rename(&self.spool, &self.target)?;
        self.committed = true;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()?;
        Ok(self.written)
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.spool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn only_verified_content_becomes_visible() {
        let (_d, s) = store();
        let good = Digest::of(b"hello");
        let mut w = s.create(&good).unwrap();
        w.write(b"hel").unwrap();
        let r = w.reader().unwrap();
        w.write(b"lo").unwrap();
        assert_eq!(s.stat(&good).unwrap(), None, "not visible before commit");
        let mut buf = [0u8; 5];
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello", "readers follow the spool");
        assert_eq!(w.commit().unwrap(), 5);
        assert_eq!(s.stat(&good).unwrap(), Some(5));
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello", "a reader survives the rename");

        let mut w = s.create(&Digest::of(b"other")).unwrap();
        w.write(b"wrong").unwrap();
        assert!(matches!(w.commit(), Err(CommitError::Mismatch { .. })));
        assert_eq!(s.stat(&Digest::of(b"other")).unwrap(), None);
        assert_eq!(
            fs::read_dir(&s.tmp).unwrap().count(),
            0,
            "failed spool removed"
        );
    }

    #[test]
    fn dropped_writers_leave_nothing_and_leftovers_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let mut w = s.create(&Digest::of(b"x")).unwrap();
        w.write(b"x").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
        fs::write(s.tmp.join("leftover"), b"junk").unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(&s.tmp).unwrap().count(), 0);
    }

    #[test]
    fn put_open_remove() {
        let (_d, s) = store();
        let d = Digest::of(b"m");
        s.put(&d, b"m").unwrap();
        assert!(s.open(&d).unwrap().is_some());
        assert!(s.path(&d).starts_with(&s.blobs));
        assert!(s.remove(&d).unwrap());
        assert!(!s.remove(&d).unwrap());
        assert!(s.open(&d).unwrap().is_none());
    }
}
