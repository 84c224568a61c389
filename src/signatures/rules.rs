//! `[[signatures]]` compiled: patterns normalised against the configured registries, key
//! files read and checked, every mistake named with its rule.

use super::Key;
use crate::config::{SignatureMode, SignatureRule};
use crate::pattern::{NamePattern, Registries};

/// One compiled rule.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) patterns: Vec<NamePattern>,
    pub(super) keys: Vec<Key>,
    pub(super) mode: SignatureMode,
    /// Transparency log keys: a log entry a signature carries must verify under one.
    pub(super) log_keys: Vec<Key>,
    /// A signature without a log entry does not count.
    pub(super) require_tlog: bool,
}

/// Check `[[signatures]]` without keeping anything: the error names the rule and what to fix.
pub fn validate(
    rules: &[SignatureRule],
    registries: &Registries,
) -> std::result::Result<(), String> {
    compile(rules, registries).map(|_| ())
}

pub(super) fn compile(
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
