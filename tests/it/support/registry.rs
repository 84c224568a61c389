//! A real CNCF distribution registry (`docker-registry serve`, 2.8) per fixture, on
//! 127.0.0.1 and a free port, with its own temp dir (config, logs) and storage dir.
//!
//! Kinds: plain read-write; token auth against a [`TokenIssuer`]; htpasswd (bcrypt) Basic
//! auth. Authenticated ones usually serve another registry's storage read-only
//! (`storage.maintenance.readonly`), so they hold the same images and digests.
//! The process runs under [`GuardedChild`]: it dies with the test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::accesslog::{self, AccessEntry};
use super::process::GuardedChild;
use super::token::TokenIssuer;

/// How a registry authenticates clients.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// `auth: token` (Bearer, like Docker Hub) against a token issuer.
    Token {
        /// Token endpoint, e.g. "http://127.0.0.1:PORT/token".
        realm: String,
        /// Expected `aud` / service name.
        service: String,
        /// Expected `iss`.
        issuer: String,
        /// PEM certificate bundle holding the issuer's signing certificate.
        cert_pem: String,
    },
    /// `auth: htpasswd` (Basic, like ECR) with one user.
    Htpasswd {
        /// User name.
        user: String,
        /// Password (stored bcrypt-hashed).
        pass: String,
    },
}

impl Auth {
    /// Token auth trusting `issuer`.
    pub fn token(issuer: &TokenIssuer) -> Auth {
        Auth::Token {
            realm: issuer.realm(),
            service: issuer.service().to_string(),
            issuer: issuer.issuer().to_string(),
            cert_pem: issuer.cert_pem().to_string(),
        }
    }
}

/// A storage directory that several registries may share; it is deleted when the last holder
/// goes away.
pub type SharedStorage = Arc<TempDir>;

/// Options for [`Registry::start_with`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Authentication.
    pub auth: Auth,
    /// Serve this storage instead of a fresh one.
    pub storage: Option<SharedStorage>,
    /// Serve read-only (`storage.maintenance.readonly`): pushes are refused.
    pub read_only: bool,
    /// Extra top-level YAML appended to the config (e.g. a `proxy:` section).
    pub extra_yaml: String,
    /// Serve HTTPS with this PEM certificate and key (`http.tls`).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A running (or stopped) docker-registry. Dropping it kills the process.
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    port: u16,
    dir: TempDir,
    storage: SharedStorage,
    opts: RegistryOptions,
    child: Mutex<Option<GuardedChild>>,
}

impl Registry {
    /// A plain read-write registry with fresh storage.
    pub async fn start() -> Registry {
        Self::start_with(RegistryOptions::default()).await
    }

    /// A read-only registry with `auth: token` against `issuer`, serving `storage_of`'s storage.
    pub async fn start_token(issuer: &TokenIssuer, storage_of: &Registry) -> Registry {
        Self::start_with(RegistryOptions {
            auth: Auth::token(issuer),
            storage: Some(storage_of.storage()),
            read_only: true,
            ..Default::default()
        })
        .await
    }

    /// A read-only registry with `auth: htpasswd` for `user`/`pass`, serving `storage_of`'s storage.
    pub async fn start_htpasswd(user: &str, pass: &str, storage_of: &Registry) -> Registry {
        Self::start_with(RegistryOptions {
            auth: Auth::Htpasswd {
                user: user.into(),
                pass: pass.into(),
            },
            storage: Some(storage_of.storage()),
            read_only: true,
            ..Default::default()
        })
        .await
    }

    /// Start with explicit options; panics (with the registry's stderr) if it cannot start.
    pub async fn start_with(opts: RegistryOptions) -> Registry {
        blocking(move || Registry::start_blocking(opts)).await
    }

