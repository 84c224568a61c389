//! The `airlock` command line: what each command takes, and running it. `serve` runs the
//! server; `check-config` and `client-config` read the configuration; the cache commands talk
//! to the admin API of the server on the data directory, or of an embedded engine.

mod ops;
mod render;
mod session;

use crate::bundle::Selection;
use crate::client_config::{self, Client};
use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use session::Session;
use std::path::{Path, PathBuf};

/// A pull-through caching proxy for container registries.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Configuration file (TOML). Without it: built-in defaults and AIRLOCK_* variables.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (pull side) from the cache, fetching misses upstream.
    Serve {
        /// Never contact an upstream (as `server.offline = true`).
        #[arg(long)]
        offline: bool,
    },
    /// Check a configuration and print what it resolves to; exit non-zero if it is invalid.
    CheckConfig,
    /// Ask the admin listener of a running airlock whether it is alive (exit 0 or 1): the
    /// container health check.
    Health {
        /// The health URL (default: /healthz on admin.listen, 0.0.0.0 read as 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the configuration a client needs to pull through this airlock.
    ClientConfig {
        /// The client to configure.
        #[arg(value_enum)]
        client: Client,
        /// The URL clients reach airlock at (default: from server.listen, https with TLS).
        #[arg(long)]
        url: Option<String>,
        /// Never fall back to the original registries: airlock is the only way out.
        #[arg(long)]
        airgap: bool,
        /// Write the files under this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Bring images into the cache and pin them, then report whether each would pull offline.
    Preload {
        /// Image references, or files listing them one per line (`#` comments).
        #[arg(required = true, value_name = "LIST|IMAGE")]
        images: Vec<String>,
        /// Platforms to keep of multi-platform images (default: all).
        #[arg(long, value_name = "OS/ARCH[/VARIANT],…")]
        platform: Option<String>,
        /// Leave out each image's signatures, attestations and SBOMs (its referrers and
        /// cosign's sha256-<hex>.sig/.att/.sbom tags), which are brought by default.
        #[arg(long)]
        no_signatures: bool,
    },
    /// Write cached images to an OCI image layout archive, to carry across a gap.
    Export {
        /// Image references.
        images: Vec<String>,
        /// Every tagged image in the cache.
        #[arg(long)]
        all: bool,
        /// Every pinned image.
        #[arg(long)]
        pinned: bool,
        /// The archive to write.
        #[arg(short, long, value_name = "BUNDLE.tar")]
        output: PathBuf,
        /// Leave out the blobs a previous bundle already carried.
        #[arg(long, value_name = "PREVIOUS.tar")]
        since: Option<PathBuf>,
    },
    /// Read an archive written by `export` into the cache (verified first, pinned).
    Import {
        /// The archive.
        bundle: PathBuf,
    },
    /// Check images against the [[signatures]] policy without serving them: which rule
    /// covers each, and whether a trusted key signed it (exit 1 when one is not verified).
    VerifySignatures {
        /// Image references (default: every tagged image in the cache).
        images: Vec<String>,
    },
    /// Look after the cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cached images: platforms, size, last pull, pins.
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image and every blob no other image uses.
    Rm(Image),
    /// Protect an image from eviction.
    Pin(Image),
    /// Let eviction remove an image again.
    Unpin(Image),
    /// Re-hash every blob; quarantine corrupt ones (exit 1 when any was found).
    Verify,
    /// Remove every blob no tagged or pinned image uses.
    Gc,
    /// Rebuild the index from the journal beside the blobs (the server must be stopped).
    Reindex,
}

#[derive(Args)]
struct Image {
    /// Image reference (`nginx:1.25`, `ghcr.io/org/app@sha256:…`).
    image: String,
}

/// Load the configuration, then run the command. `Ok(false)` means it ran but something
/// failed (exit 1); `Err` means it could not run.
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    let source = cli
        .config
        .as_ref()
        .map_or("built-in defaults".into(), |p| p.display().to_string());
    let mut config = Config::load(cli.config.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration ({source}): {e}"))?;
    crate::app::security::check(&config)
        .map_err(|e| anyhow::anyhow!("invalid configuration ({source}): {e}"))?;
    match cli.command {
        Command::CheckConfig => {
            check_config(&config, &source);
            Ok(true)
        }
        Command::Health { url } => health(&config, url),
        Command::ClientConfig {
            client,
            url,
            airgap,
            output_dir,
        } => {
            let url = url.unwrap_or_else(|| client_config::default_url(&config));
            print_client_config(client, &config, &url, airgap, output_dir.as_deref())?;
            Ok(true)
        }
        Command::Cache(CacheCommand::Reindex) => {
            let data = &config.storage.path;
            let done = crate::store::index::SledIndex::reindex(data)?;
            println!(
                "rebuilt the index of {} from its journal: {} records ({} damaged and skipped), {} tags, {} repository links, {} pins",
                data.display(),
                done.records,
                done.damaged,
                done.tags,
                done.links,
                done.pins
            );
            Ok(true)
        }
        Command::Serve { offline } => {
            config.server.offline |= offline;
            // Flushed when dropped: after the server has stopped.
            let _log = crate::logging::init_server(&config.log.level)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::app::run(config))
                .inspect_err(|e| tracing::error!("{e:#}"))?;
            Ok(true)
        }
        command => {
            crate::logging::init(&format!(
                "warn,airlock={}",
                if std::env::var_os("AIRLOCK_DEBUG").is_some() {
                    "debug"
                } else {
                    "warn"
                }
            ));
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let session = Session::open(config).await?;
                // Ctrl-C: stop here, but shut an embedded engine down properly (the index is
                // flushed). Work a running server took on goes on there.
                let result = tokio::select! {
                    r = cache_command(&session, command) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                };
                session.close().await;
                result
            })
        }
    }
}

