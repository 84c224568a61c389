//! Platforms (`linux/amd64`, `linux/arm64/v8`) as image indexes name their children and as
//! users filter them (`--platform linux/amd64,linux/arm64`).

use crate::error::Error;
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// An operating system, architecture and optional variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, … when the architecture has variants.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether an image for `self` satisfies a request for `wanted`: os and architecture
    /// equal; a variant is compared only when `wanted` names one (arm64 means arm64/v8).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || norm(self) == norm(wanted))
    }

    /// Parse a comma-separated list (`linux/amd64,linux/arm64`).
    pub fn parse_list(s: &str) -> Result<Vec<Platform>, Error> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if parts.iter().all(ok) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(Error::Unsupported(format!(
                "{s:?} is not a platform such as linux/amd64 or linux/arm64/v8"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Platform;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert!(p("linux/arm64/v8").satisfies(&p("linux/arm64")));
        assert!(
            p("linux/arm64").satisfies(&p("linux/arm64/v8")),
            "arm64 means v8"
        );
        assert!(!p("linux/arm/v7").satisfies(&p("linux/arm/v6")));
        assert!(!p("linux/amd64").satisfies(&p("linux/arm64")));
        assert_eq!(
            Platform::parse_list("linux/amd64, linux/arm64")
                .unwrap()
                .len(),
            2
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