    /// Blocking variant of [`Registry::start_with`], for use outside a tokio runtime.
    pub fn start_blocking(opts: RegistryOptions) -> Registry {
        let mut dir = tempfile::Builder::new()
            .prefix("airlock-registry-")
            .tempdir()
            .expect("registry temp dir");
        let storage = match &opts.storage {
            Some(s) => s.clone(),
            None => Arc::new(
                tempfile::Builder::new()
                    .prefix("airlock-storage-")
                    .tempdir()
                    .expect("storage temp dir"),
            ),
        };
        if let Auth::Htpasswd { user, pass } = &opts.auth {
            write_htpasswd(&dir.path().join("htpasswd"), user, pass);
        }
        if let Auth::Token { cert_pem, .. } = &opts.auth {
            std::fs::write(dir.path().join("token-cert.pem"), cert_pem).expect("write token cert");
        }
        let mut last_err = String::new();
        for _ in 0..8 {
            let port = super::free_port();
            let inner = Inner {
                port,
                dir,
                storage: storage.clone(),
                opts: opts.clone(),
                child: Mutex::new(None),
            };
            match inner.launch() {
                Ok(()) => {
                    return Registry {
                        inner: Arc::new(inner),
                    };
                }
                Err(e) => {
                    last_err = e;
                    dir = inner.into_dir();
                }
            }
        }
        panic!("docker-registry did not start after 8 attempts: {last_err}");
    }

    /// "http://127.0.0.1:PORT" ("https://…" when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.inner.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.inner.port)
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.inner.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The storage (share it with [`RegistryOptions::storage`]).
    pub fn storage(&self) -> SharedStorage {
        self.inner.storage.clone()
    }

