//! The signature policy: `[[signatures]]` rules name, per repository pattern, the cosign keys
//! a runnable image must be signed with. A manifest asked for by tag or digest in a matching
//! repository is served only when its cosign signature (`sha256-<hex>.sig`, fetched through
//! the cache, so it is cached and checked offline too) verifies under a trusted key and names
//! its digest (`enforce`: otherwise 403 DENIED naming the rule; `warn`: served, logged and
//! counted). A multi-platform image is signed on its index: the platform manifests of a
//! verified index pass when fetched by digest (also before it, through the cached tagged
//! indexes that list them). Only what is recognisably a signature, attestation, SBOM or
//! referrers index passes unsigned (`exempt`, failing closed). Verdicts are remembered by
//! repository and digest: a verified one for 10 minutes, a refusal for 30 s (a signature
//! pushed later is found). `rules` compiles the configuration, `check` fetches and checks
//! one signature, `cosign` knows the format.

mod check;
mod cosign;
mod exempt;
mod rules;

pub use cosign::Key;
pub use rules::validate;

use check::cosign_verdict;
use rules::{Rule, compile};

use crate::cache::{Cache, Manifest};
use crate::config::{SignatureMode, SignatureRule};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, Repository, Tag, children};
use crate::pattern::Registries;
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

fn mode_name(mode: SignatureMode) -> &'static str {
    match mode {
        SignatureMode::Enforce => "enforce",
        SignatureMode::Warn => "warn",
    }
}
