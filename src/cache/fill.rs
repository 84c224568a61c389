//! The fill: one upstream download per missing blob, written to a spool that every requester
//! reads as it grows. It runs in its own task, so it outlives the client that started it, and
//! is bounded by `fill_timeout`. Progress is published on a `watch` channel. Once the bytes
//! hash to the digest the fill is `Verified` and readers get their last byte; the fsync and
//! rename that make the blob visible follow off their critical path, and only then is it
//! `Done`. Anything that fails before verification ends it as `Failed`, which readers turn
//! into a broken transfer, never a clean end of body; a failure to persist verified bytes
//! costs a refetch later, never an error to a reader.

use crate::error::{Error, Result};
use crate::oci::{Digest, Repository};
use crate::store::{BlobInfo, BlobStore, BlobWriter, CommitError, Index, Verified};
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes gathered before one write to the spool (in the blocking pool, so a slow disk never
/// stalls the runtime) and one wake-up of the readers.
const BATCH: usize = 256 << 10;

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's answer.
    Starting,
    /// Bytes `0..written` are in the spool; `size` is the upstream's `Content-Length`.
    Writing {
        /// Bytes in the spool.
        written: u64,
        /// Expected total, when the upstream announced it.
        size: Option<u64>,
    },
    /// These many bytes hashed to the digest: readers may finish. The blob is not visible
    /// yet (it is being made durable), and the fill stays registered, so new requests join it.
    Verified(u64),
    /// Verified and stored: this many bytes.
    Done(u64),
    /// Nothing was stored.
    Failed(Error),
}

/// A fill in progress, as its readers see it.
pub struct Fill {
    /// The repository it was started for.
    pub owner: Repository,
    /// A read handle on the spool (valid after the rename too).
    pub file: Arc<File>,
    /// Progress.
    pub state: watch::Receiver<FillState>,
}

impl Fill {
    fn failed(&self) -> bool {
        matches!(*self.state.borrow(), FillState::Failed(_))
    }
}

/// Fills in progress by digest, and the turns they take: at most `max_downloads` download at
/// once, the others wait (counted in `airlock_fills_queued`).
#[derive(Clone)]
pub struct Fills {
    running: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    turns: Arc<tokio::sync::Semaphore>,
}

