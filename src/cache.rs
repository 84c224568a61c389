//! The cache policy: what is a hit, a miss, a stale answer; one fill per missing blob.
//!
//! * Blobs: stored and linked to the repository → hit. Missing → join the one fill for that
//!   digest (starting it if none runs); every requester tails the growing spool.
//! * Manifests by tag: hot cache → index → upstream when stale (HEAD first); when the upstream
//!   cannot answer, the last known answer is served (stale-if-error).
//! * Manifests by digest: immutable, never revalidated.
//!
//! A blob or manifest is served under a repository only once it is known to belong there:
//! fetched for it, named by one of its manifests, or confirmed by its upstream.

mod blobs;
mod fill;
mod flights;
mod hot;
mod inuse;
mod maintenance;
mod manifests;
mod mapped;
mod reader;
mod referrers;
mod resident;
mod tags;

pub use inuse::Hold;
pub use maintenance::{Exclusive, Maintenance};
#[cfg(test)]
pub(crate) use mapped::chunk;
pub use mapped::{Span, span};
pub use reader::{BlobSource, BlobStream};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, Repository};
use crate::store::{BlobStore, Index};
use crate::upstream::{Entry, Upstreams};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// How a request was answered, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, without downloading anything.
    Hit,
    /// Fetched from the upstream for this request.
    Miss,
    /// Joined a fetch another request had started.
    Coalesced,
    /// From the cache because the upstream could not answer.
    Stale,
}

impl Outcome {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
        }
    }
}

/// A manifest, byte for byte as the upstream sent it.
#[derive(Debug)]
pub struct Manifest {
    /// Its digest (the sha256 of `bytes`).
    pub digest: Digest,
    /// Its `Content-Type`.
    pub media_type: String,
    /// Its bytes.
    pub bytes: Bytes,
    /// Its response headers, made once: `Content-Type`, `Docker-Content-Digest`, `ETag`
    /// (each `None` if it would not be a valid header value).
    pub headers: [Option<http::HeaderValue>; 3],
    /// Repositories it is known to be linked in, so that serving it from memory needs no
    /// index read. Links go only with the whole digest (`Index::forget_blob`), and then
    /// [`Cache::forget`] drops this manifest from memory, and this list with it.
    linked: std::sync::RwLock<Vec<Repository>>,
}

/// How many repositories a manifest in memory remembers it is linked in; past that, the
/// index is asked.
const MAX_LINKED: usize = 16;

impl Manifest {
    /// A verified manifest: `digest` is the sha256 of `bytes`.
    pub fn new(digest: Digest, media_type: String, bytes: Bytes) -> Manifest {
        let text = digest.to_string();
        let value = |s: &str| http::HeaderValue::from_str(s).ok();
        Manifest {
            headers: [
                value(&media_type),
                value(&text),
                value(&format!("\"{text}\"")),
            ],
            digest,
            media_type,
            bytes,
            linked: Default::default(),
        }
    }

    fn known_in(&self, repo: &Repository) -> bool {
        let linked = self.linked.read().unwrap_or_else(|p| p.into_inner());
        linked.contains(repo)
    }

    fn remember_in(&self, repo: &Repository) {
        let mut linked = self.linked.write().unwrap_or_else(|p| p.into_inner());
        if linked.len() < MAX_LINKED && !linked.contains(repo) {
            linked.push(repo.clone());
        }
    }
}

/// A manifest answer.
#[derive(Debug, Clone)]
pub struct ManifestAnswer {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// How it was found.
    pub outcome: Outcome,
}

/// A blob answer: where to read it from, and how it was found.
pub struct BlobAnswer {
    /// The bytes (stored, or a fill in progress).
    pub source: BlobSource,
    /// How it was found.
    pub outcome: Outcome,
}

/// Settings of the cache itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Memory for hot manifests.
    pub memory_bytes: u64,
    /// Upper bound on one blob download.
    pub fill_timeout: Duration,
    /// How long "not known upstream" is remembered.
    pub negative_ttl: Duration,
    /// Upstream blob downloads at once.
    pub max_downloads: usize,
    /// Free space kept on the store's filesystem.
    pub min_free: u64,
    /// What may be fetched from upstream at all.
    pub fetch: crate::fetch_policy::FetchPolicy,
}

/// The cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn BlobStore>,
    index: Arc<dyn Index>,
    upstreams: Upstreams,
    hot: hot::Hot,
    fills: fill::Fills,
    in_use: inuse::InUse,
    maintenance: Maintenance,
    metrics: Arc<Metrics>,
    flights: flights::Flights<manifests::FlightKey, ManifestAnswer>,
    tag_lists: flights::Flights<Repository, Option<Arc<Vec<String>>>>,
    referrers: flights::Flights<(Repository, Digest), Arc<Vec<crate::oci::referrers::Referrer>>>,
    settings: Settings,
}

