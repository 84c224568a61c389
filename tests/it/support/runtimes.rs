//! Real container runtimes for end-to-end pulls: a private `dockerd`, a private `containerd`
//! (driven with `ctr`) and `podman`, each configured with text the test hands in unchanged
//! (typically what `airlock client-config` printed).
//!
//! Every instance is private: its own short temp dir under `/tmp` (`/tmp/airlock-<kind>-XXXXXX`,
//! short because unix socket paths are limited to ~108 bytes) holding its data, sockets, logs
//! and configuration, so nothing touches the host's `/var/lib/docker`, `/run/containerd`,
//! `/opt/containerd`, containers-storage, `/etc/docker/key.json`, `~/.docker`, the default auth
//! file or `/var/tmp`, and instances may run side by side. One piece of host state remains
//! shared: podman 4.3 (like skopeo) as root always uses the blob-info cache
//! `/var/lib/containers/cache/blob-info-cache-v1.boltdb` (locked BoltDB; it only maps digests
//! and known blob locations, and each instance's storage is fresh, so pulls still fetch every
//! blob).
//!
//! - [`Dockerd`]: `dockerd --config-file` with the given daemon.json plus the private-instance
//!   keys (data-root, exec-root, pidfile, a unix socket, vfs storage, no iptables/bridge).
//!   Docker uses `registry-mirrors` for Docker Hub (`docker.io`) images only.
//! - [`Containerd`]: containerd 1.6 with a config.toml v2 (CRI disabled); pulls run
//!   `ctr image pull --hosts-dir DIR --snapshotter native` in namespace `e2e`.
//! - [`Podman`]: no daemon; each command runs `podman` as root without systemd (cgroupfs, file
//!   events, vfs storage) with `CONTAINERS_REGISTRIES_CONF` / `CONTAINERS_STORAGE_CONF` set for
//!   that command only.
//!
//! No fallback can reach the internet: daemons and tools run with
//! `HTTPS_PROXY=HTTP_PROXY=http://127.0.0.1:1` and `NO_PROXY=127.0.0.1,localhost`, so any
//! request to a non-loopback host (e.g. Docker's silent fallback from a failing mirror to
//! registry-1.docker.io) fails fast with "proxyconnect ... connection refused".
//!
//! Processes die with the test process (even on SIGKILL): daemons run under the same stdin-pipe
//! guard as [`super::process::GuardedChild`] (which here also unmounts anything left under the
//! instance's dir, since dockerd bind-mounts its data-root onto itself and a SIGKILLed dockerd
//! leaves that mount behind, and then deletes the dir); every one-shot command (`docker pull`,
//! `ctr`, `podman`) runs under a guard that kills it when the test process goes away or its
//! timeout passes. Every wait is bounded. Failures come back as `Err(String)` carrying the
//! command line, its exit status and the tail of its stderr (for dockerd also the tail of the
//! daemon's log, where the reason for a mirror failure is logged).
//!
//! Concurrency: instances are independent and may run concurrently, also from tests of one
//! binary running in parallel (checked: two tests' dockerds at once, three dockerds started and
//! pulling at once in one test, all three runtimes at once). dockerd has host-global paths
//! (`/run/docker/plugins` created if missing, `/etc/docker/certs.d` read) and would create
//! `/etc/docker/key.json` on first start, which two first starts could race on; here
//! `deprecated-key-path` moves that key into the instance's dir, and as cheap insurance dockerd
//! *startups* are serialized by a process-wide async mutex (held ~0.5–2 s, until
//! `docker version` answers). Running daemons and their pulls are not serialized, so a
//! [`Dockerd`] may also live in a `static` `OnceCell`.
//!
//! ```ignore
//! let docker = Dockerd::start(&daemon_json).await;          // e.g. from `airlock client-config docker`
//! let digest = docker.pull("org/app:v1").await.unwrap();      // "sha256:…" (the manifest digest)
//! let ctd = Containerd::start().await;
//! let hosts = ctd.hosts_dir("docker.io", &hosts_toml);
//! ctd.pull("docker.io/library/alpine:3.19", &hosts, &[]).await.unwrap();
//! let podman = Podman::new(&registries_conf);
//! podman.pull("docker.io/library/alpine:3.19", &[]).await.unwrap();
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Where fallbacks go: a dead port, so they fail fast instead of reaching the internet.
pub const DEAD_PROXY: &str = "http://127.0.0.1:1";

