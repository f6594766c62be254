//! Starting and stopping the service under test: the built `allocation`
//! binary, run as `allocation serve --bind 127.0.0.1:PORT` on a free port,
//! ready once `GET /healthz` answers.
//!
//! The child's stderr (its log) is drained for the whole run, into
//! `--service-log` or nowhere: a full pipe would block the service. The
//! child is killed on drop as a last resort; [`ServiceProcess::stop`] kills
//! it and waits for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// How long the service may take to migrate its schema and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the child's log shown to explain a failed start.
const KEPT_LINES: usize = 30;

/// Bytes of the end of the child's log kept for that.
const TAIL_BYTES: usize = 8 * 1024;

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

/// The service's sources in this workspace, as they were when the harness
/// was built: what a stale binary would not contain.
const SOURCE_DIRECTORIES: [&str; 5] = [
    "domain/src",
    "service_layer/src",
    "adapters/src",
    "adapters/migrations",
    "allocation/src",
];

/// When the binary found next to the harness is older than a source file
/// of the service, the figures would describe old code: says so, and how
/// to rebuild. Silent when the sources are not there (a harness binary
/// copied elsewhere).
pub fn warn_if_stale(binary: &Path) {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let Some(crates) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        return;
    };
    let newer = SOURCE_DIRECTORIES
        .iter()
        .filter_map(|directory| newest_file(&crates.join(directory)))
        .filter(|(modified, _)| *modified > built)
        .max_by_key(|(modified, _)| *modified);
    if let Some((_, path)) = newer {
        eprintln!(
            "warning: {} is older than {}; rebuild it (cargo build --release -p allocation) \
             or the figures describe old code",
            binary.display(),
            path.display()
        );
    }
}

/// The most recently modified file under `directory`, recursively.
fn newest_file(directory: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(directory).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_file(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|modified| (modified, path))
        };
        if let Some(found) = found {
            if newest.as_ref().is_none_or(|(time, _)| found.0 > *time) {
                newest = Some(found);
            }
        }
    }
    newest
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
    /// `TOKIO_WORKER_THREADS` for the service; `None` keeps tokio's default
    /// (one per core).
    pub worker_threads: Option<u32>,
    /// `--redis-url` for the service; `None` runs it without Redis.
    pub redis_url: Option<String>,
}

/// A running service.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    pub address: SocketAddr,
    drain: Option<JoinHandle<()>>,
}

impl ServiceProcess {
    /// Starts the service on `database_url` and waits until it answers
    /// `GET /healthz`.
    ///
    /// The port is picked here (bind to port 0, read it, release it) rather
    /// than read from the service's "listening on" log line, which a
    /// `RUST_LOG` of `warn` hides. Its environment is cleared except for
    /// `PATH` and `RUST_LOG`, so that settings meant for other runs
    /// (`REDIS_URL`, `SMTP_URL`, `DATABASE_MAX_CONNECTIONS`, ...) do not
    /// change what is measured.
    pub async fn start(settings: &ServiceSettings, database_url: &str) -> anyhow::Result<Self> {
        let address = free_port().await?;
        let mut command = Command::new(&settings.binary);
        command
            .arg("serve")
            .args(["--bind", &address.to_string()])
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
        if let Some(threads) = settings.worker_threads {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        if let Some(url) = &settings.redis_url {
            command.args(["--redis-url", url]);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", settings.binary.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("the service's stderr was not captured")?;
        let log = match &settings.log_file {
            Some(path) => Some(
                tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("cannot create --service-log {}", path.display()))?,
            ),
            None => None,
        };
        let kept = Arc::new(Mutex::new(Vec::new()));
        let drain = tokio::spawn(drain(stderr, log, kept.clone()));
        let mut service = Self {
            child,
            address,
            drain: Some(drain),
        };
        match tokio::time::timeout(START_TIMEOUT, service.wait_until_ready(&kept)).await {
            Ok(Ok(())) => Ok(service),
            Ok(Err(error)) => {
                service.stop().await;
                Err(error)
            }
            Err(_) => {
                service.stop().await;
                bail!(
                    "the service did not answer GET /healthz on {address} within {}s; its log:\n{}",
                    START_TIMEOUT.as_secs(),
                    last_lines(&kept)
                );
            }
        }
    }

    /// Polls `GET /healthz` until it answers 200; fails with the last log
    /// lines when the service exits first.
    async fn wait_until_ready(&mut self, kept: &Mutex<Vec<u8>>) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("http://{}/healthz", self.address);
        loop {
            if let Some(status) = self.child.try_wait().context("cannot watch the service")? {
                // Let the drain task read the last words.
                if let Some(drain) = self.drain.take() {
                    let _ = drain.await;
                }
                bail!(
                    "the service exited before it was ready ({status}); its log:\n{}",
                    last_lines(kept)
                );
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the service (SIGKILL: its database is thrown away anyway) and
    /// waits until it is gone.
    pub async fn stop(mut self) {
        if self.is_running() {
            if let Err(error) = self.child.kill().await {
                eprintln!("warning: cannot kill the service: {error}");
            }
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A port that was free a moment ago on 127.0.0.1.
async fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot find a free port on 127.0.0.1")?;
    listener
        .local_addr()
        .context("cannot read the free port's address")
}

/// The end of the log kept so far: its last [`KEPT_LINES`] lines.
fn last_lines(tail: &Mutex<Vec<u8>>) -> String {
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(KEPT_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Copies the log to the file (or nowhere), keeping its end to explain a
/// failed start. Chunks, not lines: at the default log level the service
/// writes a line per allocation, and this runs on the harness's cores.
async fn drain(stderr: ChildStderr, mut log: Option<tokio::fs::File>, tail: Arc<Mutex<Vec<u8>>>) {
    let mut stderr = stderr;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if let Some(file) = log.as_mut() {
            let _ = file.write_all(chunk).await;
        }
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend_from_slice(chunk);
        if tail.len() > 2 * TAIL_BYTES {
            let excess = tail.len() - TAIL_BYTES;
            tail.drain(..excess);
        }
    }
    if let Some(mut file) = log {
        let _ = file.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_shows_the_last_lines_of_the_log() {
        let text: String = (1..=40).map(|n| format!("line {n}\n")).collect();
        let tail = Mutex::new(text.into_bytes());
        let shown = last_lines(&tail);
        assert!(shown.starts_with("line 11\n"));
        assert!(shown.ends_with("line 40\n"));
        assert_eq!(shown.lines().count(), KEPT_LINES);
        assert_eq!(last_lines(&Mutex::new(Vec::new())), "");
    }
}
