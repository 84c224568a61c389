//! Who is asking, and may they: the layer between the route and the handler
//! (route → [`Auth::identify`] → [`Auth::authorize`] → handler). It sees names as typed
//! [`Repository`]s whatever route they came by, and knows nothing of HTTP: the API hands it
//! the `Authorization` value and the peer address.
//!
//! - Credentials: Basic (htpasswd users; or an external issuer's JWT as the password) or
//!   Bearer (airlock's own tokens, or the external issuer's). Verified passwords are cached
//!   (bounded, short-lived, keyed by a hash, never the password); bcrypt runs on a bounded
//!   number of threads; failed attempts slow further attempts from the same address.
//! - Decisions: [`rules::Rules`], on every request.

mod external;
pub mod htpasswd;
mod login;
pub mod rules;
pub mod token;

pub use login::Logins;
pub use rules::Decision;

use crate::config::{AccessRule, AuthConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::Repository;
use base64::Engine;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name (`sub` of a token).
    pub name: String,
    /// Groups, from an external token.
    pub groups: Vec<String>,
    /// For a user an external token vouched for: when that token expires (seconds since the
    /// epoch); nothing airlock issues for them outlives it. `None`: an htpasswd user.
    pub external_until: Option<u64>,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// No credentials.
    Anonymous,
    /// A verified user.
    User(User),
}

/// The caller of one request: who, from where, and what their token was issued for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub who: Who,
    /// The peer address.
    pub addr: IpAddr,
    /// With one of airlock's tokens: the repository names it was issued for.
    pub token_names: Option<Vec<String>>,
}

impl Caller {
    /// A caller without a token.
    pub fn new(who: Who, addr: IpAddr) -> Caller {
        Caller {
            who,
            addr: addr.to_canonical(),
            token_names: None,
        }
    }

    /// For the request log: the user name, or `-`.
    pub fn user_label(&self) -> &str {
        match &self.who {
            Who::Anonymous => "-",
            Who::User(u) => &u.name,
        }
    }
}

/// Authentication and access rules.
pub struct Auth {
    logins: Option<Logins>,
    issuer: Option<token::Issuer>,
    rules: rules::Rules,
    service: String,
    realm: Option<String>,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// Build from the configuration; reads the htpasswd file, the token key (made under
    /// `data` when none is configured) and the external issuer's keys. The error names the
    /// key or file and what to fix.
    pub fn load(
        config: &AuthConfig,
        access: &[AccessRule],
        registries: &crate::pattern::Registries,
        data: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Auth, String> {
        let rules = rules::Rules::new(access, config.enabled(), registries)?;
        let (logins, issuer) = if config.enabled() {
            let key = config
                .token_key
                .clone()
                .unwrap_or_else(|| data.join("token.key"));
            let issuer = token::Issuer::load_or_create(&key, &config.service, config.token_ttl)?;
            (Some(Logins::load(config)?), Some(issuer))
        } else {
            (None, None)
        };
        Ok(Auth {
            logins,
            issuer,
            rules,
            service: config.service.clone(),
            realm: config.realm.clone(),
            metrics,
        })
    }

    /// Whether clients can authenticate.
    pub fn enabled(&self) -> bool {
        self.logins.is_some()
    }

    /// The access rules.
    pub fn rules(&self) -> &rules::Rules {
        &self.rules
    }

    /// The logins (to reload the htpasswd file).
    pub fn logins(&self) -> Option<&Logins> {
        self.logins.as_ref()
    }

    /// The `service` of challenges and tokens.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The configured realm, if any (else the API derives it from the request).
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Who sent `authorization` from `addr`. No header: anonymous. A header that is
    /// malformed, or credentials that do not verify: an error (401), never anonymous.
    pub async fn identify(&self, authorization: Option<&str>, addr: IpAddr) -> Result<Caller> {
        let Some(value) = authorization else {
            return Ok(Caller::new(Who::Anonymous, addr));
        };
        let Some(logins) = &self.logins else {
            // Nothing to check credentials against: clients that send some anyway (Docker
            // sends Docker Hub's to its mirrors) are treated as anonymous.
            return Ok(Caller::new(Who::Anonymous, addr));
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(rest).ok_or_else(|| {
                self.refused("bad_credentials", "the Basic credentials are malformed")
            })?;
            let user = logins.verify(&user, &password, addr, &self.metrics).await?;
            return Ok(Caller::new(Who::User(user), addr));
        }
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return self.bearer(rest, addr, logins);
        }
        Err(self.refused(
            "bad_credentials",
            "unsupported Authorization scheme: use Basic or Bearer",
        ))
    }

