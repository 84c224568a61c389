//! The journal: an append-only record, beside the blobs, of what only the index knows (tag
//! answers with their fetch time, blob descriptors, repository links, pulls by digest,
//! referrers answers, pins),
//! so that a data directory whose index is lost or corrupt can be rebuilt whole.
//!
//! `<data>/journal.jsonl` holds one JSON [`Record`] per line. Records are states, not deltas:
//! replaying them in order, last one wins, gives the index back. A line cut short by a crash is
//! dropped at open. Access times are not journaled (they only order eviction), and a tag is
//! journaled when its answer changes, not on every revalidation: a rebuilt tag is as fresh as
//! the first time the upstream gave that answer, so it is revalidated before it is trusted.
//!
//! Appends reach the kernel at once (a process crash loses nothing) and the disk within a
//! second (a sync thread); [`Journal::sync`] forces them. [`Journal::rewrite`] replaces the file
//! with a snapshot (temporary file, fsync, rename, fsync of the directory) when it has grown
//! well past what it describes.

use crate::oci::Digest;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// One fact the index holds, as a line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A tag's answer.
    Tag {
        registry: String,
        name: String,
        tag: String,
        digest: Digest,
        media_type: String,
        fetched_at_ms: u64,
    },
    /// A tag the upstream said is gone, or that was removed.
    Untag {
        registry: String,
        name: String,
        tag: String,
    },
    /// Size and media type of content.
    Blob {
        digest: Digest,
        size: u64,
        media_type: Option<String>,
    },
    /// Content that belongs to a repository.
    Link {
        registry: String,
        name: String,
        digest: Digest,
    },
    /// A manifest pulled by digest, and when first.
    Pull {
        registry: String,
        name: String,
        digest: Digest,
        at_ms: u64,
    },
    /// A pull by digest forgotten.
    Unpull {
        registry: String,
        name: String,
        digest: Digest,
    },
    /// The last known referrers of a manifest: the stored index airlock made of them.
    Referrers {
        registry: String,
        name: String,
        subject: Digest,
        digest: Digest,
        fetched_at_ms: u64,
    },
    /// Content deleted: its descriptor, links and access time are forgotten.
    Forget { digest: Digest },
    /// A pinned reference, with the manifest it remembered.
    Pin {
        reference: String,
        digest: Option<Digest>,
    },
    /// A pin removed.
    Unpin { reference: String },
}

/// The open journal, appended to by the index.
pub struct Journal {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    dirty: Arc<AtomicBool>,
    /// Set when an append failed: the file misses a record, so it must be rewritten from the
    /// index before it can be trusted again.
    incomplete: AtomicBool,
}

/// What [`Journal::read`] found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Records in order.
    pub records: Vec<Record>,
    /// Lines that were not records (damage): skipped.
    pub damaged: usize,
}

impl Journal {
    /// The journal's path in a data directory.
    pub fn path_in(data: &Path) -> PathBuf {
        data.join("journal.jsonl")
    }

