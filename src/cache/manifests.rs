//! Manifest policy. By digest: immutable, served from the cache once known in the repository.
//! By tag: fresh within the upstream's tag TTL without any request; stale → revalidate with
//! HEAD and download only a changed digest; upstream down, 5xx or 429 → the last known answer
//! (stale-if-error). Concurrent resolutions of one tag share one upstream exchange.

use super::hot::{TagKey, Unknown};
use super::{Cache, Manifest, ManifestAnswer, Outcome};
use crate::error::{Error, Result};
use crate::oci::manifest::{ACCEPT_ALL, MAX_MANIFEST_BYTES};
use crate::oci::manifest::{
    accepts_every_type, is_manifest_type, looks_like_manifest, upstream_accept,
};
use crate::oci::{Digest, Reference, Repository, Tag, accepts, children};
use crate::store::{BlobInfo, CommitError, TagRecord, now_ms};
use crate::upstream::FetchedManifest;
use std::io::Read;
use std::sync::Arc;

/// Docker's deprecated signed manifests.
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// Key of a coalesced manifest resolution: repository, reference, the client's `Accept`.
pub(super) type FlightKey = (Repository, Reference, String);

impl Cache {
    /// A manifest of `repo` by tag or digest, for a client sending `accept`.
    pub async fn manifest(
        &self,
        repo: &Repository,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestAnswer> {
        if let Some(hit) = self.manifest_fast(repo, reference, accept).await? {
            return Ok(ManifestAnswer {
                manifest: hit,
                outcome: Outcome::Hit,
            });
        }
        let stale = self.stale_answer(repo, reference, accept).await?;
        let accept: Vec<String> = accept.iter().map(|s| s.to_string()).collect();
        let key = (repo.clone(), reference.clone(), accept.join(", "));
        let (this, repo2, reference2) = (self.clone(), repo.clone(), reference.clone());
        let work = async move { this.manifest_slow(&repo2, &reference2, &accept).await };
        let flight = self.inner.flights.run(key, work);
        // With a stale answer at hand a slow upstream does not hold the client: it gets the
        // stale answer after stale_timeout, and the revalidation goes on in its own task.
        let (result, joined) = match (stale, self.upstream(repo).map(|e| e.stale_timeout)) {
            (Some(m), Ok(wait)) => match tokio::time::timeout(wait, flight).await {
                Ok(done) => done,
                Err(_) => {
                    tracing::warn!(%repo, %reference, ?wait, "upstream slow to revalidate: serving the last known tag answer");
                    return Ok(ManifestAnswer {
                        manifest: m,
                        outcome: Outcome::Stale,
                    });
                }
            },
            _ => flight.await,
        };
        let mut answer = result?;
        if joined && answer.outcome == Outcome::Miss {
            answer.outcome = Outcome::Coalesced;
        }
        Ok(answer)
    }

    /// The last known answer for a tag (stale: the fast path found it not fresh), if this
    /// client accepts it and it is stored.
    async fn stale_answer(
        &self,
        repo: &Repository,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Option<Arc<Manifest>>> {
        let Reference::Tag(tag) = reference else {
            return Ok(None);
        };
        match self.tag_record(repo, tag).await? {
            Some(rec) if accepts(accept, &rec.media_type) => {
                self.linked_manifest(repo, &rec.digest).await
            }
            _ => Ok(None),
        }
    }

    /// Answers that need no upstream at all: a known digest, a fresh tag.
    async fn manifest_fast(
        &self,
        repo: &Repository,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Option<Arc<Manifest>>> {
        let rec;
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(t) => match self.tag_record(repo, t).await? {
                Some(r) if accepts(accept, &r.media_type) && self.is_fresh(repo, &r) => {
                    rec = r;
                    &rec.digest
                }
                _ => return Ok(None),
            },
        };
        self.linked_manifest(repo, digest).await
    }

    async fn manifest_slow(
        &self,
        repo: &Repository,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestAnswer> {
        let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
        let answer = |manifest, outcome| Ok(ManifestAnswer { manifest, outcome });
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(repo, d, &accept).await,
            Reference::Tag(tag) => {
                let upstream_accept = upstream_accept(&accept);
                // Only an answer to a request that accepted every manifest type is the tag's
                // answer for everyone: a narrow Accept may get one platform's manifest.
                let shared = accepts_every_type(&accept);
                let known = match self.tag_record(repo, tag).await? {
                    Some(rec) if accepts(&accept, &rec.media_type) => self
                        .linked_manifest(repo, &rec.digest)
                        .await?
                        .map(|m| (rec, m)),
                    _ => None,
                };
                let unknown = Unknown::Tag(repo.clone(), tag.clone());
                if known.is_none() && self.known_unknown(&unknown) {
                    return Err(Error::ManifestUnknown(format!(
                        "{repo}:{tag} is not known upstream"
                    )));
                }
                match self
                    .revalidate(repo, tag, &upstream_accept, known.as_ref(), shared)
                    .await
                {
                    Ok(Some((m, outcome))) => answer(m, outcome),
                    Ok(None) => {
                        self.remember_unknown(unknown).await;
                        Err(Error::ManifestUnknown(format!(
                            "{repo}:{tag} is not known upstream"
                        )))
                    }
                    Err(e) if e.allows_stale() && known.is_some() => {
                        let (rec, m) = known.expect("checked");
                        tracing::warn!(%repo, %tag, digest = %rec.digest, error = %e, "upstream cannot answer, serving the last known tag answer");
                        answer(m, Outcome::Stale)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Ask the upstream about a tag: HEAD when we know an answer (download only a changed
    /// digest), GET otherwise. `Ok(None)`: the upstream does not have the tag. The tag record
    /// is updated only when `shared` (the request accepted every manifest type).
    async fn revalidate(
        &self,
        repo: &Repository,
        tag: &Tag,
        accept: &str,
        known: Option<&(Arc<TagRecord>, Arc<Manifest>)>,
        shared: bool,
    ) -> Result<Option<(Arc<Manifest>, Outcome)>> {
        let upstream = self.upstream(repo)?.upstream.clone();
        if known.is_none() {
            self.fetch_allowed(self.policy().tag(repo, tag.as_str(), |d| {
                self.inner.index.is_linked(repo, d).unwrap_or(false)
            }))?;
        }
        let reference = Reference::Tag(tag.clone());
        if let Some((rec, m)) = known {
            // Fresh, or no longer allowed to be fetched: what is cached is what is served.
            if self.is_fresh(repo, rec)
                || self
                    .policy()
                    .tag(repo, tag.as_str(), |d| {
                        self.inner.index.is_linked(repo, d).unwrap_or(false)
                    })
                    .is_err()
            {
                return Ok(Some((m.clone(), Outcome::Hit)));
            }
            let Some(head) = upstream
                .manifest(&repo.name, &reference, accept, true)
                .await?
            else {
                if shared {
                    self.forget_tag(repo, tag).await?;
                }
                return Ok(None);
            };
            if let Some(d) = &head.digest
                && let Some(m) = self.linked_manifest(repo, d).await?
            {
                if shared {
                    self.remember_tag(repo, tag, &m).await?;
                }
                return Ok(Some((m, Outcome::Hit)));
            }
            // The tag moved, but the pull budget is at its reserve: the last known answer,
            // so the last pulls of the window go to content clients ask for by digest or
            // have never had.
            if let Some(why) = upstream.budget_low() {
                tracing::warn!(%repo, %tag, digest = %rec.digest, reason = %why, "tag moved upstream; keeping its last known answer to save the pull budget");
                let metrics = &self.inner.metrics;
                metrics
                    .ratelimit_deferred
                    .with_label_values(&[metrics.registry_label(&repo.registry.to_string())])
                    .inc();
                return Ok(Some((m.clone(), Outcome::Stale)));
            }
        }
        let Some(fetched) = upstream
            .manifest(&repo.name, &reference, accept, false)
            .await?
        else {
            if known.is_some() && shared {
                self.forget_tag(repo, tag).await?;
            }
            return Ok(None);
        };
        let m = self.store_manifest(repo, fetched, None).await?;
        if shared {
            self.remember_tag(repo, tag, &m).await?;
        }
        Ok(Some((m, Outcome::Miss)))
    }

    async fn manifest_by_digest(
        &self,
        repo: &Repository,
        digest: &Digest,
        accept: &[&str],
    ) -> Result<ManifestAnswer> {
        let upstream = self.upstream(repo)?.upstream.clone();
        let reference = Reference::Digest(digest.clone());
        let unknown = || Error::ManifestUnknown(format!("{digest} is not known in {repo}"));
        // Ask for every type: a digest names one content whatever the client prefers.
        let accept = [accept.join(", "), ACCEPT_ALL.to_string()].join(", ");
        if let Some(m) = self.load_manifest(digest).await? {
            // Stored for another repository: serve it here only if the upstream confirms.
            upstream
                .manifest(&repo.name, &reference, &accept, true)
                .await?
                .ok_or_else(unknown)?;
            self.inner.index.link(repo, digest)?;
            self.inner.index.set_digest_pull(repo, digest, now_ms())?;
            return Ok(ManifestAnswer {
                manifest: m,
                outcome: Outcome::Hit,
            });
        }
        self.fetch_allowed(self.policy().repository(repo))?;
        let negative = Unknown::Digest(repo.clone(), digest.clone());
        if self.known_unknown(&negative) {
            return Err(unknown());
        }
        let Some(fetched) = upstream
            .manifest(&repo.name, &reference, &accept, false)
            .await?
        else {
            self.remember_unknown(negative).await;
            return Err(unknown());
        };
        let m = self.store_manifest(repo, fetched, Some(digest)).await?;
        self.inner.index.set_digest_pull(repo, digest, now_ms())?;
        Ok(ManifestAnswer {
            manifest: m,
            outcome: Outcome::Miss,
        })
    }

    /// Verify and store a manifest byte for byte; link it and everything it names to `repo`.
    async fn store_manifest(
        &self,
        repo: &Repository,
        fetched: FetchedManifest,
        expected: Option<&Digest>,
    ) -> Result<Arc<Manifest>> {
        let inner = &self.inner;
        let invalid = |m: String| Error::UpstreamInvalid {
            registry: repo.registry.to_string(),
            message: m,
        };
        let bytes = fetched
            .bytes
            .ok_or_else(|| Error::internal("manifest answer without a body"))?;
        let digest = Digest::of(&bytes);
        if fetched.media_type.starts_with(SCHEMA1) {
            // Its digest covers the payload without the signatures: it cannot be verified (or
            // served) like any other manifest. Docker Hub and distribution 3 dropped it too.
            return Err(Error::Unsupported(format!(
                "{repo} answered a Docker schema 1 manifest ({}), which airlock does not serve; ask for a schema 2 or OCI manifest",
                fetched.media_type
            )));
        }
        for claimed in expected.into_iter().chain(fetched.digest.as_ref()) {
            if *claimed != digest {
                return Err(invalid(format!(
                    "manifest {claimed} of {repo} has content hashing to {digest}"
                )));
            }
        }
        if !is_manifest_type(&fetched.media_type) || !looks_like_manifest(&bytes) {
            // A captive portal's page, a proxy's login form: the upstream was not reached, so
            // this is no answer, and a known tag answer is served instead.
            return Err(Error::UpstreamUnavailable {
                registry: repo.registry.to_string(),
                message: format!(
                    "{repo} answered {} that is not a manifest (a captive portal or a proxy's page?)",
                    cut(&fetched.media_type)
                ),
            });
        }
        let (store, d, b) = (inner.store.clone(), digest.clone(), bytes.clone());
        match tokio::task::spawn_blocking(move || store.put(&d, &b))
            .await
            .map_err(Error::internal)?
        {
            Ok(()) => {}
            Err(CommitError::Mismatch { .. }) => unreachable!("digest computed from these bytes"),
            Err(CommitError::Io(e)) => {
                return Err(Error::internal(format!("storing manifest {digest}: {e}")));
            }
        }
        let info = BlobInfo {
            size: bytes.len() as u64,
            media_type: Some(fetched.media_type.clone()),
        };
        inner.index.set_blob_info(&digest, &info)?;
        inner.index.link(repo, &digest)?;
        for child in children(&bytes)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.foreign)
        {
            // The upstream accepted this manifest only with these in the repository.
            inner.index.link(repo, &child.digest)?;
            if let Some(size) = child.size
                && inner.index.blob_info(&child.digest)?.is_none()
            {
                inner.index.set_blob_info(
                    &child.digest,
                    &BlobInfo {
                        size,
                        media_type: child.media_type,
                    },
                )?;
            }
        }
        let m = Arc::new(Manifest::new(digest.clone(), fetched.media_type, bytes));
        inner.hot.manifests.insert(digest, m.clone()).await;
        Ok(m)
    }

    /// A stored manifest that is linked in `repo`, from memory or disk. A manifest in memory
    /// remembers the repositories it was found linked in, so a hot one costs no index read.
    async fn linked_manifest(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>> {
        let inner = &self.inner;
        if let Some(m) = inner.hot.manifests.get(digest).await {
            if !m.known_in(repo) {
                if !inner.index.is_linked(repo, digest)? {
                    return Ok(None);
                }
                m.remember_in(repo);
            }
            let _ = inner.index.touch(digest);
            return Ok(Some(m));
        }
        // Not in memory: the link first, so an unlinked digest costs no read from disk.
        if !inner.index.is_linked(repo, digest)? {
            return Ok(None);
        }
        let m = self.load_manifest(digest).await?;
        // Asked again now that it is in memory: a purge between the first question and the
        // insert must not leave a remembered link behind it.
        if let Some(m) = &m
            && inner.index.is_linked(repo, digest)?
        {
            m.remember_in(repo);
        }
        Ok(m)
    }

    /// A stored manifest, from memory or disk (re-verified on its way into memory).
    async fn load_manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>> {
        let inner = &self.inner;
        if let Some(m) = inner.hot.manifests.get(digest).await {
            let _ = inner.index.touch(digest);
            return Ok(Some(m));
        }
        let Some(media_type) = inner
            .index
            .blob_info(digest)?
            .and_then(|i| i.media_type)
            .filter(|t| is_manifest_type(t))
        else {
            return Ok(None);
        };
        let Some(file) = inner.store.open(digest)? else {
            return Ok(None);
        };
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            file.take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map(|_| buf)
        })
        .await
        .map_err(Error::internal)??;
        if Digest::of(&bytes) != *digest {
            tracing::error!(%digest, "stored manifest does not match its digest; ignoring it (run a cache verify)");
            return Ok(None);
        }
        let m = Arc::new(Manifest::new(digest.clone(), media_type, bytes.into()));
        inner.hot.manifests.insert(digest.clone(), m.clone()).await;
        let _ = inner.index.touch(digest);
        Ok(Some(m))
    }

    async fn tag_record(&self, repo: &Repository, tag: &Tag) -> Result<Option<Arc<TagRecord>>> {
        let key: &dyn TagKey = &(repo, tag);
        if let Some(rec) = self.inner.hot.tags.get(key).await {
            return Ok(Some(rec));
        }
        let Some(rec) = self.inner.index.tag(repo, tag)? else {
            return Ok(None);
        };
        let rec = Arc::new(rec);
        self.inner
            .hot
            .tags
            .insert((repo.clone(), tag.clone()), rec.clone())
            .await;
        Ok(Some(rec))
    }

    async fn remember_tag(&self, repo: &Repository, tag: &Tag, m: &Manifest) -> Result<()> {
        let rec = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            fetched_at_ms: now_ms(),
        };
        let before = self.inner.index.tag(repo, tag)?;
        self.inner.index.set_tag(repo, tag, &rec)?;
        if let Some(old) = before.filter(|b| b.digest != rec.digest) {
            let name = format!("{repo}:{tag}");
            if self.inner.index.pins()?.contains(&name) {
                // The old content stays pinned (the pin remembers it); the new one is fetched
                // only as clients ask for it.
                tracing::warn!(image = %name, from = %old.digest, to = %rec.digest, "a pinned tag moved upstream: run the preload again before the site is cut off");
            }
        }
        self.inner
            .hot
            .tags
            .insert((repo.clone(), tag.clone()), Arc::new(rec))
            .await;
        Ok(())
    }

    async fn forget_tag(&self, repo: &Repository, tag: &Tag) -> Result<()> {
        self.inner.index.remove_tag(repo, tag)?;
        self.inner
            .hot
            .tags
            .invalidate(&(repo.clone(), tag.clone()))
            .await;
        Ok(())
    }

    /// Within the upstream's tag TTL. With no upstream configured, nothing can be asked: the
    /// cached answer is the answer.
    fn is_fresh(&self, repo: &Repository, rec: &TagRecord) -> bool {
        match self.upstream(repo) {
            Ok(e) => (now_ms().saturating_sub(rec.fetched_at_ms) as u128) < e.tag_ttl.as_millis(),
            Err(_) => true,
        }
    }
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}
