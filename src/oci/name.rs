//! Repository names, tags, references and registry hosts, validated against the distribution
//! spec grammar so nothing malformed ever reaches the cache, the index or a file path.

use super::digest::{Digest, truncate};
use crate::error::Error;
use std::fmt;
use std::str::FromStr;

/// Longest repository name distribution accepts (including the `/` separators).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name such as `library/alpine`: `/`-separated components, each
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, at most 255 characters in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub keeps official images under `library/`: `alpine` means `library/alpine`
    /// there. Other registries take names as they are.
    pub fn normalized_for(self, registry: &Registry) -> RepoName {
        if registry.is_docker_hub() && !self.0.contains('/') {
            RepoName(format!("library/{}", self.0))
        } else {
            self
        }
    }

    /// [`RepoName::normalized_for`], refused when `library/` takes the name past
    /// [`MAX_NAME_LEN`]: the registry would refuse it, and it would not parse again.
    pub fn normalized_checked(self, registry: &Registry) -> Result<RepoName, Error> {
        self.normalized_for(registry).0.parse()
    }
}

impl FromStr for RepoName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_NAME_LEN {
            return Err(Error::NameInvalid(format!(
                "{:?}... is {} characters long, the limit is {MAX_NAME_LEN}",
                truncate(s),
                s.len()
            )));
        }
        if s.split('/').all(valid_component) {
            Ok(RepoName(s.to_string()))
        } else {
            Err(Error::NameInvalid(format!(
                "{:?}: each path component must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
                truncate(s)
            )))
        }
    }
}

/// One path component: runs of `[a-z0-9]` joined by `.`, `_`, `__` or one or more `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(Error::ManifestUnknown(format!(
                "{:?} is not a valid tag: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}",
                truncate(s)
            )))
        }
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable name.
    Tag(Tag),
    /// An immutable content address.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

/// A registry host as clients name it: `docker.io`, `ghcr.io`, `registry.local:5000`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Registry(String);

impl Registry {
    /// Docker Hub, the default registry of Docker and of bare names.
    pub fn docker_hub() -> Registry {
        Registry("docker.io".into())
    }

    /// The host (and port) as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is Docker Hub under any of its names.
    pub fn is_docker_hub(&self) -> bool {
        matches!(
            self.0.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        )
    }
}

impl FromStr for Registry {
    type Err = Error;

    /// Lower-cases the host; `index.docker.io` and `registry-1.docker.io` become `docker.io`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.to_ascii_lowercase();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        // Digits only: `u16::from_str` also takes `+5000`, a second name for port 5000.
        let port_ok = port.is_none_or(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
        });
        if !host_ok || !port_ok {
            return Err(Error::NameInvalid(format!(
                "{:?} is not a registry host (expected host or host:port)",
                truncate(&s)
            )));
        }
        let r = Registry(s.clone());
        Ok(if r.is_docker_hub() {
            Registry::docker_hub()
        } else {
            r
        })
    }
}

/// A repository on a registry: the unit every tag, link and cache key belongs to, so the same
/// name on two registries never mixes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    /// Where it lives.
    pub registry: Registry,
    /// Its name there (normalised for Docker Hub).
    pub name: RepoName,
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A full image reference as users write it: `nginx:1.25`, `ghcr.io/org/app:v1`,
/// `localhost:5000/app@sha256:…`. Parsed as Docker does: the first component is a registry
/// when it has a dot or a port or is `localhost`; the tag defaults to `latest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry and repository (normalised for Docker Hub).
    pub repo: Repository,
    /// Tag or digest (a digest wins when both are given).
    pub reference: Reference,
}

