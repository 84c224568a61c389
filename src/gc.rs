//! A cache that manages itself: a size cap with least-recently-used eviction between a high
//! and a low watermark, purges (`cache rm`), garbage collection of what nothing references,
//! and re-verification of every stored blob (corrupt ones are quarantined and fetched again
//! on the next pull).
//!
//! Eviction works image by image (so every image `cache ls` lists still pulls completely),
//! never removes pinned content or a blob being served, and removes a shared blob only when
//! no remaining image uses it.

mod evict;
mod refs;
mod verify;

use crate::cache::{Cache, Exclusive};
use crate::error::{Error, Result};
use crate::inventory;
use crate::oci::{Digest, ImageRef, Reference, Tag};
use crate::progress::Progress;
use crate::store::{BlobStore, Index};
use refs::Snapshot;
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
    /// Digests that could not be read (kept: a read error says nothing about the content).
    #[serde(default)]
    pub unreadable: Vec<String>,
}

/// Current usage. Blocking (it reads pinned manifests); its cost grows with the pins, not
/// with the store, whose totals are kept as blobs come and go.
pub fn usage(cache: &Cache) -> Result<Usage> {
    let (bytes, blobs) = cache.store().usage()?;
    Ok(Usage {
        bytes,
        blobs,
        pinned_bytes: pinned_bytes(cache)?,
    })
}

/// Bytes stored of what pins protect: a walk of every pin's closure (blocking), after which
/// the memory it took goes back to the system (an import pins everything it brings: at
/// 1 000 000 blobs the walk holds a million digests).
pub fn pinned_bytes(cache: &Cache) -> Result<u64> {
    let (store, index) = (cache.store().as_ref(), cache.index().as_ref());
    let mut pinned = 0;
    let digests = inventory::pinned_digests(store, index)?;
    for d in &digests {
        pinned += store.stat(d)?.unwrap_or(0);
    }
    drop(digests);
    crate::memory::release();
    Ok(pinned)
}

/// Evict least recently used unpinned images until usage is at most `cap.max * cap.low`, if
/// it is above `cap.max * cap.high`. Loose blobs (no tag or pin reaches them) go first, oldest
/// first; then whole images, least recently used first (the later of the manifest's last
/// access and the tag's last confirmation). Pinned content, blobs being served and blobs
/// another remaining image uses are never removed.
pub async fn evict(cache: &Cache, cap: Cap) -> Result<Removal> {
    let exclusive = cache.exclusive().await;
    let removal = evict::evict(cache, cap, &exclusive).await?;
    let m = cache.metrics();
    m.evictions.inc_by(removal.images.len() as u64);
    m.evicted_bytes.inc_by(removal.bytes);
    Ok(removal)
}

/// Purge an image: its tag (or digest) record, its pin, and every blob of it no other image
/// uses.
///
/// For a digest reference, the tags of that repository pointing at the digest are removed
/// too (otherwise they would keep all of it). Blobs being served stay until a later
/// eviction or collection. An image the cache does not hold is `MANIFEST_UNKNOWN`.
pub async fn remove(cache: &Cache, image: &ImageRef) -> Result<Removal> {
    let exclusive = cache.exclusive().await;
    let (index, repo) = (cache.index(), &image.repo);
    let (root, tags) = purge_targets(cache, image)?;
    let named = |reference| {
        ImageRef {
            repo: repo.clone(),
            reference,
        }
        .to_string()
    };
    let mut removal = Removal::default();
    index.set_pinned(&image.to_string(), false)?;
    index.set_pinned(&named(Reference::Digest(root.clone())), false)?;
    index.remove_digest_pull(repo, &root)?;
    for t in &tags {
        let tagged = named(Reference::Tag(t.clone()));
        index.set_pinned(&tagged, false)?;
        index.remove_tag(repo, t)?;
        cache.forget_tag_answer(repo, t).await;
        removal.images.push(tagged);
    }
    if tags.is_empty() {
        removal.images.push(image.to_string());
    }
    let (freed, since) = blocking(cache, move |store, index| {
        let snap = Snapshot::take(store, index)?;
        let closure = inventory::closure(store, &root, None)?;
        let freed = snap.sized(closure.stored.iter().filter(|d| !snap.reaches(d)));
        Ok((freed, snap.started_ms))
    })
    .await?;
    (removal.blobs, removal.bytes) = delete(cache, freed, since, &exclusive).await;
    release_memory().await;
    Ok(removal)
}

