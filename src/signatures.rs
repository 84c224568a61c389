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
mod exempt;

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
/// How long a verified verdict stands before the signature is checked again (offline, from
/// what is cached): a signature removed upstream stops counting within this.
const VERIFIED_TTL: Duration = Duration::from_secs(600);
/// Signature layers checked at most per manifest (cosign adds one per signer).
const MAX_SIGNATURES: usize = 16;
/// Tagged indexes of a repository looked through for one that lists a platform manifest
/// asked for by digest before its index was.
const MAX_PARENTS: usize = 64;
/// A refusal's reason is cut at this length.
const MAX_REASON: usize = 1024;
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
            verified: moka::future::Cache::builder()
                .max_capacity(MAX_VERDICTS)
                .time_to_live(VERIFIED_TTL)
                .build(),
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
        if check.mode == Some(mode_name(SignatureMode::Warn)) {
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
            mode: Some(mode_name(rule.mode)),
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
        if exempt::exempt(&m.media_type, &m.bytes) {
            return Verdict::NotRequired;
        }
        let key = (repo.clone(), m.digest.clone());
        if let Some(by) = self.verified.get(&key).await {
            return Verdict::Verified { by: by.to_string() };
        }
        if let Some(v) = self.refused.get(&key).await {
            return v;
        }
        let mut verdict = cosign_verdict(cache, repo, &m.digest, rule).await;
        if matches!(verdict, Verdict::Missing { .. })
            && let Some(by) = self.signed_parent(cache, repo, &m.digest, rule).await
        {
            verdict = Verdict::Verified { by };
        }
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

impl Policy {
    /// A platform manifest asked for by digest before its index (a kubelet pinned to the
    /// platform's digest, a restart): a tagged index of the repository that lists it and is
    /// signed signs it too. Only cached indexes are read; at most [`MAX_PARENTS`].
    async fn signed_parent(
        &self,
        cache: &Cache,
        repo: &Repository,
        child: &Digest,
        rule: &Rule,
    ) -> Option<String> {
        let (store, index, r, c) = (
            cache.store().clone(),
            cache.index().clone(),
            repo.clone(),
            child.clone(),
        );
        let parents = tokio::task::spawn_blocking(move || -> Result<Vec<Digest>> {
            let mut out = Vec::new();
            for tag in index.tags(&r)?.into_iter().take(MAX_PARENTS * 4) {
                let Ok(tag) = tag.parse::<Tag>() else {
                    continue;
                };
                let Some(rec) = index.tag(&r, &tag)? else {
                    continue;
                };
                if !(rec.media_type.contains("index") || rec.media_type.contains("list")) {
                    continue;
                }
                let Some(bytes) = crate::inventory::read_manifest(store.as_ref(), &rec.digest)?
                else {
                    continue;
                };
                if children(&bytes)
                    .unwrap_or_default()
                    .iter()
                    .any(|k| k.is_manifest && k.digest == c)
                {
                    out.push(rec.digest);
                }
                if out.len() >= MAX_PARENTS {
                    break;
                }
            }
            Ok(out)
        })
        .await
        .ok()?
        .ok()?;
        for parent in parents {
            let key = (repo.clone(), parent.clone());
            let verified = match self.verified.get(&key).await {
                Some(_) => true,
                None => match cosign_verdict(cache, repo, &parent, rule).await {
                    Verdict::Verified { by } => {
                        self.verified.insert(key, by.as_str().into()).await;
                        true
                    }
                    _ => false,
                },
            };
            if verified {
                return Some(format!("index {parent}"));
            }
        }
        None
    }
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

fn mode_name(mode: SignatureMode) -> &'static str {
    match mode {
        SignatureMode::Enforce => "enforce",
        SignatureMode::Warn => "warn",
    }
}
