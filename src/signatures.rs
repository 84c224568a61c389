//! The signature policy: `[[signatures]]` rules name, per repository pattern, the cosign keys
//! a runnable image must be signed with. A manifest asked for by tag or digest in a matching
//! repository is served only when its cosign signature (`sha256-<hex>.sig`, fetched through
//! the cache, so it is cached and checked offline too) verifies under a trusted key and names
//! its digest (`enforce`: otherwise 403 DENIED naming the rule; `warn`: served, logged and
//! counted). A multi-platform image is signed on its index: the platform manifests of a
//! verified index pass when fetched by digest. Artifacts that no runtime runs (signatures,
//! SBOMs, attestations, referrers indexes, Helm charts) are not images and pass. Verdicts are
//! remembered by repository and digest: a verified one until memory is short, a refusal
//! briefly (a signature pushed later is found).

mod cosign;

pub use cosign::Key;

use crate::cache::{Cache, Manifest};
use crate::config::{SignatureMode, SignatureRule};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::manifest::ACCEPT_ALL;
use crate::oci::{Digest, Reference, Repository, Tag, children, referrers};
use crate::pattern::{NamePattern, Registries};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a refusal is remembered before the signature is looked for again.
const REFUSAL_TTL: Duration = Duration::from_secs(30);
/// Verdicts remembered at most.
const MAX_VERDICTS: u64 = 100_000;

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    name: String,
    patterns: Vec<NamePattern>,
    keys: Vec<Key>,
    mode: SignatureMode,
    /// Transparency log keys: a log entry a signature carries must verify under one.
    log_keys: Vec<Key>,
    /// A signature without a log entry does not count.
    require_tlog: bool,
}

/// What the policy says of one manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No rule covers its repository, or it is not a runnable image.
    NotRequired,
    /// A signature verified under this key (or its index's did).
    Verified {
        /// The key file, or the index it was verified through.
        by: String,
    },
    /// No signature was found.
    Missing {
        /// Why.
        reason: String,
    },
    /// Signatures were found and none counts.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The compiled `[[signatures]]` rules and the verdicts reached so far.
pub struct Policy {
    rules: Vec<Rule>,
    verified: moka::future::Cache<(Repository, Digest), Arc<str>>,
    refused: moka::future::Cache<(Repository, Digest), Verdict>,
    metrics: Arc<Metrics>,
}

/// What a check reports: the rule that applied, its mode and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The rule's name, when one applies.
    pub rule: Option<String>,
    /// `enforce` or `warn`.
    pub mode: Option<&'static str>,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Policy {
    /// Compile the rules and read their keys; the error names the rule and says what to fix.
    pub fn new(
        rules: &[SignatureRule],
        registries: &Registries,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Policy, String> {
        Ok(Policy {
            rules: compile(rules, registries)?,
            verified: moka::future::Cache::new(MAX_VERDICTS),
            refused: moka::future::Cache::builder()
                .max_capacity(MAX_VERDICTS)
                .time_to_live(REFUSAL_TTL)
                .build(),
            metrics,
        })
    }
}

/// Check `[[signatures]]` without keeping anything: the error names the rule and what to fix.
pub fn validate(
    rules: &[SignatureRule],
    registries: &Registries,
) -> std::result::Result<(), String> {
    compile(rules, registries).map(|_| ())
}

fn compile(
    rules: &[SignatureRule],
    registries: &Registries,
) -> std::result::Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| format!("signatures[{i}]"));
        if r.repositories.is_empty() {
            return Err(format!(
                "{name}: repositories is empty, so it covers nothing"
            ));
        }
        if r.keys.is_empty() {
            return Err(format!(
                "{name}: keys is empty: name the cosign public keys (cosign.pub) it trusts"
            ));
        }
        let patterns = r
            .repositories
            .iter()
            .map(|p| NamePattern::parse_in(p, false, registries))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}.repositories: {e}"))?;
        let keys = r
            .keys
            .iter()
            .map(|k| Key::load(k))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}.keys: {e}"))?;
        let log_keys = r
            .rekor_keys
            .iter()
            .map(|k| Key::load(k))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}.rekor_keys: {e}"))?;
        if r.require_tlog && log_keys.is_empty() {
            return Err(format!(
                "{name}: require_tlog needs rekor_keys, the transparency log's public keys, to check entries with"
            ));
        }
        out.push(Rule {
            name,
            patterns,
            keys,
            mode: r.mode,
            log_keys,
            require_tlog: r.require_tlog,
        });
    }
    Ok(out)
}

