//! [`FsStore`]: blobs as files named by digest under `<data>/blobs/sha256/<2 hex>/<64 hex>`,
//! written through spools in `<data>/tmp/`; batches wait verified in `<data>/tmp/batch.*/`;
//! blobs that failed verification are moved to `<data>/quarantine/`.

use super::{Batch, BlobStore, BlobWriter, CommitError, Verified};
use crate::oci::{Digest, Verifier};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// The file-backed blob store. Clones share everything.
#[derive(Debug, Clone)]
pub struct FsStore {
    blobs: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    seq: Arc<AtomicU64>,
    health: WriteHealth,
    tally: Arc<Tally>,
}

/// Bytes and blobs stored, kept as blobs come and go, so asking costs nothing however large
/// the store. Changes are counted from the open; the store is walked once, the first time
/// it is asked, and the walk stands for everything before it (a blob stored or removed while
/// that one walk runs may be off by one until the process restarts: usage is the trigger for
/// eviction, whose pass counts exactly).
#[derive(Debug, Default)]
struct Tally {
    /// What the walk found, less the changes counted before it began.
    walked: OnceLock<(i64, i64)>,
    bytes: AtomicI64,
    blobs: AtomicI64,
}

impl Tally {
    fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes as i64, Ordering::Relaxed);
        self.blobs.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
        self.blobs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether writes to the store work: the last failure, cleared by the next blob committed.
#[derive(Debug, Clone, Default)]
struct WriteHealth(Arc<Mutex<Option<(Instant, String)>>>);

impl WriteHealth {
    /// Pass `result` through, remembering a failure.
    fn note<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if h.is_none() {
                tracing::error!(error = %e, "writes to the blob store fail");
                *h = Some((Instant::now(), e.to_string()));
            }
        }
        result
    }

    fn works(&self) {
        if let Some((since, _)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tracing::warn!(failed_for = ?since.elapsed(), "writes to the blob store work again");
        }
    }

    fn failure(&self) -> Option<String> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.as_ref()
            .map(|(since, why)| format!("blob writes fail since {:?} ago: {why}", since.elapsed()))
    }
}

