//! `allocation`: the command-line entrypoint. Parses the configuration, sets
//! up logging, runs the command, and turns a failure into one clear line on
//! stderr and a non-zero exit code.

use std::process::ExitCode;

use allocation::config::{Cli, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|refused| {
        // clap exits 2 on an invalid setting, but `check` exits 2 when it
        // found differences: monitoring would read a typo as an
        // inconsistency. Every failure to start exits 1; help exits 0.
        let code = if refused.use_stderr() { 1 } else { 0 };
        let _ = refused.print();
        std::process::exit(code)
    });
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
