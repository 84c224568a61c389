//! Tokens from an external issuer (an identity provider, a CI system), verified offline from a
//! PEM public key or a JWKS file. Only asymmetric algorithms are accepted (ES256, ES384,
//! RS256/384/512, PS256/384/512, EdDSA), each only with a key of its own family: `alg: none`,
//! HMAC and a public key used as an HMAC secret are refused before any signature check.
//! Required claims: `iss`, `aud`, `exp`, `sub`; groups come from a configurable claim.

use super::User;
use crate::config::JwtConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

/// The algorithms accepted, and nothing else.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies the external issuer's tokens.
pub struct External {
    issuer: String,
    audience: String,
    groups_claim: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "External(iss {}, {} keys)", self.issuer, self.keys.len())
    }
}

impl External {
    /// Read the configured key or key set; the error names the file and what is wrong.
    pub fn load(c: &JwtConfig) -> Result<External, String> {
        let keys = match (&c.public_key, &c.jwks) {
            (Some(p), None) => {
                let pem = std::fs::read(p)
                    .map_err(|e| format!("auth.jwt.public_key {}: {e}", p.display()))?;
                vec![Key {
                    kid: None,
                    key: pem_key(&pem)
                        .map_err(|e| format!("auth.jwt.public_key {}: {e}", p.display()))?,
                }]
            }
            (None, Some(p)) => {
                let text =
                    std::fs::read(p).map_err(|e| format!("auth.jwt.jwks {}: {e}", p.display()))?;
                jwks_keys(&text).map_err(|e| format!("auth.jwt.jwks {}: {e}", p.display()))?
            }
            _ => return Err("auth.jwt: set exactly one of public_key and jwks".into()),
        };
        Ok(External {
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            groups_claim: c.groups_claim.clone(),
            keys,
        })
    }

    /// Verify `token`; the error says why it is refused (for the log, not the client).
    pub fn verify(&self, token: &str) -> Result<User, String> {
        let header = decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let family = header.alg.family();
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        v.validate_nbf = true;
        let candidates = self.keys.iter().filter(|k| {
            k.key.family() == family
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        let mut last = format!(
            "no {family:?} key{}",
            header
                .kid
                .as_ref()
                .map_or(String::new(), |k| format!(" with kid {k}"))
        );
        for k in candidates {
            match decode::<serde_json::Value>(token, &k.key, &v) {
                Ok(data) => return self.user(&data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn user(&self, claims: &serde_json::Value) -> Result<User, String> {
        let name = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
            .ok_or("no usable sub")?;
        let groups = match &claims[self.groups_claim.as_str()] {
            serde_json::Value::String(g) => vec![g.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        Ok(User {
            name: name.to_string(),
            groups,
            external_until: claims["exp"].as_u64(),
        })
    }
}

/// A PEM public key of any accepted family.
fn pem_key(pem: &[u8]) -> Result<DecodingKey, String> {
    DecodingKey::from_ec_pem(pem)
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .or_else(|_| DecodingKey::from_rsa_pem(pem))
        .map_err(|_| "not a PEM public key (EC, Ed25519 or RSA)".into())
}

/// The keys of a JWKS; symmetric keys are refused.
fn jwks_keys(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err("the key set is empty".into());
    }
    set.keys
        .iter()
        .map(|jwk| {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(
                    "symmetric (oct) keys are refused: the issuer must sign with a private key"
                        .to_string(),
                );
            }
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                key: DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    struct Idp {
        encoding: EncodingKey,
        public_pem: String,
        x: String,
        y: String,
    }

    fn idp() -> Idp {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        // SubjectPublicKeyInfo for P-256: a fixed prefix, then the uncompressed point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(&point);
        Idp {
            encoding: EncodingKey::from_ec_der(doc.as_ref()),
            public_pem: format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(&spki)
            ),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
        }
    }

    fn config(dir: &std::path::Path, idp: &Idp, jwks: bool) -> JwtConfig {
        let (public_key, jwks_path) = if jwks {
            let p = dir.join("jwks.json");
            let set = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": idp.x, "y": idp.y}]});
            std::fs::write(&p, set.to_string()).unwrap();
            (None, Some(p))
        } else {
            let p = dir.join("idp.pem");
            std::fs::write(&p, &idp.public_pem).unwrap();
            (Some(p), None)
        };
        JwtConfig {
            issuer: "https://idp.example".into(),
            audience: "airlock".into(),
            public_key,
            jwks: jwks_path,
            groups_claim: "roles".into(),
        }
    }

    fn claims(exp_offset: i64, aud: &str) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({"iss": "https://idp.example", "aud": aud, "sub": "ci-bot", "exp": now + exp_offset, "roles": ["dev", "ops"]})
    }

    fn sign(idp: &Idp, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(String::from);
        encode(&h, claims, &idp.encoding).unwrap()
    }

    #[test]
    fn a_token_of_the_issuer_is_accepted_with_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let idp = idp();
        for jwks in [false, true] {
            let ext = External::load(&config(dir.path(), &idp, jwks)).unwrap();
            let u = ext
                .verify(&sign(&idp, &claims(300, "airlock"), Some("k1")))
                .unwrap();
            assert_eq!(
                (u.name.as_str(), u.groups.clone()),
                ("ci-bot", vec!["dev".to_string(), "ops".to_string()])
            );
        }
    }

    #[test]
    fn expired_foreign_misaddressed_and_forged_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idp = idp();
        let ext = External::load(&config(dir.path(), &idp, false)).unwrap();
        assert!(
            ext.verify(&sign(&idp, &claims(-3600, "airlock"), None))
                .unwrap_err()
                .contains("xpired")
        );
        assert!(
            ext.verify(&sign(&idp, &claims(300, "other"), None))
                .is_err(),
            "another audience"
        );
        assert!(
            ext.verify(&sign(&self::idp(), &claims(300, "airlock"), None))
                .is_err(),
            "another key"
        );
        let mut wrong_iss = claims(300, "airlock");
        wrong_iss["iss"] = json!("https://evil.example");
        assert!(
            ext.verify(&sign(&idp, &wrong_iss, None)).is_err(),
            "another issuer"
        );
        let mut no_sub = claims(300, "airlock");
        no_sub.as_object_mut().unwrap().remove("sub");
        assert!(
            ext.verify(&sign(&idp, &no_sub, None)).is_err(),
            "no subject"
        );

        // alg none: header and payload with an empty signature.
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims(300, "airlock"))
        );
        assert!(ext.verify(&none).is_err(), "alg none");
        // HS256 keyed with the public key's PEM text: the classic key confusion.
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &claims(300, "airlock"),
            &EncodingKey::from_secret(idp.public_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(
            ext.verify(&hs).unwrap_err().contains("not accepted"),
            "HS256"
        );
        assert!(ext.verify("garbage").is_err());
        assert!(ext.verify(&"a".repeat(20_000)).is_err());
    }

    #[test]
    fn key_files_that_cannot_verify_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let mut c = config(dir.path(), &idp(), false);
        c.public_key = None;
        c.jwks = Some(p.clone());
        assert!(External::load(&c).unwrap_err().contains("symmetric"));
        std::fs::write(&p, "not pem").unwrap();
        c.jwks = None;
        c.public_key = Some(p);
        assert!(
            External::load(&c)
                .unwrap_err()
                .contains("not a PEM public key")
        );
        c.jwks = Some(dir.path().join("also"));
        assert!(External::load(&c).unwrap_err().contains("exactly one"));
    }
}
