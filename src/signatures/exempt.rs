//! Which manifests the signature policy lets through unsigned: only what is recognisably a
//! signature, attestation, SBOM or referrers index, which no runtime runs. Everything else
//! is treated as an image and must be signed, including whatever is unusual (fail closed):
//! another served media type, JSON that is not an object, a structural key in another case
//! (Go's JSON decoder, which containerd and Docker use, matches keys case-insensitively, so
//! `"Config"` would be the config a runtime reads and one this check did not), an image
//! manifest that also lists `manifests`, any other config or layer type.

use crate::oci::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use serde_json::{Map, Value};

/// Config media types of artifacts no runtime runs.
const ARTIFACT_CONFIGS: &[&str] = &[
    "application/vnd.oci.empty.v1+json",
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.cosign.artifact.att.v1+json",
    "application/vnd.dev.cosign.artifact.sbom.v1+json",
    "application/vnd.cncf.notary.signature",
];

/// Image config types: with these, only signature, attestation and SBOM layers exempt.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layer media types of cosign's signatures, attestations and SBOMs.
const ATTACHMENT_LAYERS: &[&str] = &[
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.in-toto+json",
    "application/spdx+json",
    "text/spdx",
    "text/spdx+json",
    "text/spdx+xml",
    "application/vnd.cyclonedx",
    "application/vnd.cyclonedx+json",
    "application/vnd.cyclonedx+xml",
    "application/vnd.syft+json",
];

/// Keys whose case must be exactly this, wherever they appear.
const STRUCTURAL: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "subject",
    "artifactType",
    "platform",
];

/// Whether `bytes`, served as `media_type`, is an artifact the policy lets through unsigned.
pub fn exempt(media_type: &str, bytes: &[u8]) -> bool {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    if !exact_keys(&doc) {
        return false;
    }
    match media_type {
        OCI_INDEX => referrers_index(&doc),
        OCI_MANIFEST | DOCKER_MANIFEST => attachment(&doc),
        _ => false,
    }
}

/// An index of artifacts (the referrers tag schema's): every entry has an `artifactType` and
/// no platform, and it is nothing but an index.
fn referrers_index(doc: &Map<String, Value>) -> bool {
    if doc.contains_key("config") || doc.contains_key("layers") {
        return false;
    }
    let Some(Value::Array(list)) = doc.get("manifests") else {
        return false;
    };
    list.iter().all(|d| {
        d.as_object().is_some_and(|d| {
            exact_keys(d)
                && d.get("artifactType").is_some_and(Value::is_string)
                && !d.contains_key("platform")
        })
    })
}

/// A manifest whose config is an artifact's, or an image config with only signature,
/// attestation and SBOM layers (cosign's `.sig`, `.att`, `.sbom`).
fn attachment(doc: &Map<String, Value>) -> bool {
    if doc.contains_key("manifests") {
        return false;
    }
    let Some(config) = doc.get("config").and_then(Value::as_object) else {
        return false;
    };
    if !exact_keys(config) {
        return false;
    }
    let Some(config_type) = config.get("mediaType").and_then(Value::as_str) else {
        return false;
    };
    if ARTIFACT_CONFIGS.contains(&config_type) {
        return true;
    }
    let Some(Value::Array(layers)) = doc.get("layers") else {
        return false;
    };
    IMAGE_CONFIGS.contains(&config_type)
        && !layers.is_empty()
        && layers.iter().all(|l| {
            l.as_object().is_some_and(|l| {
                exact_keys(l)
                    && l.get("mediaType")
                        .and_then(Value::as_str)
                        .is_some_and(|t| ATTACHMENT_LAYERS.contains(&t))
            })
        })
}