    /// The storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.inner.storage.path().to_path_buf()
    }

    /// The registry's own temp dir (config.yml, access.log, registry.err, htpasswd).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Everything the registry wrote to stdout so far: the access log (all runs).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.inner.out_path()).unwrap_or_default()
    }

    /// Everything the registry wrote to stderr so far: its application log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.inner.err_path()).unwrap_or_default()
    }

    /// The parsed access log so far (no waiting).
    pub fn requests(&self) -> Vec<AccessEntry> {
        accesslog::parse_log(&self.access_log())
    }

    /// Wait (bounded, at most 5 s) until the access log has not grown for 200 ms, so that
    /// requests whose responses were just received have been logged.
    pub async fn wait_for_log_quiet(&self) {
        let path = self.inner.out_path();
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut last, mut stable) = (size(), 0);
        while stable < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = size();
            if now == last {
                stable += 1;
            } else {
                (last, stable) = (now, 0);
            }
        }
    }

    /// After the log goes quiet: number of requests with `method` (empty = any), a path
    /// containing `path_contains`, and a status in `statuses` (empty = any).
    pub async fn count_requests(
        &self,
        method: &str,
        path_contains: &str,
        statuses: &[u16],
    ) -> usize {
        self.wait_for_log_quiet().await;
        accesslog::count(&self.requests(), method, path_contains, statuses)
    }

    /// After the log goes quiet: GETs of `/v2/<repo>/blobs/<digest>` answered 200/206/307
    /// (`repo` = "*" for any repository), like peers/count-fetches.sh.
    pub async fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        self.wait_for_log_quiet().await;
        accesslog::blob_gets(&self.requests(), repo, digest)
    }

    /// Process id of docker-registry while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner
            .child
            .lock()
            .expect("child lock")
            .as_ref()
            .filter(|c| c.is_running())
            .map(|c| c.pid())
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        self.inner
            .child
            .lock()
            .expect("child lock")
            .as_ref()
            .is_some_and(|c| c.is_running())
    }

    /// Kill the registry and wait for it; connections to the port are then refused.
    pub async fn stop(&self) {
        let inner = self.inner.clone();
        blocking(move || inner.stop()).await;
    }

    /// Start again on the same port with the same storage and config (stops it first if it
    /// runs). Retries for a few seconds if the port is briefly still taken.
    pub async fn restart(&self) {
        let inner = self.inner.clone();
        blocking(move || {
            inner.stop();
            let mut last_err = String::new();
            for _ in 0..50 {
                match inner.launch() {
                    Ok(()) => return,
                    Err(e) => last_err = e,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "docker-registry did not restart on port {}: {last_err}",
                inner.port
            );
        })
        .await;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Inner {
    fn out_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn err_path(&self) -> PathBuf {
        self.dir.path().join("registry.err")
    }

    fn into_dir(self) -> TempDir {
        self.stop();
        self.dir
    }

    fn stop(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            c.stop();
        }
    }

    /// Write the config, start the process and wait until GET /v2/ answers.
    fn launch(&self) -> Result<(), String> {
        let config = self.dir.path().join("config.yml");
        std::fs::write(&config, self.config_yaml()).map_err(|e| format!("write config: {e}"))?;
        let err_before = std::fs::metadata(self.err_path())
            .map(|m| m.len())
            .unwrap_or(0);
        let args = [std::ffi::OsStr::new("serve"), config.as_os_str()];
        let cleanup = [self.dir.path(), self.storage.path()];
        let child = GuardedChild::spawn(
            super::tools::REGISTRY.path(),
            &args,
            &self.out_path(),
            &self.err_path(),
            &cleanup,
            &[],
        )
        .map_err(|e| format!("spawn {}: {e}", super::tools::REGISTRY.path))?;
        let result = wait_ready(self.port, &child);
        if let Err(why) = result {
            drop(child);
            let log = std::fs::read(self.err_path()).unwrap_or_default();
            let tail =
                String::from_utf8_lossy(&log[(err_before as usize).min(log.len())..]).into_owned();
            return Err(format!("{why}; stderr:\n{}", tail_lines(&tail, 15)));
        }
        *self.child.lock().expect("child lock") = Some(child);
        Ok(())
    }

    fn config_yaml(&self) -> String {
        let dir = self.dir.path().display();
        let mut y = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n",
            self.storage.path().display()
        );
        if self.opts.read_only {
            y += "  maintenance:\n    readonly:\n      enabled: true\n    uploadpurging:\n      enabled: false\n";
        }
        y += &format!(
            "http:\n  addr: 127.0.0.1:{}\n  secret: airlock-fixture-secret\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
            self.port
        );
        if let Some((cert, key)) = &self.opts.tls {
            y += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        match &self.opts.auth {
            Auth::None => {}
            Auth::Token {
                realm,
                service,
                issuer,
                ..
            } => {
                y += &format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {dir}/token-cert.pem\n"
                );
            }
            Auth::Htpasswd { .. } => {
                y += &format!(
                    "auth:\n  htpasswd:\n    realm: airlock-basic\n    path: {dir}/htpasswd\n"
                );
            }
        }
        y += &self.opts.extra_yaml;
        y
    }
}

/// Run blocking process management off the async threads, re-raising its panics as they are.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("registry task failed: {e}"),
    }
}

/// Poll `GET /v2/` until any HTTP status comes back (bounded: ~15 s), failing early if the
/// process exits.
fn wait_ready(port: u16, child: &GuardedChild) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if super::http_answers(port) {
            return Ok(());
        }
        if !child.is_running() {
            return Err(format!(
                "docker-registry exited during startup on port {port}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "docker-registry did not answer GET /v2/ on port {port} within 15 s"
    ))
}

/// One `user:hash` line, as `htpasswd -B` writes it (bcrypt).
pub fn htpasswd_entry(user: &str, pass: &str) -> String {
    let out = Command::new(super::tools::HTPASSWD.path())
        .args(["-Bbn", user, pass])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("htpasswd prints text")
        .trim_end()
        .to_string()
        + "\n"
}

fn write_htpasswd(path: &Path, user: &str, pass: &str) {
    std::fs::write(path, htpasswd_entry(user, pass)).expect("write htpasswd file");
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
