//! `allocation`: the command-line entrypoint. Parses the configuration, sets
//! up logging, runs the command, and turns a failure into one clear line on
//! stderr and a non-zero exit code.

use std::process::ExitCode;

use allocation::config::{Cli, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match allocation::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            allocation::maintenance::exit_code(&error)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` refines the level (default `info`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
