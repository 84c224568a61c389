//! The hot in-memory layer (moka): manifests by digest, bounded in bytes, and tag answers and
//! tag lists, bounded in entries. It only ever holds copies of what the store and index hold,
//! and, for a short while, what the upstream said it does not have.

use super::Manifest;
use crate::oci::{Digest, Repository, Tag};
use crate::store::TagRecord;
use moka::future::Cache;
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

const MAX_TAG_ANSWERS: u64 = 100_000;
/// Names, tags and digests remembered as unknown upstream.
const MAX_NEGATIVE: u64 = 100_000;

/// What the upstream said it does not have: a tag, a manifest or blob digest, or a whole
/// repository (its tag list).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unknown {
    /// `repo:tag`.
    Tag(Repository, Tag),
    /// A manifest or blob of `repo`.
    Digest(Repository, Digest),
    /// `repo`'s tag list.
    Tags(Repository),
}
/// A repository and tag, owned (the key of [`Hot::tags`]) or borrowed (how it is looked
/// up): a hot tag answer is found without copying the three names.
pub trait TagKey: Sync {
    /// The repository and the tag.
    fn parts(&self) -> (&Repository, &Tag);
}

impl TagKey for (Repository, Tag) {
    fn parts(&self) -> (&Repository, &Tag) {
        (&self.0, &self.1)
    }
}

impl TagKey for (&Repository, &Tag) {
    fn parts(&self) -> (&Repository, &Tag) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn TagKey + 'a> for (Repository, Tag) {
    fn borrow(&self) -> &(dyn TagKey + 'a) {
        self
    }
}

// As a tuple hashes: each part in order, so both forms of a key hash alike.
impl Hash for dyn TagKey + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
    }
}

impl PartialEq for dyn TagKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn TagKey + '_ {}

/// Memory for tag lists (a popular repository has tens of thousands of tags).
const TAG_LIST_BYTES: u64 = 32 << 20;
/// Bound on the memory of referrers answers (descriptors, roughly).
const REFERRERS_BYTES: u64 = 16 << 20;

/// The hot caches.
pub struct Hot {
    /// Verified manifests by digest.
    pub manifests: Cache<Digest, Arc<Manifest>>,
    /// Last known tag answers, looked up by [`TagKey`].
    pub tags: Cache<(Repository, Tag), Arc<TagRecord>>,
    /// Tag lists with the time they were fetched.
    pub tag_lists: Cache<Repository, (Instant, Arc<Vec<String>>)>,
    /// What the upstream recently said it does not have.
    pub unknown: Cache<Unknown, ()>,
    /// Referrers answers by repository and subject.
    pub referrers: Cache<(Repository, Digest), super::referrers::Known>,
}

impl Hot {
    /// Hot caches holding at most `memory_bytes` of manifests, remembering unknown names for
    /// `negative_ttl`.
    pub fn new(memory_bytes: u64, negative_ttl: std::time::Duration) -> Hot {
        Hot {
            manifests: Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|_, m: &Arc<Manifest>| {
                    u32::try_from(m.bytes.len() + 128).unwrap_or(u32::MAX)
                })
                .build(),
            tags: Cache::new(MAX_TAG_ANSWERS),
            tag_lists: Cache::builder()
                .max_capacity(TAG_LIST_BYTES)
                .weigher(|_, (_, tags): &(Instant, Arc<Vec<String>>)| {
                    let bytes: usize = tags.iter().map(|t| t.len() + 24).sum();
                    u32::try_from(bytes + 64).unwrap_or(u32::MAX)
                })
                .build(),
            referrers: Cache::builder()
                .max_capacity(REFERRERS_BYTES)
                .weigher(|_, k: &super::referrers::Known| {
                    u32::try_from(k.weight()).unwrap_or(u32::MAX)
                })
                .build(),
            unknown: Cache::builder()
                .max_capacity(MAX_NEGATIVE)
                .time_to_live(negative_ttl.max(std::time::Duration::from_millis(1)))
                .build(),
        }
    }
}
