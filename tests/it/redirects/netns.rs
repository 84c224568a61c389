//! Redirects an upstream outside must not be able to send airlock to, proved with nothing
//! leaving the machine: a network namespace with only loopback, holding "public" addresses
//! (203.0.113.0/24, a documentation range) for the registry and a CDN, a private and a
//! link-local address, and a hosts file (`/etc/netns/<ns>/hosts`) that names them. airlock,
//! the scripted registry (tests/it/support/redirector.py) and curl all run inside it.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::process::GuardedChild;
use support::tools::{CURL, IP, PYTHON3};

const PORT: u16 = 8080;
const AIRLOCK: u16 = 5000;
const BLOB: &[u8] = b"airlock redirect test blob\n";

/// A network namespace with the test's addresses and names; removed when dropped.
struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("airlock-redir-{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = IP.command().args(args).status().unwrap().success();
            assert!(ok, "ip {args:?} (the tests run as root)");
        };
        let _ = IP.command().args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for addr in [
            "203.0.113.10/32",
            "203.0.113.11/32",
            "10.99.0.1/32",
            "169.254.9.9/32",
        ] {
            ip(&["-n", &name, "addr", "add", addr, "dev", "lo"]);
        }
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            "127.0.0.1 localhost\n203.0.113.10 registry.test\n203.0.113.11 cdn.test\n10.99.0.1 internal.test\n",
        )
        .unwrap();
        Netns { name, etc }
    }

    /// `ip netns exec <ns> PROGRAM ARGS…` as a guarded background process.
    fn spawn(&self, program: &str, args: &[&str], dir: &Path, tag: &str) -> GuardedChild {
        let mut argv = vec!["netns", "exec", &self.name, program];
        argv.extend_from_slice(args);
        GuardedChild::spawn(
            IP.path(),
            &argv,
            &dir.join(format!("{tag}.out")),
            &dir.join(format!("{tag}.err")),
            &[],
            &[],
        )
        .unwrap()
    }

    /// curl inside the namespace: (status, body).
    fn curl(&self, url: &str) -> (u16, Vec<u8>) {
        let out = IP
            .command()
            .args(["netns", "exec", &self.name, CURL.path()])
            .args(["-s", "-m", "20", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let mut body = out.stdout;
        let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&body[split..])
            .trim()
            .parse()
            .unwrap_or(0);
        body.truncate(split);
        (status, body)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = IP.command().args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_outside_cannot_redirect_airlock_inside() {
    let ns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/support/redirector.py"
    );
    let _registry = ns.spawn(
        PYTHON3.path(),
        &[script, &PORT.to_string(), log.to_str().unwrap()],
        dir.path(),
        "registry",
    );
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{AIRLOCK}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n\n[[upstream]]\nregistry = \"docker.io\"\nurl = \"http://registry.test:{PORT}\"\nfailure_threshold = 1000\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _airlock = ns.spawn(
        env!("CARGO_BIN_EXE_airlock"),
        &["serve", "-c", config.to_str().unwrap()],
        dir.path(),
        "airlock",
    );
    let base = format!("http://127.0.0.1:{AIRLOCK}");
    let mut up = false;
    for _ in 0..200 {
        if ns.curl(&format!("{base}/v2/")).0 == 200
            && ns.curl(&format!("http://registry.test:{PORT}/v2/")).0 == 200
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let airlock_log =
        || std::fs::read_to_string(dir.path().join("airlock.err")).unwrap_or_default();
    assert!(
        up,
        "airlock and the registry answer in the namespace:\n{}",
        airlock_log()
    );
    let digest = support::image::sha256_digest(BLOB);
    let get = |case: &str| ns.curl(&format!("{base}/v2/{case}/blobs/{digest}"));

    // Control: redirects to public hosts, by name and by address, are followed.
    for case in ["to-public-name", "to-public-ip"] {
        let (status, body) = get(case);
        assert_eq!(
            (status, body.as_slice()),
            (200, BLOB),
            "{case}:\n{}",
            airlock_log()
        );
    }
    // Internal targets, by address and by a name that resolves to one, are refused.
    for (case, why) in [
        ("to-private", "internal address (10.99.0.1)"),
        ("to-link-local", "internal address (169.254.9.9)"),
        ("to-loopback", "internal address (127.0.0.1)"),
        (
            "to-internal-name",
            "internal.test resolves only to internal addresses (10.99.0.1)",
        ),
    ] {
        let (status, body) = get(case);
        let body = String::from_utf8_lossy(&body);
        assert!(status >= 400, "{case}: {status}");
        assert!(
            body.contains("\"errors\"") && body.contains(why),
            "{case}: an OCI error that says why: {body}"
        );
    }
    let requests = std::fs::read_to_string(&log).unwrap();
    let cdn_hosts: Vec<String> = requests
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["path"].as_str().unwrap().starts_with("/cdn/"))
        .map(|r| r["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cdn_hosts,
        vec![format!("cdn.test:{PORT}"), format!("203.0.113.11:{PORT}")],
        "only the public CDN was asked for the blob"
    );
}
