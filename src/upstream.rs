//! Upstream registries: the [`Upstream`] trait the cache sees, the selection of one by
//! registry host ([`Upstreams`]), and the HTTP implementation (`client`, `auth`).

pub mod auth;
pub mod breaker;
pub mod budget;
pub mod client;
pub mod credentials;
pub mod resolve;
pub mod trust;

use crate::error::{Error, Result};
use crate::oci::{Digest, Reference, Registry, RepoName};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A manifest as the upstream answered it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// `Content-Type`, kept exactly.
    pub media_type: String,
    /// `Docker-Content-Digest`, when the upstream sent one.
    pub digest: Option<Digest>,
    /// The bytes (`None` for a HEAD).
    pub bytes: Option<Bytes>,
}

/// A blob body streaming from the upstream.
pub struct BlobBody {
    /// `Content-Length`, when sent.
    pub size: Option<u64>,
    /// The bytes; an `Err` item means the transfer broke.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

/// One upstream registry, pull side. `Ok(None)` always means the upstream answered 404;
/// every other failure is an `Err` classified by [`Error`] (unavailable, 429, refused, bad).
#[async_trait]
pub trait Upstream: Send + Sync {
    /// A manifest by tag or digest; `accept` is sent as the `Accept` header.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
        head: bool,
    ) -> Result<Option<FetchedManifest>>;

    /// Start downloading a blob.
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobBody>>;

    /// Whether the blob exists in `repo` upstream, and its size when the upstream says.
    async fn blob_exists(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Option<u64>>>;

    /// Every tag of a repository (following pagination).
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>>;

    /// Every referrer of `subject` its referrers API lists (all pages); `Ok(None)` when the
    /// upstream has no referrers API (it answered 404), as most registries do not.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Vec<crate::oci::referrers::Referrer>>> {
        let _ = (repo, subject);
        Ok(None)
    }

    /// Why the upstream's pull budget is at its reserve (only client requests spend it now),
    /// or `None`.
    fn budget_low(&self) -> Option<String> {
        None
    }

    /// How often a paused preload rechecks the budget.
    fn budget_recheck(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
}

/// An upstream with the policy that goes with it.
#[derive(Clone)]
pub struct Entry {
    /// The client.
    pub upstream: Arc<dyn Upstream>,
    /// How long its tag answers stay fresh.
    pub tag_ttl: Duration,
    /// How long a client waits on a revalidation when a stale answer is at hand.
    pub stale_timeout: Duration,
}

/// The configured upstreams by registry host.
#[derive(Clone)]
pub struct Upstreams {
    entries: HashMap<Registry, Entry>,
    offline: bool,
}

impl Upstreams {
    /// Upstreams by registry. When `offline`, no upstream is ever contacted.
    pub fn new(entries: HashMap<Registry, Entry>, offline: bool) -> Upstreams {
        Upstreams { entries, offline }
    }

    /// Whether `registry` has an upstream.
    pub fn contains(&self, registry: &Registry) -> bool {
        self.entries.contains_key(registry)
    }

    /// The upstream for `registry`, or an error naming it. Never a silent fallback elsewhere.
    pub fn get(&self, registry: &Registry) -> Result<&Entry> {
        if self.offline {
            return Err(Error::UpstreamUnavailable {
                registry: registry.to_string(),
                message: "airlock runs offline: only cached content is served".into(),
            });
        }
        self.entries.get(registry).ok_or_else(|| {
            Error::NameUnknown(format!(
                "no upstream is configured for registry {registry}: add an [[upstream]] with registry = \"{registry}\""
            ))
        })
    }
}
