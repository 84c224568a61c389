//! The fill: one upstream download per missing blob, written to a spool that every requester
//! reads as it grows. It runs in its own task, so it outlives the client that started it, and
//! is bounded by `fill_timeout`. Progress is published on a `watch` channel; only a verified,
//! fsynced, renamed file ends it as `Done`, anything else as `Failed`, which readers turn into
//! a broken transfer, never a clean end of body.

use crate::error::{Error, Result};
use crate::oci::{Digest, Repository};
use crate::store::{BlobInfo, BlobStore, BlobWriter, CommitError, Index};
use crate::upstream::Upstream;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Readers are woken after at least this many new bytes (or at the end): waking 32 readers per
/// 16 KiB network read would cost more than the copy itself.
const PUBLISH_EVERY: u64 = 64 << 10;

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's answer.
    Starting,
    /// Bytes `0..written` are in the spool; `size` is the expected total when known.
    Writing {
        /// Bytes in the spool.
        written: u64,
        /// Expected total, from `Content-Length` or a manifest.
        size: Option<u64>,
    },
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

/// Fills in progress by digest.
#[derive(Default, Clone)]
pub struct Fills {
    running: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

/// What a fill needs besides the upstream.
pub struct FillContext {
    /// Where the blob goes.
    pub store: Arc<dyn BlobStore>,
    /// Where its size and links go.
    pub index: Arc<dyn Index>,
    /// Upper bound on the download.
    pub timeout: Duration,
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
    /// Join the fill for `digest`, or start one fetching it from `upstream` for `repo`.
    pub fn join_or_start(
        &self,
        ctx: FillContext,
        upstream: Arc<dyn Upstream>,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Joined> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = running.get(digest) {
            return Ok(Joined::Fill {
                fill: fill.clone(),
                started: false,
            });
        }
        // A fill unregisters only after its file is visible: check again under the lock.
        if ctx.store.stat(digest)?.is_some() {
            return Ok(Joined::Stored);
        }
        let writer = ctx.store.create(digest)?;
        let (tx, rx) = watch::channel(FillState::Starting);
        let fill = Arc::new(Fill {
            owner: repo.clone(),
            file: Arc::new(writer.reader()?),
            state: rx,
        });
        running.insert(digest.clone(), fill.clone());
        let expected = ctx.index.blob_info(digest)?.map(|i| i.size);
        let task = Task {
            ctx,
            upstream,
            repo: repo.clone(),
            digest: digest.clone(),
            tx,
            expected,
        };
        let fills = self.clone();
        tokio::spawn(async move {
            let digest = task.digest.clone();
            task.run(writer).await;
            fills
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest);
        });
        Ok(Joined::Fill {
            fill,
            started: true,
        })
    }

    /// Expected size of a blob being filled, if one runs and it is known.
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match &*running.get(digest)?.state.borrow() {
            FillState::Writing { size, .. } => *size,
            FillState::Done(n) => Some(*n),
            _ => None,
        }
    }
}

struct Task {
    ctx: FillContext,
    upstream: Arc<dyn Upstream>,
    repo: Repository,
    digest: Digest,
    tx: watch::Sender<FillState>,
    expected: Option<u64>,
}

impl Task {
    async fn run(self, writer: Box<dyn BlobWriter>) {
        let limit = self.ctx.timeout;
        let result = match tokio::time::timeout(limit, self.download(writer)).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(format!(
                "download of {} took longer than fill_timeout ({limit:?})",
                self.digest
            ))),
        };
        match &result {
            Ok(n) => {
                tracing::debug!(digest = %self.digest, repo = %self.repo, bytes = n, "blob stored")
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, repo = %self.repo, error = %e, "blob fetch failed, nothing stored")
            }
        }
        self.tx.send_replace(match result {
            Ok(n) => FillState::Done(n),
            Err(e) => FillState::Failed(e),
        });
    }

    async fn download(&self, mut writer: Box<dyn BlobWriter>) -> Result<u64> {
        let body = self
            .upstream
            .blob(&self.repo.name, &self.digest)
            .await?
            .ok_or_else(|| {
                Error::BlobUnknown(format!("{} is not known in {}", self.digest, self.repo))
            })?;
        if let (Some(sent), Some(want)) = (body.size, self.expected)
            && sent != want
        {
            return Err(self.invalid(format!(
                "announces {sent} bytes for {}, its manifest says {want}",
                self.digest
            )));
        }
        let size = body.size.or(self.expected);
        self.tx
            .send_replace(FillState::Writing { written: 0, size });
        let mut stream = body.stream;
        let mut published = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if size.is_some_and(|s| writer.written() + chunk.len() as u64 > s) {
                return Err(self.invalid(format!(
                    "sent more than the {} bytes announced for {}",
                    size.unwrap_or(0),
                    self.digest
                )));
            }
            writer.write(&chunk).map_err(|e| {
                Error::internal(format!("writing {} to the cache: {e}", self.digest))
            })?;
            if writer.written() - published >= PUBLISH_EVERY {
                published = writer.written();
                self.tx.send_replace(FillState::Writing {
                    written: published,
                    size,
                });
            }
        }
        let written = writer.written();
        self.tx.send_replace(FillState::Writing { written, size });
        if let Some(s) = size.filter(|s| *s != written) {
            return Err(self.unavailable(format!(
                "body of {} ended after {written} of {s} bytes",
                self.digest
            )));
        }
        let committed = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(Error::internal)?;
        let written = match committed {
            Ok(n) => n,
            Err(CommitError::Mismatch { actual, .. }) => {
                return Err(self.invalid(format!(
                    "sent content hashing to {actual} for {}",
                    self.digest
                )));
            }
            Err(CommitError::Io(e)) => {
                return Err(Error::internal(format!("storing {}: {e}", self.digest)));
            }
        };
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
