//! Least-recently-used eviction between the watermarks: loose blobs (no tag or pin reaches
//! them) first, oldest access first; then whole images, least recently used first, so every
//! image that stays listed still pulls completely.
//!
//! Never removed: pinned images and anything a pin reaches; a blob being served (its image
//! waits for the next round); a blob another remaining image reaches; an image used or
//! re-tagged since the scan.

use super::refs::Snapshot;
use super::{Cap, Removal, blocking, delete};
use crate::cache::{Cache, Exclusive};
use crate::error::Result;
use crate::oci::{Digest, Reference};
use crate::store::Index;
use crate::store::index::TOUCH_EVERY_MS;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the "pins alone exceed the cap" warning was logged, until pins fit again.
static PINS_OVER_CAP: AtomicBool = AtomicBool::new(false);

/// See [`super::evict`].
pub(super) async fn evict(cache: &Cache, cap: Cap, turn: &Exclusive) -> Result<Removal> {
    let high = (cap.max as f64 * cap.high) as u64;
    let low = (cap.max as f64 * cap.low) as u64;
    // Under the cap a pass costs two counters: nothing is scanned.
    let (stored, spooled) =
        blocking(cache, |store, _| Ok((store.usage()?.0, store.spooled()?))).await?;
    if stored + spooled <= high {
        return Ok(Removal::default());
    }
    let removal = over_cap(cache, high, low, cap, turn).await;
    super::release_memory().await;
    removal
}

/// A pass above the high watermark: a walk of the whole cache, then deletions.
async fn over_cap(
    cache: &Cache,
    high: u64,
    low: u64,
    cap: Cap,
    turn: &Exclusive,
) -> Result<Removal> {
    let (mut snap, loose, spooled) = blocking(cache, |store, index| {
        let snap = Snapshot::take(store, index)?;
        let loose = oldest_first(index, snap.unreferenced())?;
        Ok((snap, loose, store.spooled()?))
    })
    .await?;
    // Downloads in progress will be blobs soon: they count against the cap now, so the
    // disk never holds max_size plus every spool.
    let mut run = Run {
        total: snap.total() + spooled,
        low,
        since: snap.started_ms,
        removal: Removal::default(),
    };
    if run.total <= high {
        return Ok(run.removal);
    }
    warn_if_pins_exceed(snap.pinned_bytes(), low, cap);
    run.loose(cache, loose, turn).await;
    run.images(cache, &mut snap, turn).await?;
    if run.total > low {
        tracing::debug!(
            total = run.total,
            low,
            "eviction stopped above the low watermark: the rest is pinned or in use"
        );
    }
    Ok(run.removal)
}

/// One eviction under way.
struct Run {
    /// Bytes stored now (as far as this run knows).
    total: u64,
    /// The target.
    low: u64,
    /// When the scan began.
    since: u64,
    /// What went so far.
    removal: Removal,
}

impl Run {
    /// Delete the oldest loose blobs until the target is reached (in-use ones are kept).
    async fn loose(&mut self, cache: &Cache, loose: Vec<(Digest, u64)>, turn: &Exclusive) {
        let mut loose = loose.into_iter().peekable();
        while self.total > self.low && loose.peek().is_some() {
            // Just enough of them to reach the target, if all of them can go.
            let (mut batch, mut planned) = (Vec::new(), 0);
            while self.total.saturating_sub(planned) > self.low
                && let Some((d, size)) = loose.next()
            {
                planned += size;
                batch.push((d, size));
            }
            self.delete(cache, batch, turn).await;
        }
    }

    /// Remove whole images, least recently used first, until the target is reached.
    async fn images(&mut self, cache: &Cache, snap: &mut Snapshot, turn: &Exclusive) -> Result<()> {
        for i in snap.lru_order() {
            if self.total <= self.low {
                break;
            }
            let freed = snap.freed_by(i);
            if let Some((d, _)) = freed.iter().find(|(d, _)| cache.in_use(d)) {
                let image = snap.images[i].reference();
                tracing::debug!(%image, digest = %d, "not evicting an image being served");
                continue;
            }
            if !untouched_since_scan(cache.index().as_ref(), snap, i)? {
                continue;
            }
            let img = &snap.images[i];
            match &img.name {
                Reference::Tag(tag) => {
                    cache.index().remove_tag(&img.repo, tag)?;
                    cache.forget_tag_answer(&img.repo, tag).await;
                }
                Reference::Digest(d) => cache.index().remove_digest_pull(&img.repo, d)?,
            }
            self.removal.images.push(img.reference().to_string());
            snap.release(i);
            self.delete(cache, freed, turn).await;
        }
        Ok(())
    }

    async fn delete(&mut self, cache: &Cache, blobs: Vec<(Digest, u64)>, turn: &Exclusive) {
        let (n, bytes) = delete(cache, blobs, self.since, turn).await;
        self.removal.blobs += n;
        self.removal.bytes += bytes;
        self.total = self.total.saturating_sub(bytes);
    }
}

/// Loose blobs, least recently accessed first (never accessed counts as oldest).
fn oldest_first(index: &dyn Index, blobs: Vec<(Digest, u64)>) -> Result<Vec<(Digest, u64)>> {
    let mut aged = blobs
        .into_iter()
        .map(|(d, s)| Ok((index.last_access(&d)?.unwrap_or(0), d, s)))
        .collect::<Result<Vec<_>>>()?;
    aged.sort();
    Ok(aged.into_iter().map(|(_, d, s)| (d, s)).collect())
}

/// Whether image `i` still has the tag record the scan saw and was not served since: an image
/// pulled again meanwhile is the most recently used one, not a candidate.
fn untouched_since_scan(index: &dyn Index, snap: &Snapshot, i: usize) -> Result<bool> {
    let img = &snap.images[i];
    let same_tag = match &img.name {
        Reference::Tag(tag) => index
            .tag(&img.repo, tag)?
            .is_some_and(|r| r.digest == img.digest && r.fetched_at_ms <= snap.started_ms),
        // A pull by digest names its content for good: only its use matters.
        Reference::Digest(_) => true,
    };
    // Access times are written at most once per TOUCH_EVERY_MS: anything within that window
    // before the scan may have been used since.
    let horizon = snap.started_ms.saturating_sub(TOUCH_EVERY_MS);
    let unused = index.last_access(&img.digest)?.is_none_or(|t| t <= horizon);
    // A pin set since the scan (a preload pins without the maintenance lock) protects it.
    let tagged = img.reference().to_string();
    let by_digest = format!("{}@{}", img.repo, img.digest);
    let pinned = index
        .pins()?
        .iter()
        .any(|p| *p == tagged || *p == by_digest);
    Ok(same_tag && unused && !pinned)
}

/// Log once (until it is no longer true) that pins alone keep usage above the target.
fn warn_if_pins_exceed(pinned: u64, low: u64, cap: Cap) {
    if pinned <= low {
        PINS_OVER_CAP.store(false, Ordering::Relaxed);
    } else if !PINS_OVER_CAP.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            pinned_bytes = pinned,
            max_size = cap.max,
            target_bytes = low,
            "pinned content alone exceeds the eviction target and is never evicted: unpin images or raise storage.max_size"
        );
    }
}
