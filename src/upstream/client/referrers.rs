//! The upstream's referrers API (`GET /v2/<name>/referrers/<digest>`), all pages. A 404 means
//! the registry has none (distribution 2.8, Docker Hub and GHCR have none): the cache then
//! reads the tag schema instead.

use super::{HttpUpstream, MAX_TAG_PAGES};
use crate::error::Result;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::referrers::{self, MAX_REFERRERS, Referrer};
use crate::oci::{Digest, RepoName};

impl HttpUpstream {
    /// Every referrer of `subject` the upstream lists, `None` when it has no referrers API.
    pub(super) async fn fetch_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        let mut url = self.url(repo, &format!("referrers/{subject}"))?;
        let mut all: Vec<Referrer> = Vec::new();
        let mut read = 0usize;
        for _ in 0..MAX_TAG_PAGES {
            let Some((body, next)) = self.page(&url, repo, Some(OCI_INDEX)).await? else {
                return Ok(None);
            };
            read += body.len();
            let page = referrers::parse(&body)
                .map_err(|e| self.invalid(format!("the referrers of {subject} in {repo}: {e}")))?;
            referrers::merge(&mut all, page);
            match next {
                Some(_) if read >= referrers::MAX_ANSWER_BYTES => {
                    tracing::warn!(%repo, %subject, referrers = all.len(), "referrers cut after {read} bytes of answers");
                    return Ok(Some(all));
                }
                Some(n) if all.len() < MAX_REFERRERS => url = n,
                _ => return Ok(Some(all)),
            }
        }
        tracing::warn!(%repo, %subject, referrers = all.len(), "referrers cut after {MAX_TAG_PAGES} pages");
        Ok(Some(all))
    }
}
