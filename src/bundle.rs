//! Bundles: OCI image layout archives that carry cached images across an air gap.
//!
//! `export` writes a tar (`oci-layout`, `blobs/sha256/<hex>`, then `index.json` last) whose
//! `index.json` names each image by its full reference (registry included) in
//! `org.opencontainers.image.ref.name` (and `io.containerd.image.name`), so
//! `skopeo copy oci-archive:bundle.tar:<ref>` reads it. Blobs listed in `exclude` (those of a
//! previous bundle) are left out: an incremental bundle. `import` verifies every digest in a
//! batch before anything becomes visible, then records the images' tags, links and pins; a
//! corrupt, truncated or incomplete bundle leaves the cache unchanged.
//!
//! Manifests travel byte for byte, so a Docker schema 2 image or manifest list keeps its
//! Docker media type in `index.json`. `airlock import` reads those like any other; skopeo
//! 1.9 (containers/image) looks up only OCI-typed entries of a layout by name, so it reads
//! the OCI images of a bundle and not the Docker-typed ones.

mod complete;
mod import;
mod layout;
mod plan;
mod write;

use crate::cache::Cache;
use crate::error::Result;
use crate::oci::Digest;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Write};

/// Which images to export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// These references (`registry/repo:tag` or `@digest`).
    #[serde(default)]
    pub images: Vec<String>,
    /// Every tagged image in the cache.
    #[serde(default)]
    pub all: bool,
    /// Every pinned image.
    #[serde(default)]
    pub pinned: bool,
}

/// What an export will write, computed before the first byte so its size is known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportPlan {
    /// The images, by full reference.
    pub images: Vec<String>,
    /// Blobs to write (manifests included), with sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Bytes of blobs in the archive.
    pub total_bytes: u64,
    /// Notes for the operator (an index child not cached, a blob excluded).
    pub notes: Vec<String>,
    /// What `index.json` will say about each image (in the order of `images`).
    #[serde(default)]
    pub entries: Vec<ExportImage>,
}

/// One image of an export, as `index.json` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportImage {
    /// Full reference (`docker.io/library/nginx:1.25`).
    pub reference: String,
    /// Its top-level manifest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size.
    pub size: u64,
    /// For an index: the child manifests exported (the platforms the cache holds completely).
    #[serde(default)]
    pub platforms: Vec<Digest>,
}

/// Plan an export of `selection` leaving out the blobs in `exclude`. An explicitly named
/// image the cache does not hold completely (for an index: not one platform) is an error;
/// with `all` or `pinned` such images are left out with a note, as are the platforms of an
/// index the cache does not hold completely.
pub fn plan_export(
    cache: &Cache,
    selection: &Selection,
    exclude: &HashSet<Digest>,
) -> Result<ExportPlan> {
    plan::plan(
        cache.store().as_ref(),
        cache.index().as_ref(),
        selection,
        exclude,
    )
}

/// Write the archive for `plan` to `out` (blocking: run it off the async runtime). Blobs
/// stream from the store and are re-hashed on the way: a blob that rotted on disk fails the
/// export instead of crossing the gap. `index.json` comes last, so an archive cut short
/// anywhere has none and is refused by `import`.
pub fn write_export(
    cache: &Cache,
    plan: &ExportPlan,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<()> {
    write::write(cache.store().as_ref(), plan, out, progress)
}

/// The blob digests an existing bundle holds (for `export --since`). Blob content is skipped,
/// never held in memory. Refuses an archive that is not an OCI image layout.
pub fn bundle_digests(input: &mut dyn Read) -> Result<HashSet<Digest>> {
    import::digests(input)
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Images recorded (full references), all pinned.
    pub images: Vec<String>,
    /// Blobs that were new to the cache.
    pub new_blobs: usize,
    /// Blobs the cache already had.
    pub known_blobs: usize,
    /// Bytes read from the archive.
    pub bytes: u64,
}

/// Import an archive from `input` (blocking: run it off the async runtime). Nothing becomes
/// visible unless every blob verified and every image is complete.
///
/// Every blob in the archive is hashed, also those the cache already has (they are not
/// written again): a corrupt bundle is refused whatever the cache holds. New blobs go into
/// one store batch, published only after the whole archive was read and every image found
/// complete (in the bundle or the cache); then each image's manifests are described, its
/// blobs linked to its repository, its tag recorded and its reference pinned. Callers that
/// keep hot tag answers must drop those of the returned images.
pub fn import(cache: &Cache, input: &mut dyn Read, progress: &Progress) -> Result<ImportReport> {
    // The free-space reserve and failing writes refuse an import as they refuse a download.
    if let Some(why) = cache.write_trouble() {
        return Err(crate::error::Error::StorageFull(format!(
            "the bundle is not imported: {why}"
        )));
    }
    let maintenance = cache.maintenance();
    import::import(
        cache.store().as_ref(),
        cache.index().as_ref(),
        input,
        progress,
        &|| maintenance.blocking_exclusive(),
    )
}
