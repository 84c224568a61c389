//! A cache that manages itself: a size cap with least-recently-used eviction between a high
//! and a low watermark, purges (`cache rm`), garbage collection of what nothing references,
//! and re-verification of every stored blob (corrupt ones are quarantined and fetched again
//! on the next pull).
//!
//! Eviction works image by image (so every image `cache ls` lists still pulls completely),
//! never removes pinned content or a blob being served, and removes a shared blob only when
//! no remaining image uses it.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::oci::ImageRef;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};

/// The size cap.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// `storage.max_size` in bytes.
    pub max: u64,
    /// Eviction starts above `max * high`…
    pub high: f64,
    /// …and stops at or below `max * low`.
    pub low: f64,
}

/// What the cache holds on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of stored blobs (manifests included).
    pub bytes: u64,
    /// Number of stored blobs.
    pub blobs: u64,
    /// Bytes a pin protects.
    pub pinned_bytes: u64,
}

/// What an eviction, purge or collection removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Removal {
    /// Image references whose tags were removed.
    pub images: Vec<String>,
    /// Blobs deleted.
    pub blobs: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blobs checked.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Digests whose content did not match, now quarantined.
    pub corrupt: Vec<String>,
}

/// Current usage.
pub fn usage(cache: &Cache) -> Result<Usage> {
    let _ = cache;
    Err(Error::Unsupported("usage is not implemented yet".into()))
}

/// Evict least recently used unpinned images until usage is at most `cap.max * cap.low`, if
/// it is above `cap.max * cap.high`.
pub async fn evict(cache: &Cache, cap: Cap) -> Result<Removal> {
    let _ = (cache, cap);
    Err(Error::Unsupported("eviction is not implemented yet".into()))
}

/// Purge an image: its tag (or digest) record, its pin, and every blob of it no other image
/// uses.
pub async fn remove(cache: &Cache, image: &ImageRef) -> Result<Removal> {
    let _ = (cache, image);
    Err(Error::Unsupported("cache rm is not implemented yet".into()))
}

/// Remove every stored blob that no tagged or pinned image reaches and nobody is reading.
pub async fn collect(cache: &Cache) -> Result<Removal> {
    let _ = cache;
    Err(Error::Unsupported("cache gc is not implemented yet".into()))
}

/// Re-hash every stored blob; quarantine the corrupt ones.
pub async fn verify(cache: &Cache, progress: &Progress) -> Result<VerifyReport> {
    let _ = (cache, progress);
    Err(Error::Unsupported(
        "cache verify is not implemented yet".into(),
    ))
}
