//! Tag lists: asked upstream (all pages) at most once per tag TTL, one request for all the
//! clients asking at once; when the upstream cannot answer, the tags this cache knows are
//! listed instead. A repository the upstream does not know is remembered as unknown for the
//! negative TTL.

use super::hot::Unknown;
use super::{Cache, Outcome};
use crate::error::{Error, Result};
use crate::oci::Repository;
use std::sync::Arc;
use std::time::Instant;

impl Cache {
    /// All tags of `repo`, sorted.
    pub async fn tags(&self, repo: &Repository) -> Result<(Arc<Vec<String>>, Outcome)> {
        let inner = &self.inner;
        let entry = match self.upstream(repo) {
            Ok(e) => e,
            Err(e) => return self.known_tags(repo).ok_or(e).map(|t| (t, Outcome::Hit)),
        };
        if let Some((at, list)) = inner.hot.tag_lists.get(repo).await
            && at.elapsed() < entry.tag_ttl
        {
            return Ok((list, Outcome::Hit));
        }
        if let Err(e) = self.policy().repository(repo) {
            // The fetch policy keeps this repository's upstream out of it: list what is here.
            return match self.known_tags(repo) {
                Some(t) => Ok((t, Outcome::Hit)),
                None => self
                    .fetch_allowed(Err(e))
                    .map(|()| (Arc::default(), Outcome::Hit)),
            };
        }
        let unknown = Unknown::Tags(repo.clone());
        if self.known_unknown(&unknown) {
            return Err(Error::NameUnknown(format!(
                "repository {repo} is not known upstream"
            )));
        }
        let (up, name) = (entry.upstream.clone(), repo.name.clone());
        let fetch = async move {
            Ok(up.tags(&name).await?.map(|mut list| {
                list.sort();
                list.dedup();
                Arc::new(list)
            }))
        };
        let (fetched, _) = inner.tag_lists.run(repo.clone(), fetch).await;
        match fetched {
            Ok(Some(list)) => {
                inner
                    .hot
                    .tag_lists
                    .insert(repo.clone(), (Instant::now(), list.clone()))
                    .await;
                Ok((list, Outcome::Miss))
            }
            Ok(None) => {
                self.remember_unknown(unknown).await;
                Err(Error::NameUnknown(format!(
                    "repository {repo} is not known upstream"
                )))
            }
            Err(e) if e.allows_stale() => {
                tracing::warn!(%repo, error = %e, "upstream cannot answer, listing the tags known here");
                self.known_tags(repo).ok_or(e).map(|t| (t, Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    fn known_tags(&self, repo: &Repository) -> Option<Arc<Vec<String>>> {
        let tags = self.inner.index.tags(repo).ok()?;
        (!tags.is_empty()).then(|| Arc::new(tags))
    }
}
