//! Child processes: signals, and free ports for servers a test starts.

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
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("the kill program runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A loopback port nobody listens on right now: the OS picks it, and the
/// listener is closed again before the caller uses the port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