async fn cache_command(session: &Session, command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Preload {
            images,
            platform,
            no_signatures,
        } => ops::preload(session, ops::references(&images)?, platform, !no_signatures).await,
        Command::VerifySignatures { images } => ops::verify_signatures(session, images).await,
        Command::Export {
            images,
            all,
            pinned,
            output,
            since,
        } => {
            if images.is_empty() && !all && !pinned {
                anyhow::bail!("name images to export, or --all, or --pinned");
            }
            ops::export(
                session,
                Selection {
                    images,
                    all,
                    pinned,
                },
                since.as_deref(),
                &output,
            )
            .await
        }
        Command::Import { bundle } => ops::import(session, &bundle).await,
        Command::Cache(CacheCommand::Ls { json }) => ops::list(session, json).await,
        Command::Cache(CacheCommand::Rm(i)) => ops::remove(session, Some(&i.image)).await,
        Command::Cache(CacheCommand::Pin(i)) => ops::pin(session, &i.image, true).await,
        Command::Cache(CacheCommand::Unpin(i)) => ops::pin(session, &i.image, false).await,
        Command::Cache(CacheCommand::Verify) => ops::verify(session).await,
        Command::Cache(CacheCommand::Gc) => ops::remove(session, None).await,
        Command::Serve { .. }
        | Command::Cache(CacheCommand::Reindex)
        | Command::CheckConfig
        | Command::Health { .. }
        | Command::ClientConfig { .. } => {
            unreachable!("handled by run")
        }
    }
}

/// `airlock health`: GET /healthz on the admin listener; `Ok(false)` when it does not answer 200.
fn health(config: &Config, url: Option<String>) -> anyhow::Result<bool> {
    let url = url.unwrap_or_else(|| {
        let a = config.admin.listen;
        let ip = if a.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            a.ip()
        };
        format!("http://{}/healthz", std::net::SocketAddr::new(ip, a.port()))
    });
    let rt = tokio::runtime::Runtime::new()?;
    let answer = rt.block_on(async {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?
            .get(&url)
            .send()
            .await
    });
    match answer {
        Ok(r) if r.status().is_success() => Ok(true),
        Ok(r) => {
            eprintln!("airlock: {url} answered {}", r.status());
            Ok(false)
        }
        Err(e) => {
            eprintln!("airlock: {url}: {e}");
            Ok(false)
        }
    }
}

fn check_config(cfg: &Config, source: &str) {
    println!("configuration OK ({source})");
    println!(
        "  listen       {}{}",
        cfg.server.listen,
        if cfg.server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        }
    );
    println!("  admin        {}", cfg.admin.listen);
    println!("  data         {}", cfg.storage.path.display());
    if let Some(m) = cfg.storage.max_size {
        println!("  max_size     {m}");
    }
    println!(
        "  default      {}{}",
        cfg.server.default_registry,
        if cfg.server.offline { " (offline)" } else { "" }
    );
    for u in &cfg.upstream {
        let auth = if u.username.is_some() {
            "with a password".to_string()
        } else if let Some(h) = &u.credential_helper {
            format!("credential helper {h}")
        } else {
            "anonymous or from Docker's config".to_string()
        };
        let aliases = if u.aliases.is_empty() {
            String::new()
        } else {
            format!(", aliases {}", u.aliases.join(","))
        };
        println!(
            "  upstream     {} -> {} ({auth}, tag_ttl {:?}{aliases})",
            u.registry,
            u.effective_url(),
            u.tag_ttl
        );
    }
    if let Some(p) = cfg.credentials.docker_config_path() {
        println!("  credentials  Docker config {}", p.display());
    }
}

fn print_client_config(
    client: Client,
    cfg: &Config,
    url: &str,
    airgap: bool,
    dir: Option<&Path>,
) -> anyhow::Result<()> {
    for s in client_config::render(client, cfg, url, airgap)? {
        if let Some(note) = &s.note {
            eprintln!("# note: {note}");
        }
        match dir {
            Some(dir) => {
                let path = dir.join(&s.file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, &s.content)?;
                println!("wrote {}", path.display());
            }
            None => println!("# {}\n{}", s.path, s.content),
        }
    }
    Ok(())
}