impl Policy {
    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn rule(&self, repo: &Repository) -> Option<&Rule> {
        let name = repo.to_string();
        self.rules
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches_name(&name)))
    }

    /// Serve `m` of `repo`? `Err(DENIED)` when an `enforce` rule cannot verify it; a `warn`
    /// rule logs and counts instead.
    pub async fn gate(&self, cache: &Cache, repo: &Repository, m: &Manifest) -> Result<()> {
        let check = self.check(cache, repo, m).await;
        let (reason, result) = match &check.verdict {
            Verdict::NotRequired => return Ok(()),
            Verdict::Verified { .. } => {
                self.count("verified", check.mode);
                return Ok(());
            }
            Verdict::Missing { reason } => (reason, "missing"),
            Verdict::Refused { reason } => (reason, "refused"),
        };
        self.count(result, check.mode);
        let rule = check.rule.unwrap_or_default();
        if check.mode == Some("warn") {
            tracing::warn!(%repo, digest = %m.digest, %rule, %reason, "served without a trusted signature (signature rule in warn mode)");
            return Ok(());
        }
        Err(Error::Denied(format!(
            "signature rule {rule} refuses {repo}@{}: {reason}",
            m.digest
        )))
    }

    fn count(&self, result: &str, mode: Option<&str>) {
        self.metrics
            .signature_checks
            .with_label_values(&[result, mode.unwrap_or("-")])
            .inc();
    }

    /// What the policy says of `m` in `repo`, fetching its signature through `cache`.
    pub async fn check(&self, cache: &Cache, repo: &Repository, m: &Manifest) -> Check {
        let Some(rule) = self.rule(repo) else {
            return Check {
                rule: None,
                mode: None,
                verdict: Verdict::NotRequired,
            };
        };
        let verdict = self.verdict(cache, repo, m, rule).await;
        Check {
            rule: Some(rule.name.clone()),
            mode: Some(match rule.mode {
                SignatureMode::Enforce => "enforce",
                SignatureMode::Warn => "warn",
            }),
            verdict,
        }
    }

    async fn verdict(
        &self,
        cache: &Cache,
        repo: &Repository,
        m: &Manifest,
        rule: &Rule,
    ) -> Verdict {
        if !runnable(&m.bytes) {
            return Verdict::NotRequired;
        }
        let key = (repo.clone(), m.digest.clone());
        if let Some(by) = self.verified.get(&key).await {
            return Verdict::Verified { by: by.to_string() };
        }
        if let Some(v) = self.refused.get(&key).await {
            return v;
        }
        let verdict = cosign_verdict(cache, repo, &m.digest, rule).await;
        if let Verdict::Verified { by } = &verdict {
            self.verified.insert(key, by.as_str().into()).await;
            // The index is signed for all its platforms.
            let via: Arc<str> = format!("index {}", m.digest).into();
            for child in children(&m.bytes).unwrap_or_default() {
                if child.is_manifest {
                    self.verified
                        .insert((repo.clone(), child.digest), via.clone())
                        .await;
                }
            }
        } else {
            self.refused.insert(key, verdict.clone()).await;
        }
        verdict
    }
}

/// Whether a runtime would run this manifest: an image (an image config, tar layers or
/// none) or an index listing one. Artifacts (a config or layers of other types; an index
/// of artifacts, as the referrers tag schema keeps) are not; what does not parse is.
fn runnable(bytes: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return true;
    };
    if let Some(list) = v.get("manifests").and_then(|m| m.as_array()) {
        return list.iter().any(|d| d.get("artifactType").is_none());
    }
    let config = v.pointer("/config/mediaType").and_then(|t| t.as_str());
    let image_config = matches!(
        config,
        Some(
            "application/vnd.oci.image.config.v1+json"
                | "application/vnd.docker.container.image.v1+json"
        )
    );
    let layers: Vec<&str> = v
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l.get("mediaType").and_then(|t| t.as_str()))
                .collect()
        })
        .unwrap_or_default();
    image_config
        && (layers.is_empty()
            || layers
                .iter()
                .any(|t| t.contains(".tar") || t.contains("rootfs")))
}

/// Look for `digest`'s cosign signature in `repo` and check it under `keys`.
async fn cosign_verdict(cache: &Cache, repo: &Repository, digest: &Digest, rule: &Rule) -> Verdict {
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
    for layer in layers {
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
    why.dedup();
    Verdict::Refused {
        reason: why.join("; "),
    }
}

/// A small blob of `repo`, verified, through the cache.
async fn read_small(
    cache: &Cache,
    repo: &Repository,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>> {
    let source = cache
        .blob(repo, digest)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_runnable_and_artifacts_are_not() {
        let image = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}"#;
        let docker = br#"{"config":{"mediaType":"application/vnd.docker.container.image.v1+json"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip"}]}"#;
        let sig = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}"#;
        let sbom = br#"{"config":{"mediaType":"application/vnd.oci.empty.v1+json"},"layers":[{"mediaType":"application/spdx+json"}]}"#;
        let helm = br#"{"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json"},"layers":[{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip"}]}"#;
        let index = br#"{"manifests":[{"mediaType":"x","digest":"d","platform":{}}]}"#;
        let referrers = br#"{"manifests":[{"mediaType":"x","digest":"d","artifactType":"a"}]}"#;
        for (m, want) in [
            (&image[..], true),
            (&docker[..], true),
            (&sig[..], false),
            (&sbom[..], false),
            (&helm[..], false),
            (&index[..], true),
            (&referrers[..], false),
            (&b"not json"[..], true),
        ] {
            assert_eq!(runnable(m), want, "{}", String::from_utf8_lossy(m));
        }
    }
}