impl ImageRef {
    /// Parse `s`, with `default` as the registry when it names none.
    pub fn parse(s: &str, default: &Registry) -> Result<ImageRef, Error> {
        let s = s.trim();
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.parse()?, path)
            }
            _ => (default.clone(), name),
        };
        let name: RepoName = path.parse()?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t.parse()?),
            (None, None) => Reference::Tag(Tag("latest".into())),
        };
        Ok(ImageRef {
            repo: Repository {
                name: name.normalized_checked(&registry)?,
                registry,
            },
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.repo),
            Reference::Digest(d) => write!(f, "{}@{d}", self.repo),
        }
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! text_impls {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(&self.0, f) }
        }
    )*};
}
text_impls!(RepoName, Tag, Registry);

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_follow_the_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "my-org/my_app",
            "a__b",
            "a---b",
            "a.b/c",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "../../etc",
            "a/../b",
            "A",
            "a___b",
            "a._b",
            "-a",
            "a-",
            "a%2e",
            "a b",
            "a\0b",
            long.as_str(),
        ] {
            let e = bad.parse::<RepoName>().unwrap_err();
            assert_eq!(e.code(), "NAME_INVALID", "{bad:?}");
        }
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let hub = Registry::docker_hub();
        let ghcr: Registry = "ghcr.io".parse().unwrap();
        let n =
            |s: &str, r: &Registry| s.parse::<RepoName>().unwrap().normalized_for(r).to_string();
        assert_eq!(n("alpine", &hub), "library/alpine");
        assert_eq!(n("org/app", &hub), "org/app");
        assert_eq!(n("alpine", &ghcr), "alpine");
    }

    #[test]
    fn tags_follow_the_grammar() {
        let t128 = "a".repeat(128);
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", t128.as_str()] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        let t129 = "a".repeat(129);
        for bad in ["", ".x", "-x", "a/b", "a:b", "a%b", t129.as_str()] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert_eq!(
            "sha256:zz".parse::<Reference>().unwrap_err().code(),
            "DIGEST_INVALID"
        );
    }

    #[test]
    fn image_references_parse_like_docker() {
        let hub = Registry::docker_hub();
        let p = |s: &str| ImageRef::parse(s, &hub).map(|r| r.to_string());
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(p("nginx").unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(p("nginx:1.25").unwrap(), "docker.io/library/nginx:1.25");
        assert_eq!(
            p("docker.io/nginx:1.25").unwrap(),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(p("ghcr.io/org/app:v1").unwrap(), "ghcr.io/org/app:v1");
        assert_eq!(
            p(&format!("ghcr.io/org/app@{d}")).unwrap(),
            format!("ghcr.io/org/app@{d}")
        );
        assert_eq!(
            p(&format!("org/app:v1@{d}")).unwrap(),
            format!("docker.io/org/app@{d}")
        );
        assert_eq!(
            p("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            p("registry.local:5000/a/b:c").unwrap(),
            "registry.local:5000/a/b:c"
        );
        assert_eq!(
            p("docker://alpine:3.19").unwrap(),
            "docker.io/library/alpine:3.19"
        );
        for bad in ["", "UPPER:1", "a:b:c", "ghcr.io/", "a@sha256:xyz", "a:-bad"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    /// Found by the names fuzz target: a 249-character name was taken and printed as
    /// `docker.io/library/<name>`, 257 characters, which no longer parsed.
    #[test]
    fn the_library_prefix_counts_against_the_limit() {
        let hub = Registry::docker_hub();
        let at_limit = "a".repeat(MAX_NAME_LEN - "library/".len());
        let r = ImageRef::parse(&at_limit, &hub).unwrap();
        assert_eq!(ImageRef::parse(&r.to_string(), &hub).unwrap(), r);
        let over = format!("{at_limit}a");
        assert_eq!(
            ImageRef::parse(&over, &hub).unwrap_err().code(),
            "NAME_INVALID"
        );
        let ghcr: Registry = "ghcr.io".parse().unwrap();
        assert!(ImageRef::parse(&over, &ghcr).is_ok(), "no prefix elsewhere");
    }

    #[test]
    fn registries_are_hosts() {
        assert_eq!(
            "Index.Docker.IO".parse::<Registry>().unwrap(),
            Registry::docker_hub()
        );
        assert_eq!(
            "registry-1.docker.io".parse::<Registry>().unwrap().as_str(),
            "docker.io"
        );
        assert!("localhost:5000".parse::<Registry>().is_ok());
        assert!("127.0.0.1:15000".parse::<Registry>().is_ok());
        // `a:+5000` was found by the route fuzz target: a second registry for a:5000.
        for bad in [
            "", ":5000", "a:0", "a:99999", "a..b", "-a.io", "a/b", "a b", "a:+5000", "a:-1",
        ] {
            assert!(bad.parse::<Registry>().is_err(), "{bad:?}");
        }
    }
}
