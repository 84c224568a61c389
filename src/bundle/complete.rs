//! Whether each image of a bundle is complete, counting what the bundle brought (the batch)
//! and what the cache already has; and, once the batch is published, what the index learns
//! about each image: manifest media types, links to its repository, its tag, its pin.
//!
//! An index needs every child manifest the exporter listed (airlock's annotation), or, for a
//! bundle made by another tool, every child present to be complete and at least one present.

use super::layout::{LayoutDescriptor, declared_media_type, is_manifest_type};
use crate::error::{Error, Result};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, ImageRef, Reference, children};
use crate::progress::Progress;
use crate::store::{Batch, BlobInfo, BlobStore, Index, TagRecord, now_ms};
use std::fs::File;
use std::io::Read;

/// Indexes of indexes deeper than this are refused.
const MAX_DEPTH: u8 = 4;

/// What an import can count on: the blobs of its batch and those of the cache.
pub struct Content<'a> {
    /// The cache's blobs.
    pub store: &'a dyn BlobStore,
    /// The bundle's new blobs, verified, not yet visible.
    pub batch: &'a dyn Batch,
}

impl Content<'_> {
    fn open(&self, digest: &Digest) -> Result<Option<File>> {
        match self.batch.open(digest)? {
            Some(f) => Ok(Some(f)),
            None => Ok(self.store.open(digest)?),
        }
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.open(digest)? {
            Some(f) => Ok(Some(f.metadata()?.len())),
            None => Ok(None),
        }
    }

    /// A manifest's bytes (bounded, re-verified), `None` when neither side has it.
    fn manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(file) = self.open(digest)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        file.take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut buf)?;
        if buf.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Unsupported(format!(
                "{digest} is larger than a manifest may be ({MAX_MANIFEST_BYTES} bytes)"
            )));
        }
        if Digest::of(&buf) != *digest {
            return Err(Error::internal(format!(
                "stored {digest} does not match its digest: run `airlock cache verify`"
            )));
        }
        Ok(Some(buf))
    }
}

/// A complete image of the bundle, ready to be recorded.
pub struct Image {
    /// Its full reference.
    pub reference: ImageRef,
    /// Its top-level manifest.
    pub digest: Digest,
    /// The top-level manifest's media type.
    pub media_type: String,
    /// Manifests reached (the top-level one first): digest, media type, size.
    manifests: Vec<(Digest, String, u64)>,
    /// Configs and layers reached: digest, media type when named, size.
    blobs: Vec<(Digest, Option<String>, u64)>,
}

impl Image {
    /// Repository, digest and media type of its top-level manifest.
    pub fn top(&self) -> (crate::oci::Repository, Digest, String) {
        (
            self.reference.repo.clone(),
            self.digest.clone(),
            self.media_type.clone(),
        )
    }
}

/// Check that the image `descriptor` names is complete.
pub fn check(content: &Content<'_>, descriptor: &LayoutDescriptor) -> Result<Image> {
    let reference = descriptor.reference()?;
    if let Reference::Digest(d) = &reference.reference
        && *d != descriptor.digest
    {
        return Err(Error::Unsupported(format!(
            "index.json names {reference} for {}: the bundle is inconsistent",
            descriptor.digest
        )));
    }
    let mut image = Image {
        digest: descriptor.digest.clone(),
        media_type: String::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
        reference,
    };
    let wanted = descriptor.platforms()?;
    let root = &descriptor.digest;
    let hint = Some(descriptor.media_type.as_str());
    if !walk(content, &mut image, root, hint, wanted.as_deref(), 0)? {
        return Err(lacks(&image.reference, root));
    }
    image.media_type = image
        .manifests
        .first()
        .map(|m| m.1.clone())
        .unwrap_or_default();
    Ok(image)
}