/// What a fill needs besides the upstream.
pub struct FillContext {
    /// Where the blob goes.
    pub store: Arc<dyn BlobStore>,
    /// Where its size and links go.
    pub index: Arc<dyn Index>,
    /// Upper bound on the download.
    pub timeout: Duration,
    /// Free space to keep: below it no new download starts.
    pub min_free: u64,
    /// The largest blob the fetch policy allows.
    pub max_size: Option<u64>,
    /// Where downloads are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Result of [`Fills::join_or_start`].
pub enum Joined {
    /// A fill is running (`started` says whether this call started it).
    Fill {
        /// The fill.
        fill: Arc<Fill>,
        /// Whether this call started it.
        started: bool,
    },
    /// No fill runs and the blob is stored: it just finished.
    Stored,
}

impl Fills {
    /// No fills yet; at most `max_downloads` (at least one) run at once.
    pub fn new(max_downloads: usize) -> Fills {
        Fills {
            running: Arc::default(),
            turns: Arc::new(tokio::sync::Semaphore::new(max_downloads.max(1))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, Arc<Fill>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join the fill for `digest`, or start one fetching it from `upstream` for `repo`. A fill
    /// that already failed is never joined: a new one replaces it.
    pub fn join_or_start(
        &self,
        ctx: FillContext,
        upstream: Arc<dyn Upstream>,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Joined> {
        if let Some(fill) = self.lock().get(digest).filter(|f| !f.failed()) {
            return Ok(Joined::Fill {
                fill: fill.clone(),
                started: false,
            });
        }
        // A nearly full disk takes no new downloads; what is cached is still served.
        if let Some(free) = ctx.store.available()?
            && free < ctx.min_free
        {
            return Err(Error::StorageFull(format!(
                "airlock's disk has {free} bytes free, under the storage.min_free reserve of {}: new downloads are refused until eviction or an operator frees space (cached content is still served)",
                ctx.min_free
            )));
        }
        // The spool is made outside the lock; if another request wins the race it is dropped.
        let writer = ctx.store.create(digest)?;
        let file = Arc::new(writer.reader()?);
        let mut running = self.lock();
        if let Some(fill) = running.get(digest).filter(|f| !f.failed()) {
            return Ok(Joined::Fill {
                fill: fill.clone(),
                started: false,
            });
        }
        // A fill unregisters only after its file is visible: look again under the lock.
        if ctx.store.stat(digest)?.is_some() {
            return Ok(Joined::Stored);
        }
        let (tx, rx) = watch::channel(FillState::Starting);
        let fill = Arc::new(Fill {
            owner: repo.clone(),
            file,
            state: rx,
        });
        running.insert(digest.clone(), fill.clone());
        drop(running);
        let unregister = Unregister {
            fills: self.clone(),
            digest: digest.clone(),
            fill: fill.clone(),
        };
        let task = Task {
            ctx,
            upstream,
            repo: repo.clone(),
            digest: digest.clone(),
            tx,
        };
        let queued = crate::metrics::InFlight::new(&task.ctx.metrics.fills_queued);
        let turns = self.turns.clone();
        tokio::spawn(async move {
            let _turn = turns.acquire_owned().await;
            drop(queued);
            let in_flight = crate::metrics::InFlight::new(&task.ctx.metrics.fills_in_flight);
            task.run(writer).await;
            drop(unregister);
            drop(in_flight);
        });
        Ok(Joined::Fill {
            fill,
            started: true,
        })
    }

    /// Size of a blob being filled, if one runs and the upstream announced it.
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        match &*self.lock().get(digest)?.state.borrow() {
            FillState::Writing { size, .. } => *size,
            FillState::Verified(n) | FillState::Done(n) => Some(*n),
            _ => None,
        }
    }
}

/// Removes a fill from the registry when its task ends, however it ends (panics included),
/// and only if it is still the registered one.
struct Unregister {
    fills: Fills,
    digest: Digest,
    fill: Arc<Fill>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut running = self.fills.lock();
        if running
            .get(&self.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            running.remove(&self.digest);
        }
    }
}

struct Task {
    ctx: FillContext,
    upstream: Arc<dyn Upstream>,
    repo: Repository,
    digest: Digest,
    tx: watch::Sender<FillState>,
}

impl Task {
    async fn run(self, writer: Box<dyn BlobWriter>) {
        let limit = self.ctx.timeout;
        let verified = match tokio::time::timeout(limit, self.download(writer)).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(format!(
                "download of {} took longer than fill_timeout ({limit:?})",
                self.digest
            ))),
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(digest = %self.digest, repo = %self.repo, error = %e, "blob fetch failed, nothing stored");
                self.tx.send_replace(FillState::Failed(e));
                return;
            }
        };
        // Readers have every byte now; making the blob visible is the fill's own business.
        self.tx.send_replace(FillState::Verified(verified.size()));
        match self.store(verified).await {
            Ok(n) => {
                tracing::debug!(digest = %self.digest, repo = %self.repo, bytes = n, "blob stored");
                self.tx.send_replace(FillState::Done(n));
            }
            // Its readers keep their verified bytes (the state stays `Verified`); the fill
            // unregisters, so the next request fetches again.
            Err(e) => {
                tracing::warn!(digest = %self.digest, repo = %self.repo, error = %e, "verified blob could not be stored; served to the clients that waited, fetched again when next asked")
            }
        }
    }

