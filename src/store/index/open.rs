//! Opening the index: telling "locked by another airlock" from "corrupt", rebuilding a lost or
//! corrupt index from the journal, keeping the journal compact, and reopening the database
//! after a failed write (sled keeps an I/O error sticky until it is opened again).

use super::{
    SledIndex, Trees, be_u64, err, forget, owner_key, parse_repo, repo_key, split_key, to_json,
};
use crate::error::{Error, Result};
use crate::store::journal::{Journal, Record};
use crate::store::{BlobInfo, Index, ReferrersRecord, TagRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const SCHEMA: &[u8] = b"1";
/// The journal is rewritten at open once it is this much larger than its last snapshot.
const COMPACT_SLACK: u64 = 1 << 20;
/// sled's page cache. Its default, 1 GiB, lets the index's memory grow with the cache up to
/// that; the hot paths read the moka caches in front of it, not sled.
const PAGE_CACHE: u64 = 16 << 20;
/// A failed write reopens the database at most this often.
const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// Free bytes the index's filesystem needs before a reopen is tried.
const REOPEN_MIN_FREE: u64 = 8 << 20;

/// What a rebuild from the journal did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reindexed {
    /// Journal records replayed.
    pub records: usize,
    /// Journal lines that were damaged and skipped.
    pub damaged: usize,
    /// Tags in the rebuilt index.
    pub tags: usize,
    /// Repository links in the rebuilt index.
    pub links: usize,
    /// Pins in the rebuilt index.
    pub pins: usize,
    /// Where the index that was replaced went, when it was kept.
    pub kept_aside: Option<PathBuf>,
}

/// Why the database did not open.
enum OpenFailure {
    /// Another process holds its lock.
    Locked(String),
    /// Damage or a foreign format: what a rebuild from the journal is for.
    Broken(String),
    /// The system refused (no space, no permission, no file descriptors): moving the index
    /// aside would not help, and would cost space on a disk that may be full.
    Io(String),
}

fn classify(e: sled::Error) -> OpenFailure {
    let text = e.to_string();
    match e {
        _ if text.contains("could not acquire lock") => OpenFailure::Locked(text),
        sled::Error::Io(io)
            if !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Io(text)
        }
        _ => OpenFailure::Broken(text),
    }
}

fn open_db(path: &Path) -> std::result::Result<Trees, OpenFailure> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(PAGE_CACHE)
        .open()
        .map_err(classify)?;
    let tree = |name: &str| db.open_tree(name).map_err(classify);
    Ok(Trees {
        meta: tree("meta")?,
        tags: tree("tags")?,
        blobs: tree("blobs")?,
        links: tree("links")?,
        owners: tree("owners")?,
        access: tree("access")?,
        pins: tree("pins")?,
        pulls: tree("pulls")?,
        referrers: tree("referrers")?,
        db,
    })
}

fn stamp() -> u64 {
    crate::store::now_ms() / 1000
}

