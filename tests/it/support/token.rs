//! A Bearer token issuer like auth.docker.io, for registries with `auth: token`.
//!
//! `GET /token?service=S&scope=repository:NAME:pull[,push]` (optionally with Basic auth) and
//! the OAuth form `POST /token` (`grant_type=password&username=..&password=..&service=..&scope=..`,
//! as containerd does) answer `{"token","access_token","expires_in","issued_at"}`.
//! Anonymous callers get `pull` only (or 401 when auth is required), known users get every
//! action they ask for, wrong credentials get 401.
//!
//! Tokens are ES256 JWTs signed with a fresh P-256 key; the header's `kid` is the libtrust
//! key ID of that key, which distribution 2.8 looks up among the keys of the certificates in
//! its `auth.token.rootcertbundle` (see [`TokenIssuer::cert_pem`]).
//!
//! Expiry: the JWT `exp` is `iat + expires_in`, but distribution accepts tokens up to 60 s past
//! `exp` (its leeway), and docker/containerd clients treat an `expires_in` below 60 as 60; so
//! tests of token expiry should count issuer requests ([`TokenIssuer::token_requests`]) rather
//! than expect the registry to refuse a stale token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use sha2::{Digest, Sha256};

use super::server::{Body, ServerThread, full};

/// Settings of a [`TokenIssuer`].
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// Service name (the JWT `aud`, the registry's `auth.token.service`).
    pub service: String,
    /// Issuer name (the JWT `iss`, the registry's `auth.token.issuer`).
    pub issuer: String,
    /// Known `(user, password)` pairs.
    pub users: Vec<(String, String)>,
    /// Refuse anonymous callers with 401.
    pub require_auth: bool,
    /// `expires_in` of issued tokens, in seconds (also sets the JWT `exp`).
    pub expires_in: u64,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            service: "airlock-registry".into(),
            issuer: "airlock-token-issuer".into(),
            users: vec![("testuser".into(), "testpass".into())],
            require_auth: false,
            expires_in: 300,
        }
    }
}

/// One request the issuer served.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// "GET" or "POST".
    pub method: String,
    /// The user that authenticated (Basic or form), `None` for anonymous.
    pub user: Option<String>,
    /// The requested scopes, e.g. "repository:library/alpine:pull".
    pub scopes: Vec<String>,
    /// The status answered.
    pub status: u16,
}

struct State {
    opts: Mutex<TokenOptions>,
    require_auth: AtomicBool,
    expires_in: AtomicU64,
    fail_status: Mutex<Option<u16>>,
    requests: AtomicUsize,
    log: Mutex<Vec<TokenRequest>>,
    signer: Signer,
}

/// A running token issuer (own thread). Dropping it stops it.
pub struct TokenIssuer {
    state: Arc<State>,
    cert_pem: String,
    server: ServerThread,
}

impl TokenIssuer {
    /// Start with [`TokenOptions::default`] (user testuser:testpass, anonymous pull allowed).
    pub fn start() -> TokenIssuer {
        Self::start_with(TokenOptions::default())
    }

    /// Start with explicit options.
    pub fn start_with(opts: TokenOptions) -> TokenIssuer {
        let key = rcgen::KeyPair::generate().expect("generate P-256 key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("cert params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, opts.issuer.clone());
        let cert = params
            .self_signed(&key)
            .expect("self-signed token certificate");
        let signer = Signer::new(&key);
        let state = Arc::new(State {
            require_auth: AtomicBool::new(opts.require_auth),
            expires_in: AtomicU64::new(opts.expires_in),
            opts: Mutex::new(opts),
            fail_status: Mutex::new(None),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            signer,
        });
        let st = state.clone();
        let server = ServerThread::spawn(
            "token-issuer",
            Arc::new(move |req| {
                let st = st.clone();
                Box::pin(async move { handle(&st, req).await })
            }),
        );
        TokenIssuer {
            state,
            cert_pem: cert.pem(),
            server,
        }
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The token endpoint, "http://127.0.0.1:PORT/token".
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// The service name.
    pub fn service(&self) -> String {
        self.state.opts.lock().expect("opts lock").service.clone()
    }

    /// The issuer name.
    pub fn issuer(&self) -> String {
        self.state.opts.lock().expect("opts lock").issuer.clone()
    }

    /// PEM of the self-signed certificate of the signing key (the registry's rootcertbundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The libtrust key ID put in every JWT header.
    pub fn kid(&self) -> &str {
        &self.state.signer.kid
    }

    /// Number of /token requests served so far (any outcome).
    pub fn token_requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every /token request served so far.
    pub fn request_log(&self) -> Vec<TokenRequest> {
        self.state.log.lock().expect("log lock").clone()
    }

    /// Refuse (true) or allow (false) anonymous callers from now on.
    pub fn set_require_auth(&self, require: bool) {
        self.state.require_auth.store(require, Ordering::SeqCst);
    }

    /// `expires_in` (seconds) of tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Answer every request with this status (`None` = normal service), e.g. to test an
    /// issuer outage.
    pub fn set_fail_status(&self, status: Option<u16>) {
        *self.state.fail_status.lock().expect("fail lock") = status;
    }

    /// Add or replace a user.
    pub fn add_user(&self, user: &str, pass: &str) {
        let mut o = self.state.opts.lock().expect("opts lock");
        o.users.retain(|(u, _)| u != user);
        o.users.push((user.into(), pass.into()));
    }
}

/// Signs ES256 JWTs with a libtrust `kid`.
struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn new(key: &rcgen::KeyPair) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .expect("load P-256 key into ring");
        let kid = libtrust_kid(&key_spki(&key));
        Signer { key, kid }
    }

    fn jwt(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), msg.as_bytes())
            .expect("ES256 sign");
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// DER SubjectPublicKeyInfo of a P-256 key (what Go's `x509.MarshalPKIXPublicKey` gives).
fn key_spki(key: &EcdsaKeyPair) -> Vec<u8> {
    use ring::signature::KeyPair as _;
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 0x00, point } }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let point = key.public_key().as_ref();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    [&PREFIX[..], point].concat()
}

