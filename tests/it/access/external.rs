//! Tokens of an external issuer (a key the test makes), verified offline: what their groups
//! allow, and nothing for expired, foreign-key, wrong-audience, `alg: none` or HS256 tokens.

use super::{get, rule, site};
use crate::support::airlock::{Airlock, config, upstream};
use crate::support::skopeo;
use airlock::config::{AccessRule, JwtConfig};
use base64::Engine;

/// A P-256 key pair for an external issuer: (signing key, public key PEM).
fn issuer_key() -> (jsonwebtoken::EncodingKey, String) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), pem)
}

fn jwt(key: &jsonwebtoken::EncodingKey, groups: &[&str], exp_offset: i64, aud: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims = serde_json::json!({
        "iss": "https://idp.test", "aud": aud, "sub": "ci-bot", "exp": now + exp_offset, "groups": groups,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn external_tokens_grant_exactly_what_their_groups_allow() {
    let site = site().await;
    let (key, pem) = issuer_key();
    let pem_path = site.dir.path().join("idp.pem");
    std::fs::write(&pem_path, &pem).unwrap();
    let mut c = config(vec![upstream("docker.io", &site.hub.url())]);
    c.auth.jwt = Some(JwtConfig {
        issuer: "https://idp.test".into(),
        audience: "airlock".into(),
        public_key: Some(pem_path),
        jwks: None,
        groups_claim: "groups".into(),
    });
    c.access = vec![AccessRule {
        groups: vec!["dev".into()],
        ..rule("dev", &["docker.io/org/*"])
    }];
    let airlock = Airlock::start(c).await;
    let m = format!("{}/v2/org/app/manifests/v1", airlock.url());
    let bearer = |t: String| format!("Bearer {t}");
    assert_eq!(
        get(&m, Some(&bearer(jwt(&key, &["dev"], 300, "airlock"))))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&m, Some(&bearer(jwt(&key, &["ops"], 300, "airlock"))))
            .await
            .0,
        403
    );
    let (other_key, _) = issuer_key();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "airlock", "sub": "x", "exp": 9_999_999_999u64, "groups": ["dev"]});
    let refused = [
        ("expired", jwt(&key, &["dev"], -3600, "airlock")),
        ("another audience", jwt(&key, &["dev"], 300, "other")),
        ("another key", jwt(&other_key, &["dev"], 300, "airlock")),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(serde_json::json!({"alg": "none"})),
                b64(claims.clone())
            ),
        ),
        (
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
    ];
    for (what, t) in refused {
        let (status, code, _) = get(&m, Some(&bearer(t))).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{what}");
    }
    // The token also works as a password, as skopeo and docker send it.
    let dir = tempfile::tempdir().unwrap();
    skopeo::copy_with_creds(
        &format!("{}/org/app:v1", airlock.host),
        dir.path(),
        true,
        &format!("ci-bot:{}", jwt(&key, &["dev"], 300, "airlock")),
    )
    .await
    .expect("pull with an external token as the password");
    skopeo::read_dir(dir.path()).assert_matches(&site.app, true);
}
