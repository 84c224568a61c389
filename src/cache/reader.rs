//! Reading a blob: from a stored file, or tailing the spool of a fill as it grows. The last
//! byte of a fill is held back until the fill is verified, so a digest mismatch or a short
//! upstream body always ends the client's transfer with an error, never a clean end. It is
//! not held for the fsync and rename that follow: the spool's handle reads the same bytes.

use super::fill::{Fill, FillState};
use super::inuse::Hold;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::fs::File;
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes read per step: large enough for throughput, small enough to start sending early.
const CHUNK: u64 = 512 << 10;
/// Bytes per step when they may be a mapping sent by `sendfile`: a mapping costs no memory
/// whatever its length, only a map, a residency check and an unmap, so fewer and longer
/// ones cost less CPU per byte sent.
const MAPPED_CHUNK: u64 = 4 << 20;

/// A stream of blob bytes; an `Err` item means the transfer must be cut.
pub type BlobStream = BoxStream<'static, io::Result<Bytes>>;

/// Where a blob's bytes come from. It holds the blob in use (no eviction) until dropped, and
/// so does every stream made from it.
#[derive(Clone)]
pub struct BlobSource {
    kind: Kind,
    hold: Arc<Hold>,
}

#[derive(Clone)]
enum Kind {
    /// A verified file of this size.
    Stored(Arc<File>, u64),
    /// A fill in progress.
    Filling(Arc<Fill>),
}

impl BlobSource {
    /// A verified file of `size` bytes.
    pub fn stored(file: Arc<File>, size: u64, hold: Hold) -> BlobSource {
        BlobSource {
            kind: Kind::Stored(file, size),
            hold: Arc::new(hold),
        }
    }

    /// A fill in progress.
    pub fn filling(fill: Arc<Fill>, hold: Hold) -> BlobSource {
        BlobSource {
            kind: Kind::Filling(fill),
            hold: Arc::new(hold),
        }
    }

    /// Total size if known now.
    pub fn size(&self) -> Option<u64> {
        match &self.kind {
            Kind::Stored(_, n) => Some(*n),
            Kind::Filling(f) => match &*f.state.borrow() {
                FillState::Writing { size, .. } => *size,
                FillState::Verified(n) | FillState::Done(n) => Some(*n),
                _ => None,
            },
        }
    }

    /// Bytes available so far (all of them for a stored blob).
    pub fn written(&self) -> u64 {
        match &self.kind {
            Kind::Stored(_, n) => *n,
            Kind::Filling(f) => match &*f.state.borrow() {
                FillState::Writing { written, .. } => *written,
                FillState::Verified(n) | FillState::Done(n) => *n,
                _ => 0,
            },
        }
    }

    /// Wait until the bytes are verified (for `Range` requests on a miss, which must not see
    /// unverified bytes). They may not be stored yet.
    pub async fn verified(self) -> io::Result<BlobSource> {
        self.wait(false).await
    }

    /// Wait until the bytes are verified and stored (for preloads, whose report says what
    /// the cache holds).
    pub async fn persisted(self) -> io::Result<BlobSource> {
        self.wait(true).await
    }

    async fn wait(self, stored: bool) -> io::Result<BlobSource> {
        let fill = match &self.kind {
            Kind::Stored(..) => return Ok(self),
            Kind::Filling(fill) => fill.clone(),
        };
        let mut rx = fill.state.clone();
        let done = rx
            .wait_for(|s| match s {
                FillState::Done(_) | FillState::Failed(_) => true,
                FillState::Verified(_) => !stored,
                _ => false,
            })
            .await
            .map_err(|_| {
                io::Error::other(if stored {
                    "blob fetch ended before the blob was stored"
                } else {
                    "blob fetch ended unexpectedly"
                })
            })?
            .clone();
        match done {
            FillState::Verified(n) | FillState::Done(n) => Ok(BlobSource {
                kind: Kind::Stored(fill.file.clone(), n),
                hold: self.hold,
            }),
            FillState::Failed(e) => Err(io::Error::other(e.to_string())),
            _ => unreachable!("waited for a final state"),
        }
    }

    /// The bytes `start..end` (`end` exclusive, `None` for the end of the blob). `mapped`:
    /// chunks in the page cache may be mappings of the file (for a connection that sends
    /// them with `sendfile`, see `cache::span`) rather than read into memory.
    pub fn stream(self, start: u64, end: Option<u64>, mapped: bool) -> BlobStream {
        let (file, progress) = match self.kind {
            Kind::Stored(file, n) => (file, Progress::Fixed(n)),
            Kind::Filling(fill) => (fill.file.clone(), Progress::Live(fill.state.clone())),
        };
        let reader = Reader {
            file,
            pos: start,
            end,
            progress,
            finished: false,
            mapped,
            _hold: self.hold,
        };
        stream::unfold(reader, |mut r| async move {
            r.next().await.map(|item| (item, r))
        })
        .boxed()
    }
}

enum Progress {
    Fixed(u64),
    Live(watch::Receiver<FillState>),
}

struct Reader {
    file: Arc<File>,
    pos: u64,
    end: Option<u64>,
    progress: Progress,
    finished: bool,
    mapped: bool,
    _hold: Arc<Hold>,
}