impl Cache {
    /// A cache over `store` and `index`, fetching misses from `upstreams`.
    pub fn new(
        store: Arc<dyn BlobStore>,
        index: Arc<dyn Index>,
        upstreams: Upstreams,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                metrics,
                hot: hot::Hot::new(settings.memory_bytes, settings.negative_ttl),
                fills: fill::Fills::new(settings.max_downloads),
                in_use: inuse::InUse::default(),
                maintenance: Maintenance::default(),
                flights: flights::Flights::default(),
                tag_lists: flights::Flights::default(),
                referrers: flights::Flights::default(),
                store,
                index,
                upstreams,
                settings,
            }),
        }
    }

    /// The metrics everything records to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The configured upstreams (for routing).
    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    /// The index, for the cache operations (gc, bundles, preload, `ops`) alone.
    pub(crate) fn index(&self) -> &Arc<dyn Index> {
        &self.inner.index
    }

    /// The blob store, for the cache operations (gc, bundles, preload, `ops`) alone.
    pub(crate) fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    /// Why new content cannot be stored right now (index writes fail, or the disk is under
    /// the free-space reserve); `None` when it can. Cached content is served either way.
    pub fn write_trouble(&self) -> Option<String> {
        self.inner.index.probe_writes();
        self.inner.store.probe_writes();
        if let Some(why) = self.inner.index.write_failure() {
            return Some(why);
        }
        if let Some(why) = self.inner.store.write_failure() {
            return Some(why);
        }
        match self.inner.store.available() {
            Ok(Some(free)) if free < self.inner.settings.min_free => Some(format!(
                "the disk has {free} bytes free, under the storage.min_free reserve of {}: new downloads are refused",
                self.inner.settings.min_free
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot tell the disk's free space: {e}")),
        }
    }

    /// The turn of an operation that adds or removes content wholesale (import, eviction,
    /// purge, collection, pinning), so one never removes what another counts on.
    pub async fn exclusive(&self) -> Exclusive {
        self.inner.maintenance.exclusive().await
    }

    /// The lock itself, for operations that take their turn on a blocking thread.
    pub fn maintenance(&self) -> Maintenance {
        self.inner.maintenance.clone()
    }

    /// Hold `digest` in use (eviction, purges and collection leave it alone) until the hold
    /// is dropped: for exports, which read blobs for a long time.
    pub fn hold(&self, digest: &Digest) -> Hold {
        self.inner.in_use.hold(digest)
    }

    /// Whether a client is being served `digest` right now (eviction leaves it alone).
    pub fn in_use(&self, digest: &Digest) -> bool {
        self.inner.in_use.contains(digest)
    }

    /// Forget what memory holds about `digest` (after it was removed or quarantined).
    pub async fn forget(&self, digest: &Digest) {
        self.inner.hot.manifests.invalidate(digest).await;
    }

    /// Forget what memory holds about a tag (after it was removed).
    pub async fn forget_tag_answer(&self, repo: &Repository, tag: &crate::oci::Tag) {
        self.inner
            .hot
            .tags
            .invalidate(&(repo.clone(), tag.clone()))
            .await;
    }

    /// Whether the upstream said, within the negative TTL, that it does not have `u`.
    fn known_unknown(&self, u: &hot::Unknown) -> bool {
        !self.inner.settings.negative_ttl.is_zero() && self.inner.hot.unknown.contains_key(u)
    }

    /// Remember for the negative TTL that the upstream does not have `u`.
    async fn remember_unknown(&self, u: hot::Unknown) {
        if !self.inner.settings.negative_ttl.is_zero() {
            self.inner.hot.unknown.insert(u, ()).await;
        }
    }

    /// Count a refusal of the fetch policy.
    fn fetch_allowed(&self, check: Result<()>) -> Result<()> {
        if check.is_err() {
            self.inner
                .metrics
                .auth_denials
                .with_label_values(&["fetch_policy"])
                .inc();
        }
        check
    }

    fn policy(&self) -> &crate::fetch_policy::FetchPolicy {
        &self.inner.settings.fetch
    }

    fn upstream(&self, repo: &Repository) -> Result<&Entry> {
        self.inner.upstreams.get(&repo.registry)
    }

    fn blob_unknown(repo: &Repository, digest: &Digest) -> Error {
        Error::BlobUnknown(format!("{digest} is not known in {repo}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(n: &str) -> Repository {
        Repository {
            registry: "docker.io".parse().unwrap(),
            name: n.parse().unwrap(),
        }
    }

    #[test]
    fn a_manifest_remembers_only_repositories_it_was_found_in_and_only_so_many() {
        let bytes = Bytes::from_static(b"{}");
        let m = Manifest::new(Digest::of(&bytes), "text/x\u{7f}bad".into(), bytes);
        // An invalid media type gives no header; the digest headers are always valid.
        assert!(m.headers[0].is_none());
        let digest = m.digest.to_string();
        assert_eq!(m.headers[1].as_ref().unwrap(), digest.as_str());
        assert_eq!(
            m.headers[2].as_ref().unwrap(),
            format!("\"{digest}\"").as_str()
        );
        assert!(!m.known_in(&repo("a/one")));
        m.remember_in(&repo("a/one"));
        m.remember_in(&repo("a/one"));
        assert!(m.known_in(&repo("a/one")));
        assert!(
            !m.known_in(&repo("a/two")),
            "another name is asked about, never assumed"
        );
        for i in 0..2 * MAX_LINKED {
            m.remember_in(&repo(&format!("b/{i}")));
        }
        assert_eq!(m.linked.read().unwrap().len(), MAX_LINKED);
        assert!(!m.known_in(&repo(&format!("b/{}", MAX_LINKED))));
    }
}
