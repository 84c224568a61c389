//! The hot in-memory layer (moka): manifests by digest, bounded in bytes, and tag answers and
//! tag lists, bounded in entries. It only ever holds copies of what the store and index hold.

use super::Manifest;
use crate::oci::{Digest, Repository, Tag};
use crate::store::TagRecord;
use moka::future::Cache;
use std::sync::Arc;
use std::time::Instant;

const MAX_TAG_ANSWERS: u64 = 100_000;
const MAX_TAG_LISTS: u64 = 10_000;

/// The hot caches.
pub struct Hot {
    /// Verified manifests by digest.
    pub manifests: Cache<Digest, Arc<Manifest>>,
    /// Last known tag answers.
    pub tags: Cache<(Repository, Tag), TagRecord>,
    /// Tag lists with the time they were fetched.
    pub tag_lists: Cache<Repository, (Instant, Arc<Vec<String>>)>,
}

impl Hot {
    /// Hot caches holding at most `memory_bytes` of manifests.
    pub fn new(memory_bytes: u64) -> Hot {
        Hot {
            manifests: Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|_, m: &Arc<Manifest>| {
                    u32::try_from(m.bytes.len() + 128).unwrap_or(u32::MAX)
                })
                .build(),
            tags: Cache::new(MAX_TAG_ANSWERS),
            tag_lists: Cache::new(MAX_TAG_LISTS),
        }
    }
}