impl FsStore {
    /// Open (creating) the store under `root`, and delete leftover spools from a previous run:
    /// they were never verified.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        create_dir_durable(&blobs)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        create_dir_durable(&tmp)?;
        Ok(FsStore {
            blobs,
            tmp,
            quarantine: root.join("quarantine"),
            seq: Arc::new(AtomicU64::new(0)),
            health: WriteHealth::default(),
            tally: Arc::default(),
        })
    }

    /// Size and number of the stored blobs, by walking every shard.
    fn walk(&self) -> io::Result<(u64, u64)> {
        let (mut bytes, mut blobs) = (0, 0);
        for shard in fs::read_dir(&self.blobs)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                if entry.file_name().len() == 64 {
                    bytes += entry.metadata()?.len();
                    blobs += 1;
                }
            }
        }
        Ok((bytes, blobs))
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
        let mut w = self.writer(digest, self.path(digest))?;
        w.tally = Some(self.tally.clone());
        w.sync = true;
        Ok(Box::new(w))
    }

    fn remove(&self, digest: &Digest) -> io::Result<bool> {
        let path = self.path(digest);
        let Some(size) = self.stat(digest)? else {
            return Ok(false);
        };
        match fs::remove_file(path) {
            Ok(()) => {
                self.tally.sub(size);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn usage(&self) -> io::Result<(u64, u64)> {
        let t = &self.tally;
        let (bytes, blobs) = match t.walked.get() {
            Some(w) => *w,
            None => {
                let before = (
                    t.bytes.load(Ordering::Relaxed),
                    t.blobs.load(Ordering::Relaxed),
                );
                let (bytes, blobs) = self.walk()?;
                *t.walked
                    .get_or_init(|| (bytes as i64 - before.0, blobs as i64 - before.1))
            }
        };
        let now =
            |base: i64, delta: &AtomicI64| (base + delta.load(Ordering::Relaxed)).max(0) as u64;
        Ok((now(bytes, &t.bytes), now(blobs, &t.blobs)))
    }

    fn write_failure(&self) -> Option<String> {
        self.health.failure()
    }

    fn probe_writes(&self) {
        if self.health.failure().is_none() {
            return;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("probe.{}.{n}", std::process::id()));
        let probe = (|| {
            let mut f = File::create(&path)?;
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        })();
        let _ = fs::remove_file(&path);
        if probe.is_ok() {
            self.health.works();
        }
    }

    fn spooled(&self) -> io::Result<u64> {
        fn size(dir: &Path) -> io::Result<u64> {
            let mut total = 0;
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                total += if kind.is_dir() {
                    size(&entry.path())?
                } else {
                    entry.metadata()?.len()
                };
            }
            Ok(total)
        }
        size(&self.tmp)
    }

    fn available(&self) -> io::Result<Option<u64>> {
        let st = rustix::fs::statvfs(&self.tmp)?;
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }

    fn list(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.blobs)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(digest) = name
                    .to_str()
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
                else {
                    continue;
                };
                out.push((digest, entry.metadata()?.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn quarantine(&self, digest: &Digest) -> io::Result<Option<PathBuf>> {
        create_dir_durable(&self.quarantine)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let target = self
            .quarantine
            .join(format!("sha256-{}-{stamp}", digest.hex()));
        let Some(size) = self.stat(digest)? else {
            return Ok(None);
        };
        match fs::rename(self.path(digest), &target) {
            Ok(()) => {
                self.tally.sub(size);
                Ok(Some(target))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn batch(&self) -> io::Result<Box<dyn Batch>> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.tmp.join(format!("batch.{}.{n}", std::process::id()));
        fs::create_dir(&dir)?;
        Ok(Box::new(FsBatch {
            store: self.clone(),
            dir,
            published: false,
        }))
    }
}

impl FsStore {
    /// A writer that, on commit, verifies and renames into `target`.
    fn writer(&self, digest: &Digest, target: PathBuf) -> io::Result<FsWriter> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let spool = self
            .tmp
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let file = self
            .health
            .note(OpenOptions::new().write(true).create_new(true).open(&spool))?;
        Ok(FsWriter {
            health: self.health.clone(),
            file,
            spool,
            target,
            expected: digest.clone(),
            verifier: Verifier::new(),
            written: 0,
            committed: false,
            tally: None,
            sync: false,
        })
    }
}

/// Create `dir` and any missing parents, each made durable in its parent (a directory entry
/// survives a power cut only once its parent is fsynced).
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Verified blobs waiting in `tmp/batch.*/` until all are published.
struct FsBatch {
    store: FsStore,
    dir: PathBuf,
    published: bool,
}

impl Batch for FsBatch {
    fn add(&mut self, digest: &Digest) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(
            self.store.writer(digest, self.dir.join(digest.hex()))?,
        ))
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.dir.join(digest.hex()).is_file()
    }

    fn open(&self, digest: &Digest) -> io::Result<Option<File>> {
        match File::open(self.dir.join(digest.hex())) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One `syncfs` makes every blob of the batch durable, then each is renamed into place
    /// and each shard directory touched is synced once: a cost per blob of a rename, not of
    /// three fsyncs. A crash part way leaves some blobs visible, each of them verified and
    /// durable, and no index record of the import.
    fn publish(mut self: Box<Self>) -> io::Result<usize> {
        rustix::fs::syncfs(File::open(&self.dir)?)?;
        let mut shards = std::collections::BTreeSet::new();
        let mut n = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
            else {
                continue;
            };
            let target = self.store.path(&digest);
            let shard = target.parent().expect("blob paths have a shard directory");
            if shards.insert(shard.to_path_buf()) {
                create_dir_durable(shard)?;
            }
            let (size, replaces) = (entry.metadata()?.len(), target.exists());
            fs::rename(entry.path(), &target)?;
            if !replaces {
                self.store.tally.add(size);
            }
            n += 1;
        }
        for shard in &shards {
            File::open(shard)?.sync_all()?;
        }
        self.published = true;
        let _ = fs::remove_dir_all(&self.dir);
        Ok(n)
    }
}

impl Drop for FsBatch {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.dir);
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
    health: WriteHealth,
    /// Where a blob made visible is counted (none for a batch's writers: publish counts).
    tally: Option<Arc<Tally>>,
    /// Whether commit makes the blob durable itself (a batch's writers leave it to publish,
    /// which syncs once for all of them).
    sync: bool,
}

impl BlobWriter for FsWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.health.note(self.file.write_all(bytes))?;
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

    fn verify(mut self: Box<Self>) -> Result<Box<dyn Verified>, CommitError> {
        let actual = std::mem::take(&mut self.verifier).finish();
        if actual != self.expected {
            return Err(CommitError::Mismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        Ok(Box::new(FsVerified(self)))
    }
}

/// A spool whose bytes hashed right, waiting for its fsync and rename.
struct FsVerified(Box<FsWriter>);

impl Verified for FsVerified {
    fn size(&self) -> u64 {
        self.0.written
    }

    fn persist(mut self: Box<Self>) -> io::Result<u64> {
        let health = self.0.health.clone();
        health.note(self.0.persist())?;
        health.works();
        Ok(self.0.written)
    }
}

impl FsWriter {
    /// fsync the spool, rename it to its digest, fsync the directory entry.
    fn persist(&mut self) -> io::Result<()> {
        if self.sync {
            self.file.sync_all()?;
        }
        let dir = self
            .target
            .parent()
            .expect("blob paths have a shard directory");
        create_dir_durable(dir)?;
        let replaces = self.target.exists();
        fs::rename(&self.spool, &self.target)?;
        self.committed = true;
        if let Some(t) = self.tally.as_ref().filter(|_| !replaces) {
            t.add(self.written);
        }
        if !self.sync {
            return Ok(());
        }
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
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
mod tests;
