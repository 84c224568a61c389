//! Referrers answers as the cache keeps them: an OCI image index in the store (content
//! addressed, linked to no repository, so never served as a manifest) and a record in the
//! index naming it per (repository, subject) with the time the upstream gave it. Blocking;
//! the cache, bundle import and the inventory share it.

use crate::error::{Error, Result};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::referrers::{self, Referrer};
use crate::oci::{Digest, Repository};
use crate::store::{BlobInfo, BlobStore, CommitError, Index, ReferrersRecord};
use std::collections::BTreeMap;
use std::io::Read;

/// A stored answer larger than this is not read back ([`referrers::encode`] keeps them
/// smaller).
const MAX_ANSWER_BYTES: u64 = referrers::MAX_ANSWER_BYTES as u64 + 1;

/// The stored answer for `subject` in `repo` and when it was fetched; `None` when there is
/// none, or its index is gone (gc) or unreadable: as if never asked.
pub fn load(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    subject: &Digest,
) -> Result<Option<(u64, Vec<Referrer>)>> {
    let Some(rec) = index.referrers(repo, subject)? else {
        return Ok(None);
    };
    let Some(file) = store.open(&rec.digest)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    file.take(MAX_ANSWER_BYTES).read_to_end(&mut buf)?;
    Ok(referrers::parse(&buf)
        .ok()
        .map(|list| (rec.fetched_at_ms, list)))
}

/// Store `list` as the answer for `subject` in `repo`, fetched at `fetched_at_ms`.
pub fn save(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    subject: &Digest,
    list: &[Referrer],
    fetched_at_ms: u64,
) -> Result<()> {
    let bytes = referrers::encode(&list.iter().collect::<Vec<_>>());
    let digest = Digest::of(&bytes);
    match store.put(&digest, &bytes) {
        Ok(()) => {}
        Err(CommitError::Mismatch { .. }) => unreachable!("digest computed from these bytes"),
        Err(CommitError::Io(e)) => {
            return Err(Error::internal(format!(
                "storing the referrers of {subject}: {e}"
            )));
        }
    }
    index.set_blob_info(
        &digest,
        &BlobInfo {
            size: bytes.len() as u64,
            media_type: Some(OCI_INDEX.into()),
        },
    )?;
    index.set_referrers(
        repo,
        subject,
        &ReferrersRecord {
            digest,
            fetched_at_ms,
        },
    )
}

/// Add the manifests among `manifests` (repository, digest, media type) that have a
/// `subject` to their subject's answer, as a registry with the referrers API would list
/// them: for content that came without an upstream (a bundle). An answer made here keeps the
/// fetch time of the one it extends (none: 0, so an online site still asks its upstream).
pub fn index_subjects(
    store: &dyn BlobStore,
    index: &dyn Index,
    manifests: &[(Repository, Digest, String)],
) -> Result<usize> {
    let mut found: BTreeMap<(String, Digest), (Repository, Vec<Referrer>)> = BTreeMap::new();
    for (repo, digest, media_type) in manifests {
        let Some(bytes) = crate::inventory::read_manifest(store, digest)? else {
            continue;
        };
        if let Some((subject, r)) = referrers::of_manifest(&bytes, media_type) {
            found
                .entry((repo.to_string(), subject))
                .or_insert_with(|| (repo.clone(), Vec::new()))
                .1
                .push(r);
        }
    }
    let mut added = 0;
    for ((_, subject), (repo, new)) in found {
        let (at, mut list) = load(store, index, &repo, &subject)?.unwrap_or_default();
        let before = list.len();
        referrers::merge(&mut list, new);
        if list.len() > before {
            added += list.len() - before;
            save(store, index, &repo, &subject, &list, at)?;
        }
    }
    Ok(added)
}
