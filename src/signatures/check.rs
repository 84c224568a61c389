//! One manifest's cosign signature, fetched through the cache (so what is cached answers
//! offline) and checked: bounded in layers, payload bytes and the length of the reason.

use super::cosign;
use super::rules::Rule;
use super::{MAX_REASON, MAX_SIGNATURES, Verdict};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::oci::manifest::ACCEPT_ALL;
use crate::oci::{Digest, Reference, Repository, Tag, referrers};
use futures_util::TryStreamExt;

/// Look for `digest`'s cosign signature in `repo` and check it under `keys`.
pub(super) async fn cosign_verdict(
    cache: &Cache,
    repo: &Repository,
    digest: &Digest,
    rule: &Rule,
) -> Verdict {
    let tag = referrers::cosign_tag(digest, ".sig");
    let Ok(parsed) = tag.parse::<Tag>() else {
        return Verdict::Missing {
            reason: format!("{tag} is not a tag"),
        };
    };
    let sig = match cache
        .manifest(repo, &Reference::Tag(parsed), &[ACCEPT_ALL])
        .await
    {
        Ok(a) => a.manifest,
        Err(Error::ManifestUnknown(_)) => {
            return Verdict::Missing {
                reason: format!("it has no cosign signature ({tag})"),
            };
        }
        Err(e) => {
            return Verdict::Missing {
                reason: format!("its signature {tag} could not be fetched: {e}"),
            };
        }
    };
    let layers = match cosign::signature_layers(&sig.bytes) {
        Ok(l) => l,
        Err(reason) => return Verdict::Refused { reason },
    };
    let mut why: Vec<String> = Vec::new();
    if layers.len() > MAX_SIGNATURES {
        why.push(format!(
            "only the first {MAX_SIGNATURES} of its {} signatures were checked",
            layers.len()
        ));
    }
    for layer in layers.into_iter().take(MAX_SIGNATURES) {
        if layer.size > cosign::MAX_PAYLOAD {
            why.push(format!("a payload of {} bytes is too large", layer.size));
            continue;
        }
        let payload = match read_small(cache, repo, &layer.payload, cosign::MAX_PAYLOAD).await {
            Ok(p) => p,
            Err(e) => {
                why.push(format!("its payload could not be read: {e}"));
                continue;
            }
        };
        let by = match cosign::verify(&rule.keys, digest, &payload, &layer.signature) {
            Ok(by) => by,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        match (&layer.bundle, rule.log_keys.is_empty()) {
            (_, true) => return Verdict::Verified { by: by.to_string() },
            (None, false) if rule.require_tlog => {
                why.push("it carries no transparency log entry, and the rule requires one".into());
            }
            (None, false) => return Verdict::Verified { by: by.to_string() },
            (Some(bundle), false) => {
                match cosign::verify_logged(&rule.log_keys, bundle, &payload, &layer.signature) {
                    Ok(at) => {
                        return Verdict::Verified {
                            by: format!("{by}, logged at {at}"),
                        };
                    }
                    Err(e) => why.push(e),
                }
            }
        }
    }
    why.sort();
    why.dedup();
    let mut reason = why.join("; ");
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|i| reason.is_char_boundary(*i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
    Verdict::Refused { reason }
}

/// A small blob of `repo`, verified, through the cache.
async fn read_small(
    cache: &Cache,
    repo: &Repository,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>> {
    let source = cache
        .blob_at_most(repo, digest, Some(limit))
        .await?
        .source
        .verified()
        .await
        .map_err(Error::internal)?;
    if source.size().is_some_and(|n| n > limit) {
        return Err(Error::internal(format!(
            "{digest} is larger than {limit} bytes"
        )));
    }
    let chunks: Vec<bytes::Bytes> = source
        .stream(0, None, false)
        .try_collect()
        .await
        .map_err(Error::internal)?;
    Ok(chunks.concat())
}