/// Default bound on one pull (and on any other tool command) before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The containerd namespace [`Containerd`] uses for its images.
pub const CTR_NAMESPACE: &str = "e2e";

/// Serializes dockerd startups within the test binary (see the module docs).
static DOCKERD_START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Numbers the log files of one-shot commands.
static SEQ: AtomicU64 = AtomicU64::new(0);

// ------------------------------------------------------------------------------------------
// dockerd

/// A private dockerd on a unix socket in its own temp dir. Dropping it stops the daemon and
/// deletes the dir (data, logs).
pub struct Dockerd {
    dir: PathBuf,
    daemon: Option<Daemon>,
    config: serde_json::Value,
    timeout: Duration,
}

impl Dockerd {
    /// Start dockerd with `daemon_json` (a JSON object, e.g. `{"registry-mirrors": [...],
    /// "insecure-registries": [...]}`) plus the private-instance keys, which override any keys
    /// of the same name: `data-root`, `exec-root`, `pidfile`, `hosts` (one unix socket),
    /// `deprecated-key-path`, `storage-driver: vfs`, `iptables`/`ip-masq`/`ip-forward: false`,
    /// `bridge: none`. Waits (at most 60 s) until `docker version` answers. Panics with the
    /// daemon's log tail if it cannot start (see [`Dockerd::try_start`]).
    pub async fn start(daemon_json: &str) -> Dockerd {
        match Dockerd::try_start(daemon_json).await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Dockerd::start`], returning why it failed instead of panicking (e.g. dockerd refused
    /// the configuration: the error then holds its log tail).
    pub async fn try_start(daemon_json: &str) -> Result<Dockerd, String> {
        let mut config: serde_json::Value = serde_json::from_str(daemon_json)
            .map_err(|e| format!("daemon.json is not valid JSON ({e}):\n{daemon_json}"))?;
        let obj = config
            .as_object_mut()
            .ok_or_else(|| format!("daemon.json is not a JSON object:\n{daemon_json}"))?;
        let dir = private_dir("airlock-dkd-")?;
        let d = dir.display();
        let private = serde_json::json!({
            "data-root": format!("{d}/root"),
            "exec-root": format!("{d}/exec"),
            "pidfile": format!("{d}/docker.pid"),
            "hosts": [format!("unix://{d}/docker.sock")],
            "deprecated-key-path": format!("{d}/key.json"),
            "storage-driver": "vfs",
            "iptables": false,
            "ip-masq": false,
            "ip-forward": false,
            "bridge": "none",
        });
        for (k, v) in private.as_object().expect("object") {
            obj.insert(k.clone(), v.clone());
        }
        let mut docker = Dockerd {
            dir,
            daemon: None,
            config,
            timeout: DEFAULT_TIMEOUT,
        };
        for sub in ["logs", "cli"] {
            std::fs::create_dir_all(docker.dir.join(sub))
                .map_err(|e| format!("create {sub} dir: {e}"))?;
        }
        check_socket_path(&docker.socket())?;
        let config_path = docker.dir.join("daemon.json");
        let text = serde_json::to_string_pretty(&docker.config).expect("daemon.json");
        std::fs::write(&config_path, text).map_err(|e| format!("write daemon.json: {e}"))?;

        let _startup = DOCKERD_START.lock().await;
        let args = [
            OsString::from("--config-file"),
            config_path.into_os_string(),
        ];
        let daemon = Daemon::spawn(
            super::tools::DOCKERD.path(),
            &args,
            &docker.daemon_log_path(),
            &docker.dir,
            20,
            &proxy_env(),
        )
        .map_err(|e| format!("spawn {}: {e}", super::tools::DOCKERD.path))?;
        docker.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = docker
                .run_docker(&["version".into()], Duration::from_secs(10))
                .await;
            let Err(why) = attempt else { break };
            let running = docker.daemon.as_ref().is_some_and(Daemon::is_running);
            if !running || Instant::now() >= deadline {
                let what = if running {
                    "did not answer `docker version` within 60 s"
                } else {
                    "exited during startup"
                };
                return Err(format!(
                    "dockerd {what}; last `docker version`: {why}\ndockerd log:\n{}\ndaemon.json:\n{}",
                    tail_lines(&docker.log(), 25),
                    serde_json::to_string_pretty(&docker.config).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(docker)
    }

    /// `docker pull IMAGE` (bounded by [`Dockerd::set_timeout`], default 120 s), then the digest
    /// the daemon recorded: the `sha256:…` of the RepoDigest matching IMAGE's repository (the
    /// pulled manifest or manifest list / index), or the image ID if it has no RepoDigest.
    /// `Err` holds the CLI's stderr tail and the daemon's log lines written during the pull.
    pub async fn pull(&self, image: &str) -> Result<String, String> {
        let log_before = self.log().len();
        if let Err(e) = self
            .run_docker(&["pull".into(), image.into()], self.timeout)
            .await
        {
            let log = self.log();
            let new = log.get(log_before..).unwrap_or("");
            return Err(format!(
                "{e}\ndockerd log during the pull:\n{}",
                tail_lines(new, 15)
            ));
        }
        let out = self
            .docker(&[
                "image",
                "inspect",
                "--format",
                "{{json .RepoDigests}} {{.Id}}",
                image,
            ])
            .await?;
        let line = out.trim();
        let (digests, id) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("unexpected `docker image inspect` output: {line:?}"))?;
        let digests: Vec<String> = serde_json::from_str(digests).unwrap_or_default();
        Ok(pick_repo_digest(image, &digests).unwrap_or_else(|| id.to_string()))
    }

    /// Run `docker -H unix://SOCK ARGS...` against this daemon (bounded like [`Dockerd::pull`]);
    /// `Ok(stdout)` or `Err` with the stderr tail. E.g. `["image", "rm", "org/app:v1"]`.
    pub async fn docker(&self, args: &[&str]) -> Result<String, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.run_docker(&args, self.timeout).await
    }

