//! Child processes: signals, and free ports for servers a test starts.

use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::process::Command;

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, ...) to process `pid`
/// through the `kill` program: the workspace forbids the `unsafe` that
/// calling `libc::kill` takes, and this is a test's rare event.
///
/// # Panics
///
/// When `kill` cannot run or fails (e.g. no such process).
pub fn signal(pid: u32, signal: &str) {
    assert!(try_signal(pid, signal), "kill -{signal} {pid} failed");
}

/// Sends `signal` to `pid` if it still runs: whether it was delivered. For
/// processes that may end on their own meanwhile.
///
/// # Panics
///
/// When the `kill` program cannot run.
pub fn try_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the kill program runs")
        .success()
}

/// A loopback port nobody listens on right now: the OS picks it, and the
/// listener is closed again before the caller uses the port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Where [`free_port_for_restarts`] looks: below the range Linux gives to
/// outgoing connections (32768 and up by default).
const BELOW_OUTGOING_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port for a server that stops and starts again on it.
/// [`free_port`] takes one from the range the OS also hands out as the
/// local port of outgoing connections: while the server is down, one of
/// the many connections other tests open can take it, and the restart
/// fails with the address in use. This one starts at a random place below
/// that range and takes the first port free there.
pub fn free_port_for_restarts() -> u16 {
    let span = BELOW_OUTGOING_PORTS.end - BELOW_OUTGOING_PORTS.start;
    let random = RandomState::new().hash_one(std::process::id());
    let first = u16::try_from(random % u64::from(span)).unwrap_or(0);
    (0..span)
        .map(|offset| BELOW_OUTGOING_PORTS.start + (first + offset) % span)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port below the outgoing range")
}
