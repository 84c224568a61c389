//! Name patterns of access rules and the fetch policy: a glob over the full
//! `registry/repository` name, optionally with `:tag-glob`. `*` stays within one path segment,
//! `**` crosses segments (`docker.io/library/*`, `ghcr.io/org/**`, `**:latest`). Matching is
//! over names already parsed and normalised (`alpine` is `docker.io/library/alpine`), whatever
//! route a request came by.

use globset::{GlobBuilder, GlobMatcher};

/// A compiled `registry/repository[:tag]` pattern.
#[derive(Debug, Clone)]
pub struct NamePattern {
    text: String,
    name: GlobMatcher,
    tag: Option<GlobMatcher>,
}

impl NamePattern {
    /// Compile `text`; `allow_tag` says whether a `:tag-glob` part may follow. The error says
    /// what is wrong with it.
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
