//! Where an upstream's credentials come from: the config (a password, a file, a variable), a
//! Docker credential helper (`docker-credential-<name> get`, as Docker runs it; this is how
//! ECR works through `docker-credential-ecr-login`), or Docker's `config.json` (`auths`,
//! `credHelpers`, `credsStore`). Helper answers are reused for `refresh` and fetched again as
//! soon as an upstream refuses them. Secrets never reach a log: `Debug` hides them.

use crate::config::{CredentialsConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::oci::Registry;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use http::HeaderValue;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// A `config.json` document: the Docker config file, or one naming the upstream's helper.
    Docker {
        config: DockerConfigSource,
        label: String,
    },
}

enum DockerConfigSource {
    File(PathBuf),
    Inline(String),
}

/// The credentials of one upstream.
pub struct CredentialProvider {
    registry: Registry,
    source: Source,
    refresh: Duration,
    timeout: Duration,
    cache: tokio::sync::Mutex<Option<(Option<Credentials>, Instant)>>,
}

impl CredentialProvider {
    /// The source an `[[upstream]]` section names: its own username/password, its own helper,
    /// else Docker's config file when one exists, else none.
    pub fn from_config(
        upstream: &UpstreamConfig,
        shared: &CredentialsConfig,
    ) -> anyhow::Result<CredentialProvider> {
        let registry: Registry = upstream.registry.parse()?;
        let source = if let Some(username) = upstream.username.clone() {
            Source::Static(Credentials {
                username,
                password: static_password(upstream)?,
            })
        } else if let Some(helper) = &upstream.credential_helper {
            let doc = serde_json::json!({ "credHelpers": { server_address(&registry): helper } });
            Source::Docker {
                config: DockerConfigSource::Inline(doc.to_string()),
                label: format!("credential helper docker-credential-{helper}"),
            }
        } else if let Some(path) = shared.docker_config_path() {
            Source::Docker {
                label: format!("Docker config {}", path.display()),
                config: DockerConfigSource::File(path),
            }
        } else {
            Source::Anonymous
        };
        Ok(CredentialProvider {
            registry,
            source,
            refresh: shared.refresh,
            timeout: shared.helper_timeout,
            cache: Default::default(),
        })
    }

    /// Static credentials (tests, and code that has them at hand).
    pub fn fixed(registry: Registry, credentials: Option<Credentials>) -> CredentialProvider {
        let source = credentials.map_or(Source::Anonymous, Source::Static);
        CredentialProvider {
            registry,
            source,
            refresh: Duration::ZERO,
            timeout: Duration::ZERO,
            cache: Default::default(),
        }
    }

    /// What the credentials come from, for logs and `check-config` (never the secret).
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Anonymous => "anonymous".into(),
            Source::Static(c) => format!("user {}", c.username),
            Source::Docker { label, .. } => label.clone(),
        }
    }

    /// Whether any source is configured.
    pub fn is_configured(&self) -> bool {
        !matches!(self.source, Source::Anonymous)
    }

    /// Whether asking again could give other credentials (a helper may have new ones).
    pub fn refreshable(&self) -> bool {
        matches!(self.source, Source::Docker { .. })
    }

    /// Forget cached helper answers: the upstream refused them.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// The credentials to use now, if any.
    pub async fn get(&self) -> Result<Option<Credentials>> {
        let (config, label) = match &self.source {
            Source::Anonymous => return Ok(None),
            Source::Static(c) => return Ok(Some(c.clone())),
            Source::Docker { config, label } => (config, label),
        };
        let mut cache = self.cache.lock().await;
        if let Some((c, at)) = &*cache
            && at.elapsed() < self.refresh
        {
            return Ok(c.clone());
        }
        let document = match config {
            DockerConfigSource::Inline(s) => s.clone(),
            DockerConfigSource::File(p) => {
                std::fs::read_to_string(p).map_err(|e| self.refused(format!("{label}: {e}")))?
            }
        };
        let candidates = lookup_keys(&self.registry);
        let looked_up = tokio::time::timeout(
            self.timeout,
            tokio::task::spawn_blocking(move || lookup(&document, &candidates)),
        )
        .await
        .map_err(|_| self.refused(format!("{label} did not answer within {:?}", self.timeout)))?
        .map_err(Error::internal)?
        .map_err(|e| self.refused(format!("{label}: {e}")))?;
        tracing::debug!(registry = %self.registry, source = %label, found = looked_up.is_some(), "credentials looked up");
        *cache = Some((looked_up.clone(), Instant::now()));
        Ok(looked_up)
    }

    fn refused(&self, message: String) -> Error {
        Error::Unauthorized {
            registry: self.registry.to_string(),
            message,
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

/// The server address Docker hands a helper for `registry`.
fn server_address(registry: &Registry) -> String {
    if registry.is_docker_hub() {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_string()
    }
}

/// Keys under which Docker's config may hold `registry`, most specific first.
fn lookup_keys(registry: &Registry) -> Vec<String> {
    if registry.is_docker_hub() {
        [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ]
        .map(String::from)
        .to_vec()
    } else {
        let r = registry.to_string();
        vec![r.clone(), format!("https://{r}"), format!("http://{r}")]
    }
}

/// Resolve credentials from a `config.json` document, running helpers as Docker does.
fn lookup(
    document: &str,
    candidates: &[String],
) -> std::result::Result<Option<Credentials>, String> {
    for server in candidates {
        match docker_credential::get_credential_from_reader(document.as_bytes(), server) {
            Ok(DockerCredential::UsernamePassword(username, password)) if username != "<token>" => {
                return Ok(Some(Credentials { username, password }));
            }
            Ok(_) => {
                return Err("it holds an identity token (an OAuth login), which airlock cannot use: configure a username with a password or access token".into());
            }
            Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
            // Helpers say "credentials not found" for servers they hold nothing for.
            Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. })
                if (stdout.clone() + &stderr)
                    .to_ascii_lowercase()
                    .contains("not found") =>
            {
                continue;
            }
            Err(CredentialRetrievalError::HelperFailure { stderr, .. }) => {
                return Err(format!("the helper failed: {}", stderr.trim()));
            }
            Err(CredentialRetrievalError::HelperCommunicationError) => {
                return Err(
                    "the helper could not be run (is docker-credential-<name> on PATH?)".into(),
                );
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.basic_header().is_sensitive());
        assert_eq!(c.basic_header().to_str().unwrap(), "Basic dTpodW50ZXIy");
    }

    #[test]
    fn auths_are_found_under_dockers_keys() {
        let auth = B64.encode("me:secret");
        let doc = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "ghcr.io": {{"auth": "{auth}"}}}}}}"#
        );
        let hub = lookup(&doc, &lookup_keys(&Registry::docker_hub()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("me", "secret")
        );
        assert!(
            lookup(&doc, &lookup_keys(&"ghcr.io".parse().unwrap()))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            lookup(&doc, &lookup_keys(&"quay.io".parse().unwrap())).unwrap(),
            None
        );
        let token = r#"{"auths": {"quay.io": {"identitytoken": "x", "auth": "PHRva2VuPjp4"}}}"#;
        assert!(
            lookup(token, &lookup_keys(&"quay.io".parse().unwrap()))
                .unwrap_err()
                .contains("identity token")
        );
    }

    #[test]
    fn a_missing_helper_is_a_clear_error() {
        let doc = r#"{"credHelpers": {"ghcr.io": "airlock-test-no-such-helper"}}"#;
        let e = lookup(doc, &lookup_keys(&"ghcr.io".parse().unwrap())).unwrap_err();
        assert!(e.contains("on PATH"), "{e}");
    }
}
