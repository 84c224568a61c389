//! Content-addressed storage: the traits the cache sees, and their implementations.
//!
//! On disk, under the data directory:
//! ```text
//! <data>/blobs/sha256/ab/abcdef…   verified content, manifests included, named by digest
//! <data>/tmp/                      spools being written; anything here at start-up is garbage
//! <data>/index/                    sled: tags, blob descriptors, repository links, access times
//! ```
//! A blob file appears only by `rename` after its bytes were hashed, matched and fsynced, so a
//! crash at any point leaves either nothing or a verified blob.

pub mod fs;
pub mod index;
pub mod journal;

use crate::error::Result;
use crate::oci::{Digest, Repository, Tag};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Verified blobs by digest.
pub trait BlobStore: Send + Sync {
    /// Size of the stored blob; `None` when it is not stored.
    fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Open the stored blob for reading; `None` when it is not stored. The handle stays valid
    /// if the blob is removed meanwhile.
    fn open(&self, digest: &Digest) -> io::Result<Option<File>>;

    /// Start writing content that must hash to `digest`. Nothing becomes visible until
    /// [`BlobWriter::commit`] has verified it; dropping the writer discards the spool.
    fn create(&self, digest: &Digest) -> io::Result<Box<dyn BlobWriter>>;

    /// Store small content (a manifest) in one step, verified like any other.
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), CommitError> {
        let mut w = self.create(digest)?;
        w.write(bytes)?;
        w.commit().map(|_| ())
    }

    /// Remove a stored blob; `false` when it was not there.
    fn remove(&self, digest: &Digest) -> io::Result<bool>;

    /// Every stored blob with its size.
    fn list(&self) -> io::Result<Vec<(Digest, u64)>>;

    /// Bytes and number of stored blobs. Stores that keep a count answer without listing.
    fn usage(&self) -> io::Result<(u64, u64)> {
        let all = self.list()?;
        Ok((all.iter().map(|(_, s)| s).sum(), all.len() as u64))
    }

    /// Bytes of downloads and import batches in progress (not yet verified blobs), which
    /// count against the cache's size like stored ones.
    fn spooled(&self) -> io::Result<u64> {
        Ok(0)
    }

    /// Why writes fail (the last failure, until a blob is stored again), or `None`.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// While writes are failing, try a small one, so that a cache no client writes to (taken
    /// out of service by its failing readiness, or offline) still learns they work again.
    fn probe_writes(&self) {}

    /// Bytes free for new content where the store writes (`None` when it cannot tell).
    fn available(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    /// Move a stored blob aside (it failed verification): it is no longer served, and kept
    /// for inspection. Returns where it went, `None` when it was not there.
    fn quarantine(&self, digest: &Digest) -> io::Result<Option<PathBuf>>;

    /// Start a batch: blobs written and verified together, visible only once all of them
    /// are published. Dropping the batch unpublished discards everything in it.
    fn batch(&self) -> io::Result<Box<dyn Batch>>;
}

/// Blobs that become visible together or not at all (a bundle import).
pub trait Batch: Send {
    /// Write a blob into the batch; its writer verifies the digest on commit.
    fn add(&mut self, digest: &Digest) -> io::Result<Box<dyn BlobWriter>>;
    /// Whether the batch holds `digest` (committed).
    fn contains(&self, digest: &Digest) -> bool;
    /// Open a committed blob of the batch for reading.
    fn open(&self, digest: &Digest) -> io::Result<Option<File>>;
    /// Make every committed blob visible in the store.
    fn publish(self: Box<Self>) -> io::Result<usize>;
}

/// A blob being written. Readers may follow it through [`BlobWriter::reader`] while it grows.
pub trait BlobWriter: Send {
    /// Append bytes (hashed as they go).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Bytes appended so far.
    fn written(&self) -> u64;

    /// A separate read handle on the spool, readable at any offset below [`written`]
    /// (`pread`); it stays valid after commit or abort.
    ///
    /// [`written`]: BlobWriter::written
    fn reader(&self) -> io::Result<File>;

    /// Check that the bytes hash to the digest asked for. They are neither durable nor
    /// visible yet: [`Verified::persist`] makes them so, and dropping the result discards them.
    fn verify(self: Box<Self>) -> Result<Box<dyn Verified>, CommitError>;

    /// Verify the digest, make the bytes durable and visible. On any error nothing is visible.
    fn commit(self: Box<Self>) -> Result<u64, CommitError> {
        Ok(self.verify()?.persist()?)
    }
}

/// Bytes that hashed to their digest, not yet durable or visible. Readers holding
/// [`BlobWriter::reader`] handles may already serve them: they are the right bytes.
pub trait Verified: Send {
    /// Their size.
    fn size(&self) -> u64;

    /// Make them durable, then visible under their digest (fsync, rename, fsync of the
    /// directory). On an error nothing is visible.
    fn persist(self: Box<Self>) -> io::Result<u64>;
}

/// Why a blob could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The bytes hash to something else: nothing was stored.
    #[error("content hashes to {actual}, not {expected}")]
    Mismatch {
        /// Digest asked for.
        expected: Digest,
        /// Digest of the bytes written.
        actual: Digest,
    },
    /// Disk full, permissions, …
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a tag pointed at when last asked upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest.
    pub digest: Digest,
    /// Its `Content-Type`.
    pub media_type: String,
    /// When the upstream last confirmed it, in milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
}