    async fn run_docker(&self, args: &[OsString], timeout: Duration) -> Result<String, String> {
        let mut all = vec![OsString::from("-H"), OsString::from(self.host())];
        all.extend(args.iter().cloned());
        let mut env = proxy_env();
        env.push(("DOCKER_CONFIG".into(), self.dir.join("cli").into()));
        let remove = ["DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY"];
        run_tool(
            &self.dir.join("logs"),
            super::tools::DOCKER.path(),
            &all,
            &env,
            &remove,
            timeout,
        )
        .await
    }

    /// Bound for each later [`Dockerd::pull`] / [`Dockerd::docker`] call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// "unix:///tmp/airlock-dkd-…/docker.sock", for `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The instance's dir (daemon.json, docker.sock, root/, exec/, logs/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon.json dockerd was started with (the given keys plus the private ones).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// Everything dockerd logged so far (its stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.daemon_log_path())
    }

    /// Process id of dockerd while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .filter(|d| d.is_running())
            .map(|d| d.pid)
    }

    /// Stop dockerd (SIGTERM, SIGKILL after 20 s) and wait for it; the dir (and its log) stays
    /// until the value is dropped. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            blocking(move || drop(d)).await;
        }
    }

    fn daemon_log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        drop(self.daemon.take());
        remove_dir_forcefully(&self.dir);
    }
}

/// The `sha256:…` of the RepoDigest ("name@sha256:…") whose name is `image`'s repository,
/// compared the way Docker shortens names (`docker.io/` and `library/` dropped). Falls back to
/// the first RepoDigest.
fn pick_repo_digest(image: &str, repo_digests: &[String]) -> Option<String> {
    fn repo(name: &str) -> &str {
        let name = name.split('@').next().unwrap_or(name);
        let name = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => &name[..i],
            _ => name,
        };
        let name = name.strip_prefix("docker.io/").unwrap_or(name);
        name.strip_prefix("library/").unwrap_or(name)
    }
    if let Some((_, d)) = image.split_once('@') {
        return Some(d.to_string());
    }
    let digest = |rd: &String| rd.split_once('@').map(|(_, d)| d.to_string());
    repo_digests
        .iter()
        .find(|rd| repo(rd) == repo(image))
        .or_else(|| repo_digests.first())
        .and_then(digest)
}

// ------------------------------------------------------------------------------------------
// containerd

/// A private containerd (config.toml v2: root, state, grpc and ttrpc sockets and the `opt`
/// plugin dir in its own temp dir; CRI plugin disabled). Dropping it stops the daemon and
/// deletes the dir.
pub struct Containerd {
    dir: PathBuf,
    daemon: Option<Daemon>,
    timeout: Duration,
}

