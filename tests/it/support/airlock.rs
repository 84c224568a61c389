//! airlock under test, in this process: a fresh data directory, the given upstreams, a port
//! chosen by the kernel. Logs go to the test's captured output (shown when a test fails).

use airlock::app::{self, Running};
use airlock::config::{Config, UpstreamConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A running airlock and its data directory.
pub struct Airlock {
    running: Option<Running>,
    data: TempDir,
    config: Config,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

/// An `[[upstream]]` for `registry` at `url`, other keys at their defaults.
pub fn upstream(registry: &str, url: &str) -> UpstreamConfig {
    let mut u = UpstreamConfig::new(registry);
    u.url = Some(url.to_string());
    u
}

/// A config on 127.0.0.1:0 with these upstreams (data directory set by [`Airlock::start`]).
pub fn config(upstreams: Vec<UpstreamConfig>) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.server.shutdown_timeout = Duration::from_secs(2);
    c.upstream = upstreams;
    c
}

fn init_logs() {
    let filter = std::env::var("AIRLOCK_TEST_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

impl Airlock {
    /// Start with docker.io → `url` as the only upstream.
    pub async fn for_upstream(url: &str) -> Airlock {
        Airlock::start(config(vec![upstream("docker.io", url)])).await
    }

    /// Start with `config` on a fresh data directory.
    pub async fn start(config: Config) -> Airlock {
        let data = tempfile::Builder::new()
            .prefix("airlock-test-")
            .tempdir()
            .expect("tempdir");
        Airlock::start_in(config, data).await
    }

    /// Start with `config` on an existing data directory (a restart).
    pub async fn start_in(mut config: Config, data: TempDir) -> Airlock {
        init_logs();
        config.storage.path = data.path().to_path_buf();
        let running = app::start(config.clone()).await.expect("airlock starts");
        let host = running.addr.to_string();
        Airlock {
            running: Some(running),
            data,
            config,
            host,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// `skopeo copy --all` of `reference` (`REPO:TAG`, `REPO@DIGEST`, or with a registry
    /// prefix) through this airlock, and what arrived.
    pub async fn try_pull(&self, reference: &str) -> Result<super::skopeo::DirImage, String> {
        super::skopeo::try_pull(&self.host, reference).await
    }

    /// [`Airlock::try_pull`], which must succeed and bring exactly `want`, byte for byte.
    pub async fn pull(&self, reference: &str, want: &dyn super::image::Artifact) {
        super::skopeo::pull(&self.host, reference, want).await;
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.data.path()
    }

    /// The cache of the running airlock (for calling cache operations directly).
    pub fn cache(&self) -> &airlock::cache::Cache {
        &self.running.as_ref().expect("running").cache
    }

    /// The store under the cache (to inspect what was stored).
    pub fn store(&self) -> &std::sync::Arc<dyn airlock::store::BlobStore> {
        &self.running.as_ref().expect("running").store
    }

    /// The index under the cache (to inspect, or plant, what it records).
    pub fn index(&self) -> &std::sync::Arc<dyn airlock::store::Index> {
        &self.running.as_ref().expect("running").index
    }

    /// Stop gracefully and start again on the same data directory (a new port).
    pub async fn restart(mut self) -> Airlock {
        self.running.take().expect("running").stop().await;
        Airlock::start_in(self.config.clone(), self.data).await
    }

    /// Stop gracefully, keeping the data directory for inspection.
    pub async fn stop(mut self) -> TempDir {
        self.running.take().expect("running").stop().await;
        self.data
    }

    /// Where a verified blob would be stored.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data
            .path()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// Whether the blob is stored, once any fill of it has ended: a client has its last byte
    /// as soon as the digest is verified, and the blob becomes visible after the fsync and
    /// rename that follow (its spool in `tmp/` is gone then).
    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        let spooling = || {
            std::fs::read_dir(self.data.path().join("tmp")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(hex))
            })
        };
        for _ in 0..1000 {
            if !spooling() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.blob_path(digest).is_file()
    }

    /// Entries left in the spool directory.
    pub fn spools(&self) -> usize {
        std::fs::read_dir(self.data.path().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// A plain client for poking at airlock's API.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The OCI error code of an error body (`errors[0].code`), or `""`.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Send raw bytes as one HTTP/1.1 request (so paths are not normalised by a client library)
/// and return the status and body.
pub async fn raw_request(host: &str, request: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answer within 30 s")
        .expect("read answer");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// `GET path` with `Connection: close`, sent raw.
pub async fn raw_get(host: &str, path: &str) -> (u16, Vec<u8>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_request(host, req.as_bytes()).await
}
