//! Would a pull succeed with the network cut? For a tag: a tag record; for every requested
//! platform: its manifest and each of its config and layers stored and linked to the
//! repository (an unlinked blob would need the upstream to confirm it). And what is attached
//! to it (signatures, attestations, SBOMs) that would pull offline too.

use super::{PlatformReadiness, Readiness};
use crate::cache::Cache;
use crate::inventory::{attached, read_manifest, resolve};
use crate::oci::{Digest, ImageRef, Platform, children};
use crate::store::{BlobStore, Index};

/// The readiness of `reference` for `platforms` (all of an index's when `None`).
pub async fn check(
    cache: &Cache,
    reference: &ImageRef,
    platforms: Option<&[Platform]>,
) -> Readiness {
    let (store, index) = (cache.store().clone(), cache.index().clone());
    let (reference, platforms) = (reference.clone(), platforms.map(<[Platform]>::to_vec));
    tokio::task::spawn_blocking(move || {
        blocking(
            store.as_ref(),
            index.as_ref(),
            &reference,
            platforms.as_deref(),
        )
    })
    .await
    .unwrap_or_else(|e| Readiness {
        error: Some(e.to_string()),
        ..Default::default()
    })
}

fn blocking(
    store: &dyn BlobStore,
    index: &dyn Index,
    reference: &ImageRef,
    platforms: Option<&[Platform]>,
) -> Readiness {
    let mut r = Readiness {
        reference: Some(reference.to_string()),
        ..Default::default()
    };
    let not_ready = |platform: String, reason: String| PlatformReadiness {
        platform,
        ready: false,
        reason: Some(reason),
    };
    let root = match resolve(index, reference) {
        Ok(Some(d)) => d,
        Ok(None) => {
            r.platforms
                .push(not_ready("-".into(), "the tag was never fetched".into()));
            return r;
        }
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let Some(bytes) = read_manifest(store, &root)
        .ok()
        .flatten()
        .filter(|_| linked(index, reference, &root))
    else {
        r.platforms
            .push(not_ready("-".into(), "its manifest is not cached".into()));
        return r;
    };
    let kids = children(&bytes).unwrap_or_default();
    let subjects: Vec<Digest> = std::iter::once(root.clone())
        .chain(
            kids.iter()
                .filter(|k| k.is_manifest)
                .map(|k| k.digest.clone()),
        )
        .collect();
    match attached(store, index, &reference.repo, &subjects) {
        Ok(a) => r.attached = a,
        Err(e) => r.error = Some(e.to_string()),
    }
    if !kids.iter().any(|k| k.is_manifest) {
        r.platforms
            .push(platform_state("-".into(), store, index, reference, &root));
        return r;
    }
    let wanted: Vec<Option<Platform>> = match platforms {
        Some(list) => list.iter().cloned().map(Some).collect(),
        None => kids
            .iter()
            .filter(|k| k.is_manifest)
            .map(|k| k.platform.clone())
            .collect(),
    };
    for want in wanted {
        let label = want.as_ref().map_or("-".to_string(), Platform::to_string);
        let child = kids
            .iter()
            .filter(|k| k.is_manifest)
            .find(|k| match (&want, &k.platform) {
                (Some(w), Some(p)) => p.satisfies(w),
                (None, None) => true,
                (Some(_), None) | (None, Some(_)) => false,
            });
        r.platforms.push(match child {
            Some(c) => platform_state(label, store, index, reference, &c.digest),
            None => not_ready(label.clone(), format!("the image has no {label}")),
        });
    }
    r
}

fn linked(index: &dyn Index, reference: &ImageRef, digest: &Digest) -> bool {
    index.is_linked(&reference.repo, digest).unwrap_or(false)
}

/// One platform manifest and everything it names: stored and linked?
fn platform_state(
    platform: String,
    store: &dyn BlobStore,
    index: &dyn Index,
    reference: &ImageRef,
    manifest: &Digest,
) -> PlatformReadiness {
    let missing = |reason: String| PlatformReadiness {
        platform: platform.clone(),
        ready: false,
        reason: Some(reason),
    };
    let Some(bytes) = read_manifest(store, manifest)
        .ok()
        .flatten()
        .filter(|_| linked(index, reference, manifest))
    else {
        return missing(format!("manifest {manifest} is not cached"));
    };
    let blobs: Vec<Digest> = children(&bytes)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !b.foreign)
        .map(|b| b.digest)
        .collect();
    let absent = blobs
        .iter()
        .filter(|d| {
            !store
                .stat(d)
                .ok()
                .flatten()
                .is_some_and(|_| linked(index, reference, d))
        })
        .count();
    if absent == 0 {
        PlatformReadiness {
            platform,
            ready: true,
            reason: None,
        }
    } else {
        missing(format!("{absent} of {} blobs are not cached", blobs.len()))
    }
}