/// Add the manifest `digest` and everything it reaches to `image`. `Ok(false)`: the manifest
/// itself is absent; anything it reaches that is absent is an error.
fn walk(
    content: &Content<'_>,
    image: &mut Image,
    digest: &Digest,
    hint: Option<&str>,
    wanted: Option<&[Digest]>,
    depth: u8,
) -> Result<bool> {
    let Some(bytes) = content.manifest(digest)? else {
        return Ok(false);
    };
    if depth > MAX_DEPTH {
        return Err(Error::Unsupported(format!(
            "{} nests indexes more than {MAX_DEPTH} deep",
            image.reference
        )));
    }
    let media_type = hint
        .filter(|t| is_manifest_type(t))
        .map_or_else(|| declared_media_type(&bytes), str::to_string);
    image
        .manifests
        .push((digest.clone(), media_type, bytes.len() as u64));
    let kids = children(&bytes).ok_or_else(|| {
        Error::Unsupported(format!(
            "{digest} of {} is not a manifest: the bundle is malformed",
            image.reference
        ))
    })?;
    if !kids.iter().any(|k| k.is_manifest) {
        for blob in kids.iter().filter(|k| !k.foreign) {
            let size = content
                .size(&blob.digest)?
                .ok_or_else(|| lacks(&image.reference, &blob.digest))?;
            image
                .blobs
                .push((blob.digest.clone(), blob.media_type.clone(), size));
        }
        return Ok(true);
    }
    let (mut complete, mut absent) = (0, None);
    for child in kids.iter().filter(|k| k.is_manifest) {
        let required = wanted.map(|w| w.contains(&child.digest));
        if required == Some(false) {
            continue;
        }
        let hint = child.media_type.as_deref();
        if walk(content, image, &child.digest, hint, None, depth + 1)? {
            complete += 1;
        } else if required == Some(true) {
            return Err(lacks(&image.reference, &child.digest));
        } else {
            absent.get_or_insert_with(|| child.digest.clone());
        }
    }
    if complete == 0 {
        return Err(lacks(&image.reference, absent.as_ref().unwrap_or(digest)));
    }
    Ok(true)
}

fn lacks(reference: &ImageRef, digest: &Digest) -> Error {
    Error::BlobUnknown(format!(
        "bundle lacks {digest} for {reference}: import the bundle it was made --since first; nothing was imported"
    ))
}

/// Tell the index about an image whose blobs are now visible: what its manifests are, that
/// everything it reaches belongs to its repository, its tag (when it has one) and its pin.
pub fn record(index: &dyn Index, image: &Image, progress: &Progress) -> Result<()> {
    let repo = &image.reference.repo;
    for (digest, media_type, size) in &image.manifests {
        let described = index
            .blob_info(digest)?
            .and_then(|i| i.media_type)
            .is_some_and(|t| is_manifest_type(&t));
        if !described {
            let info = BlobInfo {
                size: *size,
                media_type: Some(media_type.clone()),
            };
            index.set_blob_info(digest, &info)?;
        }
        index.link(repo, digest)?;
    }
    for (digest, media_type, size) in &image.blobs {
        if index.blob_info(digest)?.is_none() {
            let info = BlobInfo {
                size: *size,
                media_type: media_type.clone(),
            };
            index.set_blob_info(digest, &info)?;
        }
        index.link(repo, digest)?;
    }
    if let Reference::Tag(tag) = &image.reference.reference {
        if let Some(old) = index.tag(repo, tag)?
            && old.digest != image.digest
        {
            progress.note(format!(
                "{} now names {} (was {})",
                image.reference, image.digest, old.digest
            ));
        }
        let record = TagRecord {
            digest: image.digest.clone(),
            media_type: image.media_type.clone(),
            fetched_at_ms: now_ms(),
        };
        index.set_tag(repo, tag, &record)?;
    }
    index.pin_at(&image.reference.to_string(), &image.digest)?;
    progress.note(format!("imported {} (pinned)", image.reference));
    Ok(())
}
