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
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::Path;

/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The annotation holding a layer's transparency log entry (Rekor's signed receipt).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
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
    /// Its transparency log entry, when it carries one (JSON).
    pub bundle: Option<String>,
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
                bundle: l.annotations.get(BUNDLE_ANNOTATION).cloned(),
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Bundle {
    signed_entry_timestamp: String,
    payload: Entry,
}

/// The log entry Rekor signs: its canonical JSON (keys sorted, no spaces) is what the signed
/// entry timestamp covers.
#[derive(Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    body: String,
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: String,
    log_index: i64,
}

#[derive(Deserialize)]
struct Rekord {
    spec: RekordSpec,
}

#[derive(Deserialize)]
struct RekordSpec {
    data: RekordData,
    signature: RekordSignature,
}

#[derive(Deserialize)]
struct RekordData {
    hash: RekordHash,
}

#[derive(Deserialize)]
struct RekordHash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct RekordSignature {
    content: String,
}

/// Check a signature's transparency log entry offline: the signed entry timestamp verifies
/// under one of `log_keys` over the entry, and the entry (a `hashedrekord`) records this
/// payload's SHA-256 and this signature. Returns when it was logged (seconds since the epoch).
pub fn verify_logged(
    log_keys: &[Key],
    bundle: &str,
    payload: &[u8],
    signature_b64: &str,
) -> Result<i64, String> {
    let b: Bundle = serde_json::from_str(bundle)
        .map_err(|e| format!("its transparency log entry is not one: {e}"))?;
    let set = base64::engine::general_purpose::STANDARD
        .decode(b.signed_entry_timestamp.trim())
        .map_err(|_| "its log entry's signed timestamp is not base64".to_string())?;
    // serde_json's maps keep keys sorted: this is the canonical form Rekor signed.
    let canonical =
        serde_json::to_vec(&serde_json::to_value(&b.payload).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if !log_keys
        .iter()
        .any(|k| k.key.verify_sig(&canonical, &set).is_ok())
    {
        return Err("its log entry is signed by no trusted transparency log key".into());
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(b.payload.body.trim())
        .map_err(|_| "its log entry's body is not base64".to_string())?;
    let r: Rekord = serde_json::from_slice(&body)
        .map_err(|e| format!("its log entry is not a hashedrekord: {e}"))?;
    let hash = hex::encode(sha2::Sha256::digest(payload));
    if r.spec.data.hash.algorithm != "sha256" || r.spec.data.hash.value != hash {
        return Err("its log entry records another payload".into());
    }
    if r.spec.signature.content.trim() != signature_b64.trim() {
        return Err("its log entry records another signature".into());
    }
    Ok(b.payload.integrated_time)
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

    /// A public test vector in cosign's own format, not made by this code: the key, payload
    /// and signature of sigstore-rs's `verify_signature_success` test
    /// (github.com/sigstore/sigstore-rs, tag v0.14.0, src/crypto/verification_key.rs and
    /// src/crypto/mod.rs; Apache-2.0), checked here also with `openssl dgst -verify`.
    #[test]
    fn sigstores_own_test_vector_verifies() {
        const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENptdY/l3nB0yqkXLBWkZWQwo6+cu
OSWS1X9vPavpiQOoTTGC0xX57OojUadxF1cdQmrsiReWg2Wn4FneJfa8xw==
-----END PUBLIC KEY-----";
        const PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"registry-testing.svc.lan/busybox"},"image":{"docker-manifest-digest":"sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"},"type":"cosign container image signature"},"optional":null}"#;
        const SIGNATURE: &str = "MEUCIQD6q/COgzOyW0YH1Dk+CCYSt4uAhm3FDHUwvPI55zwnlwIgE0ZK58ZOWpZw8YVmBapJhBqCfdPekIknimuO0xH8Jh8=";
        let key = Key::from_pem("sigstore-rs test key", KEY.as_bytes()).unwrap();
        let digest: Digest =
            "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"
                .parse()
                .unwrap();
        let keys = [key];
        assert_eq!(
            verify(&keys, &digest, PAYLOAD.as_bytes(), SIGNATURE),
            Ok("sigstore-rs test key")
        );
        let flipped = PAYLOAD.replace("busybox", "busyboy");
        assert!(verify(&keys, &digest, flipped.as_bytes(), SIGNATURE).is_err());
    }

    /// A log entry for `payload` and `signature`, signed by `log` as Rekor signs one.
    fn logged(log: &aws_lc_rs::signature::EcdsaKeyPair, payload: &[u8], signature: &str) -> String {
        let body = serde_json::json!({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hex::encode(sha2::Sha256::digest(payload))}},
            "signature": {"content": signature, "publicKey": {"content": "LS0t"}}}});
        let body =
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&body).unwrap());
        let entry = serde_json::json!({"body": body, "integratedTime": 1_700_000_000,
            "logID": "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d", "logIndex": 42});
        let set = sign(log, &serde_json::to_vec(&entry).unwrap());
        serde_json::json!({"SignedEntryTimestamp": set, "Payload": entry}).to_string()
    }

    #[test]
    fn a_log_entry_counts_only_signed_by_the_log_and_for_this_payload_and_signature() {
        let (signer, _) = key_pair();
        let (log, log_key) = key_pair();
        let (_, stranger) = key_pair();
        let payload = b"{\"critical\":{}}";
        let signature = sign(&signer, payload);
        let bundle = logged(&log, payload, &signature);
        assert_eq!(
            verify_logged(std::slice::from_ref(&log_key), &bundle, payload, &signature),
            Ok(1_700_000_000)
        );
        let e = verify_logged(&[stranger], &bundle, payload, &signature).unwrap_err();
        assert!(e.contains("no trusted transparency log key"), "{e}");
        let e = verify_logged(
            std::slice::from_ref(&log_key),
            &bundle,
            b"other",
            &signature,
        )
        .unwrap_err();
        assert!(e.contains("another payload"), "{e}");
        let other = sign(&signer, payload);
        let e =
            verify_logged(std::slice::from_ref(&log_key), &bundle, payload, &other).unwrap_err();
        assert!(e.contains("another signature"), "{e}");
        // The timestamp covers the entry: a changed time is not the entry the log signed.
        let moved = bundle.replace("1700000000", "1700000001");
        let e =
            verify_logged(std::slice::from_ref(&log_key), &moved, payload, &signature).unwrap_err();
        assert!(e.contains("no trusted transparency log key"), "{e}");
        assert!(verify_logged(&[log_key], "not json", payload, &signature).is_err());
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