impl Containerd {
    /// Start containerd and wait (at most 30 s) until `ctr version` answers; panics with its
    /// log tail if it cannot start.
    pub async fn start() -> Containerd {
        match Containerd::try_start().await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Containerd::start`], returning why it failed instead of panicking.
    pub async fn try_start() -> Result<Containerd, String> {
        let dir = private_dir("airlock-ctd-")?;
        let mut ctd = Containerd {
            dir,
            daemon: None,
            timeout: DEFAULT_TIMEOUT,
        };
        std::fs::create_dir_all(ctd.dir.join("logs")).map_err(|e| format!("logs dir: {e}"))?;
        check_socket_path(&ctd.socket().with_extension("sock.ttrpc"))?;
        let d = ctd.dir.display();
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        let config_path = ctd.dir.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("write config.toml: {e}"))?;
        let args = [OsString::from("--config"), config_path.into_os_string()];
        let daemon = Daemon::spawn(
            super::tools::CONTAINERD.path(),
            &args,
            &ctd.daemon_log_path(),
            &ctd.dir,
            10,
            &proxy_env(),
        )
        .map_err(|e| format!("spawn {}: {e}", super::tools::CONTAINERD.path))?;
        ctd.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Err(why) = ctd.run_ctr(&["version"], Duration::from_secs(10)).await else {
                break;
            };
            let running = ctd.daemon.as_ref().is_some_and(Daemon::is_running);
            if !running || Instant::now() >= deadline {
                let what = if running {
                    "did not answer `ctr version` within 30 s"
                } else {
                    "exited during startup"
                };
                return Err(format!(
                    "containerd {what}; last `ctr version`: {why}\ncontainerd log:\n{}",
                    tail_lines(&ctd.log(), 25)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ctd)
    }

    /// `ctr -a SOCK -n e2e image pull --hosts-dir HOSTS_DIR --snapshotter native EXTRA... REF`
    /// (bounded by [`Containerd::set_timeout`], default 120 s; `extra` e.g. `["--user", "u:p"]`
    /// or `["--platform", "linux/arm64"]`), then the manifest digest `ctr image ls` lists for
    /// REF (for an index, the index digest). REF must be fully qualified
    /// ("docker.io/library/alpine:3.19"). `Err` holds ctr's stderr tail (it logs each host it
    /// tries).
    pub async fn pull(
        &self,
        image_ref: &str,
        hosts_dir: &Path,
        extra: &[&str],
    ) -> Result<String, String> {
        let hosts = hosts_dir.to_string_lossy();
        let mut args = vec![
            "image",
            "pull",
            "--hosts-dir",
            &hosts,
            "--snapshotter",
            "native",
        ];
        args.extend_from_slice(extra);
        args.push(image_ref);
        self.run_ctr(&args, self.timeout).await?;
        let list = self.ctr(&["image", "ls"]).await?;
        list.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&image_ref))
            .and_then(|cols| cols.get(2).map(|d| d.to_string()))
            .ok_or_else(|| format!("`ctr image ls` does not list {image_ref}:\n{list}"))
    }

    /// Run `ctr -a SOCK -n e2e ARGS...` (bounded like [`Containerd::pull`]); `Ok(stdout)` or
    /// `Err` with the stderr tail. E.g. `["image", "rm", "docker.io/library/alpine:3.19"]`.
    pub async fn ctr(&self, args: &[&str]) -> Result<String, String> {
        self.run_ctr(args, self.timeout).await
    }

    async fn run_ctr(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let mut all = vec![
            OsString::from("-a"),
            self.socket().into_os_string(),
            OsString::from("-n"),
            OsString::from(CTR_NAMESPACE),
        ];
        all.extend(args.iter().map(OsString::from));
        let remove = ["CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"];
        run_tool(
            &self.dir.join("logs"),
            super::tools::CTR.path(),
            &all,
            &proxy_env(),
            &remove,
            timeout,
        )
        .await
    }

    /// Write `hosts_toml` as `<dir>/certs.d/<registry>/hosts.toml` (registry e.g. "docker.io"
    /// or "127.0.0.1:5000") and return the `certs.d` dir, to pass as `hosts_dir` to
    /// [`Containerd::pull`]. May be called for several registries.
    pub fn hosts_dir(&self, registry: &str, hosts_toml: &str) -> PathBuf {
        let certs = self.dir.join("certs.d");
        let reg = certs.join(registry);
        std::fs::create_dir_all(&reg).expect("create certs.d/<registry>");
        std::fs::write(reg.join("hosts.toml"), hosts_toml).expect("write hosts.toml");
        certs
    }

    /// Bound for each later [`Containerd::pull`] / [`Containerd::ctr`] call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The grpc socket path (`ctr -a`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// The instance's dir (config.toml, sockets, root/, state/, logs/, certs.d/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything containerd logged so far (its stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.daemon_log_path())
    }

    /// Process id of containerd while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .filter(|d| d.is_running())
            .map(|d| d.pid)
    }

    /// Stop containerd (SIGTERM, SIGKILL after 10 s) and wait for it; the dir stays until the
    /// value is dropped. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            blocking(move || drop(d)).await;
        }
    }

    fn daemon_log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        drop(self.daemon.take());
        remove_dir_forcefully(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// podman

/// podman with its own registries.conf, storage (vfs) and tmpdir in a temp dir. There is no
/// daemon; a small guard process only deletes the dir if the test process dies. Dropping it
/// unmounts anything left under the dir, makes it writable and deletes it.
pub struct Podman {
    dir: PathBuf,
    janitor: Option<Daemon>,
    timeout: Duration,
}

impl Podman {
    /// Write `registries_conf` (used unchanged, e.g. `[[registry]] prefix = "docker.io"
    /// location = "127.0.0.1:1" insecure = true` + `[[registry.mirror]] location = "HOST:PORT"
    /// insecure = true`), a storage.conf (`driver = "vfs"`, graphroot/runroot in the dir) and an
    /// empty auth file, and return a handle.
    pub fn new(registries_conf: &str) -> Podman {
        let dir = private_dir("airlock-pdm-").unwrap_or_else(|e| panic!("{e}"));
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create podman sub dir");
        }
        std::fs::write(dir.join("registries.conf"), registries_conf)
            .expect("write registries.conf");
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("storage.conf"), storage).expect("write storage.conf");
        std::fs::write(dir.join("auth.json"), "{\"auths\": {}}\n").expect("write auth.json");
        let janitor = Daemon::spawn(
            "sleep",
            &[OsString::from("infinity")],
            &dir.join("logs/janitor.log"),
            &dir,
            1,
            &[],
        )
        .unwrap_or_else(|e| panic!("spawn the podman dir guard: {e}"));
        Podman {
            dir,
            janitor: Some(janitor),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `podman --cgroup-manager cgroupfs --events-backend file --tmpdir DIR/tmp pull EXTRA...
    /// IMAGE` (bounded by [`Podman::set_timeout`], default 120 s; `extra` e.g.
    /// `["--authfile", path]`, `["--platform", "linux/arm64"]`), then the image's `.Digest`
    /// from `podman image inspect` (the pulled manifest, or index / manifest list, digest).
    /// `Err` holds podman's stderr tail.
    pub async fn pull(&self, image: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["pull"];
        args.extend_from_slice(extra);
        args.push(image);
        self.podman(&args).await?;
        let out = self
            .podman(&["image", "inspect", "--format", "{{.Digest}}", image])
            .await?;
        Ok(out.trim().to_string())
    }

    /// Run `podman --cgroup-manager cgroupfs --events-backend file --tmpdir DIR/tmp ARGS...`
    /// with this instance's registries.conf, storage.conf and auth file (bounded like
    /// [`Podman::pull`]); `Ok(stdout)` or `Err` with the stderr tail.
    pub async fn podman(&self, args: &[&str]) -> Result<String, String> {
        let mut all: Vec<OsString> = vec![
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
            "--tmpdir".into(),
            self.dir.join("tmp").into(),
        ];
        all.extend(args.iter().map(OsString::from));
        let mut env = proxy_env();
        env.push((
            "CONTAINERS_REGISTRIES_CONF".into(),
            self.registries_conf().into(),
        ));
        env.push((
            "CONTAINERS_STORAGE_CONF".into(),
            self.dir.join("storage.conf").into(),
        ));
        env.push((
            "REGISTRY_AUTH_FILE".into(),
            self.dir.join("auth.json").into(),
        ));
        // Big-file temp dirs (`storageNNNN`, left behind when podman is killed mid-pull)
        // otherwise go to /var/tmp.
        env.push(("TMPDIR".into(), self.dir.join("tmp").into()));
        let remove = ["CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINERS_CONF"];
        let logs = self.dir.join("logs");
        run_tool(
            &logs,
            super::tools::PODMAN.path(),
            &all,
            &env,
            &remove,
            self.timeout,
        )
        .await
    }

    /// Write an auth.json with Basic credentials for `host` ("HOST:PORT"; podman 4.3 sends
    /// mirror credentials only from auth-file entries keyed by the mirror's host, not from
    /// `--creds`) and return its path, for `["--authfile", path]`.
    pub fn auth_file(&self, host: &str, user: &str, pass: &str) -> PathBuf {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let json = serde_json::json!({"auths": {host: {"auth": auth}}});
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("auth-{n}.json"));
        std::fs::write(&path, json.to_string()).expect("write auth file");
        path
    }

    /// Bound for each later [`Podman::pull`] / [`Podman::podman`] call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Path of the registries.conf in use.
    pub fn registries_conf(&self) -> PathBuf {
        self.dir.join("registries.conf")
    }

    /// The instance's dir (registries.conf, storage.conf, root/, run/, tmp/, logs/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        drop(self.janitor.take());
        remove_dir_forcefully(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// plumbing

/// `HTTPS_PROXY`/`HTTP_PROXY` at the dead port and loopback exempt (see the module docs).
fn proxy_env() -> Vec<(OsString, OsString)> {
    [
        ("HTTPS_PROXY", DEAD_PROXY),
        ("HTTP_PROXY", DEAD_PROXY),
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("https_proxy", DEAD_PROXY),
        ("http_proxy", DEAD_PROXY),
        ("no_proxy", "127.0.0.1,localhost"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}

/// A fresh dir `/tmp/<prefix>XXXXXX` (always under /tmp, whatever TMPDIR says, to keep socket
/// paths short). The caller deletes it.
fn private_dir(prefix: &str) -> Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .map(|d| d.keep())
        .map_err(|e| format!("create /tmp/{prefix}*: {e}"))
}

fn check_socket_path(path: &Path) -> Result<(), String> {
    let n = path.as_os_str().len();
    if n >= 104 {
        return Err(format!(
            "socket path too long ({n} bytes): {}",
            path.display()
        ));
    }
    Ok(())
}

/// Unmount everything mounted at or under `dir` (deepest first, lazily), make the tree
/// writable and delete it. Never panics.
fn remove_dir_forcefully(dir: &Path) {
    if !dir.exists() {
        return;
    }
    unmount_under(dir);
    let _ = Command::new(super::tools::CHMOD.path())
        .arg("-R")
        .arg("u+rwX")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("runtimes: could not remove {}: {e}", dir.display());
    }
}

/// `umount -l` every mount point at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort();
    for m in points.iter().rev() {
        let _ = Command::new(super::tools::UMOUNT.path())
            .arg("-l")
            .arg(m)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// /proc/mounts escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(o) if b[i] == b'\\' => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True while `pid` exists and is not a zombie.
fn pid_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].trim_start().chars().next(),
            Some('Z' | 'X') | None
        ),
        None => false,
    }
}