    /// Make verified bytes durable and visible, then record their size and repository link.
    async fn store(&self, verified: Box<dyn Verified>) -> Result<u64> {
        let written = tokio::task::spawn_blocking(move || verified.persist())
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::internal(format!("storing {}: {e}", self.digest)))?;
        let media_type = self
            .ctx
            .index
            .blob_info(&self.digest)?
            .and_then(|i| i.media_type);
        self.ctx.index.set_blob_info(
            &self.digest,
            &BlobInfo {
                size: written,
                media_type,
            },
        )?;
        self.ctx.index.link(&self.repo, &self.digest)?;
        Ok(written)
    }

    /// Fetch the blob into the spool and check its digest.
    async fn download(&self, mut writer: Box<dyn BlobWriter>) -> Result<Box<dyn Verified>> {
        let body = self
            .upstream
            .blob(&self.repo.name, &self.digest)
            .await?
            .ok_or_else(|| {
                Error::BlobUnknown(format!("{} is not known in {}", self.digest, self.repo))
            })?;
        let size = body.size;
        let max = self.ctx.max_size.unwrap_or(u64::MAX);
        if let Some(s) = size.filter(|s| *s > max) {
            // Remembered, so the next request is refused before any GET.
            if self.ctx.index.blob_info(&self.digest)?.is_none() {
                let info = BlobInfo {
                    size: s,
                    media_type: None,
                };
                self.ctx.index.set_blob_info(&self.digest, &info)?;
            }
            return Err(Error::Denied(format!(
                "the fetch policy refuses {}: it has {} bytes, more than fetch.max_blob_size ({max})",
                self.digest,
                size.unwrap_or(0)
            )));
        }
        self.tx
            .send_replace(FillState::Writing { written: 0, size });
        let mut stream = body.stream;
        let mut batch = BytesMut::with_capacity(BATCH);
        let mut written = 0u64;
        loop {
            let chunk = stream.next().await.transpose()?;
            let end = chunk.is_none();
            if let Some(c) = &chunk {
                if written + (batch.len() + c.len()) as u64 > max {
                    return Err(Error::Denied(format!(
                        "the fetch policy refuses {}: it is larger than fetch.max_blob_size ({max})",
                        self.digest
                    )));
                }
                if size.is_some_and(|s| written + (batch.len() + c.len()) as u64 > s) {
                    return Err(self.invalid(format!(
                        "sent more than the {} bytes it announced for {}",
                        size.unwrap_or(0),
                        self.digest
                    )));
                }
                batch.extend_from_slice(c);
            }
            if batch.len() >= BATCH || (end && !batch.is_empty()) {
                let bytes = batch.split().freeze();
                let registry = self.repo.registry.to_string();
                let m = &self.ctx.metrics;
                m.fill_bytes
                    .with_label_values(&[m.registry_label(&registry)])
                    .inc_by(bytes.len() as u64);
                writer = self.write(writer, bytes).await?;
                written = writer.written();
                self.tx.send_replace(FillState::Writing { written, size });
            }
            if end {
                break;
            }
        }
        if let Some(s) = size.filter(|s| *s != written) {
            return Err(self.unavailable(format!(
                "body of {} ended after {written} of {s} bytes",
                self.digest
            )));
        }
        match writer.verify() {
            Ok(v) => Ok(v),
            Err(CommitError::Mismatch { actual, .. }) => Err(self.invalid(format!(
                "sent content hashing to {actual} for {}",
                self.digest
            ))),
            Err(CommitError::Io(e)) => {
                Err(Error::internal(format!("storing {}: {e}", self.digest)))
            }
        }
    }

    /// Append to the spool in the blocking pool; the writer travels there and back.
    async fn write(
        &self,
        mut writer: Box<dyn BlobWriter>,
        bytes: Bytes,
    ) -> Result<Box<dyn BlobWriter>> {
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || {
            writer
                .write(&bytes)
                .map(|()| writer)
                .map_err(|e| Error::internal(format!("writing {digest} to the cache: {e}")))
        })
        .await
        .map_err(Error::internal)?
    }

    fn unavailable(&self, message: String) -> Error {
        Error::UpstreamUnavailable {
            registry: self.repo.registry.to_string(),
            message,
        }
    }

    fn invalid(&self, message: String) -> Error {
        Error::UpstreamInvalid {
            registry: self.repo.registry.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests;