/// No structural key appears in another case than its own.
fn exact_keys(obj: &Map<String, Value>) -> bool {
    obj.keys().all(|k| {
        !STRUCTURAL
            .iter()
            .any(|s| k.eq_ignore_ascii_case(s) && k != s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    fn manifest(config: &str, layers: &[&str]) -> String {
        let layers: Vec<String> = layers
            .iter()
            .map(|t| format!(r#"{{"mediaType":"{t}","digest":"sha256:a","size":1}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{config}","digest":"sha256:c","size":2}},"layers":[{}]}}"#,
            layers.join(",")
        )
    }

    #[test]
    fn signatures_sboms_and_referrers_indexes_are_exempt() {
        let sig = manifest(
            IMAGE_CONFIG,
            &["application/vnd.dev.cosign.simplesigning.v1+json"],
        );
        let att = manifest(IMAGE_CONFIG, &["application/vnd.dsse.envelope.v1+json"]);
        let sbom = manifest(
            "application/vnd.oci.empty.v1+json",
            &["application/spdx+json"],
        );
        let notation = manifest(
            "application/vnd.cncf.notary.signature",
            &["application/jose+json"],
        );
        for m in [&sig, &att, &sbom, &notation] {
            assert!(exempt(OCI_MANIFEST, m.as_bytes()), "{m}");
        }
        assert!(exempt(DOCKER_MANIFEST, sig.as_bytes()));
        let index = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:a","size":1,"artifactType":"application/spdx+json"}]}"#;
        assert!(exempt(OCI_INDEX, index.as_bytes()));
        assert!(exempt(OCI_INDEX, br#"{"schemaVersion":2,"manifests":[]}"#));
    }

    #[test]
    fn images_and_anything_unusual_must_be_signed() {
        let image = manifest(
            IMAGE_CONFIG,
            &["application/vnd.oci.image.layer.v1.tar+gzip"],
        );
        let mixed = manifest(
            IMAGE_CONFIG,
            &[
                "application/vnd.dev.cosign.simplesigning.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
            ],
        );
        let no_layers = manifest(IMAGE_CONFIG, &[]);
        let wasm = manifest("application/vnd.wasm.config.v0+json", &["application/wasm"]);
        let helm = manifest(
            "application/vnd.cncf.helm.config.v1+json",
            &["application/vnd.cncf.helm.chart.content.v1.tar+gzip"],
        );
        for m in [&image, &mixed, &no_layers, &wasm, &helm] {
            assert!(!exempt(OCI_MANIFEST, m.as_bytes()), "{m}");
        }
        // The review's bypasses: a key in another case, an image that also lists manifests,
        // schema 1 or another served type, an index of platform images.
        let sbom = manifest(
            "application/vnd.oci.empty.v1+json",
            &["application/spdx+json"],
        );
        let cased = sbom.replacen(r#""config""#, r#""Config""#, 1);
        let inner = sbom.replacen(
            r#""mediaType":"application/vnd.oci.empty"#,
            r#""MediaType":"application/vnd.oci.empty"#,
            1,
        );
        let with_list = sbom.replacen(
            r#""schemaVersion":2"#,
            r#""schemaVersion":2,"manifests":[]"#,
            1,
        );
        for m in [&cased, &inner, &with_list] {
            assert!(!exempt(OCI_MANIFEST, m.as_bytes()), "{m}");
        }
        for t in [
            "application/json",
            "text/plain",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ] {
            assert!(!exempt(t, sbom.as_bytes()), "{t}");
        }
        let platforms = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:a","size":1,"artifactType":"a","platform":{"os":"linux"}}]}"#;
        let untyped =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:a","size":1}]}"#;
        let both = r#"{"schemaVersion":2,"manifests":[],"config":{"mediaType":"application/vnd.oci.empty.v1+json"}}"#;
        for m in [platforms, untyped, both] {
            assert!(!exempt(OCI_INDEX, m.as_bytes()), "{m}");
        }
        assert!(!exempt(OCI_MANIFEST, b"[]"));
        assert!(!exempt(OCI_MANIFEST, b"not json"));
    }
}