/// Run blocking process management off the async threads, re-raising its panics as they are.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("runtime task failed: {e}"),
    }
}

/// The daemon guard: [`super::process::GuardedChild`]'s technique (stdin pipe from the test
/// process; "stop" line = stop and keep the dir, EOF = the test process is gone: stop and
/// delete the dir), with a configurable SIGKILL grace, and after the program exits: unmount
/// anything left under the dir (e.g. dockerd's data-root bind mount after a SIGKILL).
const DAEMON_GUARD: &str = r#"prog=$1; out=$2; dir=$3; grace=$4; shift 4
"$prog" "$@" >>"$out" 2>&1 </dev/null &
p=$!
echo "$p"
if read _cmd; then stopped=1; else stopped=0; fi
kill -TERM "$p" 2>/dev/null
( sleep "$grace"; kill -KILL "$p" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
k=$!
wait "$p"
kill "$k" 2>/dev/null
case "$dir" in
  */airlock-*)
    awk '{print $2}' /proc/mounts | sort -r | while read -r m; do
      case "$m" in "$dir"|"$dir"/*) umount -l "$m" 2>/dev/null ;; esac
    done
    if [ "$stopped" = 0 ]; then
      chmod -R u+rwX "$dir" 2>/dev/null
      rm -rf -- "$dir" 2>/dev/null
    fi ;;
esac
exit 0
"#;

/// A daemon under [`DAEMON_GUARD`]; stdout and stderr both go to one log file. Dropping it
/// stops the daemon (bounded).
struct Daemon {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    grace: Duration,
}

impl Daemon {
    fn spawn(
        program: &str,
        args: &[OsString],
        log: &Path,
        dir: &Path,
        grace_secs: u64,
        env: &[(OsString, OsString)],
    ) -> std::io::Result<Daemon> {
        let mut cmd = Command::new(super::tools::SH.path());
        cmd.arg("-c")
            .arg(DAEMON_GUARD)
            .arg("airlock-runtime-guard")
            .arg(program)
            .arg(log)
            .arg(dir)
            .arg(grace_secs.to_string())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut guard = cmd.spawn()?;
        let stdin = guard.stdin.take();
        let stdout = guard.stdout.take().expect("guard stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid = line.trim().parse::<u32>().map_err(|_| {
            std::io::Error::other(format!("guard shell did not print a pid (got {line:?})"))
        })?;
        Ok(Daemon {
            guard,
            stdin,
            pid,
            grace: Duration::from_secs(grace_secs),
        })
    }

    fn is_running(&self) -> bool {
        pid_running(self.pid)
    }
}

impl Drop for Daemon {
    /// "stop" then EOF: the guard SIGTERMs the daemon, SIGKILLs it after the grace, waits,
    /// unmounts leftovers and exits. Bounded: after grace + 10 s both get SIGKILL.
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let deadline = Instant::now() + self.grace + Duration::from_secs(10);
        loop {
            match self.guard.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = Command::new(super::tools::KILL.path())
                        .arg("-KILL")
                        .arg(self.pid.to_string())
                        .status();
                    let _ = self.guard.kill();
                    let _ = self.guard.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The one-shot guard: runs the program with stdout/stderr to files; a watcher reading the
/// test process's pipe SIGTERMs it (SIGKILL 5 s later) when the pipe closes (timeout, or the
/// test process died). Exits with the program's status.
const RUN_GUARD: &str = r#"out=$1; err=$2; shift 2
exec 3<&0 </dev/null
"$@" >"$out" 2>"$err" 3<&- &
p=$!
( read _c <&3; kill -TERM "$p" 2>/dev/null; sleep 5; kill -KILL "$p" 2>/dev/null ) >/dev/null 2>&1 &
w=$!
exec 3<&-
wait "$p"; rc=$?
kill "$w" 2>/dev/null
exit "$rc"
"#;

/// Run `program args...` under [`RUN_GUARD`] with `env` added and `env_remove` removed, output
/// in `logs/NNNN-program.{out,err}`, killed after `timeout`. `Ok(stdout)` on exit 0, else
/// `Err("`cmdline` failed (exit N): stderr tail")`.
async fn run_tool(
    logs: &Path,
    program: &str,
    args: &[OsString],
    env: &[(OsString, OsString)],
    env_remove: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let cmdline = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = Path::new(program)
        .file_name()
        .map_or("tool".into(), |n| n.to_string_lossy());
    let out = logs.join(format!("{n:04}-{name}.out"));
    let err = logs.join(format!("{n:04}-{name}.err"));
    let mut cmd = tokio::process::Command::new(super::tools::SH.path());
    cmd.arg("-c")
        .arg(RUN_GUARD)
        .arg("airlock-run-guard")
        .arg(&out)
        .arg(&err)
        .arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for k in env_remove {
        cmd.env_remove(k);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{cmdline}`: {e}"))?;
    // Held until the command is over: closing it makes the guard kill the command.
    let mut stdin = child.stdin.take();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => return Err(format!("waiting for `{cmdline}`: {e}")),
        Err(_) => {
            drop(stdin.take());
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
            None
        }
    };
    drop(stdin);
    let stderr = read_lossy(&err);
    match status {
        Some(s) if s.success() => Ok(read_lossy(&out)),
        Some(s) => Err(format!(
            "`{cmdline}` failed ({s}) after {:.1} s; stderr:\n{}",
            started.elapsed().as_secs_f64(),
            tail_lines(&stderr, 25)
        )),
        None => Err(format!(
            "`{cmdline}` timed out after {timeout:?} and was killed; stderr so far:\n{}",
            tail_lines(&stderr, 25)
        )),
    }
}
