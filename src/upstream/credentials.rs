//! Where an upstream's credentials come from: the config (a password, a file, a variable), a
//! Docker credential helper (`docker-credential-<name> get`, as Docker runs it; this is how
//! ECR works through `docker-credential-ecr-login`), or Docker's `config.json` (`auths`,
//! `credHelpers`, `credsStore`, looked up by the host airlock actually contacts).
//!
//! Helper answers are reused for `refresh`, and fetched again when an upstream refuses them,
//! at most once per [`MIN_REFRESH`] so a stream of 401s (private or missing repositories)
//! cannot hammer a helper. Helpers run under a timeout and are killed when it passes; a
//! failing helper is not asked again for [`FAILURE_BACKOFF`]. Details of failures go to the
//! log, never to clients. Secrets never reach a log: `Debug` hides them.

use crate::config::{CredentialsConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::oci::Registry;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use http::HeaderValue;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Refused credentials are fetched again at most this often.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// A helper that failed is not run again for this long.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// A user name and password (or access token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value (marked sensitive).
    pub fn basic_header(&self) -> HeaderValue {
        let raw = B64.encode(format!("{}:{}", self.username, self.password));
        let mut v =
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

enum Source {
    Anonymous,
    Static(Credentials),
    /// `docker-credential-<name> get`, asked for `server`.
    Helper {
        name: String,
        server: String,
    },
    /// Docker's config file, looked up under `keys`.
    DockerConfig {
        path: PathBuf,
        keys: Vec<String>,
    },
}

#[derive(Default)]
struct State {
    cached: Option<(Option<Credentials>, Instant)>,
    refreshed: Option<Instant>,
    failed_until: Option<Instant>,
}

/// The credentials of one upstream.
pub struct CredentialProvider {
    registry: Registry,
    source: Source,
    refresh: Duration,
    timeout: Duration,
    state: tokio::sync::Mutex<State>,
}

impl CredentialProvider {
    /// The source an `[[upstream]]` section names: its own username/password, its own helper
    /// (asked for the registry, as ecr-login needs even behind a VPC endpoint URL), else
    /// Docker's config file when one exists, asked for the host airlock actually contacts (a
    /// Nexus or central airlock in `url` never gets the registry's own credentials), else none.
    pub fn from_config(
        upstream: &UpstreamConfig,
        shared: &CredentialsConfig,
    ) -> anyhow::Result<CredentialProvider> {
        let registry: Registry = upstream.registry.parse()?;
        let host = contacted_host(upstream, &registry);
        let source = if let Some(username) = upstream.username.clone() {
            Source::Static(Credentials {
                username,
                password: static_password(upstream)?,
            })
        } else if let Some(name) = &upstream.credential_helper {
            Source::Helper {
                name: name.clone(),
                server: lookup_keys(&registry.to_string())[0].clone(),
            }
        } else if let Some(path) = shared.docker_config_path() {
            Source::DockerConfig {
                path,
                keys: lookup_keys(&host),
            }
        } else {
            Source::Anonymous
        };
        Ok(CredentialProvider {
            registry,
            source,
            refresh: shared.refresh,
            timeout: shared.helper_timeout,
            state: Default::default(),
        })
    }

    /// Static credentials, for tests.
    #[cfg(test)]
    pub fn fixed(registry: Registry, credentials: Option<Credentials>) -> CredentialProvider {
        let source = credentials.map_or(Source::Anonymous, Source::Static);
        CredentialProvider {
            registry,
            source,
            refresh: Duration::ZERO,
            timeout: Duration::ZERO,
            state: Default::default(),
        }
    }

    /// What the credentials come from, for logs and `check-config` (never the secret).
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Anonymous => "anonymous".into(),
            Source::Static(c) => format!("user {}", c.username),
            Source::Helper { name, server } => format!("docker-credential-{name} for {server}"),
            Source::DockerConfig { path, keys } => {
                format!("Docker config {} for {}", path.display(), keys[0])
            }
        }
    }

    /// The upstream refused the current credentials: forget them so the next [`get`] asks the
    /// helper again. Returns whether anything changed (static credentials, none obtained, or
    /// a refresh within [`MIN_REFRESH`] change nothing).
    ///
    /// [`get`]: CredentialProvider::get
    pub async fn refresh_after_refusal(&self) -> bool {
        if !matches!(
            self.source,
            Source::Helper { .. } | Source::DockerConfig { .. }
        ) {
            return false;
        }
        let mut st = self.state.lock().await;
        let had_some = matches!(&st.cached, Some((Some(_), _)));
        if !had_some || st.refreshed.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return false;
        }
        st.cached = None;
        st.refreshed = Some(Instant::now());
        true
    }

    /// The credentials to use now, if any.
    pub async fn get(&self) -> Result<Option<Credentials>> {
        match &self.source {
            Source::Anonymous => return Ok(None),
            Source::Static(c) => return Ok(Some(c.clone())),
            _ => {}
        }
        let mut st = self.state.lock().await;
        if let Some((c, at)) = &st.cached
            && at.elapsed() < self.refresh
        {
            return Ok(c.clone());
        }
        if st.failed_until.is_some_and(|t| Instant::now() < t) {
            return Err(self.unavailable());
        }
        let result = match &self.source {
            Source::Helper { name, server } => run_helper(name, server, self.timeout).await,
            Source::DockerConfig { path, keys } => {
                from_docker_config(path, keys, self.timeout).await
            }
            Source::Anonymous | Source::Static(_) => unreachable!("returned above"),
        };
        match result {
            Ok(c) => {
                tracing::debug!(registry = %self.registry, source = %self.describe(), found = c.is_some(), "credentials looked up");
                st.cached = Some((c.clone(), Instant::now()));
                st.failed_until = None;
                Ok(c)
            }
            Err(why) => {
                tracing::warn!(registry = %self.registry, source = %self.describe(), error = %why, "could not get credentials");
                st.failed_until = Some(Instant::now() + FAILURE_BACKOFF);
                Err(self.unavailable())
            }
        }
    }

    fn unavailable(&self) -> Error {
        Error::UpstreamUnavailable {
            registry: self.registry.to_string(),
            message: "airlock could not get its credentials for this registry (the reason is in airlock's log)".into(),
        }
    }
}

