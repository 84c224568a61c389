//! [`OutsideOnly`]: name resolution for an upstream that lives outside, which never connects a
//! redirect (a CDN host, a `Link`) to a name that resolves to an internal address (loopback,
//! private, link-local): a hostile or compromised registry cannot make airlock fetch from the
//! site's own network. Checked as the connection is made, so a name that changes its answer
//! between a check and the connection (DNS rebinding) gains nothing.
//!
//! Token hosts are exempt. If every address of the upstream's own name is internal, the
//! upstream lives inside, and nothing is filtered: a registry on the site's network may well
//! redirect to storage on it. Otherwise internal addresses are dropped from its own name too.

use super::trust::internal_ip;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const INSIDE: u8 = 1;
const OUTSIDE: u8 = 2;

/// The resolver of one upstream's client.
#[derive(Debug)]
pub struct OutsideOnly {
    own: String,
    exempt: Vec<String>,
    /// Whether the upstream's own name resolved to an internal address.
    lives: Arc<AtomicU8>,
}

impl OutsideOnly {
    /// For the upstream at host `own`, with `exempt` hosts (token hosts) resolved as they are.
    pub fn new(own: &str, exempt: &[String]) -> OutsideOnly {
        OutsideOnly {
            own: own.to_ascii_lowercase(),
            exempt: exempt.iter().map(|h| h.to_ascii_lowercase()).collect(),
            lives: Arc::new(AtomicU8::new(UNKNOWN)),
        }
    }
}

async fn lookup(host: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host, 0)).await?.collect())
}

impl Resolve for OutsideOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let (own, exempt, lives) = (
            self.own.clone(),
            self.exempt.contains(&host),
            self.lives.clone(),
        );
        Box::pin(async move {
            let addrs = lookup(&host).await?;
            // Inside only when every address of its own name is: a public registry that also
            // publishes one internal address does not switch the guard off.
            let all_inside =
                |a: &[SocketAddr]| !a.is_empty() && a.iter().all(|a| internal_ip(a.ip()));
            if host == own {
                let inside = all_inside(&addrs);
                lives.store(if inside { INSIDE } else { OUTSIDE }, Ordering::Relaxed);
                if inside {
                    return Ok(Box::new(addrs.into_iter()) as Addrs);
                }
            } else if exempt {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            } else {
                if lives.load(Ordering::Relaxed) == UNKNOWN {
                    let inside = lookup(&own).await.map(|a| all_inside(&a)).unwrap_or(false);
                    lives.store(if inside { INSIDE } else { OUTSIDE }, Ordering::Relaxed);
                }
                if lives.load(Ordering::Relaxed) == INSIDE {
                    return Ok(Box::new(addrs.into_iter()) as Addrs);
                }
            }
            let outside: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !internal_ip(a.ip()))
                .collect();
            if outside.is_empty() && !addrs.is_empty() {
                return Err(format!(
                    "{host} resolves only to internal addresses ({}), and the upstream {own} does not live on an internal network: refused",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            }
            Ok(Box::new(outside.into_iter()) as Addrs)
        })
    }
}
