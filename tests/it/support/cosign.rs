//! cosign's key-based signatures, made by the tests with openssl (no cosign binary is
//! installable here): a P-256 key pair as `cosign generate-key-pair` makes, the
//! simple-signing payload naming a manifest digest, and the `sha256-<hex>.sig` manifest whose
//! layer is the payload with the base64 ASN.1 signature in `dev.cosignproject.cosign/signature`.
//! Every signature made here is checked by `openssl dgst -verify` before it is used, so what
//! airlock is tested against is right independently of airlock's own code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use bytes::Bytes;
use serde_json::json;

use super::artifact::OciArtifact;
use super::image::{Artifact, Blob, OCI_CONFIG, OCI_MANIFEST, sha256_digest};
use super::tools::OPENSSL;

/// The payload layer's media type.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A key pair in a directory of its own: `key.pem` (private) and `cosign.pub`.
pub struct KeyPair {
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(OPENSSL.path())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} ({})", OPENSSL.path, OPENSSL.from));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl KeyPair {
    /// A new ECDSA P-256 key pair.
    pub fn generate() -> KeyPair {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        openssl(
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "key.pem",
            ],
            p,
        );
        openssl(
            &["ec", "-in", "key.pem", "-pubout", "-out", "cosign.pub"],
            p,
        );
        KeyPair { dir }
    }

    /// The public key file.
    pub fn public(&self) -> PathBuf {
        self.dir.path().join("cosign.pub")
    }

    /// The base64 of the DER signature of `payload`, checked with `openssl dgst -verify`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let p = self.dir.path();
        std::fs::write(p.join("payload"), payload).unwrap();
        openssl(
            &[
                "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.der", "payload",
            ],
            p,
        );
        let verified = openssl(
            &[
                "dgst",
                "-sha256",
                "-verify",
                "cosign.pub",
                "-signature",
                "sig.der",
                "payload",
            ],
            p,
        );
        assert_eq!(String::from_utf8_lossy(&verified).trim(), "Verified OK");
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(p.join("sig.der")).unwrap())
    }
}

/// cosign's simple-signing payload for `digest`.
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// The manifest cosign pushes as `sha256-<hex>.sig`: one layer per (payload, signature).
pub fn signature_manifest(signatures: &[(Vec<u8>, String)]) -> OciArtifact {
    let annotated: Vec<(Vec<u8>, serde_json::Value)> = signatures
        .iter()
        .map(|(p, sig)| {
            (
                p.clone(),
                json!({"dev.cosignproject.cosign/signature": sig}),
            )
        })
        .collect();
    annotated_signature_manifest(&annotated)
}

/// [`signature_manifest`] with each layer's annotations given whole.
pub fn annotated_signature_manifest(signatures: &[(Vec<u8>, serde_json::Value)]) -> OciArtifact {
    let config = Blob::new(
        OCI_CONFIG,
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let layers: Vec<Blob> = signatures
        .iter()
        .map(|(p, _)| Blob::new(SIMPLESIGNING, p.clone()))
        .collect();
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .zip(signatures)
        .map(|(l, (_, annotations))| {
            let mut d = l.descriptor();
            d["annotations"] = annotations.clone();
            d
        })
        .collect();
    let manifest = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": descriptors,
        }))
        .unwrap(),
    );
    OciArtifact {
        artifact_type: None,
        config,
        layers,
        digest: sha256_digest(&manifest),
        manifest,
        annotations: BTreeMap::new(),
    }
}

/// `image` signed with `key` as cosign signs it.
pub fn sign(key: &KeyPair, reference: &str, image: &dyn Artifact) -> OciArtifact {
    let p = payload(reference, image.digest());
    let sig = key.sign(&p);
    signature_manifest(&[(p, sig)])
}

/// The tag cosign gives the signature of `digest`.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// `image` signed with `key` and the signature logged by `log` (a transparency log's key, as
/// Rekor's): the layer carries cosign's `dev.sigstore.cosign/bundle` with the log's signed
/// entry timestamp over the entry (a `hashedrekord` of the payload's hash and the signature),
/// the entry in canonical JSON (keys sorted, no spaces), as Rekor signs it.
pub fn sign_logged(
    key: &KeyPair,
    log: &KeyPair,
    reference: &str,
    image: &dyn Artifact,
) -> OciArtifact {
    use sha2::Digest as _;
    let p = payload(reference, image.digest());
    let sig = key.sign(&p);
    let body = json!({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(&p))}},
        "signature": {"content": sig, "publicKey": {"content": "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K"}}}});
    let body = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&body).unwrap());
    // Keys in sorted order, written compactly: the canonical form.
    let entry = format!(
        r#"{{"body":"{body}","integratedTime":1700000000,"logID":"c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d","logIndex":42}}"#
    );
    let set = log.sign(entry.as_bytes());
    let bundle = format!(r#"{{"SignedEntryTimestamp":"{set}","Payload":{entry}}}"#);
    annotated_signature_manifest(&[(
        p,
        json!({"dev.cosignproject.cosign/signature": sig, "dev.sigstore.cosign/bundle": bundle}),
    )])
}
