//! The airlock binary as an operator runs it: `airlock serve -c FILE` on free ports, its log
//! in a file the test can read, dying with the test process; and other commands (`preload`,
//! `export`, `cache ls`, …) run against the same configuration, as a separate process.

use super::process::GuardedChild;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_airlock");

/// A running `airlock serve`.
pub struct Daemon {
    child: Option<GuardedChild>,
    /// Registry API port.
    pub port: u16,
    /// Holds the config, data and log.
    pub dir: TempDir,
    /// The configuration file.
    pub config: PathBuf,
    log: PathBuf,
    /// Variables added to the server's environment (kept across restarts).
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Write a config (`[server]` listen, `[admin]` listen, `[storage]` path, then `extra`,
    /// which holds the `[[upstream]]` sections and anything else) and start `airlock serve`
    /// with `args`; returns once the registry API answers.
    pub async fn start(extra: &str, args: &[&str]) -> Daemon {
        Daemon::start_with_top("", extra, args).await
    }

    /// As [`Daemon::start`], with top-level keys (`upstream = []`) written before any section.
    pub async fn start_with_top(top: &str, extra: &str, args: &[&str]) -> Daemon {
        Daemon::start_full(top, extra, args, &[]).await
    }

    /// As [`Daemon::start`], with `env` added to the server's environment only.
    pub async fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full("", extra, &[], env).await
    }

    /// As [`Daemon::start`], with the data directory at `data` (a filesystem the test made)
    /// and `storage` (more `[storage]` keys) written after its path.
    pub async fn start_on(data: &std::path::Path, storage: &str, extra: &str) -> Daemon {
        let dir = Daemon::tempdir();
        let config = dir.path().join("airlock.toml");
        Daemon::write_config(&config, data, storage, "", extra);
        Daemon::serve(dir, config, &[], Vec::new()).await
    }

    fn tempdir() -> TempDir {
        tempfile::Builder::new()
            .prefix("airlock-daemon-")
            .tempdir()
            .expect("tempdir")
    }

    async fn start_full(top: &str, extra: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = Daemon::tempdir();
        let config = dir.path().join("airlock.toml");
        Daemon::write_config(&config, &dir.path().join("data"), "", top, extra);
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Daemon::serve(dir, config, args, env).await
    }

    fn write_config(
        config: &PathBuf,
        data: &std::path::Path,
        storage: &str,
        top: &str,
        extra: &str,
    ) -> u16 {
        let port = super::free_port();
        let text = format!(
            "{top}\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[storage]\npath = \"{}\"\n{storage}\n\n{extra}",
            data.display()
        );
        std::fs::write(config, text).expect("write config");
        port
    }

    async fn serve(
        dir: TempDir,
        config: PathBuf,
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> Daemon {
        let log = dir.path().join("airlock.log");
        let mut argv: Vec<String> = vec!["serve".into(), "-c".into(), config.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // The port was free when chosen; another process may take it before airlock binds it.
        // Then airlock exits saying so, and whatever holds the port would answer in its place:
        // wait for airlock's own "serving" line, and choose another port if it lost the race.
        let (mut child, mut port) = (None, 0);
        for _ in 0..5 {
            let text = std::fs::read_to_string(&config).expect("config");
            port = listen_port(&text);
            let c = GuardedChild::spawn(BIN, &argv, &dir.path().join("stdout"), &log, &[], &vars)
                .expect("spawn airlock serve");
            let serving = format!("addr=127.0.0.1:{port}");
            for _ in 0..400 {
                let l = std::fs::read_to_string(&log).unwrap_or_default();
                if l.contains(&serving) || !c.is_running() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let lost = !c.is_running()
                && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("cannot listen"));
            if !lost {
                child = Some(c);
                break;
            }
            let fresh = super::free_port();
            let text = text.replace(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"127.0.0.1:{fresh}\""),
            );
            std::fs::write(&config, text).expect("rewrite config");
        }
        let child = child.expect("airlock serve found a free port within 5 tries");
        let ready = tokio::task::spawn_blocking(move || {
            super::wait_http_ready(port, Duration::from_secs(20))
        })
        .await
        .expect("join");
        let d = Daemon {
            child: Some(child),
            port,
            dir,
            config,
            log,
            env,
        };
        assert!(ready, "airlock serve answers on {port}; log:\n{}", d.log());
        d
    }

    /// Stop (SIGTERM, graceful) and start again with `args` on the same config and data.
    pub async fn restart(mut self, args: &[&str]) -> Daemon {
        self.stop().await;
        let (dir, config) = (
            std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")),
            self.config.clone(),
        );
        let env = std::mem::take(&mut self.env);
        Daemon::serve(dir, config, args, env).await
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// [`super::skopeo::pull`] through this server: must bring exactly `want`.
    pub async fn pull(&self, reference: &str, want: &dyn super::image::Artifact) {
        super::skopeo::pull(&self.host(), reference, want).await;
    }

    /// The admin API's URL, from the `admin.json` the server writes in its data directory.
    pub fn admin_url(&self) -> String {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let data = text
            .split("[storage]\npath = \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the config names the data directory");
        let advert = std::fs::read_to_string(std::path::Path::new(data).join("admin.json"))
            .expect("a running server writes admin.json");
        let advert: serde_json::Value = serde_json::from_str(&advert).expect("admin.json");
        advert["url"].as_str().expect("admin url").to_string()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll (bounded: `tries` × 100 ms) until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, tries: usize) -> bool {
        for _ in 0..tries {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.log().contains(needle)
    }

    /// Run `airlock ARGS -c CONFIG` (another process, as an operator would) and wait.
    pub async fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config, args).await
    }

    /// SIGTERM, and wait for the graceful exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.pid().to_string();
            let _ = crate::support::tools::KILL
                .command()
                .args(["-TERM", &pid])
                .status();
            for _ in 0..300 {
                if !child.is_running() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            child.stop();
        }
    }
}

/// The registry API port of a config written by [`Daemon`].
fn listen_port(text: &str) -> u16 {
    text.split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Run `airlock ARGS -c CONFIG` without a server (the command starts an embedded engine).
pub async fn run_cli(config: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).arg("-c").arg(config).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the command ends within 300 s")
        .expect("airlock runs")
}

/// Stdout and stderr of an output, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