/// The manifest a purge removes and the tags to remove with it: a tag's record, or for a
/// digest the tags of its repository pointing at it. `MANIFEST_UNKNOWN` when not cached.
fn purge_targets(cache: &Cache, image: &ImageRef) -> Result<(Digest, Vec<Tag>)> {
    let (index, repo) = (cache.index(), &image.repo);
    match &image.reference {
        Reference::Tag(t) => match index.tag(repo, t)? {
            Some(rec) => Ok((rec.digest, vec![t.clone()])),
            None => Err(inventory::not_cached(image)),
        },
        Reference::Digest(d) => {
            let tags: Vec<Tag> = index
                .all_tags()?
                .into_iter()
                .filter(|(r, _, rec)| r == repo && rec.digest == *d)
                .map(|(_, t, _)| t)
                .collect();
            let stored = index.is_linked(repo, d)? && cache.store().stat(d)?.is_some();
            if tags.is_empty() && !stored {
                return Err(inventory::not_cached(image));
            }
            Ok((d.clone(), tags))
        }
    }
}

/// Remove every stored blob that no tagged or pinned image reaches and nobody is reading
/// (content pulled by digest only, what evictions and purges left behind while it was being
/// served, leftovers of tags that moved).
pub async fn collect(cache: &Cache) -> Result<Removal> {
    let exclusive = cache.exclusive().await;
    let (garbage, since) = blocking(cache, |store, index| {
        let snap = Snapshot::take(store, index)?;
        Ok((snap.unreferenced(), snap.started_ms))
    })
    .await?;
    let (blobs, bytes) = delete(cache, garbage, since, &exclusive).await;
    release_memory().await;
    Ok(Removal {
        images: Vec::new(),
        blobs,
        bytes,
    })
}

/// Re-hash every stored blob; quarantine the corrupt ones. Progress: one unit (`verify`)
/// advancing by bytes hashed, and a note per corrupt blob.
pub async fn verify(cache: &Cache, progress: &Progress) -> Result<VerifyReport> {
    verify::verify(cache, progress).await
}

/// After a walk of the whole cache: give the memory it freed back (see `crate::memory`).
async fn release_memory() {
    let _ = tokio::task::spawn_blocking(crate::memory::release).await;
}

/// Run `f` over the store and index on the blocking pool.
async fn blocking<T, F>(cache: &Cache, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn BlobStore, &dyn Index) -> Result<T> + Send + 'static,
{
    let (store, index) = (cache.store().clone(), cache.index().clone());
    tokio::task::spawn_blocking(move || f(store.as_ref(), index.as_ref()))
        .await
        .map_err(Error::internal)?
}

/// Delete `blobs`, except those being served or used since `since_ms` (a pull that began
/// after the scan), and forget the manifests among them. Returns how many blobs and bytes
/// went. A blob that cannot be deleted is logged and skipped: the rest still go.
async fn delete(
    cache: &Cache,
    blobs: Vec<(Digest, u64)>,
    since_ms: u64,
    _turn: &Exclusive,
) -> (usize, u64) {
    if blobs.is_empty() {
        return (0, 0);
    }
    let c = cache.clone();
    let runtime = tokio::runtime::Handle::current();
    let removed = tokio::task::spawn_blocking(move || {
        let mut removed = Vec::new();
        for (digest, size) in blobs {
            let used = c.index().last_access(&digest).ok().flatten();
            if c.in_use(&digest) || used.is_some_and(|t| t > since_ms) {
                continue;
            }
            match c.store().remove(&digest) {
                Ok(true) => {
                    // Unless a new fill stored it again meanwhile, the index forgets it too.
                    if matches!(c.store().stat(&digest), Ok(None))
                        && let Err(e) = c.index().forget_blob(&digest)
                    {
                        tracing::warn!(%digest, error = %e, "cannot forget a deleted blob in the index");
                    }
                    // At once, not after the batch: memory must not answer for links the
                    // index no longer has.
                    runtime.block_on(c.forget(&digest));
                    removed.push((digest, size))
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%digest, error = %e, "cannot delete a blob"),
            }
        }
        removed
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "blob deletion task failed");
        Vec::new()
    });
    (removed.len(), removed.iter().map(|(_, s)| s).sum())
}
