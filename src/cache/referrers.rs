//! Referrers: the signatures, attestations and SBOMs whose `subject` is a manifest. Asked
//! upstream at most once per tag TTL (one request for all the clients asking at once): its
//! referrers API where it has one, merged with the tag schema's index (`sha256-<hex>`, which
//! pushers keep on registries without the API, and which is cached as the tag it is). The
//! merged answer is stored as an image index with its fetch time, so it is served when the
//! upstream cannot answer, offline, and after a restart.

use super::{Cache, Outcome};
use crate::error::{Error, Result};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::referrers::{self, Referrer};
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::store::now_ms;
use std::sync::Arc;

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
            // Offline, or no upstream for this registry: what this cache holds is the whole
            // answer, perhaps none; a subject it does not hold either says why.
            Err(e) => {
                return match known {
                    Some(k) => Ok((k.list, Outcome::Hit)),
                    None if e.allows_stale() || self.inner.index.is_linked(repo, subject)? => {
                        Ok((Arc::default(), Outcome::Hit))
                    }
                    None => Err(e),
                };
            }
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
        let (store, index) = (self.inner.store.clone(), self.inner.index.clone());
        let (r, d) = key.clone();
        let Some((fetched_at_ms, list)) = tokio::task::spawn_blocking(move || {
            crate::referrers::load(store.as_ref(), index.as_ref(), &r, &d)
        })
        .await
        .map_err(Error::internal)??
        else {
            return Ok(None);
        };
        let known = Known {
            fetched_at_ms,
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
            // A registry that mis-answers the API may still keep the tag schema; what it
            // answered before is kept, not replaced by the tag schema's part alone.
            Err(e @ Error::UpstreamInvalid { .. }) => {
                tracing::warn!(%repo, %subject, error = %e, "the upstream's referrers API answered badly: keeping what it said before, with the tag schema");
                match self.known_referrers(repo, subject).await? {
                    Some(k) => k.list.to_vec(),
                    None => Vec::new(),
                }
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
        // Kept on disk when there is something to keep, or the subject is here: a client
        // asking about digests the cache never held leaves no record behind.
        if !known.list.is_empty() || self.inner.index.is_linked(repo, subject)? {
            let (store, index) = (self.inner.store.clone(), self.inner.index.clone());
            let (r, d, list, at) = (
                repo.clone(),
                subject.clone(),
                known.list.clone(),
                known.fetched_at_ms,
            );
            tokio::task::spawn_blocking(move || {
                crate::referrers::save(store.as_ref(), index.as_ref(), &r, &d, &list, at)
            })
            .await
            .map_err(Error::internal)??;
        }
        self.inner
            .hot
            .referrers
            .insert((repo.clone(), subject.clone()), known.clone())
            .await;
        Ok(known.list)
    }
}
