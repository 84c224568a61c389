//! The token endpoint of Docker token auth, the flow every client speaks: the registry API
//! answers 401 with a challenge naming this endpoint; the client comes here with its
//! credentials (`GET` with Basic, as docker and podman do; or an OAuth2 `POST` with
//! `grant_type=password`, as containerd does first) and the scopes it wants, and gets a
//! short-lived token for them. Without credentials the client gets an anonymous token, which
//! the access rules may still honour by network. A token is never issued in exchange for one
//! of airlock's own (no renewal, no refresh tokens): every token goes back to a password or an
//! external issuer's token, so removing a user or changing a password takes effect.

use super::body::{self, Body};
use super::handler::{State, set};
use crate::auth::Caller;
use crate::error::{Error, Result};
use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use std::net::SocketAddr;

/// Where the endpoint lives.
pub const PATH: &str = "/auth/token";

/// The largest form body accepted.
const MAX_FORM: usize = 64 << 10;
/// The most scopes one request may ask for.
const MAX_SCOPES: usize = 32;

/// Answer a token request from `peer`; `user` is set to whoever it is for, for the log.
pub async fn answer(
    state: &State,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    user: &mut Option<String>,
) -> Result<Response<Body>> {
    let auth = &state.auth;
    if !auth.enabled() {
        return Err(Error::Unsupported(
            "authentication is off: this airlock issues no tokens".into(),
        ));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let mut scopes: Vec<String> = pairs(&query, "scope");
    let caller: Caller = match *req.method() {
        Method::GET => {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        Error::AuthRequired("the Authorization header is not text".into())
                    })
                })
                .transpose()?;
            if let Some(v) = authorization
                && !v.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic "))
            {
                return Err(Error::AuthRequired(
                    "the token endpoint takes Basic credentials".into(),
                ));
            }
            auth.identify(authorization, peer.ip()).await?
        }
        Method::POST => {
            let form = read_form(req).await?;
            scopes.extend(pairs(&form, "scope"));
            let field = |k: &str| pairs(&form, k).into_iter().next();
            match field("grant_type").as_deref() {
                Some("password") => {
                    let (u, p) = (
                        field("username").unwrap_or_default(),
                        field("password").unwrap_or_default(),
                    );
                    let basic = format!("{u}:{p}");
                    let value = format!("Basic {}", base64_encode(basic.as_bytes()));
                    auth.identify(Some(&value), peer.ip()).await?
                }
                // No refresh tokens are issued: a refresh would renew a token forever.
                other => {
                    return Err(Error::Unsupported(format!(
                        "grant_type {other:?} is not supported: use password"
                    )));
                }
            }
        }
        ref m => {
            return Err(Error::MethodNotAllowed(format!(
                "the token endpoint takes GET or POST, not {m}"
            )));
        }
    };
    *user = Some(caller.user_label().to_string());
    let names = pull_names(&scopes)?;
    let (token, ttl) = auth.issue(&caller, &names)?;
    let json = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    let bytes = serde_json::to_vec(&json).map_err(Error::internal)?;
    let mut r = Response::new(body::full(bytes));
    set(r.headers_mut(), header::CONTENT_TYPE, "application/json");
    set(r.headers_mut(), header::CACHE_CONTROL, "no-store");
    Ok(r)
}

/// The repository names of `repository:NAME:ACTIONS` scopes that ask for pull (a scope value
/// may hold several, separated by spaces). Other resource types are ignored.
fn pull_names(scopes: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for s in scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
    {
        // The name may hold a registry's port (`repository:host:5000/app:pull`): the type ends
        // at the first colon, the actions start after the last.
        let split = s.split_once(':').and_then(|(kind, rest)| {
            let (name, actions) = rest.rsplit_once(':')?;
            Some((kind, name, actions))
        });
        let Some((kind, name, actions)) = split else {
            return Err(Error::Unsupported(format!(
                "scope {:?} is not type:name:actions",
                cut(s)
            )));
        };
        if kind != "repository" || !actions.split(',').any(|a| a == "pull") {
            continue;
        }
        if name.is_empty() || name.len() > 512 {
            return Err(Error::NameInvalid(format!(
                "scope {:?} names no repository",
                cut(s)
            )));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        if names.len() > MAX_SCOPES {
            return Err(Error::Unsupported(format!(
                "more than {MAX_SCOPES} scopes in one token request"
            )));
        }
    }
    Ok(names)
}

fn pairs(encoded: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(encoded.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn read_form(req: Request<hyper::body::Incoming>) -> Result<String> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| {
            Error::Unsupported(format!(
                "the token request body is unreadable or over {MAX_FORM} bytes"
            ))
        })?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map_err(|_| Error::Unsupported("the token request body is not text".into()))
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_give_the_names_asked_for_pull() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pull_names(&s(&[
                "repository:org/app:pull",
                "repository:org/app:pull,push repository:ghcr.io/a/b:pull"
            ]))
            .unwrap(),
            ["org/app", "ghcr.io/a/b"]
        );
        assert_eq!(
            pull_names(&s(&["repository:registry.local:5000/team/app:pull"])).unwrap(),
            ["registry.local:5000/team/app"]
        );
        assert!(
            pull_names(&s(&["registry:catalog:*", "repository:x:push"]))
                .unwrap()
                .is_empty()
        );
        assert!(pull_names(&s(&["garbage"])).is_err());
        assert!(pull_names(&s(&["repository::pull"])).is_err());
        let many: Vec<String> = (0..40).map(|i| format!("repository:r{i}:pull")).collect();
        assert!(pull_names(&many).is_err());
    }
}