impl SledIndex {
    /// Open (creating) the index at `path` (`<data>/index`), with its journal beside it. A
    /// missing index is rebuilt from the journal; a corrupt one is moved aside and rebuilt; one
    /// locked by another airlock is refused with a message that says so.
    pub fn open(path: &Path) -> Result<SledIndex> {
        let data = path.parent().unwrap_or(Path::new("."));
        let journal_path = Journal::path_in(data);
        let had_journal = journal_path.exists();
        let (trees, kept_aside) = match open_db(path) {
            Ok(t) => (t, None),
            Err(OpenFailure::Locked(e)) => return Err(locked(data, &e)),
            Err(OpenFailure::Io(e)) => return Err(io_refused(path, &e)),
            Err(OpenFailure::Broken(e)) if had_journal => {
                let aside = path.with_file_name(format!("index.corrupt-{}", stamp()));
                tracing::error!(
                    index = %path.display(), error = %e, kept = %aside.display(),
                    "the index cannot be opened: rebuilding it from the journal"
                );
                std::fs::rename(path, &aside).map_err(err)?;
                (open_db(path).map_err(|f| failure(data, f))?, Some(aside))
            }
            Err(OpenFailure::Broken(e)) => {
                return Err(Error::internal(format!(
                    "the index at {} cannot be opened ({e}) and there is no journal to rebuild it from: move it away to start with an empty cache",
                    path.display()
                )));
            }
        };
        let fresh = match trees.meta.get("schema").map_err(err)? {
            None => true,
            Some(v) if v.as_ref() == SCHEMA => false,
            Some(v) => {
                return Err(Error::internal(format!(
                    "the index at {} has schema {:?}, this airlock reads schema 1: move it away and restart",
                    path.display(),
                    String::from_utf8_lossy(&v)
                )));
            }
        };
        let journal = Journal::open(&journal_path).map_err(err)?;
        let index = SledIndex {
            path: path.to_path_buf(),
            trees: RwLock::new(Some(trees)),
            journal,
            writes: Mutex::new(()),
            failing: Mutex::new(None),
            last_reopen: Mutex::new(None),
            touched: Mutex::new(Default::default()),
            compact_due: AtomicBool::new(false),
        };
        if !fresh && had_journal {
            // A crash loses sled's last unflushed writes; the journal has every write reported
            // done: apply what came after the last point sled was known durable.
            let n = index
                .read(|t| replay(t, &journal_path, applied(t)))?
                .records
                .len();
            if n > 0 {
                tracing::info!(
                    records = n,
                    "applied journal records the index had not made durable"
                );
            }
        }
        if fresh && had_journal {
            let mut done = index.rebuild(&journal_path)?;
            done.kept_aside = kept_aside;
            tracing::warn!(
                records = done.records,
                damaged = done.damaged,
                tags = done.tags,
                links = done.links,
                pins = done.pins,
                "rebuilt the index from the journal"
            );
        }
        index.read(|t| t.meta.insert("schema", SCHEMA).map_err(err))?;
        index.read(backfill_owners)?;
        // A directory from before the journal gets its journal now: until then the journal
        // would not rebuild it. One grown well past its snapshot is rewritten after the
        // start ([`compact_if_due`](Self::compact_if_due)): at 1 000 000 blobs that takes
        // seconds, which the first answer must not wait for.
        let snapshot = index.read(|t| t.meta.get("journal_snapshot").map_err(err))?;
        let snapshot = snapshot.and_then(|v| be_u64(&v));
        let len = index.journal.size().map_err(err)?;
        if !had_journal {
            index.compact()?;
        } else if snapshot.is_none_or(|s| len > s.saturating_mul(2) + COMPACT_SLACK) {
            index.compact_due.store(true, Ordering::Relaxed);
        }
        Ok(index)
    }

    /// Rewrite the journal as a snapshot of the index if opening found it grown well past its
    /// last one (blocking; writes wait for it, reads do not). Whether it did.
    pub fn compact_if_due(&self) -> Result<bool> {
        if !self.compact_due.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        self.compact()?;
        Ok(true)
    }

    /// Rebuild `<data>/index` from the journal, whatever state it is in: the old index is
    /// moved aside and deleted once the new one is complete. Refused while another airlock
    /// has the directory open.
    pub fn reindex(data: &Path) -> Result<Reindexed> {
        let path = data.join("index");
        let journal_path = Journal::path_in(data);
        if !journal_path.exists() {
            return Err(Error::internal(format!(
                "{} has no journal to rebuild the index from",
                data.display()
            )));
        }
        // Take the lock first, so a running server is told apart from a damaged index.
        match open_db(&path) {
            Err(OpenFailure::Locked(e)) => return Err(locked(data, &e)),
            Ok(t) => drop(t),
            Err(OpenFailure::Broken(_) | OpenFailure::Io(_)) => {}
        }
        let aside = data.join(format!("index.old-{}", stamp()));
        if path.exists() {
            std::fs::rename(&path, &aside).map_err(err)?;
        }
        let index = SledIndex::open(&path)?;
        let mut done = index.counts()?;
        let replay = Journal::read(&journal_path).map_err(err)?;
        done.records = replay.records.len();
        done.damaged = replay.damaged;
        index.flush()?;
        drop(index);
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(err)?;
        }
        Ok(done)
    }

    /// The journal is reflected in sled up to its current end (sled was just flushed).
    pub(super) fn mark_applied(&self, len: u64) -> Result<()> {
        self.read(|t| {
            t.meta
                .insert("journal_applied", &len.to_be_bytes())
                .map_err(err)
        })?;
        Ok(())
    }

    /// Apply every journal record to this (empty) index.
    fn rebuild(&self, journal_path: &Path) -> Result<Reindexed> {
        let replay = self.read(|t| {
            let r = replay(t, journal_path, 0)?;
            t.db.flush().map_err(err)?;
            Ok(r)
        })?;
        let mut done = self.counts()?;
        done.records = replay.records.len();
        done.damaged = replay.damaged;
        Ok(done)
    }

    fn counts(&self) -> Result<Reindexed> {
        self.read(|t| {
            Ok(Reindexed {
                tags: t.tags.len(),
                links: t.links.len(),
                pins: t.pins.len(),
                ..Default::default()
            })
        })
    }

    /// Rewrite the journal as a snapshot of the index.
    fn compact(&self) -> Result<()> {
        let _order = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.compact_unordered()
    }

    /// Whether a failed write should try reopening the database now: not more often than
    /// every few seconds, and only with room to open it, since the database is closed first
    /// and reads fail if it does not open again.
    pub(super) fn reopen_due(&self) -> bool {
        let mut last = self.last_reopen.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return false;
        }
        let free = rustix::fs::statvfs(&self.path)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(0);
        // Only a reopen that is tried counts against the interval: the first write after
        // space comes back reopens at once.
        let due = free >= REOPEN_MIN_FREE;
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Close and reopen the database, clearing a sticky write error. Readers wait meanwhile;
    /// if it does not open, reads fail until a later write reopens it.
    pub(super) fn reopen(&self) {
        let mut trees = self.trees.write().unwrap_or_else(|p| p.into_inner());
        drop(trees.take());
        match open_db(&self.path) {
            Ok(t) => {
                // sled drops writes it had accepted but could not flush; the journal has every
                // write reported done, so apply what came after sled was last known durable
                // (records are states: applying one again is harmless).
                let replayed =
                    replay(&t, self.journal.path(), applied(&t)).map(|r| r.records.len());
                *trees = Some(t);
                drop(trees);
                match replayed {
                    Ok(n) => tracing::warn!(
                        index = %self.path.display(), journal_records = n,
                        "reopened the index after a failed write"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "reopened the index, but could not replay the journal")
                    }
                }
            }
            Err(OpenFailure::Locked(e) | OpenFailure::Broken(e) | OpenFailure::Io(e)) => {
                tracing::error!(index = %self.path.display(), error = %e, "could not reopen the index");
                *self.failing.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), format!("reopening failed: {e}")));
            }
        }
    }

    /// [`compact`](Self::compact) for a caller that already holds the write order.
    pub(super) fn compact_unordered(&self) -> Result<()> {
        self.read(|t| self.journal.rewrite_with(|emit| snapshot(t, emit)))?;
        let len = self.journal.size().map_err(err)?;
        self.read(|t| {
            t.meta
                .insert("journal_snapshot", &len.to_be_bytes())
                .map_err(err)?;
            t.meta
                .insert("journal_applied", &len.to_be_bytes())
                .map_err(err)
        })?;
        Ok(())
    }
}

