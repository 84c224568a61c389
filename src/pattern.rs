//! Name patterns of access rules and the fetch policy: a glob over the full
//! `registry/repository` name, optionally with `:tag-glob`. `*` stays within one path segment,
//! `**` crosses segments (`docker.io/library/*`, `ghcr.io/org/**`, `**:latest`). Matching is
//! over names already parsed and normalised (`alpine` is `docker.io/library/alpine`), whatever
//! route a request came by, so patterns are normalised the same way when they are read: an
//! alias becomes its registry, Docker Hub's other names become `docker.io`, and
//! `docker.io/alpine` becomes `docker.io/library/alpine`. A pattern that could never match
//! (a registry with no `[[upstream]]`, upper case in a name) is refused rather than ignored:
//! a typo must not silently open or fail to close anything.

use crate::oci::Registry;
use globset::{GlobBuilder, GlobMatcher};
use std::collections::HashMap;

/// The registries names can be in: the configured upstreams and their aliases.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    known: Vec<Registry>,
    aliases: HashMap<String, Registry>,
}

impl Registries {
    /// The registries of the `[[upstream]]`s and their aliases (invalid ones are left out:
    /// the configuration check reports them).
    pub fn from_config(config: &crate::config::Config) -> Registries {
        let mut r = Registries::default();
        for u in &config.upstream {
            if let Ok(reg) = u.registry.parse::<Registry>() {
                for a in &u.aliases {
                    r.aliases.insert(a.clone(), reg.clone());
                }
                r.known.push(reg);
            }
        }
        r
    }

