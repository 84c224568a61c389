//! `airlock client-config`: the exact configuration each client needs to pull through this
//! airlock, for the registries it has upstreams for. Pure text generation from the config.
//!
//! * Docker: `registry-mirrors` in daemon.json (Docker mirrors Docker Hub only; other
//!   registries are pulled as `airlock:5000/ghcr.io/org/app`, routed by path prefix).
//! * containerd: one `hosts.toml` per registry plus `_default`; containerd adds `?ns=`.
//! * podman / CRI-O: a `registries.conf.d` drop-in with mirrors; the default registry bare,
//!   the others with a `/<registry>` path prefix.
//! * k3s: `registries.yaml` mirrors (its containerd adds `?ns=`).
//!
//! With `airgap`, clients never fall back to the original registry: the mirror is the only
//! endpoint (Docker cannot be told so; see its note).

use crate::config::Config;
use crate::oci::Registry;
use std::fmt::Write as _;

/// A client airlock can configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// dockerd: /etc/docker/daemon.json
    Docker,
    /// containerd: /etc/containerd/certs.d/<registry>/hosts.toml
    Containerd,
    /// podman, CRI-O, skopeo, buildah: /etc/containers/registries.conf.d/50-airlock.conf
    Podman,
    /// k3s and rke2: /etc/rancher/k3s/registries.yaml
    K3s,
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// Where it goes on a standard installation.
    pub path: String,
    /// Its path relative to the client's configuration directory (`--output-dir`).
    pub file: String,
    /// Its content.
    pub content: String,
    /// What the user must know (printed as a comment, never inside JSON).
    pub note: Option<String>,
}

/// The URL clients reach this airlock at, when none is given: the listen address (the host
/// name for 0.0.0.0), https when TLS is configured.
pub fn default_url(config: &Config) -> String {
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = config.server.listen;
    if !addr.ip().is_unspecified() {
        // SocketAddr brackets IPv6 addresses, as URLs need.
        return format!("{scheme}://{addr}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}:{}", addr.port())
}

/// The snippets for `client`, with airlock at `url` (`http(s)://host:port`).
pub fn render(
    client: Client,
    config: &Config,
    url: &str,
    airgap: bool,
) -> anyhow::Result<Vec<Snippet>> {
    let url = url.trim_end_matches('/');
    let parsed = reqwest::Url::parse(url)?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https") && parsed.path() == "/",
        "--url must look like http://host:port"
    );
    let name = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--url must name a host"))?;
    let host = match parsed.port() {
        Some(p) => format!("{name}:{p}"),
        None => name.to_string(),
    };
    let plain = parsed.scheme() == "http";
    let default: Registry = config.server.default_registry.parse()?;
    let mut registries: Vec<Registry> = config
        .upstream
        .iter()
        .filter_map(|u| u.registry.parse().ok())
        .collect();
    registries.sort_by_key(|r| (r != &default, r.to_string()));
    let ctx = Ctx {
        url,
        host: &host,
        plain,
        default: &default,
        registries: &registries,
        airgap,
        auth: config.auth.enabled(),
    };
    if client == Client::Docker && !default.is_docker_hub() {
        anyhow::bail!(
            "Docker sends only Docker Hub pulls to a mirror, as bare paths, which airlock routes to server.default_registry ({default}): set it to docker.io to serve Docker"
        );
    }
    Ok(match client {
        Client::Docker => vec![ctx.docker()],
        Client::Containerd => ctx.containerd(),
        Client::Podman => vec![ctx.podman()],
        Client::K3s => vec![ctx.k3s()],
    })
}

struct Ctx<'a> {
    url: &'a str,
    host: &'a str,
    plain: bool,
    default: &'a Registry,
    registries: &'a [Registry],
    airgap: bool,
    /// airlock asks clients for credentials.
    auth: bool,
}

/// The registry's own public endpoint, which clients fall back to.
fn origin(registry: &Registry) -> String {
    if registry.is_docker_hub() {
        "https://registry-1.docker.io".into()
    } else {
        format!("https://{registry}")
    }
}

