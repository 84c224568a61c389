//! The `airlock` command line: `serve`, `check-config`, `client-config`.

use airlock::client_config::{self, Client};
use airlock::config::Config;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A pull-through caching proxy for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c FILE`, shared by every command.
#[derive(Args)]
struct ConfigArg {
    /// Configuration file (TOML). Without it: built-in defaults and AIRLOCK_* variables.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (pull side) from the cache, fetching misses upstream.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configuration and print what it resolves to; exit non-zero if it is invalid.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve { config }
    | Command::CheckConfig { config }
    | Command::ClientConfig { config, .. }) = &cli.command;
    let source = config
        .file
        .as_ref()
        .map_or("built-in defaults".into(), |p| p.display().to_string());
    let cfg = match Config::load(config.file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock: invalid configuration ({source}): {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig { .. } => {
            check_config(&cfg, &source);
            Ok(())
        }
        Command::ClientConfig {
            client,
            url,
            airgap,
            output_dir,
            ..
        } => {
            let url = url.unwrap_or_else(|| client_config::default_url(&cfg));
            print_client_config(client, &cfg, &url, airgap, output_dir.as_deref())
        }
        Command::Serve { .. } => serve(cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
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
    println!("  data         {}", cfg.storage.path.display());
    println!("  default      {}", cfg.server.default_registry);
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

fn serve(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg.log.level);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(airlock::app::run(cfg))
        .inspect_err(|e| tracing::error!("{e:#}"))
}

fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
