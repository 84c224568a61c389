//! The `airlock` command line: `serve` and `check-config`.

use airlock::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A pull-through caching proxy for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (pull side) from the cache, fetching misses upstream.
    Serve {
        /// Configuration file (TOML). Without it: built-in defaults and AIRLOCK_* variables.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a configuration and print what it resolves to; exit non-zero if it is invalid.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Serve { config } | Command::CheckConfig { config }) = &cli.command;
    let source = config
        .as_ref()
        .map_or("built-in defaults".into(), |p| p.display().to_string());
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock: invalid configuration ({source}): {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => {
            println!("configuration OK ({source})");
            println!("  listen       {}", cfg.server.listen);
            println!("  data         {}", cfg.storage.path.display());
            println!("  default      {}", cfg.server.default_registry);
            for u in &cfg.upstream {
                let auth = if u.username.is_some() {
                    "with credentials"
                } else {
                    "anonymous"
                };
                println!(
                    "  upstream     {} -> {} ({auth}, tag_ttl {:?})",
                    u.registry,
                    u.effective_url(),
                    u.tag_ttl
                );
            }
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => {
            init_logging(&cfg.log.level);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("airlock: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(airlock::app::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("airlock: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
