//! The fetch policy: what may enter the cache from upstream at all, whoever asks; separate from
//! who may read what is cached (the access rules). The cache consults it before it contacts an
//! upstream for content, so a refused fetch costs no upstream request for it.
//!
//! A tag is fetched when some `allow` pattern matches (or there are none) and no `deny`
//! pattern does. Digests, blobs and tag lists follow their repository: only the name part of
//! the patterns counts, and a deny pattern with a tag part (`**:latest`) does not refuse them.
//! Signature and attestation tags (`sha256-<hex>`, `.sig`, `.att`, `.sbom`) follow the image's
//! repository the same way, but only when the image they name is already in that repository:
//! otherwise such a tag is an ordinary tag (an image pushed as `:sha256-…` gains nothing).

use crate::config::FetchConfig;
use crate::error::{Error, Result};
use crate::oci::{Digest, Repository};
use crate::pattern::{NamePattern, Registries};

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    allow: Vec<NamePattern>,
    deny: Vec<NamePattern>,
    max_blob_size: Option<u64>,
}

impl FetchPolicy {
    /// Compile `[fetch]`; the error names the key and the pattern.
    pub fn new(c: &FetchConfig, registries: &Registries) -> Result<FetchPolicy, String> {
        let compile = |key: &str, pats: &[String]| {
            pats.iter()
                .map(|p| {
                    NamePattern::parse_in(p, true, registries)
                        .map_err(|e| format!("fetch.{key}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(FetchPolicy {
            allow: compile("allow", &c.allow)?,
            deny: compile("deny", &c.deny)?,
            max_blob_size: c.max_blob_size.map(|s| s.0),
        })
    }

    /// The largest blob that may be fetched.
    pub fn max_blob_size(&self) -> Option<u64> {
        self.max_blob_size
    }

    /// May the tag `tag` of `repo` be fetched? `is_here` says whether a manifest is known in
    /// `repo` (for signature tags).
    pub fn tag(
        &self,
        repo: &Repository,
        tag: &str,
        is_here: impl Fn(&Digest) -> bool,
    ) -> Result<()> {
        if signed_digest(tag).is_some_and(|d| is_here(&d)) {
            return self.repository(repo);
        }
        let name = repo.to_string();
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(&name, Some(tag))) {
            return Err(denied(format!(
                "{name}:{tag} matches no fetch.allow pattern"
            )));
        }
        if let Some(p) = self.deny.iter().find(|p| p.matches(&name, Some(tag))) {
            return Err(denied(format!(
                "{name}:{tag} matches fetch.deny {:?}",
                p.as_str()
            )));
        }
        Ok(())
    }

    /// May content of `repo` be fetched by digest (manifests, blobs) or its tags listed?
    pub fn repository(&self, repo: &Repository) -> Result<()> {
        let name = repo.to_string();
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches_name(&name)) {
            return Err(denied(format!("{name} matches no fetch.allow pattern")));
        }
        if let Some(p) = self
            .deny
            .iter()
            .find(|p| !p.has_tag() && p.matches_name(&name))
        {
            return Err(denied(format!(
                "{name} matches fetch.deny {:?}",
                p.as_str()
            )));
        }
        Ok(())
    }

    /// May a blob of `size` bytes be fetched?
    pub fn blob_size(&self, digest: &Digest, size: u64) -> Result<()> {
        match self.max_blob_size {
            Some(max) if size > max => Err(denied(format!(
                "{digest} has {size} bytes, more than fetch.max_blob_size ({max})"
            ))),
            _ => Ok(()),
        }
    }
}

fn denied(why: String) -> Error {
    Error::Denied(format!("the fetch policy refuses {why}"))
}

/// The image a signature tag names: `sha256-<64 hex>`, optionally with `.sig`, `.att` or
/// `.sbom`, the tags cosign and the referrers tag schema give an image's signatures,
/// attestations and SBOMs.
pub fn signed_digest(tag: &str) -> Option<Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && matches!(suffix, "" | ".sig" | ".att" | ".sbom");
    ok.then(|| format!("sha256:{hex}").parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn policy(allow: &[&str], deny: &[&str]) -> FetchPolicy {
        FetchPolicy::new(
            &FetchConfig {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                deny: deny.iter().map(|s| s.to_string()).collect(),
                max_blob_size: Some(ByteSize(1000)),
            },
            &Registries::default(),
        )
        .unwrap()
    }

    fn repo(s: &str) -> Repository {
        let (registry, name) = s.split_once('/').unwrap();
        Repository {
            registry: registry.parse().unwrap(),
            name: name.parse().unwrap(),
        }
    }

    #[test]
    fn allow_and_deny_by_name_and_tag() {
        let p = policy(
            &[
                "docker.io/library/*",
                "docker.io/org1/**",
                "ghcr.io/org2/*:v*",
            ],
            &["**:latest"],
        );
        let signed: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let sig = format!("sha256-{}.sig", "a".repeat(64));
        let here = |d: &Digest| *d == signed;
        let cases = [
            ("docker.io/library/alpine", "3.20", true),
            ("docker.io/library/alpine", "latest", false),
            ("docker.io/org1/a/b", "1.0", true),
            ("docker.io/evil/app", "1.0", false),
            ("ghcr.io/org2/app", "v1", true),
            ("ghcr.io/org2/app", "1.0", false),
            ("ghcr.io/org2/app", sig.as_str(), true),
            ("docker.io/evil/app", sig.as_str(), false),
        ];
        for (r, tag, ok) in cases {
            assert_eq!(p.tag(&repo(r), tag, here).is_ok(), ok, "{r}:{tag}");
        }
        // A signature tag of an image that is not here is an ordinary tag.
        assert!(p.tag(&repo("ghcr.io/org2/app"), &sig, |_| false).is_err());
        assert!(
            p.repository(&repo("docker.io/library/alpine")).is_ok(),
            "digests of an allowed repository"
        );
        assert!(p.repository(&repo("ghcr.io/org2/app")).is_ok());
        let e = p.repository(&repo("docker.io/evil/app")).unwrap_err();
        assert_eq!(e.code(), "DENIED");
        assert!(e.to_string().contains("fetch.allow"), "{e}");
        let e = p
            .tag(&repo("docker.io/library/alpine"), "latest", here)
            .unwrap_err();
        assert!(e.to_string().contains("fetch.deny \"**:latest\""), "{e}");
    }

    #[test]
    fn sizes_and_the_default() {
        let p = policy(&[], &["docker.io/blocked/*"]);
        let d: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        assert!(p.blob_size(&d, 1000).is_ok());
        assert!(
            p.blob_size(&d, 1001)
                .unwrap_err()
                .to_string()
                .contains("max_blob_size")
        );
        assert!(p.repository(&repo("docker.io/blocked/x")).is_err());
        assert!(p.tag(&repo("docker.io/any/x"), "latest", |_| false).is_ok());
        let open = FetchPolicy::default();
        assert!(
            open.tag(&repo("docker.io/a/b"), "latest", |_| false)
                .is_ok()
        );
        assert!(open.blob_size(&d, u64::MAX).is_ok());
    }

    #[test]
    fn signature_tags() {
        let hex = "0123456789abcdef".repeat(4);
        for (t, want) in [
            (format!("sha256-{hex}"), true),
            (format!("sha256-{hex}.sig"), true),
            (format!("sha256-{hex}.att"), true),
            (format!("sha256-{hex}.sbom"), true),
            (format!("sha256-{hex}.txt"), false),
            (format!("sha256-{}", &hex[1..]), false),
            (format!("sha256-{}", hex.to_uppercase()), false),
            ("latest".into(), false),
        ] {
            assert_eq!(signed_digest(&t).is_some(), want, "{t}");
        }
        assert!(
            FetchPolicy::new(
                &FetchConfig {
                    allow: vec!["alpine".into()],
                    ..Default::default()
                },
                &Registries::default()
            )
            .unwrap_err()
            .contains("fetch.allow")
        );
    }
}