/// The last known referrers of a manifest in a repository: the image index airlock made
/// of them (stored like a manifest), and when the upstream last gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrersRecord {
    /// Digest of the stored answer (an OCI image index).
    pub digest: Digest,
    /// When the upstream last answered, in milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
}

/// What is known about a blob or manifest besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// Media type, when known (always for manifests).
    pub media_type: Option<String>,
}

/// Tag records read at a time by walks over every tag ([`Index::tags_after`]).
pub const TAG_PAGE: usize = 1024;

/// The index: small records about content, kept apart from the content itself. Absent
/// records read as `None`/`false`; every write is atomic per record.
pub trait Index: Send + Sync {
    /// The last known answer for a tag.
    fn tag(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagRecord>>;
    /// Record a tag answer.
    fn set_tag(&self, repo: &Repository, tag: &Tag, record: &TagRecord) -> Result<()>;
    /// Forget a tag (the upstream said it is gone).
    fn remove_tag(&self, repo: &Repository, tag: &Tag) -> Result<()>;
    /// Tags known for a repository, sorted.
    fn tags(&self, repo: &Repository) -> Result<Vec<String>>;
    /// The last known referrers of `subject` in `repo`.
    fn referrers(&self, repo: &Repository, subject: &Digest) -> Result<Option<ReferrersRecord>>;
    /// Record the referrers of `subject` in `repo`.
    fn set_referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
        record: &ReferrersRecord,
    ) -> Result<()>;
    /// Size and media type of content, if known.
    fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>>;
    /// Record size and media type of content.
    fn set_blob_info(&self, digest: &Digest, info: &BlobInfo) -> Result<()>;
    /// Record that `digest` belongs to `repo` (fetched for it, or confirmed by its upstream).
    fn link(&self, repo: &Repository, digest: &Digest) -> Result<()>;
    /// Forget everything recorded about content that was deleted (its size and media type, its
    /// repository links, its access time), so the index shrinks with the store.
    fn forget_blob(&self, digest: &Digest) -> Result<()> {
        let _ = digest;
        Ok(())
    }
    /// Whether `digest` belongs to `repo`.
    fn is_linked(&self, repo: &Repository, digest: &Digest) -> Result<bool>;
    /// Up to `limit` tag records after `after` (from the first when `None`), in key order
    /// (registry, repository, tag, as bytes): a walk over every tag in pages, holding one page
    /// in memory and nothing locked between pages.
    fn tags_after(
        &self,
        after: Option<(&Repository, &Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagRecord)>>;
    /// Every tag record, in key order (registry, repository, tag).
    fn all_tags(&self) -> Result<Vec<(Repository, Tag, TagRecord)>> {
        let mut out: Vec<(Repository, Tag, TagRecord)> = Vec::new();
        loop {
            let after = out.last().map(|(r, t, _)| (r, t));
            let page = self.tags_after(after, TAG_PAGE)?;
            let done = page.len() < TAG_PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }
    /// Note that content was just used (for eviction); cheap enough for every request.
    fn touch(&self, digest: &Digest) -> Result<()>;
    /// When content was last used (milliseconds since the epoch), if ever recorded.
    fn last_access(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Record that `repo`'s manifest `digest` was pulled by digest (as Kubernetes pulls pinned
    /// references): an image in its own right, listed and aged like a tagged one. Keeps the
    /// first time (ms since the epoch) when already recorded.
    fn set_digest_pull(&self, repo: &Repository, digest: &Digest, at_ms: u64) -> Result<()>;
    /// Forget a pull by digest (the image was removed or evicted).
    fn remove_digest_pull(&self, repo: &Repository, digest: &Digest) -> Result<()>;
    /// Every pull by digest: repository, manifest, when first pulled; in key order.
    fn digest_pulls(&self) -> Result<Vec<(Repository, Digest, u64)>>;
    /// Pinned image references (`registry/repo:tag` or `registry/repo@digest`), sorted.
    fn pins(&self) -> Result<Vec<String>>;
    /// Pin or unpin an image reference; returns whether it was pinned before.
    fn set_pinned(&self, reference: &str, pinned: bool) -> Result<bool>;
    /// Pin an image reference and remember the manifest it named then: that content stays
    /// protected even if the tag later moves. Returns whether it was pinned before.
    fn pin_at(&self, reference: &str, digest: &Digest) -> Result<bool>;
    /// The manifest a pin remembered, if any.
    fn pinned_digest(&self, reference: &str) -> Result<Option<Digest>>;
    /// Why writes fail right now (a full disk, an I/O error), or `None` while they work.
    fn write_failure(&self) -> Option<String> {
        None
    }
    /// While writes are failing, try a small one (see [`BlobStore::probe_writes`]).
    fn probe_writes(&self) {}
    /// Make everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// A number that changes whenever a tag, link, digest pull or pin is written (access
    /// times aside), so a caller can skip work that depends only on those; `None` when the
    /// index cannot tell, and the caller redoes it.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// Milliseconds since the Unix epoch, for records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
