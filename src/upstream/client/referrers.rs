//! The upstream's referrers API (`GET /v2/<name>/referrers/<digest>`), all pages. A 404 means
//! the registry has none (distribution 2.8, Docker Hub and GHCR have none): the cache then
//! reads the tag schema instead.

use super::{HttpUpstream, MAX_TAG_PAGES, header_str, next_link};
use crate::error::Result;
use crate::oci::manifest::{MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::oci::referrers::{self, MAX_REFERRERS, Referrer};
use crate::oci::{Digest, RepoName};
use crate::upstream::trust;
use http::{Method, StatusCode, header};

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
            let resp = self
                .send(
                    Method::GET,
                    url.clone(),
                    repo,
                    Some(OCI_INDEX),
                    Some(self.request_timeout),
                )
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let next = header_str(&resp, header::LINK)
                .and_then(next_link)
                .and_then(|l| url.join(&l).ok());
            if let Some(n) = &next {
                trust::link(&self.base, n).map_err(|why| self.invalid(format!("refused {why}")))?;
            }
            let body = self.read_limited(resp, MAX_MANIFEST_BYTES).await?;
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
