//! Blob policy: stored and linked → hit; stored elsewhere → confirm membership upstream;
//! missing → one fill per digest that every requester joins.

use super::fill::{FillContext, FillState, Joined};
use super::hot::Unknown;
use super::{BlobAnswer, BlobSource, Cache, Outcome};
use crate::error::{Error, Result};
use crate::oci::{Digest, Repository};
use crate::store::BlobInfo;
use std::sync::Arc;

impl Cache {
    /// A blob of `repo`, streamed from the cache or from the one fill fetching it.
    pub async fn blob(&self, repo: &Repository, digest: &Digest) -> Result<BlobAnswer> {
        self.blob_at_most(repo, digest, None).await
    }

    /// [`Cache::blob`], but a fill this call starts gives up past `limit` bytes (a
    /// signature's payload, which the upstream could make as large as it likes).
    pub async fn blob_at_most(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: Option<u64>,
    ) -> Result<BlobAnswer> {
        let inner = &self.inner;
        if let Some(answer) = self.stored_blob(repo, digest).await? {
            return Ok(answer);
        }
        let unknown = Unknown::Digest(repo.clone(), digest.clone());
        if self.known_unknown(&unknown) {
            return Err(Cache::blob_unknown(repo, digest));
        }
        self.may_fetch_blob(repo, digest).await?;
        let mut retried = false;
        loop {
            let upstream = self.upstream(repo)?.upstream.clone();
            let ctx = FillContext {
                store: inner.store.clone(),
                index: inner.index.clone(),
                timeout: inner.settings.fill_timeout,
                max_size: match (self.policy().max_blob_size(), limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                min_free: inner.settings.min_free,
                metrics: inner.metrics.clone(),
            };
            let (fill, started) = match inner.fills.join_or_start(ctx, upstream, repo, digest)? {
                Joined::Fill { fill, started } => (fill, started),
                // It finished between our look and the lock: now it is a plain stored blob.
                Joined::Stored => {
                    return self
                        .stored_blob(repo, digest)
                        .await?
                        .ok_or_else(|| Cache::blob_unknown(repo, digest));
                }
            };
            let foreign = !started && fill.owner != *repo;
            if foreign {
                self.confirm(repo, digest).await?;
            }
            let mut state = fill.state.clone();
            let first = state
                .wait_for(|s| !matches!(s, FillState::Starting))
                .await
                .map_err(|_| Error::internal("blob fetch ended unexpectedly"))?
                .clone();
            match first {
                // Another repository's fetch failed (its credentials, its rate limit): fetch
                // for this one instead, once.
                // (Not when the policy refused it: that holds for every repository.)
                FillState::Failed(ref e)
                    if foreign && !retried && !matches!(e, Error::Denied(_)) =>
                {
                    retried = true
                }
                FillState::Failed(e) => {
                    if matches!(e, Error::BlobUnknown(_)) {
                        self.remember_unknown(unknown).await;
                    }
                    return Err(e);
                }
                _ => {
                    let outcome = if started {
                        Outcome::Miss
                    } else {
                        Outcome::Coalesced
                    };
                    return Ok(BlobAnswer {
                        source: BlobSource::filling(fill, inner.in_use.hold(digest)),
                        outcome,
                    });
                }
            }
        }
    }

    /// Whether the fetch policy lets this blob be downloaded for `repo`. With a size limit, a
    /// blob whose size no manifest told is asked about with a HEAD first, so a refused blob
    /// costs no GET.
    async fn may_fetch_blob(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        let policy = self.policy();
        self.fetch_allowed(policy.repository(repo))?;
        if policy.max_blob_size().is_none() || self.inner.fills.size_of(digest).is_some() {
            return Ok(());
        }
        let size = match self.inner.index.blob_info(digest)? {
            Some(info) => Some(info.size),
            None => self.confirm(repo, digest).await?,
        };
        match size {
            Some(n) => self.fetch_allowed(policy.blob_size(digest, n)),
            // Unknown until the body starts: the fill stops at the limit.
            None => Ok(()),
        }
    }

    /// Size of a blob of `repo` for `HEAD`, without downloading it.
    pub async fn blob_size(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<(Option<u64>, Outcome)> {
        let inner = &self.inner;
        if let Some(size) = inner.store.stat(digest)? {
            if !inner.index.is_linked(repo, digest)? {
                self.confirm(repo, digest).await?;
            }
            return Ok((Some(size), Outcome::Hit));
        }
        if let Some(size) = inner.fills.size_of(digest)
            && inner.index.is_linked(repo, digest)?
        {
            return Ok((Some(size), Outcome::Coalesced));
        }
        // Not here: asking the upstream is a fetch the policy may refuse.
        self.fetch_allowed(self.policy().repository(repo))?;
        let size = self.confirm(repo, digest).await?;
        Ok((size, Outcome::Miss))
    }

    /// The stored blob if it is stored and known to belong to `repo` (asking upstream when
    /// only another repository had it).
    async fn stored_blob(&self, repo: &Repository, digest: &Digest) -> Result<Option<BlobAnswer>> {
        let inner = &self.inner;
        let Some(file) = inner.store.open(digest)? else {
            return Ok(None);
        };
        if !inner.index.is_linked(repo, digest)? {
            self.confirm(repo, digest).await?;
        }
        let size = file.metadata()?.len();
        let _ = inner.index.touch(digest);
        Ok(Some(BlobAnswer {
            source: BlobSource::stored(Arc::new(file), size, inner.in_use.hold(digest)),
            outcome: Outcome::Hit,
        }))
    }

    /// Ask the upstream whether `digest` is in `repo`; link it if so. A private blob cached
    /// for one repository is never served through another name without this.
    async fn confirm(&self, repo: &Repository, digest: &Digest) -> Result<Option<u64>> {
        let inner = &self.inner;
        let upstream = &self
            .upstream(repo)
            .map_err(|e| match e {
                // No upstream for this registry: nothing can confirm it.
                Error::NameUnknown(_) => Cache::blob_unknown(repo, digest),
                // Offline: say so, as for any other uncached content.
                other => other,
            })?
            .upstream;
        let unknown = Unknown::Digest(repo.clone(), digest.clone());
        if self.known_unknown(&unknown) {
            return Err(Cache::blob_unknown(repo, digest));
        }
        match upstream.blob_exists(&repo.name, digest).await? {
            None => {
                self.remember_unknown(unknown).await;
                Err(Cache::blob_unknown(repo, digest))
            }
            Some(size) => {
                inner.index.link(repo, digest)?;
                if let Some(size) = size
                    && inner.index.blob_info(digest)?.is_none()
                {
                    inner.index.set_blob_info(
                        digest,
                        &BlobInfo {
                            size,
                            media_type: None,
                        },
                    )?;
                }
                Ok(size.or(inner.index.blob_info(digest)?.map(|i| i.size)))
            }
        }
    }
}
