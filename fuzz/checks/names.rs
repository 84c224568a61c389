//! Names and references (`airlock::oci`): repository names, tags, references, registry
//! hosts, digests, platforms, full image references, and the signature tags of the fetch
//! policy. Each parser sees the same input.
//!
//! Properties: whatever parses prints back as a value that parses to itself; names, tags,
//! references, digests and platforms print exactly as written; lengths and alphabets stay
//! within the grammar; an image reference prints fully qualified, so it parses the same
//! whatever the default registry.

use airlock::oci::{Digest, ImageRef, Platform, Reference, Registry, RepoName, Tag};
use std::fmt::Display;
use std::str::FromStr;

/// Which parsers accepted `data`.
pub fn check(data: &[u8]) -> Vec<&'static str> {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    let mut accepted = Vec::new();
    if let Some(n) = exact::<RepoName>(s) {
        assert!(n.as_str().len() <= airlock::oci::name::MAX_NAME_LEN);
        assert!(
            n.as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
            "{n:?}"
        );
        assert!(
            n.as_str()
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        );
        accepted.push("repo_name");
    }
    if let Some(t) = exact::<Tag>(s) {
        assert!(!t.as_str().is_empty() && t.as_str().len() <= 128);
        accepted.push("tag");
    }
    if let Some(d) = exact::<Digest>(s) {
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.algorithm(), "sha256");
        accepted.push("digest");
    }
    if let Some(r) = exact::<Reference>(s) {
        match &r {
            Reference::Tag(t) => assert!(s.parse::<Tag>().is_ok_and(|x| x == *t)),
            Reference::Digest(d) => assert!(s.parse::<Digest>().is_ok_and(|x| x == *d)),
        }
        accepted.push("reference");
    }
    if let Ok(r) = s.parse::<Registry>() {
        round_trip(&r);
        assert_eq!(r.as_str(), r.as_str().to_ascii_lowercase());
        if !r.is_docker_hub() {
            assert_eq!(r.as_str(), s.to_ascii_lowercase());
        } else {
            assert_eq!(r, Registry::docker_hub());
        }
        accepted.push("registry");
    }
    if let Some(p) = exact::<Platform>(s) {
        assert!(p.satisfies(&p), "{p} satisfies itself");
        accepted.push("platform");
    }
    if let Ok(list) = Platform::parse_list(s) {
        let printed: Vec<String> = list.iter().map(|p| p.to_string()).collect();
        let again = Platform::parse_list(&printed.join(",")).expect("printed platforms parse");
        assert_eq!(again, list);
        accepted.push("platform_list");
    }
    for default in [
        Registry::docker_hub(),
        "registry.invalid:5000".parse().unwrap(),
    ] {
        if let Ok(r) = ImageRef::parse(s, &default) {
            let printed = r.to_string();
            for other in [Registry::docker_hub(), "other.invalid".parse().unwrap()] {
                let again = ImageRef::parse(&printed, &other)
                    .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}: {e}"));
                assert_eq!(again, r, "{printed:?} with default {other}");
                assert_eq!(again.to_string(), printed);
            }
            check_name_of(&r);
            if !accepted.contains(&"image_ref") {
                accepted.push("image_ref");
            }
        }
    }
    // The fetch policy reads signature tags (`sha256-<hex>.sig`) from tags that parsed.
    if let Some(d) = accepted
        .contains(&"tag")
        .then(|| airlock::fetch_policy::signed_digest(s))
        .flatten()
    {
        assert!(
            s.starts_with(&format!("sha256-{}", d.hex())),
            "{s:?} names {d}"
        );
        accepted.push("signature_tag");
    }
    accepted
}

/// [`check`] for the corpus replay: whether any parser accepted `data`.
pub fn check_any(data: &[u8]) -> bool {
    !check(data).is_empty()
}

/// Parse `s`; when it parses, it must print exactly as `s` and parse back to itself.
fn exact<T>(s: &str) -> Option<T>
where
    T: FromStr + Display + PartialEq + std::fmt::Debug,
{
    let v = s.parse::<T>().ok()?;
    assert_eq!(v.to_string(), s, "{v:?} does not print as it was written");
    round_trip(&v);
    Some(v)
}

/// `v` printed parses to `v`.
fn round_trip<T>(v: &T)
where
    T: FromStr + Display + PartialEq + std::fmt::Debug,
{
    let printed = v.to_string();
    match printed.parse::<T>() {
        Ok(again) => assert_eq!(&again, v, "{printed:?}"),
        Err(_) => panic!("{v:?} printed as {printed:?}, which does not parse"),
    }
}

/// The repository of an image reference stays within the name grammar after Docker Hub's
/// `library/` normalisation.
fn check_name_of(r: &ImageRef) {
    let name = r.repo.name.as_str();
    assert!(
        name.parse::<RepoName>().is_ok_and(|n| n == r.repo.name),
        "{r:?}: the repository {name:?} is not a valid name"
    );
    round_trip(&r.repo.registry);
}

/// Inputs some parser must accept: names, tags, digests, hosts, platforms, references.
pub fn seeds() -> Vec<Vec<u8>> {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    [
        "library/alpine".to_string(),
        "my-org/my_app__x/a.b".to_string(),
        "v1.2.3-rc_1".to_string(),
        format!("sha256:{hex}"),
        "registry.local:5000".to_string(),
        "Index.Docker.IO".to_string(),
        "linux/arm64/v8".to_string(),
        "linux/amd64, linux/arm64".to_string(),
        "nginx:1.25".to_string(),
        format!("ghcr.io/org/app:v1@sha256:{hex}"),
        "docker://localhost:5000/app".to_string(),
        format!("sha256-{hex}.sig"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
