//! airlock's own tokens: short-lived ES256 JWTs from the token endpoint, in the Docker token
//! format (`access: [{type, name, actions}]`). A token says who the user is and which
//! repository names (as the client wrote them) it was asked for; the access rules are still
//! checked on every request. The signing key comes from a PEM file (PKCS#8 or SEC1, P-256),
//! made at first start when the configured one does not exist, so replicas given the same
//! file accept each other's tokens.

use super::{User, Who};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The issuer of airlock's tokens.
const ISSUER: &str = "airlock";

/// One `access` entry of a Docker token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Access {
    /// `repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name as the client wrote it in its request path.
    pub name: String,
    /// `pull` (airlock grants nothing else).
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    #[serde(default)]
    access: Vec<Access>,
    /// Groups, carried over from an external token the user logged in with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    /// When the external token the user logged in with expires (then `exp` is no later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ext_exp: Option<u64>,
    /// No user: issued to a client without credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    anonymous: bool,
}

/// What a verified token of airlock's says.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its holder.
    pub who: Who,
    /// The repository names it was issued for (pull).
    pub names: Vec<String>,
}

/// Signs and verifies airlock's tokens.
pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    service: String,
    ttl: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer(kid {}, service {})", self.kid, self.service)
    }
}

impl Issuer {
    /// Load the key at `path`, making one (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path, service: &str, ttl: Duration) -> Result<Issuer, String> {
        let what = |e: &dyn std::fmt::Display| format!("token key {}: {e}", path.display());
        if !path.exists() {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| what(&"cannot generate a key"))?;
            let pem = pem_lines("PRIVATE KEY", doc.as_ref());
            write_private(path, pem.as_bytes()).map_err(|e| what(&e))?;
            tracing::info!(path = %path.display(), "made a token signing key: give replicas the same file");
        }
        let der = PrivateKeyDer::from_pem_file(path).map_err(|e| what(&e))?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der())
            }
            PrivateKeyDer::Sec1(k) => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                k.secret_sec1_der(),
            ),
            _ => return Err(what(&"not an EC P-256 private key (PKCS#8 or SEC1 PEM)")),
        }
        .map_err(|_| what(&"not an EC P-256 private key (PKCS#8 or SEC1 PEM)"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| what(&"cannot use the key"))?;
        Ok(Issuer::from_pair(&pair, pkcs8.as_ref(), service, ttl))
    }

    fn from_pair(pair: &EcdsaKeyPair, pkcs8: &[u8], service: &str, ttl: Duration) -> Issuer {
        let public = pair.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        Issuer {
            encoding: EncodingKey::from_ec_der(pkcs8),
            decoding: DecodingKey::from_ec_der(&public),
            kid: hex::encode(&digest.as_ref()[..8]),
            service: service.to_string(),
            ttl,
        }
    }

    /// How long tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `who`, granting pull of `names`.
    pub fn issue(&self, who: &Who, names: &[String]) -> Result<String, String> {
        self.issue_at(who, names, now())
    }

    fn issue_at(&self, who: &Who, names: &[String], now: u64) -> Result<String, String> {
        let (sub, groups, ext_exp, anonymous) = match who {
            Who::Anonymous => (String::new(), Vec::new(), None, true),
            Who::User(u) => (u.name.clone(), u.groups.clone(), u.external_until, false),
        };
        let exp = (now + self.ttl.as_secs()).min(ext_exp.unwrap_or(u64::MAX));
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness for a token id".to_string())?;
        let claims = Claims {
            iss: ISSUER.into(),
            sub,
            aud: self.service.clone(),
            exp,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: hex::encode(jti),
            access: names
                .iter()
                .map(|n| Access {
                    kind: "repository".into(),
                    name: n.clone(),
                    actions: vec!["pull".into()],
                })
                .collect(),
            groups,
            ext_exp,
            anonymous,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verify one of airlock's tokens: signature, issuer, audience, expiry.
    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[&self.service]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 5;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| e.to_string())?;
        let c = data.claims;
        let who = if c.anonymous {
            Who::Anonymous
        } else if c.sub.is_empty() {
            return Err("a token without a subject".into());
        } else {
            Who::User(User {
                name: c.sub,
                groups: c.groups,
                external_until: c.ext_exp,
            })
        };
        let names = c
            .access
            .into_iter()
            .filter(|a| a.kind == "repository" && a.actions.iter().any(|x| x == "pull"))
            .map(|a| a.name)
            .collect();
        Ok(Verified { who, names })
    }

    /// Whether `token` claims to be one of airlock's (by its issuer), before verifying it.
    pub fn claims_to_be_ours(token: &str) -> bool {
        let Some(payload) = token.split('.').nth(1) else {
            return false;
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
            return false;
        };
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        serde_json::from_slice::<Iss>(&bytes).is_ok_and(|c| c.iss.as_deref() == Some(ISSUER))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pem_lines(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Write a new file readable by its owner only (fails if it exists).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(dir: &Path, ttl: u64) -> Issuer {
        Issuer::load_or_create(&dir.join("token.key"), "airlock", Duration::from_secs(ttl)).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_carry_who_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer(dir.path(), 60);
        let alice = Who::User(User {
            name: "alice".into(),
            groups: vec!["dev".into()],
            external_until: None,
        });
        let t = iss.issue(&alice, &["org/app".into()]).unwrap();
        assert!(Issuer::claims_to_be_ours(&t));
        let v = iss.verify(&t).unwrap();
        assert!(matches!(&v.who, Who::User(u) if u.name == "alice" && u.groups == ["dev"]));
        assert_eq!(v.names, ["org/app"]);
        let anon = iss
            .verify(&iss.issue(&Who::Anonymous, &[]).unwrap())
            .unwrap();
        assert!(matches!(anon.who, Who::Anonymous));
    }

    #[test]
    fn the_key_file_is_private_and_shared_by_replicas() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = issuer(dir.path(), 60);
        let mode = std::fs::metadata(dir.path().join("token.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = issuer(dir.path(), 60);
        let t = a.issue(&Who::Anonymous, &[]).unwrap();
        assert!(
            b.verify(&t).is_ok(),
            "a replica with the same key accepts the token"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(
            issuer(other.path(), 60).verify(&t).is_err(),
            "another key does not"
        );
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let live = issuer(dir.path(), 60);
        let old = live.issue_at(&Who::Anonymous, &[], now() - 3600).unwrap();
        assert!(live.verify(&old).unwrap_err().contains("xpired"));
        let t = live.issue(&Who::Anonymous, &["a/b".into()]).unwrap();
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(br#"{"iss":"airlock","sub":"root","aud":"airlock","exp":9999999999}"#);
        assert!(live.verify(&parts.join(".")).is_err(), "a changed payload");
        assert!(live.verify("not.a.token").is_err());
        assert!(live.verify("").is_err());
        let wrong_service = Issuer::load_or_create(
            &dir.path().join("token.key"),
            "other",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(wrong_service.verify(&t).is_err(), "another audience");
    }

    #[test]
    fn a_file_that_is_not_an_ec_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        std::fs::write(&path, "not a key").unwrap();
        let e = Issuer::load_or_create(&path, "airlock", Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("token key"), "{e}");
    }
}
