//! Manifest media types, the blobs and manifests a manifest refers to, and `Accept` matching.
//!
//! Manifests are parsed here only to learn what they name (so those blobs can be linked to the
//! repository and their sizes known). A small lenient struct is used rather than the strict
//! `oci-spec` types: it must read OCI and Docker manifests, indexes and lists alike (and the
//! layer list of Docker schema 1), and never reject a manifest the upstream accepted.

use super::digest::Digest;
use super::platform::Platform;
use serde::Deserialize;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What we ask an upstream for when the client did not say: every current manifest type.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest we store, as distribution and containerd limit them.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A reference from one piece of content to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the target, when the manifest says.
    pub media_type: Option<String>,
    /// Digest of the target.
    pub digest: Digest,
    /// Size of the target in bytes, when the manifest says.
    pub size: Option<u64>,
    /// Whether the target is itself a manifest (an index's children) rather than a blob.
    pub is_manifest: bool,
    /// Whether the descriptor lists `urls` (a non-distributable layer): registries accept
    /// such manifests without the blob being in the repository, so it proves nothing.
    pub foreign: bool,
    /// The platform of an index child, when the index says.
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    #[serde(default)]
    fs_layers: Vec<RawSchema1Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSchema1Layer {
    blob_sum: String,
}

/// Everything `manifest` refers to: config and layers, child manifests of an index or list, or
/// the `fsLayers` of schema 1. Entries with unparsable digests are skipped (we only use this to
/// link and size known content). `None` when the bytes are not a JSON manifest at all.
pub fn children(manifest: &[u8]) -> Option<Vec<Descriptor>> {
    let raw: RawManifest = serde_json::from_slice(manifest).ok()?;
    let blob = |d: RawDescriptor, is_manifest| {
        Some(Descriptor {
            digest: d.digest.parse().ok()?,
            media_type: d.media_type,
            size: d.size,
            is_manifest,
            foreign: !d.urls.is_empty(),
            platform: d.platform,
        })
    };
    let mut out: Vec<Descriptor> = raw
        .config
        .into_iter()
        .filter_map(|d| blob(d, false))
        .collect();
    out.extend(raw.layers.into_iter().filter_map(|d| blob(d, false)));
    out.extend(raw.manifests.into_iter().filter_map(|d| blob(d, true)));
    out.extend(raw.fs_layers.into_iter().filter_map(|l| {
        Some(Descriptor {
            digest: l.blob_sum.parse().ok()?,
            media_type: None,
            size: None,
            is_manifest: false,
            foreign: false,
            platform: None,
        })
    }));
    Some(out)
}

/// Whether a stored media type is a manifest's (not a config or layer also named by digest).
/// Old registries answer schema 1 as plain `application/json`.
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type.contains("manifest")
        || media_type.contains("index")
        || media_type == "application/json"
}

/// Whether `bytes` are a JSON object with a manifest's `schemaVersion` or `mediaType` (and not,
/// say, a captive portal's page).
pub fn looks_like_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
        .is_ok_and(|m| m.contains_key("schemaVersion") || m.contains_key("mediaType"))
}

/// Whether a client whose `Accept` header values are `accept` takes `media_type`. No `Accept`
/// at all, `*/*` or `application/*` accept anything; parameters (`;q=`) are ignored.
pub fn accepts(accept: &[&str], media_type: &str) -> bool {
    let mut any = false;
    for value in accept {
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == "*/*" || item == "application/*" || item.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}

/// What to ask an upstream for on behalf of a client sending `accept`: its own list when it
/// names a manifest type, else (nothing, or only `*/*` as curl sends) every current type, so
/// the upstream never downgrades to schema 1.
pub fn upstream_accept(accept: &[&str]) -> String {
    let names_a_type = accept
        .iter()
        .flat_map(|v| v.split(','))
        .any(|item| item.contains("manifest") || item.contains("index"));
    if names_a_type {
        accept.join(", ")
    } else {
        ACCEPT_ALL.to_string()
    }
}

/// Whether `accept` takes every current manifest type: then the upstream's answer for a tag is
/// the tag's answer for any client, not one narrowed to what this client can read.
pub fn accepts_every_type(accept: &[&str]) -> bool {
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
        .iter()
        .all(|t| accepts(accept, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn children_of_an_image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
               "config":{{"mediaType":"c","digest":"{D1}","size":7}},
               "layers":[{{"mediaType":"l","digest":"{D2}","size":9}},{{"digest":"bogus"}},
                         {{"digest":"{D1}","urls":["https://example.com/l"]}}]}}"#
        );
        let c = children(m.as_bytes()).unwrap();
        assert_eq!(c.len(), 3);
        assert!(!c[0].foreign && c[2].foreign);
        assert_eq!(c[0].digest.to_string(), D1);
        assert_eq!(c[0].size, Some(7));
        assert_eq!(c[1].media_type.as_deref(), Some("l"));
        assert!(!c[1].is_manifest);
    }

    #[test]
    fn children_of_an_index_and_schema1() {
        let i = format!(
            r#"{{"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":3}}]}}"#
        );
        let c = children(i.as_bytes()).unwrap();
        assert!(c[0].is_manifest);
        let s1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{D2}"}}]}}"#);
        assert_eq!(children(s1.as_bytes()).unwrap()[0].digest.to_string(), D2);
        assert!(children(b"not json").is_none());
    }

    #[test]
    fn accept_matching() {
        assert!(accepts(&[], OCI_INDEX));
        assert!(accepts(&["*/*"], OCI_INDEX));
        assert!(accepts(&[ACCEPT_ALL], DOCKER_LIST));
        assert!(accepts(
            &[
                "text/plain",
                "application/vnd.oci.image.index.v1+json; q=0.5"
            ],
            OCI_INDEX
        ));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_INDEX));
        assert!(
            accepts(&[" , "], OCI_INDEX),
            "an empty Accept accepts anything"
        );
        assert!(accepts_every_type(&[ACCEPT_ALL]));
        assert_eq!(upstream_accept(&["*/*"]), ACCEPT_ALL);
        assert_eq!(upstream_accept(&[]), ACCEPT_ALL);
        assert_eq!(
            upstream_accept(&[DOCKER_MANIFEST, "*/*"]),
            format!("{DOCKER_MANIFEST}, */*")
        );
        assert!(accepts_every_type(&[]));
        assert!(!accepts_every_type(&[DOCKER_MANIFEST, OCI_MANIFEST]));
    }

    #[test]
    fn manifests_and_portal_pages() {
        assert!(looks_like_manifest(br#"{"schemaVersion":2,"layers":[]}"#));
        assert!(looks_like_manifest(
            br#"{"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#
        ));
        for page in [&b"<html>log in</html>"[..], b"{}", b"[1,2]", b"", b"null"] {
            assert!(
                !looks_like_manifest(page),
                "{}",
                String::from_utf8_lossy(page)
            );
        }
        assert!(is_manifest_type(OCI_INDEX) && is_manifest_type("application/json"));
        assert!(!is_manifest_type("text/html; charset=utf-8"));
    }
}
