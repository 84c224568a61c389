//! Integration-test fixtures for airlock: real upstream registries and the tools around them.
//!
//! The test modules of `tests/it` use it as `crate::support`. Everything binds or talks to
//! 127.0.0.1 only, every loop is bounded, and every process or server started here is gone
//! when the test process exits (even on panic or SIGKILL), so a fixture may live in a
//! `static OnceLock`/`tokio::sync::OnceCell` shared by the tests of a module.
//!
//! - [`registry`]: a real CNCF distribution (`docker-registry serve`) per fixture, plain,
//!   token-auth or htpasswd-auth, with its access log ([`accesslog`]) for counting fetches.
//! - [`image`]: deterministic synthetic images (real tar.gz layers), OCI and Docker formats,
//!   single-arch and multi-platform; [`layer`] makes their tar.gz layers.
//! - [`push`]: pushes images through the real registry push API.
//! - [`token`]: a Bearer token issuer like auth.docker.io, for `auth: token` registries.
//! - [`faulty`]: a scripted fake upstream for faults a real registry will not produce.
//! - [`skopeo`]: runs `skopeo copy` and reads the resulting `dir:` back.
//! - [`airlock`] and [`daemon`]: airlock under test, in this process or as the binary, each
//!   with `pull`/`try_pull` (skopeo through it).
//! - [`runtimes`]: private dockerd, containerd and podman instances.
//! - [`tools`]: every external program, by absolute path.
//! - [`process`] and [`server`]: the plumbing (child processes that die with the test
//!   process; hyper servers on their own threads).
#![allow(dead_code)]

pub mod accesslog;
pub mod airlock;
pub mod artifact;
pub mod certs;
pub mod cosign;
pub mod daemon;
pub mod faulty;
pub mod image;
pub mod layer;
pub mod process;
pub mod push;
pub mod registry;
pub mod runtimes;
pub mod server;
pub mod skopeo;
pub mod tmpfs;
pub mod token;
pub mod tools;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it).
/// Whoever binds it next may still lose a race, so callers retry on "address in use".
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    l.local_addr().expect("local_addr of the port probe").port()
}

/// True if something accepts TCP connections on `127.0.0.1:port` (connect timeout 1 s).
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// True if `GET /v2/` on `127.0.0.1:port` gets any HTTP response (blocking, a few seconds at
/// most). Works for any server, e.g. an airlock binary a test started.
pub fn http_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/"
}

/// Poll [`http_answers`] every 25 ms until it is true or `timeout` passes; returns whether
/// the server answered (blocking).
pub fn wait_http_ready(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if http_answers(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A snippet printed by `airlock client-config`, without its `# /path` header line.
pub fn snippet_body(printed: &str) -> String {
    printed
        .lines()
        .skip_while(|l| l.starts_with("# /"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