/// An index from before the `owners` tree: fill it from the links, once.
fn backfill_owners(t: &Trees) -> Result<()> {
    if !t.owners.is_empty() || t.links.is_empty() {
        return Ok(());
    }
    for key in t.links.iter().keys() {
        let key = key.map_err(err)?;
        if let Some((r, n, d)) = split_key(&key)
            && let (Some(repo), Ok(digest)) = (parse_repo(r, n), d.parse())
        {
            t.owners
                .insert(owner_key(&digest, &repo), &[])
                .map_err(err)?;
        }
    }
    Ok(())
}

fn locked(data: &Path, e: &str) -> Error {
    Error::internal(format!(
        "the data directory {} is in use by another airlock (its index is locked: {e}): stop that one, or give this one another storage.path",
        data.display()
    ))
}

fn io_refused(path: &Path, e: &str) -> Error {
    Error::internal(format!(
        "cannot open the index at {}: {e}: free space, fix permissions or raise the open-file limit, then start again",
        path.display()
    ))
}

fn failure(data: &Path, f: OpenFailure) -> Error {
    match f {
        OpenFailure::Locked(e) => locked(data, &e),
        OpenFailure::Io(e) => io_refused(&data.join("index"), &e),
        OpenFailure::Broken(e) => Error::internal(format!("cannot create a new index: {e}")),
    }
}

/// Where the journal stops being known durable in sled (its start when never recorded).
fn applied(t: &Trees) -> u64 {
    let at = t.meta.get("journal_applied").ok().flatten();
    at.and_then(|v| be_u64(&v)).unwrap_or(0)
}

/// Apply the journal's records from byte `from` on to the trees.
fn replay(t: &Trees, journal: &Path, from: u64) -> Result<crate::store::journal::Replay> {
    let replay = Journal::read_from(journal, from).map_err(err)?;
    for r in &replay.records {
        apply(t, r).map_err(err)?;
    }
    Ok(replay)
}