impl Ctx<'_> {
    fn docker(&self) -> Snippet {
        let mut json = serde_json::json!({ "registry-mirrors": [self.url] });
        if self.plain {
            json["insecure-registries"] = serde_json::json!([self.host]);
        }
        let others: Vec<String> = self
            .registries
            .iter()
            .filter(|r| !r.is_docker_hub())
            .map(|r| format!("{}/{r}/<repo>:<tag>", self.host))
            .collect();
        let mut note = String::from("Docker uses registry-mirrors for Docker Hub images only.");
        if !others.is_empty() {
            let _ = write!(
                note,
                " Pull the other registries through airlock by name: {}.",
                others.join(", ")
            );
        }
        if self.airgap {
            note.push_str(" Docker falls back to Docker Hub when the mirror fails; on a cut network that fails fast.");
        }
        if self.auth {
            let _ = write!(
                note,
                " airlock asks for credentials: run `docker login {host}`, then pull by full name ({host}/docker.io/library/alpine:3.20). Docker cannot log in to a mirror (moby#30880): registry-mirrors pulls work only for repositories an [[access]] rule opens to the daemon's network anonymously.",
                host = self.host
            );
        }
        Snippet {
            path: "/etc/docker/daemon.json".into(),
            file: "daemon.json".into(),
            content: serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
            note: Some(note),
        }
    }

    fn containerd(&self) -> Vec<Snippet> {
        let host_block = format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            self.url
        );
        let tls_hint = if self.plain {
            ""
        } else {
            "  # ca = \"/etc/containerd/certs.d/airlock-ca.pem\"   # if airlock's certificate is not publicly trusted\n"
        };
        let mut out: Vec<Snippet> = self
            .registries
            .iter()
            .map(|r| {
                let server = if self.airgap {
                    self.url.to_string()
                } else {
                    origin(r)
                };
                Snippet {
                    path: format!("/etc/containerd/certs.d/{r}/hosts.toml"),
                    file: format!("{r}/hosts.toml"),
                    content: format!(
                        "# {r} through airlock\nserver = \"{server}\"\n\n{host_block}{tls_hint}"
                    ),
                    note: None,
                }
            })
            .collect();
        // Without a server line containerd falls back to the registry itself: not when airgapped.
        let server = if self.airgap {
            format!("server = \"{}\"\n\n", self.url)
        } else {
            String::new()
        };
        out.push(Snippet {
            path: "/etc/containerd/certs.d/_default/hosts.toml".into(),
            file: "_default/hosts.toml".into(),
            content: format!("# every other registry: airlock answers for those it has an upstream for\n{server}{host_block}{tls_hint}"),
            note: Some(self.containerd_note()),
        });
        out
    }

    fn containerd_note(&self) -> String {
        let mut note = String::from(
            "containerd reads these when its registry config_path is set: config_path = \"/etc/containerd/certs.d\" under [plugins.\"io.containerd.grpc.v1.cri\".registry]; ctr takes --hosts-dir /etc/containerd/certs.d",
        );
        if self.auth {
            let _ = write!(
                note,
                ". airlock asks for credentials: `ctr image pull --user USER:PASSWORD --hosts-dir /etc/containerd/certs.d IMAGE`; for the CRI plugin, username and password under [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{}\".auth]",
                self.host
            );
        }
        note
    }

    /// Where podman finds `registry` on airlock: bare for the default registry, else prefixed.
    fn podman_location(&self, registry: &Registry) -> String {
        if registry == self.default {
            self.host.to_string()
        } else {
            format!("{}/{registry}", self.host)
        }
    }

    fn podman(&self) -> Snippet {
        let mut s = format!("unqualified-search-registries = [\"{}\"]\n", self.default);
        for r in self.registries {
            let mirror = self.podman_location(r);
            if self.airgap {
                let _ = write!(
                    s,
                    "\n[[registry]]\nprefix = \"{r}\"\nlocation = \"{mirror}\"\ninsecure = {}\n",
                    self.plain
                );
            } else {
                let _ = write!(
                    s,
                    "\n[[registry]]\nprefix = \"{r}\"\nlocation = \"{r}\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = {}\n",
                    self.plain
                );
            }
        }
        let mut notes = Vec::new();
        if !self.plain {
            notes.push(format!("if airlock's certificate is not publicly trusted, put its CA in /etc/containers/certs.d/{}/ca.crt", self.host));
        }
        if self.auth {
            notes.push(format!(
                "airlock asks for credentials: `podman login {host}` (an auth.json entry for \"{host}\"); podman sends a mirror the credentials stored for the mirror, never those of the original registry; skopeo takes --src-creds USER:PASSWORD",
                host = self.host
            ));
        }
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        Snippet {
            path: "/etc/containers/registries.conf.d/50-airlock.conf".into(),
            file: "50-airlock.conf".into(),
            content: s,
            note,
        }
    }

    fn k3s(&self) -> Snippet {
        let mut s = String::from("mirrors:\n");
        for r in self.registries {
            let _ = write!(s, "  \"{r}\":\n    endpoint:\n      - \"{}\"\n", self.url);
        }
        if !self.plain || self.auth {
            let _ = writeln!(s, "configs:\n  \"{}\":", self.host);
        }
        if self.auth {
            s.push_str("    auth:\n      username: \"USER\"        # airlock asks for credentials\n      password: \"PASSWORD\"\n");
        }
        if !self.plain {
            s.push_str("    tls:\n      # ca_file: /etc/rancher/k3s/airlock-ca.pem   # if airlock's certificate is not publicly trusted\n");
        }
        let note = self.airgap.then(|| "k3s falls back to each registry's own endpoint unless started with --disable-default-registry-endpoint".to_string());
        Snippet {
            path: "/etc/rancher/k3s/registries.yaml".into(),
            file: "registries.yaml".into(),
            content: s,
            note,
        }
    }
}

#[cfg(test)]
mod tests;
