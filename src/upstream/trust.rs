//! Where an upstream may send airlock, decided by pure functions over URLs:
//!
//! - a redirect never goes from https to http, and never to a loopback, private, link-local or
//!   unique-local address (or `localhost`) unless the upstream itself lives at such an address;
//! - a tag list's `Link` stays on the upstream's own origin;
//! - a token realm is on the registry's own host (any port), or a host built in for it (Docker
//!   Hub's `auth.docker.io`), or one the operator names (`token_hosts`), and never plain http
//!   for an https registry.
//!
//! Host names are judged as written here; a name that resolves to an internal address is
//! caught when it is resolved, by [`super::resolve::OutsideOnly`].

use reqwest::Url;
use std::net::IpAddr;

/// Token hosts registries are known to use for their realm.
const WELL_KNOWN_REALMS: &[(&str, &str)] = &[
    ("registry-1.docker.io", "auth.docker.io"),
    ("index.docker.io", "auth.docker.io"),
    ("docker.io", "auth.docker.io"),
];

/// Whether `ip` is this machine's or a private network's: loopback, private, link-local,
/// unique-local or unspecified.
pub fn internal_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || a == 0 // "this network", 0.0.0.0/8
                || (a == 100 && (b & 0xc0) == 64) // shared address space 100.64/10 (CGNAT, cloud metadata)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = || {
                IpAddr::from([
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                ])
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link local
                // NAT64 (64:ff9b::/96) and IPv4-compatible (::a.b.c.d) addresses reach the
                // IPv4 address they embed.
                || ((seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..6] == [0; 6])
                    && internal_ip(embedded()))
        }
    }
}

/// Whether `host` names this machine or a private network.
fn is_internal(host: url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(a) => internal_ip(IpAddr::V4(a)),
        url::Host::Ipv6(a) => internal_ip(IpAddr::V6(a)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// Whether the URL's host, as written, is internal (see [`internal_ip`]; `localhost` too).
pub fn internal(url: &Url) -> bool {
    url.host().is_some_and(is_internal)
}

/// May a redirect from `from` to `to` be followed, for the upstream at `base`?
pub fn redirect(base: &Url, from: &Url, to: &Url) -> Result<(), String> {
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!("a redirect to {} (not http or https)", to.scheme()));
    }
    if from.scheme() == "https" && to.scheme() == "http" {
        return Err(format!(
            "a redirect from https to http ({})",
            to.host_str().unwrap_or("")
        ));
    }
    if internal(to) && !internal(base) {
        return Err(format!(
            "a redirect to an internal address ({})",
            to.host_str().unwrap_or("")
        ));
    }
    Ok(())
}

/// May the next page of a tag list at `next` be fetched from the upstream at `base`?
pub fn link(base: &Url, next: &Url) -> Result<(), String> {
    if next.origin() == base.origin() {
        Ok(())
    } else {
        Err(format!(
            "a tag list Link to another origin ({})",
            next.host_str().unwrap_or("")
        ))
    }
}

/// The token hosts built in for the registry at `host`.
pub fn realm_hosts_for(host: &str) -> Vec<String> {
    WELL_KNOWN_REALMS
        .iter()
        .filter(|(r, _)| r.eq_ignore_ascii_case(host))
        .map(|(_, a)| a.to_string())
        .collect()
}

/// May credentials go to `realm` for the registry at `base`? `extra` are the configured
/// `token_hosts`.
pub fn realm(base: &Url, realm: &str, extra: &[String]) -> Result<(), String> {
    let url =
        Url::parse(realm).map_err(|e| format!("the token realm {realm:?} is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let own = base.host_str().unwrap_or("").to_ascii_lowercase();
    if base.scheme() == "https" && url.scheme() != "https" {
        return Err(format!(
            "the token realm {realm} is not https, as the registry is"
        ));
    }
    let known = WELL_KNOWN_REALMS
        .iter()
        .any(|(r, a)| *r == own && *a == host);
    if host == own || known || extra.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
        Ok(())
    } else {
        Err(format!(
            "the token realm {realm} is not on the registry's host {own}: if it is genuine, add \"{host}\" to this upstream's token_hosts"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn internal_addresses_include_the_ones_hidden_in_other_forms() {
        for ip in [
            "10.1.2.3",
            "0.1.2.3",
            "100.100.100.200",
            "169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::10.0.0.1",
            "fd00::1",
        ] {
            assert!(internal_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "203.0.113.10",
            "100.128.0.1",
            "64:ff9b::cb00:710a",
            "2001:db8::1",
        ] {
            assert!(!internal_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn redirects() {
        let hub = u("https://registry-1.docker.io/v2/");
        let cases = [
            ("https://production.cloudflare.docker.com/x", true),
            ("http://production.cloudflare.docker.com/x", false),
            ("https://10.0.0.5/x", false),
            ("https://192.168.1.1/x", false),
            ("https://172.16.0.1/x", false),
            ("https://169.254.169.254/latest/meta-data", false),
            ("https://127.0.0.1:5000/x", false),
            ("https://[::1]/x", false),
            ("https://[fe80::1]/x", false),
            ("https://[fd00::1]/x", false),
            ("https://[::ffff:10.0.0.1]/x", false),
            ("https://localhost/x", false),
            ("https://0.0.0.0/x", false),
            ("ftp://example.com/x", false),
            ("https://8.8.8.8/x", true),
        ];
        for (to, ok) in cases {
            assert_eq!(redirect(&hub, &hub, &u(to)).is_ok(), ok, "{to}");
        }
        // An upstream that lives on a private network may redirect within it.
        let lab = u("http://127.0.0.1:5000/v2/");
        assert!(redirect(&lab, &lab, &u("http://127.0.0.1:6000/blob")).is_ok());
        assert!(redirect(&lab, &lab, &u("http://10.1.1.1/blob")).is_ok());
    }

    #[test]
    fn links_stay_on_the_origin() {
        let base = u("https://ghcr.io/v2/");
        assert!(link(&base, &u("https://ghcr.io/v2/a/tags/list?last=b")).is_ok());
        assert!(link(&base, &u("https://evil.example/v2/a/tags/list")).is_err());
        assert!(link(&base, &u("http://ghcr.io/v2/a/tags/list")).is_err());
        assert!(link(&base, &u("https://ghcr.io:8443/v2/")).is_err());
    }

    #[test]
    fn realms() {
        let hub = u("https://registry-1.docker.io");
        assert!(realm(&hub, "https://auth.docker.io/token", &[]).is_ok());
        assert!(
            realm(&hub, "http://auth.docker.io/token", &[]).is_err(),
            "no downgrade"
        );
        assert!(
            realm(&hub, "https://evil.example/token", &[])
                .unwrap_err()
                .contains("token_hosts")
        );
        let ghcr = u("https://ghcr.io");
        assert!(realm(&ghcr, "https://ghcr.io/token", &[]).is_ok());
        assert!(
            realm(&ghcr, "https://auth.docker.io/token", &[]).is_err(),
            "another registry's pair"
        );
        let lab = u("http://127.0.0.1:5000");
        assert!(
            realm(&lab, "http://127.0.0.1:5001/token", &[]).is_ok(),
            "same host, any port"
        );
        let ecr = u("https://r.example.internal");
        assert!(
            realm(
                &ecr,
                "https://sso.example.internal/t",
                &["sso.example.internal".into()]
            )
            .is_ok()
        );
        assert!(realm(&ecr, "not a url", &[]).is_err());
    }
}
