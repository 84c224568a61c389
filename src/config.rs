//! Configuration: typed sections, figment layering (built-in defaults < TOML file <
//! `AIRLOCK_*` environment, nested keys joined with `__`), unknown keys rejected, and
//! `validate()` so a bad value is reported before any port opens. `config/airlock.toml`
//! documents every key; a test parses it.

mod size;

pub use size::ByteSize;

use crate::oci::Registry;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The registry API listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the cache lives on disk.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The in-memory hot cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// One entry per upstream registry. Default: Docker Hub only.
    #[serde(default = "default_upstreams")]
    pub upstream: Vec<UpstreamConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the registry API.
    pub listen: SocketAddr,
    /// Registry that paths without `?ns=` or a registry prefix go to.
    pub default_registry: String,
    /// How long in-flight requests may run on shutdown before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 5000).into(),
            default_registry: "docker.io".into(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory: blobs, spools and the index.
    pub path: PathBuf,
    /// Upper bound on one upstream blob download, which keeps running after the client that
    /// started it has gone.
    #[serde(with = "humantime_serde")]
    pub fill_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_data_dir(),
            fill_timeout: Duration::from_secs(3600),
        }
    }
}

/// `$XDG_DATA_HOME/airlock`, else `$HOME/.local/share/airlock`, else `./airlock-data`.
pub fn default_data_dir() -> PathBuf {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = env("XDG_DATA_HOME") {
        xdg.join("airlock")
    } else if let Some(home) = env("HOME") {
        home.join(".local/share/airlock")
    } else {
        PathBuf::from("airlock-data")
    }
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory for hot manifests and tag answers.
    pub memory: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: ByteSize(64 << 20),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `airlock=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// `[[upstream]]`: one registry we fetch from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host clients name (`docker.io`, `ghcr.io`, `registry.local:5000`).
    pub registry: String,
    /// Base URL of its v2 API. Default: the well-known URL for Docker Hub, else `https://<registry>`.
    #[serde(default)]
    pub url: Option<String>,
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
}

impl Default for Config {
    /// The built-in defaults: what `airlock serve` runs with and no file or environment.
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            cache: CacheConfig::default(),
            log: LogConfig::default(),
            upstream: default_upstreams(),
        }
    }
}

fn default_upstreams() -> Vec<UpstreamConfig> {
    vec![UpstreamConfig::new("docker.io")]
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

impl UpstreamConfig {
    /// An upstream for `registry` with every other key at its default.
    pub fn new(registry: &str) -> UpstreamConfig {
        UpstreamConfig {
            registry: registry.into(),
            url: None,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            tag_ttl: default_tag_ttl(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            request_timeout: default_request_timeout(),
        }
    }

    /// The URL to use: the configured one, or the registry's well-known one.
    pub fn effective_url(&self) -> String {
        match &self.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => match self.registry.parse::<Registry>() {
                Ok(r) if r.is_docker_hub() => "https://registry-1.docker.io".into(),
                _ => format!("https://{}", self.registry),
            },
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A configuration that cannot be used, with a message naming the key and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then `file` (if any), then `AIRLOCK_*` environment variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        Self::from_figment(fig.merge(Env::prefixed("AIRLOCK_").split("__")))
    }

    /// Extract and validate from an assembled figment (tests use this with `Jail`).
    pub fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError(msgs.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check values serde cannot: registry hosts, URLs, credential combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, why: String| Err(ConfigError(format!("{key}: {why}")));
        if let Err(e) = self.server.default_registry.parse::<Registry>() {
            return bad("server.default_registry".into(), e.to_string());
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return bad(
                "log.level".into(),
                format!(
                    "{:?} is not a tracing filter such as \"info\" or \"airlock=debug\"",
                    self.log.level
                ),
            );
        }
        let mut seen = Vec::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let key = |k: &str| format!("upstream[{i}].{k}");
            let reg = match u.registry.parse::<Registry>() {
                Ok(r) => r,
                Err(e) => return bad(key("registry"), e.to_string()),
            };
            if seen.contains(&reg) {
                return bad(key("registry"), format!("{reg} is configured twice"));
            }
            seen.push(reg);
            let url = u.effective_url();
            match reqwest::Url::parse(&url) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {}
                _ => {
                    return bad(
                        key("url"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
            }
            let sources = [
                u.password.is_some(),
                u.password_file.is_some(),
                u.password_env.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return bad(
                    key("password"),
                    "set only one of password, password_file, password_env".into(),
                );
            }
            if sources.contains(&true) != u.username.is_some() {
                return bad(
                    key("username"),
                    "username and a password (password, password_file or password_env) go together"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
