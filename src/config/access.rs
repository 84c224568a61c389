//! `[auth]`, `[[access]]` and `[fetch]`: who may use airlock, what each may pull, and what may
//! enter the cache from upstream at all. Only the shape is checked here (patterns, networks,
//! key combinations); files are read when the server starts (`auth::Auth::load`).

use super::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[auth]`: client authentication on the registry API. Off unless `htpasswd` or `[auth.jwt]`
/// is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Users and bcrypt password hashes, as `htpasswd -B` writes them; reloaded on change.
    pub htpasswd: Option<PathBuf>,
    /// PEM EC P-256 private key that signs airlock's tokens. Default: `<data>/token.key`,
    /// made at first start. Give replicas the same file so they accept each other's tokens.
    pub token_key: Option<PathBuf>,
    /// How long a token from airlock's token endpoint is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The `service` of the challenge and the audience of airlock's tokens.
    pub service: String,
    /// The token endpoint's URL in challenges. Default: `http(s)://<Host of the request>/auth/token`.
    pub realm: Option<String>,
    /// Refuse to start with authentication on and no TLS (credentials would cross the
    /// network in the clear). Off: a warning at start.
    pub require_tls: bool,
    /// Tokens from an external issuer, verified offline.
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            token_key: None,
            token_ttl: Duration::from_secs(900),
            service: "airlock".into(),
            realm: None,
            require_tls: false,
            jwt: None,
        }
    }
}

impl AuthConfig {
    /// Whether clients can authenticate at all.
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.jwt.is_some()
    }
}

/// `[auth.jwt]`: an external token issuer (an identity provider, a CI system).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required in `aud`.
    pub audience: String,
    /// PEM public key (EC P-256, RSA or Ed25519). Set this or `jwks`.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`); the token's `kid` picks the key.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
    /// The claim that lists the user's groups (an array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// `[[access]]`: one access rule. Rules are tried in order; the first whose `repositories`
/// match the full `registry/repository` name decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Named in denials and logs. Default: `access[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Globs over `registry/repository`: `*` stays within a path segment, `**` crosses them
    /// (`docker.io/library/*`, `ghcr.io/org/**`, `**`).
    pub repositories: Vec<String>,
    /// Users who may pull.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups (from an external token's groups claim) whose members may pull.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Any authenticated user may pull.
    #[serde(default)]
    pub authenticated: bool,
    /// Clients without credentials may pull when they connect from one of these networks
    /// (CIDRs: `10.0.0.0/8`, `127.0.0.1/32`, `0.0.0.0/0` for everyone).
    #[serde(default)]
    pub anonymous: Vec<String>,
}

/// `[fetch]`: what may enter the cache from upstream, whoever asks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Only these may be fetched (empty: everything): `registry/repository-glob`, optionally
    /// with `:tag-glob` (`docker.io/library/*`, `ghcr.io/org/**:v*`).
    pub allow: Vec<String>,
    /// Never fetched, even when allowed (`**:latest`).
    pub deny: Vec<String>,
    /// Blobs larger than this are never fetched.
    pub max_blob_size: Option<ByteSize>,
}

/// `[[signatures]]`: one signature rule. Rules are tried in order; the first whose
/// `repositories` match the full `registry/repository` name decides for its manifests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRule {
    /// Named in refusals and logs. Default: `signatures[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Globs over `registry/repository` (`ghcr.io/org/**`, `docker.io/library/*`).
    pub repositories: Vec<String>,
    /// Trusted cosign public keys: PEM files (`cosign.pub`, ECDSA P-256).
    pub keys: Vec<std::path::PathBuf>,
    /// `enforce`: an image without a signature under one of the keys is refused (403
    /// DENIED). `warn`: it is served, logged and counted.
    #[serde(default)]
    pub mode: SignatureMode,
    /// Public keys of the transparency log (Rekor's, PEM, ECDSA P-256). With any, a
    /// signature that carries a log entry (cosign's `dev.sigstore.cosign/bundle`) counts only
    /// when the entry's signed timestamp verifies under one of them and the entry records
    /// that very signature and payload, checked offline.
    #[serde(default)]
    pub rekor_keys: Vec<std::path::PathBuf>,
    /// With `rekor_keys`: a signature without a log entry does not count either.
    #[serde(default)]
    pub require_tlog: bool,
}

/// What a signature rule does with an image it cannot verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    /// Refuse it.
    #[default]
    Enforce,
    /// Serve it, and say so.
    Warn,
}
