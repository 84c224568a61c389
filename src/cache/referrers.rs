//! Referrers: the signatures, attestations and SBOMs whose `subject` is a manifest. Asked
//! upstream at most once per tag TTL (one request for all the clients asking at once): its
//! referrers API where it has one, merged with the tag schema's index (`sha256-<hex>`, which
//! pushers keep on registries without the API, and which is cached as the tag it is). The
//! merged answer is stored as an image index with its fetch time, so it is served when the
//! upstream cannot answer, offline, and after a restart.

use super::{Cache, Outcome};
use crate::error::{Error, Result};
use crate::oci::manifest::{MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::oci::referrers::{self, Referrer};
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::store::{BlobInfo, CommitError, ReferrersRecord, now_ms};
use std::io::Read;
use std::sync::Arc;

/// A stored answer larger than this is not read back (the upstream's pages and the tag
/// schema's index are bounded well below it).
const MAX_ANSWER_BYTES: u64 = 8 * MAX_MANIFEST_BYTES as u64;

/// The referrers of one subject, and when the upstream last gave them.
#[derive(Clone)]
pub(super) struct Known {
    fetched_at_ms: u64,
    list: Arc<Vec<Referrer>>,
}

impl Known {
    /// Roughly the bytes it holds, for the hot cache's bound.
    pub(super) fn weight(&self) -> usize {
        let per = |r: &Referrer| {
            let notes: usize = r
                .annotations
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum();
            160 + r.media_type.len() + r.artifact_type.as_ref().map_or(0, String::len) + notes
        };
        64 + self.list.iter().map(per).sum::<usize>()
    }
}

impl Cache {
    /// The referrers of `subject` in `repo`, in the order the upstream gave them.
    pub async fn referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
    ) -> Result<(Arc<Vec<Referrer>>, Outcome)> {
        let known = self.known_referrers(repo, subject).await?;
        let entry = match self.upstream(repo) {
            Ok(e) => e,
            // Offline: what this cache holds is the whole answer, perhaps none.
            Err(e) if e.allows_stale() => {
                let list = known.map(|k| k.list).unwrap_or_default();
                return Ok((list, Outcome::Hit));
            }
            Err(e) => return Err(e),
        };
        if let Some(k) = &known
            && (now_ms().saturating_sub(k.fetched_at_ms) as u128) < entry.tag_ttl.as_millis()
        {
            return Ok((k.list.clone(), Outcome::Hit));
        }
        if let Err(e) = self.policy().repository(repo) {
            // The fetch policy keeps this repository's upstream out of it.
            return match known {
                Some(k) => Ok((k.list, Outcome::Hit)),
                None => self
                    .fetch_allowed(Err(e))
                    .map(|()| (Arc::default(), Outcome::Hit)),
            };
        }
        let (this, repo2, subject2) = (self.clone(), repo.clone(), subject.clone());
        let work = async move { this.fetch_referrers(&repo2, &subject2).await };
        let flight = self
            .inner
            .referrers
            .run((repo.clone(), subject.clone()), work);
        let (fetched, joined) = match &known {
            Some(k) => match tokio::time::timeout(entry.stale_timeout, flight).await {
                Ok(done) => done,
                Err(_) => {
                    tracing::warn!(%repo, %subject, "upstream slow to answer: serving the last known referrers");
                    return Ok((k.list.clone(), Outcome::Stale));
                }
            },
            None => flight.await,
        };
        match fetched {
            Ok(list) => Ok((
                list,
                if joined {
                    Outcome::Coalesced
                } else {
                    Outcome::Miss
                },
            )),
            Err(e) if e.allows_stale() && known.is_some() => {
                tracing::warn!(%repo, %subject, error = %e, "upstream cannot answer: serving the last known referrers");
                Ok((known.map(|k| k.list).unwrap_or_default(), Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// The last answer stored for `subject` in `repo`, from memory or disk.
    async fn known_referrers(&self, repo: &Repository, subject: &Digest) -> Result<Option<Known>> {
        let key = (repo.clone(), subject.clone());
        if let Some(k) = self.inner.hot.referrers.get(&key).await {
            return Ok(Some(k));
        }
        let Some(rec) = self.inner.index.referrers(repo, subject)? else {
            return Ok(None);
        };
        let store = self.inner.store.clone();
        let digest = rec.digest.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
            let Some(file) = store.open(&digest)? else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            file.take(MAX_ANSWER_BYTES).read_to_end(&mut buf)?;
            Ok(Some(buf))
        })
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)?;
        // Deleted (gc) or unreadable: as if never asked.
        let Some(list) = read.and_then(|b| referrers::parse(&b).ok()) else {
            return Ok(None);
        };
        let known = Known {
            fetched_at_ms: rec.fetched_at_ms,
            list: Arc::new(list),
        };
        self.inner.hot.referrers.insert(key, known.clone()).await;
        Ok(Some(known))
    }

    /// Ask the upstream: its referrers API, then the tag schema; store the merged answer.
    async fn fetch_referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
    ) -> Result<Arc<Vec<Referrer>>> {
        let upstream = self.upstream(repo)?.upstream.clone();
        let mut list = match upstream.referrers(&repo.name, subject).await {
            Ok(found) => found.unwrap_or_default(),
            // A registry that mis-answers the API may still keep the tag schema.
            Err(e @ Error::UpstreamInvalid { .. }) => {
                tracing::warn!(%repo, %subject, error = %e, "the upstream's referrers API answered badly: reading the tag schema alone");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let tag: Tag = referrers::schema_tag(subject).parse()?;
        match self
            .manifest(repo, &Reference::Tag(tag), &[OCI_INDEX])
            .await
        {
            Ok(answer) => match referrers::parse(&answer.manifest.bytes) {
                Ok(more) => referrers::merge(&mut list, more),
                Err(e) => {
                    tracing::warn!(%repo, %subject, error = %e, "the referrers tag schema's index is not one: left out");
                }
            },
            Err(Error::ManifestUnknown(_) | Error::NameUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        let known = Known {
            fetched_at_ms: now_ms(),
            list: Arc::new(list),
        };
        self.store_referrers(repo, subject, &known).await?;
        self.inner
            .hot
            .referrers
            .insert((repo.clone(), subject.clone()), known.clone())
            .await;
        Ok(known.list)
    }

    /// Store an answer as an image index (content-addressed, linked to no repository, so
    /// it is never served as a manifest) and record it for `subject`.
    async fn store_referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
        known: &Known,
    ) -> Result<()> {
        let bytes = referrers::encode(&known.list.iter().collect::<Vec<_>>());
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        let (store, d) = (self.inner.store.clone(), digest.clone());
        match tokio::task::spawn_blocking(move || store.put(&d, &bytes))
            .await
            .map_err(Error::internal)?
        {
            Ok(()) => {}
            Err(CommitError::Mismatch { .. }) => unreachable!("digest computed from these bytes"),
            Err(CommitError::Io(e)) => {
                return Err(Error::internal(format!(
                    "storing the referrers of {subject}: {e}"
                )));
            }
        }
        let index = &self.inner.index;
        index.set_blob_info(
            &digest,
            &BlobInfo {
                size,
                media_type: Some(OCI_INDEX.into()),
            },
        )?;
        index.set_referrers(
            repo,
            subject,
            &ReferrersRecord {
                digest,
                fetched_at_ms: known.fetched_at_ms,
            },
        )
    }
}
