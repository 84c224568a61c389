//! How CLI commands find a running server on the same data directory: at start the server
//! writes `<data>/admin.json` (its admin URL and pid) and `<data>/admin.token` (mode 0600: only
//! its user may drive `/admin/`), and removes them when it stops.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `<data>/admin.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Advert {
    /// The admin API, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's process id.
    pub pid: u32,
    /// The token (read from `admin.token`, not stored in the JSON).
    #[serde(skip)]
    pub token: String,
}

/// The files of a running server; removed when dropped (if still ours).
pub struct Written {
    json: PathBuf,
    token: PathBuf,
}

impl Drop for Written {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.json)
            .ok()
            .and_then(|s| serde_json::from_str::<Advert>(&s).ok())
            .is_some_and(|a| a.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.json);
            let _ = std::fs::remove_file(&self.token);
        }
    }
}

/// A fresh random token (32 bytes from the kernel, hex).
pub fn token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Write the advert for an admin API at `addr`.
pub fn write(data: &Path, addr: SocketAddr, token: &str) -> anyhow::Result<Written> {
    let json = data.join("admin.json");
    let token_path = data.join("admin.token");
    let _ = std::fs::remove_file(&token_path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_path)?;
    f.write_all(token.as_bytes())?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let advert = Advert {
        url: format!("http://{}", SocketAddr::new(host.parse()?, addr.port())),
        pid: std::process::id(),
        token: String::new(),
    };
    let tmp = data.join("admin.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&advert)?)?;
    std::fs::rename(&tmp, &json)?;
    Ok(Written {
        json,
        token: token_path,
    })
}

/// The advert of a server on `data`, if one is written and its process lives.
pub fn read_advert(data: &Path) -> Option<Advert> {
    let mut advert: Advert =
        serde_json::from_slice(&std::fs::read(data.join("admin.json")).ok()?).ok()?;
    if !Path::new(&format!("/proc/{}", advert.pid)).exists() {
        return None;
    }
    advert.token = std::fs::read_to_string(data.join("admin.token"))
        .ok()?
        .trim()
        .to_string();
    Some(advert)
}
