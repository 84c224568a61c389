//! The `airlock` binary: parse the command line, run it (see `airlock::cli`), exit 0 when
//! everything succeeded, 1 when something failed, 2 when the configuration is invalid.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    match airlock::cli::run(airlock::cli::Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            if e.to_string().starts_with("invalid configuration") {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
