//! cosign's key-based signatures, checked offline (what `cosign verify --key k.pub
//! --insecure-ignore-tlog` checks): the manifest under `sha256-<hex>.sig` has one layer per
//! signature, whose blob is the simple-signing payload and whose annotation
//! `dev.cosignproject.cosign/signature` is the base64 of an ASN.1 ECDSA P-256 signature over
//! it. A signature counts when it verifies under a trusted key and its payload's
//! `critical.image.docker-manifest-digest` is the manifest's digest. No I/O here but reading
//! key files.

use crate::oci::Digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of the payload layers.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// A payload larger than this is not read (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 << 10;

/// A trusted public key, named for messages by where it came from.
#[derive(Clone)]
pub struct Key {
    /// The file it was read from.
    pub name: String,
    key: ParsedPublicKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

impl Key {
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) for ECDSA P-256, as `cosign generate-key-pair`
    /// writes `cosign.pub`. The error says what the text is instead.
    pub fn from_pem(name: &str, text: &[u8]) -> Result<Key, String> {
        let pem = pem::parse(text).map_err(|e| format!("{name} is not a PEM file: {e}"))?;
        if pem.tag() != "PUBLIC KEY" {
            return Err(format!(
                "{name} holds a PEM {:?}, not a \"PUBLIC KEY\" (give cosign.pub, never the private key)",
                pem.tag()
            ));
        }
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pem.contents()).map_err(|_| {
            format!("{name} is not an ECDSA P-256 public key (cosign's key pairs are)")
        })?;
        Ok(Key {
            name: name.to_string(),
            key,
        })
    }

    /// Read a key file.
    pub fn load(path: &Path) -> Result<Key, String> {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        Key::from_pem(&name, &text)
    }
}

/// One signature layer of a `.sig` manifest: its payload blob and the base64 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob.
    pub payload: Digest,
    /// Its size, as the manifest says.
    pub size: u64,
    /// The annotation's value, still base64.
    pub signature: String,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLayer {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The signature layers of a `.sig` manifest; `Err` says why it is not one.
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let raw: RawManifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest is not JSON: {e}"))?;
    let layers: Vec<SignatureLayer> = raw
        .layers
        .into_iter()
        .filter(|l| l.media_type.as_deref() == Some(SIMPLESIGNING))
        .filter_map(|l| {
            Some(SignatureLayer {
                payload: l.digest.parse().ok()?,
                size: l.size,
                signature: l.annotations.get(SIGNATURE_ANNOTATION)?.clone(),
            })
        })
        .collect();
    if layers.is_empty() {
        return Err(format!(
            "the signature manifest has no {SIMPLESIGNING} layer with a {SIGNATURE_ANNOTATION} annotation"
        ));
    }
    Ok(layers)
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: PayloadImage,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Check one signature over `payload` for `manifest`: the name of the key it verifies
/// under, or why it does not count.
pub fn verify<'k>(
    keys: &'k [Key],
    manifest: &Digest,
    payload: &[u8],
    signature_b64: &str,
) -> Result<&'k str, String> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| "the signature annotation is not base64".to_string())?;
    let key = keys
        .iter()
        .find(|k| k.key.verify_sig(payload, &signature).is_ok())
        .ok_or_else(|| "it is signed by no trusted key".to_string())?;
    // The signature covers the payload: only now is what the payload says worth reading.
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not a simple-signing payload: {e}"))?;
    if p.critical.image.digest != manifest.to_string() {
        return Err(format!(
            "the signed payload names {}, not {manifest}",
            crate::oci::digest::truncate(&p.critical.image.digest)
        ));
    }
    Ok(&key.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_that_is_not_a_p256_public_key_is_refused_with_a_reason() {
        let e = Key::from_pem("k.pub", b"hello").unwrap_err();
        assert!(e.contains("not a PEM file"), "{e}");
        let private = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let e = Key::from_pem("k.pem", private).unwrap_err();
        assert!(e.contains("not a \"PUBLIC KEY\""), "{e}");
        let junk = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let e = Key::from_pem("k.pub", junk).unwrap_err();
        assert!(e.contains("not an ECDSA P-256 public key"), "{e}");
    }

    #[test]
    fn signature_layers_need_the_payload_type_and_the_annotation() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = format!(
            r#"{{"layers":[{{"mediaType":"{SIMPLESIGNING}","digest":"{d}","size":9,"annotations":{{"{SIGNATURE_ANNOTATION}":"c2ln"}}}},{{"mediaType":"x","digest":"{d}"}}]}}"#
        );
        let layers = signature_layers(m.as_bytes()).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].signature, "c2ln");
        assert_eq!(layers[0].size, 9);
        let unsigned = m.replace(SIGNATURE_ANNOTATION, "other");
        assert!(signature_layers(unsigned.as_bytes()).is_err());
        assert!(signature_layers(b"not json").is_err());
    }

    /// A key pair made here, its public half as cosign.pub is written.
    fn key_pair() -> (aws_lc_rs::signature::EcdsaKeyPair, Key) {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let der: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        let text = pem::encode(&pem::Pem::new("PUBLIC KEY", der.as_ref().to_vec()));
        let key = Key::from_pem("made.pub", text.as_bytes()).unwrap();
        (pair, key)
    }

    fn sign(pair: &aws_lc_rs::signature::EcdsaKeyPair, payload: &[u8]) -> String {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = pair.sign(&rng, payload).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }

    #[test]
    fn a_signature_counts_only_under_a_trusted_key_and_for_the_digest_it_names() {
        let (pair, key) = key_pair();
        let (_, other) = key_pair();
        let digest = Digest::of(b"manifest");
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let sig = sign(&pair, payload.as_bytes());
        assert_eq!(
            verify(
                &[other.clone(), key.clone()],
                &digest,
                payload.as_bytes(),
                &sig
            ),
            Ok("made.pub")
        );
        assert!(
            verify(&[other], &digest, payload.as_bytes(), &sig)
                .unwrap_err()
                .contains("no trusted key")
        );
        let elsewhere = Digest::of(b"another manifest");
        assert!(
            verify(
                std::slice::from_ref(&key),
                &elsewhere,
                payload.as_bytes(),
                &sig
            )
            .unwrap_err()
            .contains("names")
        );
        let tampered = payload.replace("cosign", "Cosign");
        assert!(
            verify(
                std::slice::from_ref(&key),
                &digest,
                tampered.as_bytes(),
                &sig
            )
            .is_err()
        );
        let not_json = b"signed, but not JSON";
        let sig = sign(&pair, not_json);
        assert!(
            verify(&[key], &digest, not_json, &sig)
                .unwrap_err()
                .contains("not a simple-signing payload")
        );
    }

    #[test]
    fn a_signature_that_is_not_base64_or_from_no_key_is_refused() {
        let digest = Digest::of(b"m");
        assert!(
            verify(&[], &digest, b"{}", "%%%")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            verify(&[], &digest, b"{}", "c2ln")
                .unwrap_err()
                .contains("no trusted key")
        );
    }
}