fn static_password(u: &UpstreamConfig) -> anyhow::Result<String> {
    if let Some(p) = &u.password {
        Ok(p.0.clone())
    } else if let Some(path) = &u.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "upstream {}: password_file {}: {e}",
                u.registry,
                path.display()
            )
        })?;
        Ok(text.trim().to_string())
    } else if let Some(var) = &u.password_env {
        std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "upstream {}: password_env names {var}, which is not set",
                u.registry
            )
        })
    } else {
        anyhow::bail!(
            "upstream {}: username is set without a password",
            u.registry
        )
    }
}

/// The host whose credentials are due: the registry's own, unless `url` points elsewhere
/// (a Nexus, a central airlock) — then that host's, never the registry's.
fn contacted_host(u: &UpstreamConfig, registry: &Registry) -> String {
    let Some(url) = u.url.as_deref().and_then(|s| reqwest::Url::parse(s).ok()) else {
        return registry.to_string();
    };
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return registry.to_string(),
    };
    if host == "registry-1.docker.io" && registry.is_docker_hub() {
        registry.to_string()
    } else {
        host
    }
}

/// Keys under which Docker stores `host`, most specific first (the first is the address
/// handed to helpers).
fn lookup_keys(host: &str) -> Vec<String> {
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ]
        .map(String::from)
        .to_vec()
    } else {
        vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Resolve credentials from Docker's config as Docker does: a per-host helper, an `auths`
/// entry, else the default store.
async fn from_docker_config(
    path: &PathBuf,
    keys: &[String],
    timeout: Duration,
) -> std::result::Result<Option<Credentials>, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let config: DockerConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((key, helper)) = keys
        .iter()
        .find_map(|k| config.cred_helpers.get(k).map(|h| (k, h)))
    {
        return run_helper(helper, key, timeout).await;
    }
    if let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) {
        if entry.identitytoken.is_some() {
            return Err("its auths entry holds an identity token (an OAuth login), which airlock cannot use".into());
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        if let Some(auth) = &entry.auth {
            let raw = B64
                .decode(auth.trim())
                .or_else(|_| B64_NO_PAD.decode(auth.trim()))
                .map_err(|_| "an auths entry is not base64".to_string())?;
            let text =
                String::from_utf8(raw).map_err(|_| "an auths entry is not UTF-8".to_string())?;
            let (u, p) = text
                .split_once(':')
                .ok_or("an auths entry is not user:password")?;
            return Ok(Some(Credentials {
                username: u.into(),
                password: p.into(),
            }));
        }
    }
    match &config.creds_store {
        Some(store) => run_helper(store, &keys[0], timeout).await,
        None => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// `docker-credential-<name> get` with `server` on stdin; killed after `timeout`.
async fn run_helper(
    name: &str,
    server: &str,
    timeout: Duration,
) -> std::result::Result<Option<Credentials>, String> {
    run_program(&format!("docker-credential-{name}"), server, timeout).await
}

async fn run_program(
    program: &str,
    server: &str,
    timeout: Duration,
) -> std::result::Result<Option<Credentials>, String> {
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program} could not be run ({e}): is it on airlock's PATH?"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{program} did not answer within {timeout:?} (killed)"))?
        .map_err(|e| format!("{program}: {e}"))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "{program} failed ({}): {}",
            out.status,
            said.trim()
        ));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{program} answered something that is not its JSON"))?;
    if answer.username == "<token>" {
        return Err(format!(
            "{program} gave an identity token (an OAuth login), which airlock cannot use"
        ));
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests;