impl Reader {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            // (readable now, final size once known to be final)
            let (readable, total) = match &mut self.progress {
                Progress::Fixed(n) => (*n, Some(*n)),
                Progress::Live(rx) => match &*rx.borrow_and_update() {
                    FillState::Starting => (0, None),
                    FillState::Writing { written, size } => match size {
                        Some(s) => ((*written).min(s.saturating_sub(1)), None),
                        None => (*written, None),
                    },
                    FillState::Verified(n) | FillState::Done(n) => (*n, Some(*n)),
                    FillState::Failed(e) => {
                        self.finished = true;
                        return Some(Err(io::Error::other(e.to_string())));
                    }
                },
            };
            let limit = self.end.map_or(readable, |e| e.min(readable));
            if self.pos < limit {
                let step = if self.mapped { MAPPED_CHUNK } else { CHUNK };
                let n = (limit - self.pos).min(step);
                let item = read_at(self.file.clone(), self.pos, n, self.mapped).await;
                match &item {
                    Ok(b) => self.pos += b.len() as u64,
                    Err(_) => self.finished = true,
                }
                return Some(item);
            }
            if let Some(total) = total {
                self.finished = true;
                if self.end.is_some_and(|e| e > total) {
                    return Some(Err(io::Error::other(
                        "blob is shorter than the requested range",
                    )));
                }
                return None;
            }
            let Progress::Live(rx) = &mut self.progress else {
                unreachable!("fixed progress always has a total")
            };
            if rx.changed().await.is_err()
                && !matches!(
                    &*rx.borrow(),
                    FillState::Verified(_) | FillState::Done(_) | FillState::Failed(_)
                )
            {
                self.finished = true;
                return Some(Err(io::Error::other("blob fetch ended unexpectedly")));
            }
        }
    }
}

/// `n` bytes at `pos`: if `mapped`, a mapping where they are in the page cache (no copy
/// into a buffer, no blocking thread), else at most [`CHUNK`] of them read on a blocking
/// thread into the buffer's spare capacity, not a zeroed one (zeroing 512 KiB per chunk cost as much CPU as the read itself).
async fn read_at(file: Arc<File>, pos: u64, n: u64, mapped: bool) -> io::Result<Bytes> {
    if mapped && let Some(chunk) = super::mapped::chunk(&file, pos, n as usize) {
        return Ok(chunk);
    }
    tokio::task::spawn_blocking(move || {
        let n = n.min(CHUNK) as usize;
        let mut buf = Vec::with_capacity(n);
        while buf.len() < n {
            let at = pos + buf.len() as u64;
            if rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The capacity may exceed `n`: what was read past it is not ours to send.
        buf.truncate(n);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use futures_util::TryStreamExt;
    use std::io::Write;

    #[tokio::test]
    async fn chunks_are_mappings_only_for_a_connection_that_sends_them_by_sendfile() {
        let data: Vec<u8> = (0..3u32 << 19).map(|i| (i % 241) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        let in_use = super::super::inuse::InUse::default();
        let digest = Digest::of(&data);
        for mapped in [false, true] {
            let source = BlobSource::stored(f.clone(), data.len() as u64, in_use.hold(&digest));
            let chunks: Vec<Bytes> = source
                .stream(777, None, mapped)
                .try_collect()
                .await
                .unwrap();
            assert_eq!(chunks.concat(), &data[777..], "mapped={mapped}");
            let spans = chunks
                .iter()
                .filter(|c| super::super::span(c).is_some())
                .count();
            // Just written, so all in the page cache: every chunk or none is a mapping.
            assert_eq!(
                spans,
                if mapped { chunks.len() } else { 0 },
                "mapped={mapped}"
            );
        }
    }

    #[tokio::test]
    async fn a_blob_not_in_the_page_cache_is_read_into_memory_and_mapped_once_it_is() {
        // On the crate's own disk: a tmpfs file cannot leave the page cache.
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let data: Vec<u8> = (0..9u32 << 20).map(|i| (i % 239) as u8).collect();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let f = Arc::new(f);
        let in_use = super::super::inuse::InUse::default();
        let digest = Digest::of(&data);
        let read = |f: Arc<File>| {
            let source = BlobSource::stored(f, data.len() as u64, in_use.hold(&digest));
            source.stream(0, None, true).try_collect::<Vec<Bytes>>()
        };
        let cold = read(f.clone()).await.unwrap();
        assert_eq!(cold.concat(), data);
        // (Only the first is sure to be out of the cache: reading it reads ahead.)
        assert!(
            super::super::span(&cold[0]).is_none() && cold[0].len() as u64 == CHUNK,
            "a chunk not in the page cache was mapped, or read longer than a read chunk"
        );
        // Reading it brought it in: now it goes as mappings, longer than a read chunk.
        let warm = read(f).await.unwrap();
        assert_eq!(warm.concat(), data);
        assert!(warm.iter().all(|c| super::super::span(c).is_some()));
        assert!(warm.iter().any(|c| c.len() as u64 > CHUNK));
    }
}
