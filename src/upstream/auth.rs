//! Upstream authentication as registries do it: parse the `WWW-Authenticate` challenge of a
//! 401, then either send Basic credentials (ECR, Artifactory) or ask the challenge's realm for a
//! `repository:<name>:pull` Bearer token (Docker Hub, GHCR), anonymously or with credentials,
//! and reuse it until it expires.

use super::credentials::{CredentialProvider, Credentials};
use crate::error::{Error, Result};
use http::HeaderValue;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: send the credentials with every request.
    Basic,
    /// `Bearer realm="…",service="…"`: get a token from the realm.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// The `service` to ask the token for.
        service: Option<String>,
    },
}

impl Challenge {
    /// Parse one `WWW-Authenticate` value; `None` when the scheme is neither Basic nor Bearer
    /// or a Bearer challenge has no realm.
    pub fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        let params = parse_params(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
            }),
            _ => None,
        }
    }
}

/// `k=v` and `k="quoted, with \"escapes\""` pairs separated by commas; keys lower-cased.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                val.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), val.trim().to_string());
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Tokens live 60 s when the issuer does not say (the distribution token spec's default).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// A token is reused for a day at most, whatever the issuer says.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;
/// Past this many scopes, expired tokens and idle per-scope locks are dropped.
const MAX_ENTRIES: usize = 1024;

/// What one upstream knows about authenticating: its challenge once seen, and tokens by scope.
pub struct Auth {
    registry: String,
    credentials: CredentialProvider,
    http: reqwest::Client,
    timeout: Duration,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Auth {
    /// Auth state for `registry`, with the client used to reach token realms.
    pub fn new(
        registry: String,
        credentials: CredentialProvider,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Auth {
        Auth {
            registry,
            credentials,
            http,
            timeout,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Remember the challenge of a 401 so later requests authenticate up front.
    pub fn learn(&self, challenge: Challenge) {
        *lock(&self.challenge) = Some(challenge);
    }

    /// The `Authorization` value for a pull of `repo`, if the upstream wants one. `rejected`
    /// is a token the upstream just refused: it is not handed out again.
    pub async fn header(
        &self,
        repo: &str,
        rejected: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>> {
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .credentials
                .get()
                .await?
                .as_ref()
                .map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service }) => {
                let scope = format!("repository:{repo}:pull");
                let usable = |h: &HeaderValue| rejected != Some(h);
                if let Some(h) = self.cached(&scope).filter(usable) {
                    return Ok(Some(h));
                }
                // One token request per scope at a time; the others wait and reuse it.
                let scope_lock = {
                    let mut locks = lock(&self.fetching);
                    if locks.len() > MAX_ENTRIES {
                        locks.retain(|_, l| Arc::strong_count(l) > 1);
                    }
                    locks.entry(scope.clone()).or_default().clone()
                };
                let _one_per_scope = scope_lock.lock().await;
                if let Some(h) = self.cached(&scope).filter(usable) {
                    return Ok(Some(h));
                }
                let fetched = self.fetch_token(&realm, service.as_deref(), &scope).await;
                let (token, lifetime) = match fetched {
                    // Expired helper credentials: fetch fresh ones and ask once more.
                    Err(Error::Unauthorized { .. })
                        if self.credentials.refresh_after_refusal().await =>
                    {
                        self.fetch_token(&realm, service.as_deref(), &scope).await?
                    }
                    other => other?,
                };
                // Renew a little early so a token never expires in flight.
                let margin = (lifetime / 10).min(Duration::from_secs(30));
                let mut tokens = lock(&self.tokens);
                if tokens.len() > MAX_ENTRIES {
                    let now = Instant::now();
                    tokens.retain(|_, (_, until)| *until > now);
                    // Still full of live tokens (a client walking many repositories): start
                    // over. A token costs one request to fetch again; memory stays bounded.
                    if tokens.len() > MAX_ENTRIES {
                        tokens.clear();
                    }
                }
                tokens.insert(scope, (token.clone(), Instant::now() + (lifetime - margin)));
                Ok(Some(token))
            }
        }
    }

    /// Where the credentials come from (never the secret).
    pub fn describe_credentials(&self) -> String {
        self.credentials.describe()
    }

    /// The upstream refused our credentials: let the source fetch fresh ones if it can
    /// (rate limited). Returns whether the next attempt may differ.
    pub async fn refresh_credentials(&self) -> bool {
        self.credentials.refresh_after_refusal().await
    }

    fn cached(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = lock(&self.tokens);
        tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(h, _)| h.clone())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(HeaderValue, Duration)> {
        let unavailable = |m: String| Error::UpstreamUnavailable {
            registry: self.registry.clone(),
            message: m,
        };
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| unavailable(format!("the token realm {realm:?} is not a URL: {e}")))?;
        url.query_pairs_mut().append_pair("scope", scope);
        if let Some(s) = service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let mut req = self.http.get(url).timeout(self.timeout);
        let credentials = self.credentials.get().await?;
        if let Some(c) = &credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| unavailable(format!("token request to {realm} failed: {e}")))?;
        let status = resp.status();
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            tracing::warn!(registry = %self.registry, %realm, %status, credentials = %self.credentials.describe(), "the token service refused airlock");
            return Err(Error::Unauthorized {
                registry: self.registry.clone(),
                message: if credentials.is_some() {
                    "its token service refused the credentials airlock has for it".into()
                } else {
                    "its token service wants credentials: give airlock some for this registry"
                        .into()
                },
            });
        }
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::TooManyRequests(self.registry.clone()));
        }
        if !status.is_success() {
            return Err(unavailable(format!(
                "token service {realm} answered {status}"
            )));
        }
        let answer: TokenAnswer = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("token service {realm} sent no token: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unavailable(format!("token service {realm} sent no token")))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| unavailable(format!("token service {realm} sent an unusable token")))?;
        header.set_sensitive(true);
        let secs = answer
            .expires_in
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .clamp(1, MAX_TOKEN_LIFETIME);
        let lifetime = Duration::from_secs(secs);
        Ok((header, lifetime))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_and_ghcr_challenges() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        assert_eq!(
            Challenge::parse(hub),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        let ghcr = r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#;
        assert!(
            matches!(Challenge::parse(ghcr), Some(Challenge::Bearer { service: Some(s), .. }) if s == "ghcr.io")
        );
    }

    #[test]
    fn parses_odd_but_legal_forms() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("basic"), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(r#"bearer  Realm=https://a/t , service="s \"q\", x""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some(r#"s "q", x"#.into())
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(""), None);
        assert_eq!(
            Challenge::parse(r#"Bearer realm="unterminated"#).map(|_| ()),
            Some(())
        );
    }
}
