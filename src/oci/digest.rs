//! Content digests (`sha256:<64 lowercase hex>`) and the incremental verifier that checks a
//! stream of bytes against one.

use crate::error::Error;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A validated content digest. Only sha256 is supported, as in distribution and Docker Hub;
/// other well-formed algorithms are refused with a message saying so.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut v = Verifier::new();
        v.update(bytes);
        v.finish()
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name (always `sha256`).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::DigestInvalid(format!("{:?}: {why}", truncate(s)));
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| bad("expected <algorithm>:<hex>"))?;
        if !valid_algorithm(alg) {
            return Err(bad("malformed algorithm"));
        }
        if enc.is_empty()
            || !enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        {
            return Err(bad("malformed encoded part"));
        }
        if alg != "sha256" {
            return Err(bad(
                "unsupported digest algorithm, only sha256 is supported",
            ));
        }
        if enc.len() != 64 || !enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("sha256 needs 64 lowercase hex characters"));
        }
        Ok(Digest {
            hex: enc.to_string(),
        })
    }
}

/// `algorithm-component (separator algorithm-component)*`, components `[a-z0-9]+`,
/// separators `[+._-]`.
fn valid_algorithm(alg: &str) -> bool {
    !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Inputs echoed in messages are cut so a huge bogus path cannot bloat logs.
pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes bytes as they stream by; `finish` gives the digest of everything seen.
#[derive(Clone, Default)]
pub struct Verifier {
    hasher: Sha256,
}

impl Verifier {
    /// A verifier that has seen nothing.
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// Feed the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The digest of all bytes fed so far.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.hasher.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(Digest::of(b""), d);
    }

    #[test]
    fn rejects_malformed_and_unsupported() {
        let long = format!("sha256:{HEX}0");
        let upper = format!("sha256:{}", HEX.to_uppercase());
        let sha512 = format!("sha512:{}", "a".repeat(128));
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            long.as_str(),
            upper.as_str(),
            "SHA256:abc",
            "sha256:../../etc",
            "sha256:%2e%2e",
            "sha-:abc",
            sha512.as_str(),
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(err.code(), "DIGEST_INVALID", "{bad:?}");
        }
        let err = sha512.parse::<Digest>().unwrap_err().to_string();
        assert!(err.contains("unsupported digest algorithm"), "{err}");
    }

    #[test]
    fn verifier_is_incremental() {
        let mut v = Verifier::new();
        v.update(b"hello ");
        v.update(b"world");
        assert_eq!(v.finish(), Digest::of(b"hello world"));
    }
}
