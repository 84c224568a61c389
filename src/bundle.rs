//! Bundles: OCI image layout archives that carry cached images across an air gap.
//!
//! `export` writes a tar (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) whose
//! `index.json` names each image by its full reference (registry included) in
//! `org.opencontainers.image.ref.name`, so `skopeo copy oci-archive:bundle.tar:<ref>` reads
//! it. Blobs listed in `exclude` (those of a previous bundle) are left out: an incremental
//! bundle. `import` verifies every digest in a batch before anything becomes visible, then
//! records the images' tags, links and pins; a corrupt or truncated bundle leaves the cache
//! unchanged.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::oci::{Digest, ImageRef};
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
}

/// Plan an export of `selection` leaving out the blobs in `exclude`.
pub fn plan_export(
    cache: &Cache,
    selection: &Selection,
    exclude: &HashSet<Digest>,
) -> Result<ExportPlan> {
    let _ = (cache, selection, exclude);
    Err(Error::Unsupported("export is not implemented yet".into()))
}

/// Write the archive for `plan` to `out` (blocking: run it off the async runtime).
pub fn write_export(
    cache: &Cache,
    plan: &ExportPlan,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<()> {
    let _ = (cache, plan, out, progress);
    Err(Error::Unsupported("export is not implemented yet".into()))
}

/// The blob digests an existing bundle holds (for `export --since`).
pub fn bundle_digests(input: &mut dyn Read) -> Result<HashSet<Digest>> {
    let _ = input;
    Err(Error::Unsupported(
        "reading bundles is not implemented yet".into(),
    ))
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
pub fn import(cache: &Cache, input: &mut dyn Read, progress: &Progress) -> Result<ImportReport> {
    let _ = (cache, input, progress);
    Err(Error::Unsupported("import is not implemented yet".into()))
}

/// Parse the image references of a selection.
pub fn parse_refs(images: &[String], default: &crate::oci::Registry) -> Result<Vec<ImageRef>> {
    images.iter().map(|s| ImageRef::parse(s, default)).collect()
}