/// libtrust key ID: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4 joined by ':'.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let mut out = String::new();
    for chunk in hash[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(ALPHABET[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    let groups: Vec<&str> = (0..out.len()).step_by(4).map(|i| &out[i..i + 4]).collect();
    groups.join(":")
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    if req.uri().path() != "/token" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"details": "not found"}),
            None,
        );
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let query = req.uri().query().unwrap_or("").to_string();
    let (params, creds) = if method == Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let params = parse_form(&body);
        let creds = params.get("grant_type").map(|g| {
            let user = params
                .get("username")
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default();
            let pass = params
                .get("password")
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default();
            (g.first().cloned().unwrap_or_default(), user, pass)
        });
        match creds {
            Some((g, u, p)) if g == "password" => (params, Some(Some((u, p)))),
            _ => {
                let resp = json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "unsupported_grant_type"}),
                    None,
                );
                record(st, "POST", None, &params, 400);
                return resp;
            }
        }
    } else {
        (
            parse_form(query.as_bytes()),
            basic.map(|h| decode_basic(&h)),
        )
    };
    let method = method.as_str().to_string();
    // creds: None = anonymous; Some(None) = undecodable header; Some(Some((u, p))).
    let user = match &creds {
        Some(Some((u, _))) => Some(u.clone()),
        _ => None,
    };
    if let Some(code) = *st.fail_status.lock().expect("fail lock") {
        record(st, &method, user, &params, code);
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json(
            code,
            serde_json::json!({"details": "scripted failure"}),
            None,
        );
    }
    let opts = st.opts.lock().expect("opts lock").clone();
    let authenticated = match &creds {
        None => false,
        Some(Some((u, p))) if opts.users.iter().any(|(uu, pp)| uu == u && pp == p) => true,
        Some(_) => {
            record(st, &method, user, &params, 401);
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"details": "incorrect username or password"}),
                Some("Basic realm=\"airlock-token\""),
            );
        }
    };
    if !authenticated && st.require_auth.load(Ordering::SeqCst) {
        record(st, &method, None, &params, 401);
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"details": "authentication required"}),
            Some("Basic realm=\"airlock-token\""),
        );
    }
    let service = params
        .get("service")
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_else(|| opts.service.clone());
    if service != opts.service {
        record(st, &method, user, &params, 400);
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"details": "unknown service"}),
            None,
        );
    }
    let mut access = Vec::new();
    for scope in scopes(&params) {
        let Some((typ, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let got: Vec<&str> = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .filter(|a| authenticated || *a == "pull")
            .collect();
        if !name.is_empty() && !got.is_empty() {
            access.push(serde_json::json!({"type": typ, "name": name, "actions": got}));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ttl = st.expires_in.load(Ordering::SeqCst);
    let n = st.requests.load(Ordering::SeqCst);
    let claims = serde_json::json!({
        "iss": opts.issuer, "sub": user.clone().unwrap_or_default(), "aud": opts.service,
        "iat": now, "nbf": now.saturating_sub(30), "exp": now + ttl,
        "jti": format!("airlock-{now}-{n}"), "access": access,
    });
    let token = st.signer.jwt(&claims);
    record(st, &method, user, &params, 200);
    json(
        StatusCode::OK,
        serde_json::json!({"token": token, "access_token": token, "expires_in": ttl, "issued_at": rfc3339(now)}),
        None,
    )
}

fn json(status: StatusCode, body: serde_json::Value, www_auth: Option<&str>) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if let Some(w) = www_auth {
        b = b.header("WWW-Authenticate", w);
    }
    b.body(full(body.to_string())).expect("token response")
}

fn record(
    st: &State,
    method: &str,
    user: Option<String>,
    params: &HashMap<String, Vec<String>>,
    status: u16,
) {
    let scopes = scopes(params);
    st.log.lock().expect("log lock").push(TokenRequest {
        method: method.into(),
        user,
        scopes,
        status,
    });
}

fn scopes(params: &HashMap<String, Vec<String>>) -> Vec<String> {
    params
        .get("scope")
        .map(|v| {
            v.iter()
                .flat_map(|s| s.split(' '))
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_form(data: &[u8]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(data) {
        m.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    m
}

/// `Basic base64(user:pass)` -> Some((user, pass)); None if it cannot be decoded.
fn decode_basic(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ".
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