    /// The registry a pattern's first segment names, normalised; the error says why not.
    fn normalise(&self, segment: &str) -> Result<Registry, String> {
        if let Some(r) = self.aliases.get(segment) {
            return Ok(r.clone());
        }
        let r: Registry = segment
            .parse()
            .map_err(|_| format!("{segment:?} is not a registry host"))?;
        if !self.known.is_empty() && !self.known.contains(&r) {
            let known: Vec<String> = self.known.iter().map(|k| k.to_string()).collect();
            return Err(format!(
                "{r} has no [[upstream]], so no name can match (the registries are {})",
                known.join(", ")
            ));
        }
        Ok(r)
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// A compiled `registry/repository[:tag]` pattern.
#[derive(Debug, Clone)]
pub struct NamePattern {
    text: String,
    name: GlobMatcher,
    tag: Option<GlobMatcher>,
}

impl NamePattern {
    /// Compile `text`, normalised against `registries`; `allow_tag` says whether a
    /// `:tag-glob` part may follow. The error says what is wrong with it.
    pub fn parse_in(
        text: &str,
        allow_tag: bool,
        registries: &Registries,
    ) -> Result<NamePattern, String> {
        let mut p = NamePattern::parse(text, allow_tag)?;
        let Some((segment, rest)) = text.split_once('/') else {
            return Ok(p);
        };
        if has_glob(segment) {
            return Ok(p);
        }
        let registry = registries
            .normalise(segment)
            .map_err(|e| format!("{text:?}: {e}"))?;
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last..].find(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i..])),
            None => (rest, None),
        };
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("{text:?}: repository names are lower case"));
        }
        let library = registry.is_docker_hub() && !name.contains('/') && !has_glob(name);
        let normal = format!(
            "{registry}/{}{name}{}",
            if library { "library/" } else { "" },
            tag.unwrap_or("")
        );
        if normal != text {
            p = NamePattern::parse(&normal, allow_tag)?;
            p.text = format!("{normal} (written {text})");
        }
        Ok(p)
    }

    /// Compile `text` as written (see [`NamePattern::parse_in`] for configured patterns);
    /// `allow_tag` says whether a `:tag-glob` part may follow.
    pub fn parse(text: &str, allow_tag: bool) -> Result<NamePattern, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing: use \"**\" for every name".into());
        }
        let slash = text.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match text[slash..].find(':') {
            Some(i) => (&text[..slash + i], Some(&text[slash + i + 1..])),
            None => (text, None),
        };
        if tag.is_some() && !allow_tag {
            return Err(format!(
                "{text:?}: access rules match repositories, not tags (no \":tag\")"
            ));
        }
        if name != "**" && !name.contains('/') {
            return Err(format!(
                "{text:?} names no registry: patterns match registry/repository, such as \"docker.io/library/*\""
            ));
        }
        let glob = |g: &str, what: &str| {
            GlobBuilder::new(g)
                .literal_separator(true)
                .backslash_escape(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{text:?}: the {what} glob is invalid: {e}"))
        };
        let tag = match tag {
            Some("") => return Err(format!("{text:?}: nothing after ':'")),
            Some(t) => Some(glob(t, "tag")?),
            None => None,
        };
        Ok(NamePattern {
            text: text.to_string(),
            name: glob(name, "name")?,
            tag,
        })
    }

    /// Whether `name` (`registry/repository`) matches, ignoring any tag part.
    pub fn matches_name(&self, name: &str) -> bool {
        self.name.is_match(name)
    }

    /// Whether `name` with `tag` matches. A pattern without a tag part matches every tag;
    /// `tag: None` (a digest) matches only patterns without one.
    pub fn matches(&self, name: &str, tag: Option<&str>) -> bool {
        self.matches_name(name)
            && match (&self.tag, tag) {
                (None, _) => true,
                (Some(t), Some(tag)) => t.is_match(tag),
                (Some(_), None) => false,
            }
    }

    /// Whether this pattern has a tag part.
    pub fn has_tag(&self) -> bool {
        self.tag.is_some()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_over_full_names() {
        let cases = [
            ("docker.io/library/*", "docker.io/library/alpine", true),
            ("docker.io/library/*", "docker.io/library/a/b", false),
            ("docker.io/library/*", "ghcr.io/library/alpine", false),
            ("ghcr.io/org/**", "ghcr.io/org/a/b/c", true),
            ("ghcr.io/org/**", "ghcr.io/other/a", false),
            ("**", "registry.local:5000/x/y", true),
            ("registry.local:5000/**", "registry.local:5000/x", true),
            ("*/org/app", "docker.io/org/app", true),
            ("*/org/app", "docker.io/x/org/app", false),
        ];
        for (pat, name, want) in cases {
            let p = NamePattern::parse(pat, false).unwrap();
            assert_eq!(p.matches_name(name), want, "{pat} ~ {name}");
        }
    }

    #[test]
    fn tag_parts() {
        let p = NamePattern::parse("**:latest", true).unwrap();
        assert!(p.matches("docker.io/library/alpine", Some("latest")));
        assert!(!p.matches("docker.io/library/alpine", Some("3.20")));
        assert!(!p.matches("docker.io/library/alpine", None));
        let p = NamePattern::parse("registry.local:5000/app:v*", true).unwrap();
        assert!(p.matches("registry.local:5000/app", Some("v1")));
        assert!(!p.matches("registry.local:5000/app", Some("latest")));
        let p = NamePattern::parse("registry.local:5000/app", true).unwrap();
        assert!(!p.has_tag());
        assert!(p.matches("registry.local:5000/app", None));
    }

    #[test]
    fn configured_patterns_are_normalised_like_names() {
        let mut c = crate::config::Config::default();
        let mut gh = crate::config::UpstreamConfig::new("ghcr.io");
        gh.aliases = vec!["gh".into()];
        c.upstream.push(gh);
        let regs = Registries::from_config(&c);
        for (pat, name, want) in [
            ("docker.io/alpine", "docker.io/library/alpine", true),
            ("index.docker.io/org/**", "docker.io/org/app", true),
            ("Docker.IO/org/*", "docker.io/org/app", true),
            ("gh/org/**", "ghcr.io/org/app", true),
            ("gh/org/**", "docker.io/gh/org/app", false),
            ("*/org/app", "ghcr.io/org/app", true),
        ] {
            let p = NamePattern::parse_in(pat, true, &regs).unwrap();
            assert_eq!(p.matches_name(name), want, "{pat} ~ {name}");
        }
        for (pat, needle) in [
            ("quay.io/org/*", "no [[upstream]]"),
            ("docker.io/Org/App", "lower case"),
            ("not a host/x", "not a registry host"),
        ] {
            let e = NamePattern::parse_in(pat, true, &regs).unwrap_err();
            assert!(e.contains(needle), "{pat}: {e}");
        }
        // A site with no upstream at all (bundles only) names any registry.
        let none = Registries::default();
        assert!(NamePattern::parse_in("quay.io/org/*", true, &none).is_ok());
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pat, allow_tag, needle) in [
            ("", true, "empty"),
            ("alpine", true, "names no registry"),
            ("docker.io/a:", true, "nothing after"),
            ("docker.io/a:v1", false, "not tags"),
            ("docker.io/[a", true, "invalid"),
        ] {
            let e = NamePattern::parse(pat, allow_tag).unwrap_err();
            assert!(e.contains(needle), "{pat}: {e}");
        }
    }
}
