//! OCI artifacts that are not container images: an OCI image manifest with an `artifactType`
//! or a config media type no runtime knows (a Helm chart, an SBOM, a signature), optionally
//! with a `subject` (which makes it a referrer of that manifest), and the tag schema's index
//! (`sha256-<hex>`) that pushers keep on registries without the referrers API.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};

use super::image::{Artifact, Blob, Image, OCI_INDEX, OCI_MANIFEST, sha256_digest};

/// The empty config (`{}`) artifacts without a config of their own use.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// SPDX's media type, as SBOM tools give it.
pub const SPDX: &str = "application/spdx+json";
/// The artifact type of a sigstore bundle.
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// An OCI artifact: a manifest, its config and its layers.
#[derive(Clone, Debug)]
pub struct OciArtifact {
    /// `artifactType`, when it has one.
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Blob,
    /// The content blobs.
    pub layers: Vec<Blob>,
    /// The manifest bytes.
    pub manifest: Bytes,
    /// Digest of the manifest.
    pub digest: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

impl OciArtifact {
    /// An artifact whose config has media type `config_type` (and bytes `config`), with one
    /// layer of `layer_type` holding `content`.
    pub fn new(config_type: &str, config: &[u8], layer_type: &str, content: &[u8]) -> OciArtifact {
        Self::build(
            None,
            Blob::new(config_type, config.to_vec()),
            vec![Blob::new(layer_type, content.to_vec())],
            None,
        )
    }

    /// A referrer of `subject`: artifact type `artifact_type`, the empty config, one layer of
    /// `layer_type` holding `content`.
    pub fn referrer(
        subject: &dyn Artifact,
        artifact_type: &str,
        layer_type: &str,
        content: &[u8],
    ) -> OciArtifact {
        let subject = json!({"mediaType": subject.media_type(), "digest": subject.digest(),
                             "size": subject.size()});
        Self::build(
            Some(artifact_type.into()),
            Blob::new(EMPTY_CONFIG, &b"{}"[..]),
            vec![Blob::new(layer_type, content.to_vec())],
            Some(subject),
        )
    }

    fn build(
        artifact_type: Option<String>,
        config: Blob,
        layers: Vec<Blob>,
        subject: Option<Value>,
    ) -> OciArtifact {
        let annotations: BTreeMap<String, String> = [(
            "org.opencontainers.image.created".to_string(),
            "2026-01-01T00:00:00Z".to_string(),
        )]
        .into();
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
            "annotations": annotations,
        });
        if let Some(t) = &artifact_type {
            m["artifactType"] = json!(t);
        }
        if let Some(s) = subject {
            m["subject"] = s;
        }
        let manifest = Bytes::from(serde_json::to_vec(&m).expect("artifact json"));
        OciArtifact {
            artifact_type,
            config,
            layers,
            digest: sha256_digest(&manifest),
            manifest,
            annotations,
        }
    }

    /// Its descriptor as the referrers API lists it (artifact type and annotations included).
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.manifest.len(),
               "artifactType": self.artifact_type.as_deref().unwrap_or(&self.config.media_type),
               "annotations": self.annotations})
    }
}

impl Artifact for OciArtifact {
    fn media_type(&self) -> &str {
        OCI_MANIFEST
    }
    fn digest(&self) -> &str {
        &self.digest
    }
    fn manifest(&self) -> &Bytes {
        &self.manifest
    }
    fn children(&self) -> &[Image] {
        &[]
    }
    fn blobs(&self) -> BTreeMap<String, Bytes> {
        super::image::blob_map(&self.config, &self.layers)
    }
}

/// An image index listing `referrers`, as the referrers API answers or the tag schema keeps.
pub fn referrers_index(referrers: &[&OciArtifact]) -> Bytes {
    let list: Vec<Value> = referrers.iter().map(|r| r.descriptor()).collect();
    Bytes::from(
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list}))
            .expect("index json"),
    )
}

/// The tag schema's tag for the referrers of `digest` (`sha256-<hex>`).
pub fn schema_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}
