//! The OCI image layout as a bundle carries it: the `oci-layout` marker, `index.json` (one
//! descriptor per image, named by its full reference) and the paths of blobs.
//!
//! ```text
//! oci-layout                   {"imageLayoutVersion":"1.0.0"}
//! blobs/sha256/<hex>           every blob and manifest, verified on import
//! index.json                   written last: a truncated bundle never has one
//! ```

use crate::error::{Error, Result};
use crate::oci::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, ImageRef, Registry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The content of `oci-layout`.
pub const LAYOUT_MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The OCI annotation naming an image (skopeo and podman look images up by it).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for the same (`ctr image import`).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// airlock's annotation on an index: the child manifests the bundle means to carry
/// (comma-separated), so an import can tell a platform left out on purpose from one missing.
pub const PLATFORMS: &str = "org.airlock.bundle.manifests";

/// `index.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The OCI index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One per image.
    #[serde(default)]
    pub manifests: Vec<LayoutDescriptor>,
}

/// One image in `index.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutDescriptor {
    /// The manifest's media type.
    #[serde(default)]
    pub media_type: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's size.
    pub size: u64,
    /// Names and airlock's notes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl LayoutDescriptor {
    /// The image's full reference (`registry/repository:tag` or `@digest`). A bare tag, as
    /// plain OCI layouts use, names no registry or repository: it is refused.
    pub fn reference(&self) -> Result<ImageRef> {
        let digest = &self.digest;
        let name = self
            .annotations
            .get(REF_NAME)
            .or_else(|| self.annotations.get(CONTAINERD_NAME))
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "index.json entry {digest} has no {REF_NAME} annotation: airlock imports images named by their full reference"
                ))
            })?;
        let not_full = || {
            Error::Unsupported(format!(
                "index.json entry {digest} is named {name:?}, not a full reference (registry/repository:tag)"
            ))
        };
        let parsed = ImageRef::parse(name, &Registry::docker_hub()).map_err(|_| not_full())?;
        // A name that depends on the default registry did not say which registry it is from.
        let sentinel: Registry = "registry.invalid".parse()?;
        match ImageRef::parse(name, &sentinel) {
            Ok(other) if other == parsed => Ok(parsed),
            _ => Err(not_full()),
        }
    }

    /// The child manifests airlock's exporter meant to carry, when it said.
    pub fn platforms(&self) -> Result<Option<Vec<Digest>>> {
        self.annotations
            .get(PLATFORMS)
            .map(|list| {
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect()
            })
            .transpose()
    }
}

/// The path of a blob in the archive.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// What an archive path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// `oci-layout`.
    Marker,
    /// `index.json`.
    Index,
    /// `blobs/sha256/<hex>`.
    Blob(Digest),
    /// A directory of the layout (`blobs/`, `blobs/sha256/`).
    Directory,
    /// Anything else (ignored).
    Other,
}

/// Classify an archive path (`./` prefixes allowed). A path under `blobs/` that is not a
/// sha256 digest is an error: its content could not be verified.
pub fn classify(path: &str) -> Result<Entry> {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    let p = p.trim_end_matches('/');
    Ok(match p {
        "oci-layout" => Entry::Marker,
        "index.json" => Entry::Index,
        "blobs" | "blobs/sha256" => Entry::Directory,
        _ => match p.strip_prefix("blobs/") {
            Some(rest) => {
                let digest = rest
                    .strip_prefix("sha256/")
                    .map(|hex| format!("sha256:{hex}").parse::<Digest>());
                match digest {
                    Some(Ok(d)) => Entry::Blob(d),
                    _ => {
                        return Err(Error::DigestInvalid(format!(
                            "bundle entry {path:?} is not a sha256 blob; only sha256 content can be verified"
                        )));
                    }
                }
            }
            None => Entry::Other,
        },
    })
}

/// The media type a manifest declares (`mediaType`), or the OCI type its shape implies.
pub fn declared_media_type(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape {
            media_type: Some(t),
            ..
        }) if is_manifest_type(&t) => t,
        Ok(Shape {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

/// Whether `media_type` is a manifest's or an index's (not a config's or a layer's).
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type.contains("manifest") || media_type.contains("index")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &str) -> LayoutDescriptor {
        LayoutDescriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(b"m"),
            size: 1,
            annotations: [(REF_NAME.to_string(), name.to_string())].into(),
        }
    }

    #[test]
    fn only_full_references_name_images() {
        for (name, want) in [
            (
                "docker.io/library/nginx:1.25",
                "docker.io/library/nginx:1.25",
            ),
            ("docker.io/nginx:1.25", "docker.io/library/nginx:1.25"),
            ("ghcr.io/org/app:v1", "ghcr.io/org/app:v1"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ] {
            assert_eq!(descriptor(name).reference().unwrap().to_string(), want);
        }
        for bad in ["nginx:1.25", "1.25", "library/nginx", "latest", "UPPER/x:1"] {
            let e = descriptor(bad).reference().unwrap_err().to_string();
            assert!(e.contains("not a full reference"), "{bad}: {e}");
        }
        let mut d = descriptor("x");
        d.annotations.clear();
        assert!(d.reference().unwrap_err().to_string().contains(REF_NAME));
        d.annotations
            .insert(CONTAINERD_NAME.into(), "ghcr.io/a/b:c".into());
        assert_eq!(d.reference().unwrap().to_string(), "ghcr.io/a/b:c");
    }

    #[test]
    fn paths_classify() {
        let d = Digest::of(b"x");
        assert_eq!(classify(&blob_path(&d)).unwrap(), Entry::Blob(d.clone()));
        assert_eq!(
            classify(&format!("./{}", blob_path(&d))).unwrap(),
            Entry::Blob(d)
        );
        assert_eq!(classify("./index.json").unwrap(), Entry::Index);
        assert_eq!(classify("oci-layout").unwrap(), Entry::Marker);
        assert_eq!(classify("blobs/sha256/").unwrap(), Entry::Directory);
        assert_eq!(classify("manifest.json").unwrap(), Entry::Other);
        assert!(classify("blobs/sha512/abc").is_err());
        assert!(classify("blobs/sha256/../../etc/passwd").is_err());
    }

    #[test]
    fn media_types_from_the_manifest() {
        let docker = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            declared_media_type(docker),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(declared_media_type(br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(declared_media_type(br#"{"layers":[]}"#), OCI_MANIFEST);
    }
}
