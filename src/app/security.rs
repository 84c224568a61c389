//! Authentication and policy, composed: the checks that refuse an unsafe or broken
//! configuration before any port opens, building [`Auth`] and the [`FetchPolicy`], and
//! reloading the htpasswd file when it changes or on SIGHUP.

use crate::auth::Auth;
use crate::auth::htpasswd::HtpasswdFile;
use crate::auth::rules::Rules;
use crate::config::Config;
use crate::fetch_policy::FetchPolicy;
use crate::metrics::Metrics;
use crate::pattern::Registries;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the htpasswd file is looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Refuse what cannot work or would expose upstream credentials. The error says what to fix.
pub fn check(config: &Config) -> Result<(), String> {
    let auth = &config.auth;
    let registries = Registries::from_config(config);
    let rules = Rules::new(&config.access, auth.enabled(), &registries)?;
    FetchPolicy::new(&config.fetch, &registries)?;
    crate::signatures::validate(&config.signatures, &registries)?;
    if let Some(p) = &auth.htpasswd {
        HtpasswdFile::load(p).map_err(|e| format!("auth.htpasswd: {e}"))?;
    }
    if let Some(j) = &auth.jwt {
        crate::auth::check_external(j)?;
    }
    let exposed = !config.server.listen.ip().is_loopback();
    if exposed && holds_credentials(config) && !auth.enabled() && !rules.has_anonymous() {
        return Err(format!(
            "airlock would serve what its upstream credentials can read to anyone who reaches {}: \
             set [auth] htpasswd (or [auth.jwt]) so clients must log in, or add an [[access]] rule \
             with the anonymous networks that may pull, or listen on 127.0.0.1",
            config.server.listen
        ));
    }
    if auth.enabled() && auth.require_tls && config.server.tls.is_none() {
        return Err("auth.require_tls: authentication is on and [server.tls] is not set: clients would send passwords in the clear".into());
    }
    Ok(())
}

/// Whether any upstream reads with credentials (its own, a helper's, or Docker's config).
fn holds_credentials(config: &Config) -> bool {
    config.credentials.docker_config.is_some()
        || config
            .upstream
            .iter()
            .any(|u| u.username.is_some() || u.credential_helper.is_some())
}

/// Build the authentication layer (after [`check`]).
pub fn auth(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Auth>> {
    check(config).map_err(anyhow::Error::msg)?;
    let registries = Registries::from_config(config);
    let auth = Auth::load(
        &config.auth,
        &config.access,
        &registries,
        &config.storage.path,
        metrics,
    )
    .map_err(anyhow::Error::msg)?;
    if auth.enabled() && config.server.tls.is_none() {
        tracing::warn!(
            "AUTHENTICATION IS ON WITHOUT TLS: passwords and tokens cross the network in the clear. Set [server.tls], or auth.require_tls = true to refuse this."
        );
    }
    if !auth.enabled() && auth.rules().grants_users() {
        tracing::warn!(
            "[[access]] rules grant users, but authentication is off ([auth] htpasswd or [auth.jwt]): only their anonymous networks apply"
        );
    }
    if !auth.rules().is_empty() || auth.enabled() {
        tracing::info!(
            authentication = auth.enabled(),
            rules = config.access.len(),
            "access control is on"
        );
    }
    Ok(Arc::new(auth))
}

/// The fetch policy (after [`check`]).
pub fn fetch_policy(config: &Config) -> anyhow::Result<FetchPolicy> {
    FetchPolicy::new(&config.fetch, &Registries::from_config(config)).map_err(anyhow::Error::msg)
}

/// The signature policy (after [`check`]).
pub fn signatures(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<crate::signatures::Policy>> {
    let policy = crate::signatures::Policy::new(
        &config.signatures,
        &Registries::from_config(config),
        metrics,
    )
    .map_err(anyhow::Error::msg)?;
    if !policy.is_empty() {
        tracing::info!(rules = config.signatures.len(), "signature policy is on");
    }
    Ok(Arc::new(policy))
}

/// Reload the htpasswd file when it changes (looked at every [`RELOAD_EVERY`]) or on SIGHUP,
/// until `stop`. Connections are not touched; a broken file keeps the old users.
pub async fn reload_periodically(auth: Arc<Auth>, mut stop: watch::Receiver<bool>) {
    if auth.logins().is_none() {
        return;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let force = tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = stop.wait_for(|s| *s) => return,
        };
        // Reading the file and hashing the reference password block: off the runtime.
        let a = auth.clone();
        let reloaded =
            tokio::task::spawn_blocking(move || a.logins().map(|l| l.reload(force))).await;
        if let Ok(Some(Err(e))) = reloaded {
            tracing::error!(error = %e, "htpasswd not reloaded: the users loaded before stay in force");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessRule, UpstreamConfig};

    fn exposed_with_credentials() -> Config {
        let mut c = Config::default();
        let mut u = UpstreamConfig::new("registry.example.internal");
        u.credential_helper = Some("ecr-login".into());
        c.upstream = vec![u];
        c
    }

    #[test]
    fn credentials_on_an_open_port_need_auth_or_an_explicit_anonymous_rule() {
        let c = exposed_with_credentials();
        let e = check(&c).unwrap_err();
        assert!(
            e.contains("[auth] htpasswd") && e.contains("0.0.0.0:5000"),
            "{e}"
        );
        let mut local = c.clone();
        local.server.listen = "127.0.0.1:5000".parse().unwrap();
        check(&local).unwrap();
        let mut open = c.clone();
        open.access = vec![AccessRule {
            name: None,
            repositories: vec!["**".into()],
            users: vec![],
            groups: vec![],
            authenticated: false,
            anonymous: vec!["0.0.0.0/0".into()],
        }];
        check(&open).unwrap();
        check(&Config::default()).expect("the two-command default starts");
    }

    #[test]
    fn require_tls_refuses_plain_http_with_auth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("a:{}", bcrypt::hash("x", 4).unwrap())).unwrap();
        let mut c = Config::default();
        c.auth.htpasswd = Some(p);
        check(&c).unwrap();
        c.auth.require_tls = true;
        assert!(check(&c).unwrap_err().contains("require_tls"));
        c.auth.htpasswd = Some(dir.path().join("missing"));
        assert!(check(&c).unwrap_err().contains("auth.htpasswd"));
    }
}