    /// Open (creating) the journal for appending, dropping a last line a crash cut short.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        drop_torn_tail(&mut file)?;
        sync_parent(path)?;
        let file = Arc::new(Mutex::new(file));
        let dirty = Arc::new(AtomicBool::new(false));
        spawn_syncer(Arc::downgrade(&file), dirty.clone());
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            dirty,
            incomplete: AtomicBool::new(false),
        })
    }

    /// Read every record of the journal at `path` (none when there is no file).
    pub fn read(path: &Path) -> io::Result<Replay> {
        Journal::read_from(path, 0)
    }

    /// Read the records from byte `from` on (an end the index recorded; past the end of a
    /// journal rewritten since, nothing).
    pub fn read_from(path: &Path, from: u64) -> io::Result<Replay> {
        use std::io::{Seek, SeekFrom};
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
            Err(e) => return Err(e),
        };
        if from > file.metadata()?.len() {
            return Ok(Replay::default());
        }
        file.seek(SeekFrom::Start(from))?;
        let mut out = Replay::default();
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice(&line) {
                Ok(r) => out.records.push(r),
                Err(_) => out.damaged += 1,
            }
        }
        Ok(out)
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the journal file in bytes.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.lock().metadata()?.len())
    }

    /// Whether an append failed since the last rewrite.
    pub fn incomplete(&self) -> bool {
        self.incomplete.load(Ordering::Relaxed)
    }

    /// Append one record. A failure marks the journal incomplete (and is returned).
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let result = self.lock().write_all(&line);
        match &result {
            Ok(()) => self.dirty.store(true, Ordering::Relaxed),
            Err(_) => self.incomplete.store(true, Ordering::Relaxed),
        }
        result
    }

    /// Make every appended record durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dirty.store(false, Ordering::Relaxed);
        self.lock().sync_data()
    }

    /// Replace the journal with `records` (a snapshot of the index), atomically.
    #[cfg(test)]
    pub fn rewrite(&self, records: impl IntoIterator<Item = Record>) -> io::Result<()> {
        self.rewrite_with(|emit| records.into_iter().try_for_each(|r| emit(&r)))
    }

    /// Replace the journal, atomically, with the records `produce` passes to the function it
    /// is given (a snapshot of the index), each written as it comes: what is held is one
    /// record, not the whole index (at 1 000 000 blobs a list of them all was over 1 GiB).
    pub fn rewrite_with<E: From<io::Error>>(
        &self,
        produce: impl FnOnce(&mut dyn FnMut(&Record) -> io::Result<()>) -> Result<(), E>,
    ) -> Result<(), E> {
        let tmp = self.path.with_extension("jsonl.new");
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            produce(&mut |r| {
                serde_json::to_writer(&mut out, r).map_err(io::Error::other)?;
                out.write_all(b"\n")
            })?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        let mut file = self.lock();
        fs::rename(&tmp, &self.path)?;
        sync_parent(&self.path)?;
        *file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.incomplete.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Truncate after the last newline: what follows was cut short by a crash mid-append.
fn drop_torn_tail(file: &mut File) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Look back in steps for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    file.set_len(0)
}

/// fsync the directory holding `path`, so a new or renamed entry survives a power cut.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// fsync appended records about once a second, off the request path; ends with the journal.
fn spawn_syncer(file: Weak<Mutex<File>>, dirty: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("airlock-journal".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(file) = file.upgrade() else { return };
                if dirty.swap(false, Ordering::Relaxed) {
                    // Sync a second handle on the same file, so appends do not wait for it.
                    let handle = file.lock().unwrap_or_else(|p| p.into_inner()).try_clone();
                    drop(file);
                    if let Err(e) = handle.and_then(|f| f.sync_data()) {
                        dirty.store(true, Ordering::Relaxed);
                        tracing::warn!(error = %e, "could not sync the journal");
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(r: &str) -> Record {
        Record::Pin {
            reference: r.into(),
            digest: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_in(dir.path());
        let j = Journal::open(&path).unwrap();
        j.append(&pin("a")).unwrap();
        j.append(&pin("b")).unwrap();
        j.sync().unwrap();
        drop(j);
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"pin\",\"refer").unwrap();
        drop(f);
        let j = Journal::open(&path).unwrap();
        j.append(&pin("c")).unwrap();
        let replay = Journal::read(&path).unwrap();
        assert_eq!(replay.records, vec![pin("a"), pin("b"), pin("c")]);
        assert_eq!(replay.damaged, 0);
    }

    #[test]
    fn rewrite_replaces_everything_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_in(dir.path());
        let j = Journal::open(&path).unwrap();
        for r in ["a", "b", "c"] {
            j.append(&pin(r)).unwrap();
        }
        j.rewrite([pin("b")]).unwrap();
        j.append(&pin("d")).unwrap();
        assert_eq!(
            Journal::read(&path).unwrap().records,
            vec![pin("b"), pin("d")]
        );
        assert!(!path.with_extension("jsonl.new").exists());
    }

    #[test]
    fn damaged_lines_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_in(dir.path());
        fs::write(&path, b"{\"op\":\"unpin\",\"reference\":\"x\"}\nnot json\n").unwrap();
        let replay = Journal::read(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        assert_eq!(replay.damaged, 1);
    }
}
