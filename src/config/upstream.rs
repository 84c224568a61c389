//! `[[upstream]]`: one registry airlock fetches from, with its URL, credentials, TLS trust,
//! tag TTL and timeouts. Well-known registries need only `registry = "…"`.

use super::Secret;
use crate::oci::Registry;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[[upstream]]`: one registry we fetch from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host clients name (`docker.io`, `ghcr.io`, `registry.local:5000`).
    pub registry: String,
    /// Base URL of its v2 API. Default: the well-known URL, else `https://<registry>`.
    #[serde(default)]
    pub url: Option<String>,
    /// Short names that route here as a path prefix or `?ns=` (`/v2/hub/library/alpine/…`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// User name for token or Basic auth.
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token (prefer `password_file` or `password_env`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File whose content (trimmed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A Docker credential helper (`ecr-login` runs `docker-credential-ecr-login get`).
    #[serde(default)]
    pub credential_helper: Option<String>,
    /// Extra CA certificates (PEM) trusted for this upstream, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate from this upstream. For labs only: logged loudly.
    #[serde(default)]
    pub insecure: bool,
    /// The upstream is a mirror that routes on `?ns=` (another airlock, containerd-style):
    /// send it the registry each request is for.
    #[serde(default)]
    pub mirror: bool,
    /// How long a tag answer is served without asking the upstream again.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Time allowed to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence allowed while reading an answer (blob bodies included).
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Total time allowed for a manifest, tag list or token request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// When a stale tag answer is known, how long a client waits for the upstream to
    /// revalidate it before getting the stale answer (the revalidation goes on behind).
    #[serde(default = "default_stale_timeout", with = "humantime_serde")]
    pub stale_timeout: Duration,
    /// Consecutive failures (unreachable, timeouts, 5xx, 429) that mark the upstream down.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a down upstream is left alone before one request probes it; doubles while
    /// probes fail, up to `max_backoff`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Upper bound of `backoff`.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Hosts besides the registry's own that may serve its token realm (credentials are sent
    /// there). Docker Hub's auth.docker.io is built in.
    #[serde(default)]
    pub token_hosts: Vec<String>,
    /// Pulls of the upstream's rate-limit window (Docker Hub's `ratelimit-remaining`) kept for
    /// clients: at or below it, a moved tag keeps its last known answer and preload pauses.
    #[serde(default = "default_ratelimit_reserve")]
    pub ratelimit_reserve: u64,
    /// How often a paused preload asks (with a HEAD, which costs no pull) whether the budget
    /// has come back.
    #[serde(default = "default_ratelimit_recheck", with = "humantime_serde")]
    pub ratelimit_recheck: Duration,
}

fn default_ratelimit_reserve() -> u64 {
    10
}
fn default_ratelimit_recheck() -> Duration {
    Duration::from_secs(60)
}

fn default_stale_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Registries whose API is not at `https://<registry>`.
const WELL_KNOWN: &[(&str, &str)] = &[
    ("docker.io", "https://registry-1.docker.io"),
    ("gcr.io", "https://gcr.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("mcr.microsoft.com", "https://mcr.microsoft.com"),
    ("public.ecr.aws", "https://public.ecr.aws"),
];

impl UpstreamConfig {
    /// An upstream for `registry` with every other key at its default.
    pub fn new(registry: &str) -> UpstreamConfig {
        UpstreamConfig {
            registry: registry.into(),
            url: None,
            aliases: Vec::new(),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            credential_helper: None,
            ca_file: None,
            insecure: false,
            mirror: false,
            tag_ttl: default_tag_ttl(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            request_timeout: default_request_timeout(),
            stale_timeout: default_stale_timeout(),
            failure_threshold: default_failure_threshold(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            token_hosts: Vec::new(),
            ratelimit_reserve: default_ratelimit_reserve(),
            ratelimit_recheck: default_ratelimit_recheck(),
        }
    }

    /// The URL to use: the configured one, or the registry's well-known one.
    pub fn effective_url(&self) -> String {
        if let Some(u) = &self.url {
            return u.trim_end_matches('/').to_string();
        }
        let name = self
            .registry
            .parse::<Registry>()
            .map(|r| r.to_string())
            .unwrap_or_default();
        WELL_KNOWN
            .iter()
            .find(|(r, _)| *r == name)
            .map(|(_, u)| u.to_string())
            .unwrap_or_else(|| format!("https://{}", self.registry))
    }

    /// Whether credentials are configured (statically or through a helper).
    pub fn has_credentials(&self) -> bool {
        self.username.is_some() || self.credential_helper.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::UpstreamConfig;

    #[test]
    fn well_known_registries_need_no_url() {
        let url = |r: &str| UpstreamConfig::new(r).effective_url();
        assert_eq!(url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(url("index.docker.io"), "https://registry-1.docker.io");
        assert_eq!(url("ghcr.io"), "https://ghcr.io");
        assert_eq!(
            url("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        let mut c = UpstreamConfig::new("ghcr.io");
        c.url = Some("http://127.0.0.1:15002/".into());
        assert_eq!(c.effective_url(), "http://127.0.0.1:15002");
    }
}