/// Every fact of the index as journal records, passed to `out` one at a time.
fn snapshot(t: &Trees, out: &mut dyn FnMut(&Record) -> std::io::Result<()>) -> Result<()> {
    for kv in t.blobs.iter() {
        let (k, v) = kv.map_err(err)?;
        let (Ok(digest), Ok(info)) = (
            String::from_utf8_lossy(&k).parse(),
            serde_json::from_slice::<BlobInfo>(&v),
        ) else {
            continue;
        };
        out(&Record::Blob {
            digest,
            size: info.size,
            media_type: info.media_type,
        })?;
    }
    for kv in t.links.iter() {
        let (k, _) = kv.map_err(err)?;
        if let Some((r, n, d)) = split_key(&k)
            && let Ok(digest) = d.parse()
        {
            out(&Record::Link {
                registry: r.into(),
                name: n.into(),
                digest,
            })?;
        }
    }
    for kv in t.tags.iter() {
        let (k, v) = kv.map_err(err)?;
        if let Some((r, n, tag)) = split_key(&k)
            && let Ok(rec) = serde_json::from_slice::<TagRecord>(&v)
        {
            out(&Record::Tag {
                registry: r.into(),
                name: n.into(),
                tag: tag.into(),
                digest: rec.digest,
                media_type: rec.media_type,
                fetched_at_ms: rec.fetched_at_ms,
            })?;
        }
    }
    for kv in t.pulls.iter() {
        let (k, v) = kv.map_err(err)?;
        if let Some((r, n, d)) = split_key(&k)
            && let Ok(digest) = d.parse()
        {
            out(&Record::Pull {
                registry: r.into(),
                name: n.into(),
                digest,
                at_ms: be_u64(&v).unwrap_or(0),
            })?;
        }
    }
    for kv in t.referrers.iter() {
        let (k, v) = kv.map_err(err)?;
        if let Some((r, n, d)) = split_key(&k)
            && let (Ok(subject), Ok(rec)) =
                (d.parse(), serde_json::from_slice::<ReferrersRecord>(&v))
        {
            out(&Record::Referrers {
                registry: r.into(),
                name: n.into(),
                subject,
                digest: rec.digest,
                fetched_at_ms: rec.fetched_at_ms,
            })?;
        }
    }
    for kv in t.pins.iter() {
        let (k, v) = kv.map_err(err)?;
        out(&SledIndex::pin_record(
            &String::from_utf8_lossy(&k),
            Some(&v),
        ))?;
    }
    Ok(())
}

/// Apply one journal record to the trees. Records naming what this airlock cannot parse are
/// skipped, as the index would never have held them.
fn apply(t: &Trees, r: &Record) -> sled::Result<()> {
    let repo = |registry: &str, name: &str| parse_repo(registry, name);
    match r {
        Record::Tag {
            registry,
            name,
            tag,
            digest,
            media_type,
            fetched_at_ms,
        } => {
            if let (Some(repo), Ok(tag)) = (repo(registry, name), tag.parse::<crate::oci::Tag>()) {
                let rec = TagRecord {
                    digest: digest.clone(),
                    media_type: media_type.clone(),
                    fetched_at_ms: *fetched_at_ms,
                };
                t.tags
                    .insert(repo_key(&repo, tag.as_str()), to_json(&rec)?)?;
            }
        }
        Record::Untag {
            registry,
            name,
            tag,
        } => {
            if let Some(repo) = repo(registry, name) {
                t.tags.remove(repo_key(&repo, tag))?;
            }
        }
        Record::Blob {
            digest,
            size,
            media_type,
        } => {
            let info = BlobInfo {
                size: *size,
                media_type: media_type.clone(),
            };
            t.blobs
                .insert(digest.to_string().as_bytes(), to_json(&info)?)?;
        }
        Record::Link {
            registry,
            name,
            digest,
        } => {
            if let Some(repo) = repo(registry, name) {
                t.owners.insert(owner_key(digest, &repo), &[])?;
                t.links.insert(repo_key(&repo, &digest.to_string()), &[])?;
            }
        }
        Record::Pull {
            registry,
            name,
            digest,
            at_ms,
        } => {
            if let Some(repo) = repo(registry, name) {
                t.pulls
                    .insert(repo_key(&repo, &digest.to_string()), &at_ms.to_be_bytes())?;
            }
        }
        Record::Unpull {
            registry,
            name,
            digest,
        } => {
            if let Some(repo) = repo(registry, name) {
                t.pulls.remove(repo_key(&repo, &digest.to_string()))?;
            }
        }
        Record::Referrers {
            registry,
            name,
            subject,
            digest,
            fetched_at_ms,
        } => {
            if let Some(repo) = repo(registry, name) {
                let rec = ReferrersRecord {
                    digest: digest.clone(),
                    fetched_at_ms: *fetched_at_ms,
                };
                t.referrers
                    .insert(repo_key(&repo, &subject.to_string()), to_json(&rec)?)?;
            }
        }
        Record::Forget { digest } => {
            forget(t, digest)?;
        }
        Record::Pin { reference, digest } => {
            let value = digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
            t.pins.insert(reference.as_bytes(), value.as_bytes())?;
        }
        Record::Unpin { reference } => {
            t.pins.remove(reference.as_bytes())?;
        }
    }
    Ok(())
}
