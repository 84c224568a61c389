//! Checking a user name and password, without letting junk credentials saturate the CPUs:
//! verified pairs are cached for [`VERIFIED_TTL`] (keyed by a sha256 of the pair, never the
//! password itself), bcrypt runs on at most one thread fewer than the machine has (at least
//! one), a caller waits at most [`QUEUE_WAIT`] for it, one address (an IPv6 /64) has at most
//! [`PER_ADDRESS`] checks under way (more are refused at once with 429, so one client cannot
//! queue out the others), and after [`FREE_FAILURES`] failed attempts from an address every
//! further attempt from it waits longer, up to [`MAX_DELAY`].

use super::User;
use super::external::External;
use super::htpasswd::HtpasswdFile;
use crate::config::AuthConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use sha2::{Digest as _, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The largest password or token accepted.
pub const MAX_TOKEN: usize = 8 << 10;
/// How long a verified user name and password are trusted without bcrypt.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Failed attempts from one address before further ones are slowed.
pub const FREE_FAILURES: u32 = 3;
/// The longest an attempt is held back.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// How long an attempt waits for a bcrypt thread before it is refused with 429.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Password checks one address may have under way at once.
pub const PER_ADDRESS: usize = 2;

/// Verifies credentials.
pub struct Logins {
    htpasswd: Option<HtpasswdFile>,
    external: Option<External>,
    verified: moka::sync::Cache<[u8; 32], User>,
    failures: moka::sync::Cache<IpAddr, u32>,
    bcrypt: Arc<Semaphore>,
    checking: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// One password check under way for an address; dropping it ends it.
struct Checking {
    map: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for Checking {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under: itself, or its /64 for IPv6.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Logins {
    /// Read the htpasswd file and the external issuer's keys, as configured.
    pub fn load(config: &AuthConfig) -> Result<Logins, String> {
        let htpasswd = config
            .htpasswd
            .as_deref()
            .map(HtpasswdFile::load)
            .transpose()?;
        let external = config.jwt.as_ref().map(External::load).transpose()?;
        let threads =
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
        Ok(Logins {
            htpasswd,
            external,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(300))
                .build(),
            bcrypt: Arc::new(Semaphore::new(threads)),
            checking: Arc::default(),
        })
    }

    /// Read the htpasswd file again if it changed (or if `force`); cached verifications are
    /// dropped when it did. The error (a broken file) leaves the old users in force.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let Some(f) = &self.htpasswd else {
            return Ok(false);
        };
        let changed = f.reload(force)?;
        if changed {
            self.verified.invalidate_all();
            tracing::info!(path = %f.path().display(), users = f.users().len(), "htpasswd reloaded");
        }
        Ok(changed)
    }

    /// Check `user`'s `password`, sent from `addr`. An external issuer's token is accepted as
    /// the password (the user name is then ignored: the token names its subject).
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        addr: IpAddr,
        metrics: &Metrics,
    ) -> Result<User> {
        let refused = |reason: &'static str, why: &str| {
            metrics.auth_denials.with_label_values(&[reason]).inc();
            Error::AuthRequired(why.to_string())
        };
        if password.len() > MAX_TOKEN {
            return Err(refused("bad_credentials", "the password is too long"));
        }
        if self.external.is_some() && looks_like_jwt(password) {
            return self.verify_external(password).map_err(|e| {
                tracing::info!(client = %addr, reason = %e, "token refused");
                refused("bad_token", "the token is invalid or expired")
            });
        }
        let key = cache_key(user, password);
        if let Some(u) = self.verified.get(&key) {
            return Ok(u);
        }
        let _checking = self.start_check(addr).ok_or_else(|| {
            metrics.auth_denials.with_label_values(&["throttled"]).inc();
            Error::Throttled(
                "too many logins from this address at once: try again in a moment".into(),
            )
        })?;
        let addr = client_key(addr);
        let failures = self.failures.get(&addr).unwrap_or(0);
        if failures >= FREE_FAILURES {
            let shift = (failures - FREE_FAILURES).min(10);
            tokio::time::sleep((Duration::from_millis(100) * (1 << shift)).min(MAX_DELAY)).await;
        }
        let ok = match &self.htpasswd {
            Some(f) => {
                let permit = tokio::time::timeout(QUEUE_WAIT, self.bcrypt.clone().acquire_owned())
                    .await
                    .map_err(|_| {
                        metrics.auth_denials.with_label_values(&["throttled"]).inc();
                        Error::Throttled("too many logins at once: try again in a moment".into())
                    })?
                    .map_err(Error::internal)?;
                let (users, u, p) = (f.users(), user.to_string(), password.to_string());
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    users.verify(&u, &p)
                })
                .await
                .map_err(Error::internal)?
            }
            None => false,
        };
        if !ok {
            self.failures.insert(addr, failures.saturating_add(1));
            tracing::info!(client = %addr, user, "login refused");
            return Err(refused("bad_credentials", "incorrect username or password"));
        }
        let u = User {
            name: user.to_string(),
            groups: Vec::new(),
            external_until: None,
        };
        self.verified.insert(key, u.clone());
        Ok(u)
    }

    /// A place for one more check from `addr`, if it has fewer than [`PER_ADDRESS`] under way.
    fn start_check(&self, addr: IpAddr) -> Option<Checking> {
        let key = client_key(addr);
        let mut m = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Checking {
            map: self.checking.clone(),
            key,
        })
    }

    /// Whether `user` is in the htpasswd file now.
    pub fn has_user(&self, user: &str) -> bool {
        self.htpasswd
            .as_ref()
            .is_some_and(|f| f.users().contains(user))
    }

    /// Verify an external issuer's token.
    pub fn verify_external(&self, token: &str) -> Result<User, String> {
        match &self.external {
            Some(e) if token.len() <= MAX_TOKEN => e.verify(token),
            Some(_) => Err("the token is too large".into()),
            None => Err("no external issuer is configured ([auth.jwt])".into()),
        }
    }
}

fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.split('.').count() == 3
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn logins(dir: &Path, entries: &[(&str, &str)]) -> Logins {
        let path = dir.join("htpasswd");
        let text: Vec<String> = entries
            .iter()
            .map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 4).unwrap()))
            .collect();
        std::fs::write(&path, text.join("\n")).unwrap();
        let config = AuthConfig {
            htpasswd: Some(path),
            ..AuthConfig::default()
        };
        Logins::load(&config).unwrap()
    }

    fn metrics() -> Metrics {
        Metrics::new(&[], None)
    }

    #[tokio::test]
    async fn right_passwords_pass_and_every_wrong_one_is_the_same_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let l = logins(dir.path(), &[("alice", "s3cret")]);
        let m = metrics();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            l.verify("alice", "s3cret", addr, &m).await.unwrap().name,
            "alice"
        );
        assert_eq!(
            l.verify("alice", "s3cret", addr, &m).await.unwrap().name,
            "alice",
            "cached"
        );
        let wrong = l
            .verify("alice", "nope", addr, &m)
            .await
            .unwrap_err()
            .to_string();
        let unknown = l
            .verify("mallory", "s3cret", addr, &m)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            wrong, unknown,
            "no difference between a wrong password and no such user"
        );
        let long = "x".repeat(MAX_TOKEN + 1);
        assert!(l.verify("alice", &long, addr, &m).await.is_err());
        assert_eq!(
            m.auth_denials.with_label_values(&["bad_credentials"]).get(),
            3
        );
    }

    #[test]
    fn one_address_has_a_bounded_number_of_checks_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let l = logins(dir.path(), &[("alice", "x")]);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let held: Vec<_> = (0..PER_ADDRESS)
            .map(|_| l.start_check(a).expect("a place"))
            .collect();
        assert!(
            l.start_check(same64).is_none(),
            "the same /64 is at its bound"
        );
        assert!(
            l.start_check("192.0.2.1".parse().unwrap()).is_some(),
            "another address is not"
        );
        drop(held);
        assert!(l.start_check(same64).is_some());
    }

    #[tokio::test]
    async fn a_changed_file_drops_cached_verifications() {
        let dir = tempfile::tempdir().unwrap();
        let l = logins(dir.path(), &[("alice", "one")]);
        let (m, addr) = (metrics(), "192.0.2.1".parse().unwrap());
        l.verify("alice", "one", addr, &m).await.unwrap();
        logins(dir.path(), &[("alice", "two")]);
        assert!(l.reload(true).unwrap());
        assert!(
            l.verify("alice", "one", addr, &m).await.is_err(),
            "the old password is gone"
        );
        l.verify("alice", "two", addr, &m).await.unwrap();
    }
}
