//! A PostgreSQL server of a test's own, which the test may stop and start
//! again (a database outage, a restart under load) or freeze and thaw (a
//! database that hangs): unlike the shared server of `DATABASE_URL`, nobody
//! else uses it.
//!
//! It runs from the machine's PostgreSQL server programs (`pg_config
//! --bindir`) in a temporary directory, listening on a free loopback port
//! and a Unix socket in that directory, with trust authentication and
//! without fsync: it lives for one test. PostgreSQL refuses to run as root,
//! so under root its programs run as the `postgres` user (`runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::process::{free_port_for_restarts, signal, try_signal};

/// A running `postgres` of the test's own, stopped (immediately) when
/// dropped, its files with it.
#[derive(Debug)]
pub struct PostgresServer {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster and starts it, or `None` with a notice when
    /// PostgreSQL's server programs are not installed (a panic under
    /// `CI=true`, as for every service a test needs).
    pub fn start() -> Option<Self> {
        let bindir = server_programs()?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        if running_as_root() {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        run(as_postgres(&bindir.join("initdb"))
            .arg("--pgdata")
            .arg(&data)
            .args(["--username=postgres", "--auth=trust", "--no-sync"]));
        let server = Self {
            bindir,
            data,
            port: free_port_for_restarts(),
            _dir: dir,
        };
        server.start_again();
        Some(server)
    }

    /// `postgres://` URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once, as a crash or `pg_ctl stop -m immediate`
    /// does: every connection is cut, nothing is shut down cleanly.
    pub fn stop(&self) {
        run(self.pg_ctl().args(["stop", "--mode=immediate", "--wait"]));
    }

    /// Starts the (stopped) server again on the same port, and waits until
    /// it takes connections.
    pub fn start_again(&self) {
        let socket_dir = self.data.parent().expect("the data directory's parent");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            socket_dir.display()
        );
        run(self
            .pg_ctl()
            .args(["start", "--wait", "--silent", "-o", &options, "--log"])
            .arg(self.data.join("server.log")));
    }

    /// Freezes every process of the server (`SIGSTOP`), as a database host
    /// that stops answering does: connections stay open, and nothing comes
    /// back on them until [`thaw`](Self::thaw). Linux only (it finds the
    /// server's processes in `/proc`).
    pub fn freeze(&self) {
        let postmaster = self.postmaster();
        // The postmaster first: stopped, it starts no new backend while its
        // children are looked up.
        signal(postmaster, "STOP");
        // A backend whose client just hung up may be gone already.
        for child in children_of(postmaster) {
            try_signal(child, "STOP");
        }
    }

    /// Lets a frozen server run on where it stopped (`SIGCONT`).
    pub fn thaw(&self) {
        let postmaster = self.postmaster();
        for child in children_of(postmaster) {
            try_signal(child, "CONT");
        }
        signal(postmaster, "CONT");
    }

    /// The server's main process, from the first line of `postmaster.pid`.
    fn postmaster(&self) -> u32 {
        let path = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("no process id in {}", path.display()))
    }

    fn pg_ctl(&self) -> Command {
        let mut command = as_postgres(&self.bindir.join("pg_ctl"));
        command.arg("--pgdata").arg(&self.data);
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Already stopped is fine; nothing else can be done about a failure.
        let _ = self
            .pg_ctl()
            .args(["stop", "--mode=immediate", "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The processes whose parent is `parent`, from `/proc/<pid>/stat`: its
/// fourth field, after the command name in parentheses (which may itself
/// hold spaces and parentheses).
fn children_of(parent: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("/proc lists the processes (Linux)");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Where `initdb`, `pg_ctl` and `postgres` are, under the CI rule.
fn server_programs() -> Option<PathBuf> {
    let bindir = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .filter(|bindir| bindir.join("pg_ctl").exists() && bindir.join("initdb").exists());
    if bindir.is_none() {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a test");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: CI=true but PostgreSQL's server programs (pg_config --bindir) are missing: \
             this test starts its own server"
        );
        crate::notice(&format!(
            "skipped {test}: PostgreSQL's server programs are not installed"
        ));
    }
    bindir
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// `program`, run as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command` to its end; panics with its output when it fails.
fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
