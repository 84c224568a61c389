//! What is attached to an image and would pull offline: signatures, attestations and SBOMs,
//! found as cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`) and as the image's stored
//! referrers answer, each counted once, and only when its manifest and blobs are cached.

use super::read_manifest;
use crate::error::Result;
use crate::oci::referrers::{self, Attached, COSIGN_TAGS};
use crate::oci::{Digest, Reference, Repository, Tag, children};
use crate::store::{BlobStore, Index};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachments {
    /// Signatures (cosign, notation, sigstore bundles).
    pub signatures: usize,
    /// Attestations (in-toto, DSSE).
    pub attestations: usize,
    /// SBOMs (SPDX, CycloneDX).
    pub sboms: usize,
}

impl Attachments {
    fn count(&mut self, kind: Attached) {
        match kind {
            Attached::Signature => self.signatures += 1,
            Attached::Attestation => self.attestations += 1,
            Attached::Sbom => self.sboms += 1,
            Attached::Other => {}
        }
    }
}

/// What is attached in `repo` to any of `subjects` (an image's manifest and its platforms').
pub fn attached(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    subjects: &[Digest],
) -> Result<Attachments> {
    let mut out = Attachments::default();
    for (_, kind) in attachments(store, index, repo, subjects)? {
        out.count(kind);
    }
    Ok(out)
}

/// Everything attached in `repo` to any of `subjects` that would pull offline, each once:
/// cosign's tags and the tag schema's index by tag, the referrers by digest, with what each
/// is.
pub fn attachments(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    subjects: &[Digest],
) -> Result<Vec<(Reference, Attached)>> {
    let mut out = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    for subject in subjects {
        for (suffix, kind) in COSIGN_TAGS {
            let tag: Tag = referrers::cosign_tag(subject, suffix).parse()?;
            if let Some(rec) = index.tag(repo, &tag)?
                && seen.insert(rec.digest.clone())
                && pullable(store, index, repo, &rec.digest)?
            {
                out.push((Reference::Tag(tag), kind));
            }
        }
        // The tag schema's index of its referrers is a tag of its own, attached too.
        let schema: Tag = referrers::schema_tag(subject).parse()?;
        if let Some(rec) = index.tag(repo, &schema)?
            && seen.insert(rec.digest.clone())
            && pullable(store, index, repo, &rec.digest)?
        {
            out.push((Reference::Tag(schema), Attached::Other));
        }
        let Some((_, list)) = crate::referrers::load(store, index, repo, subject)? else {
            continue;
        };
        for r in list {
            if seen.insert(r.digest.clone()) && pullable(store, index, repo, &r.digest)? {
                let kind =
                    Attached::of_artifact_type(r.artifact_type.as_deref().unwrap_or_default());
                out.push((Reference::Digest(r.digest), kind));
            }
        }
    }
    Ok(out)
}

/// Whether the manifest `digest` and all it names are stored and belong to `repo`.
fn pullable(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    digest: &Digest,
) -> Result<bool> {
    if !index.is_linked(repo, digest)? {
        return Ok(false);
    }
    let Some(bytes) = read_manifest(store, digest)? else {
        return Ok(false);
    };
    for child in children(&bytes)
        .unwrap_or_default()
        .iter()
        .filter(|c| !c.foreign)
    {
        if store.stat(&child.digest)?.is_none() || !index.is_linked(repo, &child.digest)? {
            return Ok(false);
        }
    }
    Ok(true)
}
