//! Configuration: typed sections, figment layering (built-in defaults < TOML file <
//! `AIRLOCK_*` environment, nested keys joined with `__`), unknown keys rejected, and
//! `validate()` so a bad value is reported before any port opens. `config/airlock.toml`
//! documents every key; a test parses it.

mod access;
mod limits;
mod size;
mod upstream;

pub use access::{AccessRule, AuthConfig, FetchConfig, JwtConfig, SignatureMode, SignatureRule};
pub use limits::ConnectionLimits;
pub use size::ByteSize;
pub use upstream::UpstreamConfig;

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
    /// Credential sources shared by all upstreams.
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// One entry per upstream registry. Default: Docker Hub only.
    #[serde(default = "default_upstreams")]
    pub upstream: Vec<UpstreamConfig>,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Access rules, in order.
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// What may enter the cache from upstream.
    #[serde(default)]
    pub fetch: FetchConfig,
    /// Signature rules, in order: which images must be signed, by whom.
    #[serde(default)]
    pub signatures: Vec<SignatureRule>,
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
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Never contact an upstream: answer from the cache only.
    pub offline: bool,
    /// What one client may hold of the server.
    pub limits: ConnectionLimits,
}

/// `[admin]`: the local listener for metrics, health and the cache commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (keep it on localhost: `/admin` needs the token in the
    /// data directory, `/metrics` and health checks need nothing).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ([127, 0, 0, 1], 5001).into(),
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[credentials]`: where credentials come from when an upstream names none itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// Docker's `config.json` (`auths`, `credHelpers`, `credsStore`), read only when named
    /// here: the running user's own `~/.docker/config.json` is never used unasked.
    pub docker_config: Option<PathBuf>,
    /// How long credentials from a helper are reused before the helper runs again (they are
    /// also refreshed as soon as an upstream refuses them).
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Time allowed for one run of a credential helper.
    #[serde(with = "humantime_serde")]
    pub helper_timeout: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            docker_config: None,
            refresh: Duration::from_secs(900),
            helper_timeout: Duration::from_secs(30),
        }
    }
}

impl CredentialsConfig {
    /// The Docker config file to read, if the configuration names one.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        self.docker_config.clone()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 5000).into(),
            default_registry: "docker.io".into(),
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
            offline: false,
            limits: ConnectionLimits::default(),
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
    /// Size cap of the cache on disk; none when unset.
    pub max_size: Option<ByteSize>,
    /// Eviction starts above this fraction of `max_size`…
    pub high_watermark: f64,
    /// …and removes least recently used content until usage is below this fraction.
    pub low_watermark: f64,
    /// How often usage is checked against the cap.
    #[serde(with = "humantime_serde")]
    pub eviction_interval: Duration,
    /// Upstream blob downloads at once; more wait their turn.
    pub max_downloads: usize,
    /// Free space kept on the data directory's filesystem: below it new downloads are refused
    /// (cached content is still served).
    pub min_free: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_data_dir(),
            fill_timeout: Duration::from_secs(3600),
            max_size: None,
            high_watermark: 0.95,
            low_watermark: 0.85,
            eviction_interval: Duration::from_secs(30),
            max_downloads: 32,
            min_free: ByteSize(256 << 20),
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
    /// How long "not known upstream" (a tag, a digest, a repository) is remembered, so
    /// repeated misses cost the upstream one request.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: ByteSize(64 << 20),
            negative_ttl: Duration::from_secs(30),
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

impl Default for Config {
    /// The built-in defaults: what `airlock serve` runs with and no file or environment.
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            cache: CacheConfig::default(),
            log: LogConfig::default(),
            credentials: CredentialsConfig::default(),
            admin: AdminConfig::default(),
            upstream: default_upstreams(),
            auth: AuthConfig::default(),
            access: Vec::new(),
            fetch: FetchConfig::default(),
            signatures: Vec::new(),
        }
    }
}

fn default_upstreams() -> Vec<UpstreamConfig> {
    vec![UpstreamConfig::new("docker.io")]
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
        let mut aliases: Vec<String> = Vec::new();
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
                Ok(p) if !p.username().is_empty() || p.password().is_some() => {
                    return bad(key("url"), "credentials do not belong in the URL (they would show in logs): use username and password_file".into());
                }
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
            if let Some(h) = &u.credential_helper {
                if u.username.is_some() {
                    return bad(
                        key("credential_helper"),
                        "set either username/password or credential_helper, not both".into(),
                    );
                }
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return bad(
                        key("credential_helper"),
                        format!(
                            "{h:?} is not a helper name (\"ecr-login\" runs docker-credential-ecr-login)"
                        ),
                    );
                }
            }
            if let Some(f) = u.ca_file.as_ref().filter(|f| !f.is_file()) {
                return bad(key("ca_file"), format!("{} does not exist", f.display()));
            }
            for a in &u.aliases {
                if a == "library" {
                    return bad(
                        key("aliases"),
                        "\"library\" would capture every official Docker Hub image".into(),
                    );
                }
                if a.is_empty()
                    || !a
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return bad(
                        key("aliases"),
                        format!(
                            "{a:?}: aliases are lower-case letters, digits and '-' (no dots, so they never look like a host)"
                        ),
                    );
                }
                if aliases.contains(a) {
                    return bad(key("aliases"), format!("{a:?} is used twice"));
                }
                aliases.push(a.clone());
            }
        }
        let s = &self.storage;
        if !(0.0 < s.low_watermark && s.low_watermark < s.high_watermark && s.high_watermark <= 1.0)
        {
            return bad(
                "storage.low_watermark".into(),
                "need 0 < low_watermark < high_watermark <= 1".into(),
            );
        }
        if s.max_size.is_some_and(|m| m.0 < (1 << 20)) {
            return bad(
                "storage.max_size".into(),
                "a cache smaller than 1 MiB cannot hold an image".into(),
            );
        }
        if let Some(tls) = &self.server.tls {
            for (k, f) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !f.is_file() {
                    return bad(k.into(), format!("{} does not exist", f.display()));
                }
            }
        }
        if let Some(f) = self
            .credentials
            .docker_config
            .as_ref()
            .filter(|f| !f.is_file())
        {
            return bad(
                "credentials.docker_config".into(),
                format!("{} does not exist", f.display()),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
