//! Starting and stopping the service under test: the built `allocation`
//! binary, run as `allocation serve --bind 127.0.0.1:0`, whose address is
//! read from its "listening on http://ADDR" log line.
//!
//! The child's stderr (its log) is drained for the whole run, into
//! `--service-log` or nowhere: a full pipe would block the service. The
//! child is killed on drop as a last resort; [`ServiceProcess::stop`] kills
//! it and waits for it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// How long the service may take to migrate its schema and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the child's log kept to explain a failed start.
const KEPT_LINES: usize = 30;

/// The file name of the service binary on this platform.
fn binary_name() -> String {
    format!("allocation{}", std::env::consts::EXE_SUFFIX)
}

/// `--binary`, or `allocation` next to this executable (both are built into
/// the same `target/<profile>/` directory). A clear error says how to build
/// it when it is missing.
pub fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--binary {}: no such file", path.display());
    }
    let here = std::env::current_exe().context("cannot locate the harness executable")?;
    let directory = here
        .parent()
        .context("the harness executable has no parent directory")?;
    let candidate = directory.join(binary_name());
    if candidate.is_file() {
        return Ok(candidate);
    }
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    bail!(
        "the service binary was not found at {}.\n\
         Build it first:   cargo build{profile} -p allocation\n\
         or pass --binary PATH, or --url http://127.0.0.1:PORT for a server that is already running",
        candidate.display()
    )
}

/// How to start the service.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub binary: PathBuf,
    pub max_connections: u32,
    /// `RUST_LOG` for the service.
    pub log_level: String,
    /// Where its log goes; `None` discards it.
    pub log_file: Option<PathBuf>,
}

/// A running service.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    pub address: SocketAddr,
    drain: Option<JoinHandle<()>>,
}

impl ServiceProcess {
    /// Starts the service on `database_url` and waits until it listens.
    ///
    /// Its environment is cleared except for `PATH` and `RUST_LOG`, so that
    /// settings meant for other runs (`REDIS_URL`, `SMTP_URL`,
    /// `DATABASE_MAX_CONNECTIONS`, ...) do not change what is measured.
    pub async fn start(settings: &ServiceSettings, database_url: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(&settings.binary);
        command
            .arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(["--database-url", database_url])
            .args([
                "--database-max-connections",
                &settings.max_connections.to_string(),
            ])
            .env_clear()
            .env("RUST_LOG", &settings.log_level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", settings.binary.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("the service's stderr was not captured")?;
        let mut lines = BufReader::new(stderr);
        let mut log = match &settings.log_file {
            Some(path) => Some(
                tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("cannot create --service-log {}", path.display()))?,
            ),
            None => None,
        };
        let waited = tokio::time::timeout(
            START_TIMEOUT,
            wait_for_address(&mut lines, &mut child, log.as_mut()),
        )
        .await;
        let address = match waited {
            Ok(Ok(address)) => address,
            Ok(Err(error)) => {
                let _ = child.kill().await;
                return Err(error);
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "the service did not report its address within {}s",
                    START_TIMEOUT.as_secs()
                );
            }
        };
        let drain = tokio::spawn(drain(lines, log));
        Ok(Self {
            child,
            address,
            drain: Some(drain),
        })
    }

    /// Kills the service (SIGKILL: its database is thrown away anyway) and
    /// waits until it is gone.
    pub async fn stop(mut self) {
        if let Err(error) = self.child.kill().await {
            eprintln!("warning: cannot kill the service: {error}");
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Reads the log until "listening on http://ADDR"; fails with the last log
/// lines when the service exits first.
async fn wait_for_address(
    lines: &mut BufReader<ChildStderr>,
    child: &mut Child,
    mut log: Option<&mut tokio::fs::File>,
) -> anyhow::Result<SocketAddr> {
    let mut kept = VecDeque::with_capacity(KEPT_LINES);
    let mut line = String::new();
    loop {
        line.clear();
        let read = lines
            .read_line(&mut line)
            .await
            .context("cannot read the service's log")?;
        if read == 0 {
            let status = child
                .wait()
                .await
                .map(|status| status.to_string())
                .unwrap_or_else(|error| error.to_string());
            let log: Vec<_> = kept.into_iter().collect();
            bail!(
                "the service exited before listening ({status}); its log:\n{}",
                log.join("")
            );
        }
        if let Some(file) = log.as_deref_mut() {
            let _ = file.write_all(line.as_bytes()).await;
        }
        if let Some(address) = listening_address(&line) {
            return Ok(address);
        }
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line.clone());
    }
}

/// Copies the rest of the log to the file, or discards it.
async fn drain(mut lines: BufReader<ChildStderr>, log: Option<tokio::fs::File>) {
    match log {
        Some(mut file) => {
            let _ = tokio::io::copy_buf(&mut lines, &mut file).await;
            let _ = file.flush().await;
        }
        None => {
            let _ = tokio::io::copy_buf(&mut lines, &mut tokio::io::sink()).await;
        }
    }
}

/// The address in a "listening on http://ADDR ..." log line, if it is one.
/// Tolerates colour escape codes around it.
fn listening_address(line: &str) -> Option<SocketAddr> {
    const MARKER: &str = "listening on http://";
    let start = line.find(MARKER)? + MARKER.len();
    let address: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    address.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_log_line() {
        let text = "2025-01-01T00:00:00Z  INFO allocation: listening on http://127.0.0.1:43123 database=postgres://x\n";
        assert_eq!(
            listening_address(text),
            Some("127.0.0.1:43123".parse().expect("valid"))
        );
        let coloured =
            "\x1b[32m INFO\x1b[0m listening on http://[::1]:5005\x1b[0m \x1b[3mdatabase\x1b[0m";
        assert_eq!(
            listening_address(coloured),
            Some("[::1]:5005".parse().expect("valid"))
        );
        assert_eq!(listening_address("INFO database ready"), None);
    }
}