    fn bearer(&self, token: &str, addr: IpAddr, logins: &Logins) -> Result<Caller> {
        if token.len() > login::MAX_TOKEN {
            return Err(self.refused("bad_token", "the token is too large"));
        }
        if let Some(issuer) = self
            .issuer
            .as_ref()
            .filter(|_| token::Issuer::claims_to_be_ours(token))
        {
            let v = issuer.verify(token).map_err(|e| {
                tracing::info!(client = %addr, reason = %e, "token refused");
                self.refused("bad_token", "the token is invalid or expired: log in again")
            })?;
            // A user removed from the htpasswd file loses their tokens at once.
            if let Who::User(u) = &v.who
                && u.external_until.is_none()
                && !logins.has_user(&u.name)
            {
                tracing::info!(client = %addr, user = %u.name, "token refused: the user is no longer in the htpasswd file");
                return Err(
                    self.refused("bad_token", "the token is invalid or expired: log in again")
                );
            }
            let mut c = Caller::new(v.who, addr);
            c.token_names = Some(v.names);
            return Ok(c);
        }
        let user = logins.verify_external(token).map_err(|e| {
            tracing::info!(client = %addr, reason = %e, "token refused");
            self.refused("bad_token", "the token is invalid or expired")
        })?;
        Ok(Caller::new(Who::User(user), addr))
    }

    /// May `caller` pull from `repo`, which the request path named `path_name`? A token of
    /// airlock's must also have been issued for that name.
    pub fn authorize(&self, caller: &Caller, repo: &Repository, path_name: &str) -> Result<()> {
        let decision = match &caller.token_names {
            Some(names) if !names.iter().any(|n| n == path_name) => {
                Decision::Challenge(format!("the token was not issued for {path_name}"))
            }
            // The name is written out only for rules to match it against.
            _ => self.rules.decide(caller, repo),
        };
        self.enforce(decision)
    }

    /// May `caller` use the API at all (`GET /v2/`)? Authenticated callers may. With
    /// authentication on, anonymous ones are always challenged, as distribution and Harbor do:
    /// clients holding credentials learn here that they should log in (podman, skopeo and
    /// docker authenticate only after a challenge to this ping), and the others fetch an
    /// anonymous token, which the rules may honour by network. With it off, anonymous callers
    /// may where a rule welcomes their network (or no rules exist).
    pub fn base(&self, caller: &Caller) -> Result<()> {
        match caller.who {
            Who::User(_) => Ok(()),
            Who::Anonymous if self.enabled() => {
                self.enforce(Decision::Challenge("authentication is required".into()))
            }
            Who::Anonymous if self.rules.anonymous_welcome(caller.addr) => Ok(()),
            Who::Anonymous => self.enforce(Decision::Deny(format!(
                "no access rule lets anonymous clients from {} pull anything",
                caller.addr
            ))),
        }
    }

    /// A token for `caller` granting pull of `names` (as the client will write them), and
    /// its lifetime in seconds.
    pub fn issue(&self, caller: &Caller, names: &[String]) -> Result<(String, u64)> {
        let issuer = self.issuer.as_ref().ok_or_else(|| {
            Error::Unsupported("authentication is off: there are no tokens to issue".into())
        })?;
        let token = issuer.issue(&caller.who, names).map_err(Error::internal)?;
        Ok((token, issuer.ttl().as_secs()))
    }

    fn enforce(&self, decision: Decision) -> Result<()> {
        match decision {
            Decision::Allow => Ok(()),
            // Why goes to the log only: a client without credentials learns nothing of the rules.
            Decision::Challenge(why) => {
                tracing::debug!(reason = %why, "credentials required");
                Err(self.refused("no_credentials", "log in to pull this repository"))
            }
            Decision::Deny(why) => {
                self.metrics.auth_denials.with_label_values(&["rule"]).inc();
                Err(Error::Denied(why))
            }
        }
    }

    fn refused(&self, reason: &'static str, why: &str) -> Error {
        self.metrics.auth_denials.with_label_values(&[reason]).inc();
        Error::AuthRequired(why.to_string())
    }
}

/// Whether the external issuer's keys can be read (for the configuration check).
pub fn check_external(c: &crate::config::JwtConfig) -> Result<(), String> {
    external::External::load(c).map(|_| ())
}

/// `user:password` of a Basic value, if it is well formed.
fn decode_basic(b64: &str) -> Option<(String, String)> {
    if b64.len() > 4 * login::MAX_TOKEN / 3 + 8 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    (!u.is_empty() && u.len() <= 256).then(|| (u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_values_decode_or_are_refused() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_basic(&enc("alice:pw:with:colons")),
            Some(("alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(
            decode_basic(&enc("alice:")),
            Some(("alice".into(), String::new()))
        );
        for bad in [
            enc("nocolon"),
            enc(":pw"),
            "%%%".into(),
            enc(&"u".repeat(300)) + "",
            "".into(),
        ] {
            assert_eq!(decode_basic(&bad), None, "{bad}");
        }
        assert_eq!(
            decode_basic(&enc(&format!("u:{}", "p".repeat(20_000)))),
            None
        );
        assert_eq!(
            decode_basic(&base64::engine::general_purpose::STANDARD.encode([0xff, b':', 0xfe])),
            None
        );
    }
}
