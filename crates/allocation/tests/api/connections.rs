//! Clients that hang up, or never finish (issue 13), against the real
//! binary: idle and half-sent connections are closed at their deadlines and
//! never lock other clients out, even by the thousand under a 1 024 file
//! limit, nor does running out of file descriptors; and what the HTTP stack
//! answers to requests it cannot parse, as docs/operations.md says.

use std::time::{Duration, Instant};

use test_support::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{BOUND, RunningApp};

/// The file limit many systems give a service (`ulimit -n`).
const FD_LIMIT: u64 = 1024;

/// Idle connections to open against it: all but a few of its files.
const IDLE_CONNECTIONS: usize = 1020;

/// The default `--max-connections`, which must keep the service clear of
/// [`FD_LIMIT`].
const MAX_CONNECTIONS: usize = 512;

/// This test process's own file limit: room for the stalled connections'
/// ends of two tests at once, and everything else.
const OWN_FD_LIMIT: u64 = 4096;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n";

/// What the stalled clients send before they stall: nothing, half a request
/// line, half the headers.
const STALLED_AT: [&[u8]; 3] = [b"", b"GET /hea", b"GET /healthz HTTP/1.1\r\nhost: loc"];

#[tokio::test]
async fn a_thousand_stalled_connections_do_not_lock_out_a_new_client() {
    set_fd_limit(std::process::id(), OWN_FD_LIMIT, false);
    let db = TestDatabase::sqlite();
    let settings = ["--header-read-timeout", "1", "--keep-alive-timeout", "2"];
    let app = RunningApp::start_with(&db, &settings).await;
    let pid = app.process.pid().expect("running");
    set_fd_limit(pid, FD_LIMIT, true);
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .expect("its limits")
            .lines()
            .any(|line| line.starts_with("Max open files") && line.contains(" 1024 ")),
        "the service runs under a {FD_LIMIT} file limit"
    );
    // Sockets of its own (the listener, the runtime's), counted before any
    // client connects, so that the rest are client connections.
    let own_sockets = sockets(pid);
    let held = || sockets(pid).saturating_sub(own_sockets);
    let warm_up = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    for _ in 0..20 {
        let answer = warm_up.get(format!("{}/healthz", app.address)).send().await;
        assert_eq!(answer.expect("answered").status(), 200);
    }
    wait_for(&held, |held| held == 0).await;

    // Twice, and against a bound well above what the allocator keeps for
    // reuse once they close (about 11 MiB after two rounds, levelling off
    // near 15 MiB after eight), but below what two rounds of connections
    // leaked whole would cost (over 25 MiB).
    let mut rss = vec![rss_kib(pid)];
    for round in 1..=2 {
        let (waited, most_held, rss_during) = stall(&app, &held, || rss_kib(pid)).await;
        rss.extend([rss_during, rss_kib(pid)]);
        println!(
            "round {round}: a new client answered {waited:?} after {IDLE_CONNECTIONS} stalled \
             connections, at most {most_held} held at once"
        );
        assert!(most_held <= MAX_CONNECTIONS, "{most_held} connections held");
    }
    println!("VmRSS (KiB) before, then during and after each round: {rss:?}");
    assert!(
        rss[4] <= rss[0] + 24 * 1024,
        "memory did not come back: VmRSS {rss:?} KiB"
    );
    let log = app.log().text();
    assert!(!log.contains("cannot accept"), "{log}");
    assert_eq!(app.get("/healthz").await.0, 200);
}

/// A cap set above what the file limit allows: accepting fails for want
/// of file descriptors, which the service logs and survives.
#[tokio::test]
async fn running_out_of_file_descriptors_stops_nothing() {
    set_fd_limit(std::process::id(), OWN_FD_LIMIT, false);
    let db = TestDatabase::sqlite();
    let settings = [
        "--header-read-timeout",
        "1",
        "--keep-alive-timeout",
        "2",
        "--max-connections",
        "2000",
    ];
    let mut app = RunningApp::start_with(&db, &settings).await;
    let pid = app.process.pid().expect("running");
    set_fd_limit(pid, FD_LIMIT, true);
    let own_sockets = sockets(pid);
    let held = || sockets(pid).saturating_sub(own_sockets);

    let (waited, most_held, _) = stall(&app, &held, || rss_kib(pid)).await;
    println!(
        "out of file descriptors at {most_held} connections; \
         a new client answered {waited:?} after"
    );
    app.log().wait_for("cannot accept connections", 1).await;
    assert!(app.process.is_running());
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout_an_idle_one_is_not() {
    let db = TestDatabase::sqlite();
    let settings = ["--header-read-timeout", "1", "--keep-alive-timeout", "60"];
    let app = RunningApp::start_with(&db, &settings).await;
    let address = socket_address(&app.address);
    let mut fresh = TcpStream::connect(address).await.expect("connected");
    let mut kept_alive = TcpStream::connect(address).await.expect("connected");
    assert_eq!(exchange(&mut kept_alive, HEALTHZ).await, 200);

    let mut half_sent = TcpStream::connect(address).await.expect("connected");
    let sent = Instant::now();
    half_sent.write_all(STALLED_AT[2]).await.expect("sent");
    assert_closed_without_an_answer(&mut half_sent).await;
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );

    // Idle for longer than the header timeout, yet still served.
    assert_eq!(exchange(&mut kept_alive, HEALTHZ).await, 200);
    assert_eq!(exchange(&mut fresh, HEALTHZ).await, 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_keep_alive_timeout_a_slow_one_is_not() {
    let db = TestDatabase::sqlite();
    let settings = ["--header-read-timeout", "60", "--keep-alive-timeout", "1"];
    let app = RunningApp::start_with(&db, &settings).await;
    let address = socket_address(&app.address);
    let mut half_sent = TcpStream::connect(address).await.expect("connected");
    half_sent.write_all(STALLED_AT[2]).await.expect("sent");
    let mut fresh = TcpStream::connect(address).await.expect("connected");
    let mut kept_alive = TcpStream::connect(address).await.expect("connected");
    let asked = Instant::now();
    assert_eq!(exchange(&mut kept_alive, HEALTHZ).await, 200);

    assert_closed_without_an_answer(&mut kept_alive).await;
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_closed_without_an_answer(&mut fresh).await;

    // Receiving headers is not idling: this one is still served.
    half_sent.write_all(b"alhost\r\n\r\n").await.expect("sent");
    assert_eq!(read_response(&mut half_sent).await.0, 200);
}

/// What hyper answers, before the router ever sees the request, to what it
/// cannot parse: the status alone, with an empty body (docs/operations.md,
/// "Connection limits and refusals").
#[tokio::test]
async fn requests_the_http_stack_refuses_are_answered_as_documented() {
    let db = TestDatabase::sqlite();
    let app = RunningApp::start(&db).await;
    let address = socket_address(&app.address);
    let many_headers: String = (0..101).map(|n| format!("x-filler-{n}: x\r\n")).collect();
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nhost: localhost\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases = [
        (
            "malformed request line",
            "NOT A REQUEST\r\n\r\n".to_owned(),
            400,
        ),
        (
            "two different Content-Length",
            "POST /allocate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: 2\r\ncontent-length: 3\r\n\r\n"
                .to_owned(),
            400,
        ),
        (
            "over 100 headers",
            format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\n{many_headers}\r\n"),
            431,
        ),
        ("URI over 65 534 bytes", long_uri, 414),
    ];
    for (case, request, expected) in cases {
        let mut stream = TcpStream::connect(address).await.expect("connected");
        stream.write_all(request.as_bytes()).await.expect("sent");
        let (status, body) = read_response(&mut stream).await;
        assert_eq!(status, expected, "{case}");
        assert!(body.is_empty(), "{case}: {body:?}");
        assert_closed_without_an_answer(&mut stream).await;
    }

    // HTTP/2 without negotiation (prior knowledge): not served, no answer.
    let mut stream = TcpStream::connect(address).await.expect("connected");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("sent");
    assert_closed_without_an_answer(&mut stream).await;

    // The same Content-Length twice is one Content-Length (RFC 9110 8.6).
    let mut stream = TcpStream::connect(address).await.expect("connected");
    let request = "POST /allocate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                   content-length: 2\r\ncontent-length: 2\r\n\r\n{}";
    let (status, body) = exchange_full(&mut stream, request.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("message"), "the router's JSON error: {body}");

    // Chunked wins over a Content-Length, and the connection ends after.
    let mut stream = TcpStream::connect(address).await.expect("connected");
    let request = "GET /healthz HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\
                   content-length: 3\r\n\r\n0\r\n\r\n";
    assert_eq!(exchange(&mut stream, request.as_bytes()).await, 200);
    assert_closed_without_an_answer(&mut stream).await;
}

/// Opens [`IDLE_CONNECTIONS`] that stall, then checks that a new client is
/// answered (within [`BOUND`]) and that the service lets them all go: how
/// long the new client waited, the most connections held at once, and the
/// service's memory (`rss`) while they were held.
async fn stall(
    app: &RunningApp,
    held: &impl Fn() -> usize,
    rss: impl Fn() -> u64,
) -> (Duration, usize, u64) {
    let address = socket_address(&app.address);
    let mut stalled = Vec::with_capacity(IDLE_CONNECTIONS);
    for n in 0..IDLE_CONNECTIONS {
        let mut stream = TcpStream::connect(address).await.expect("connected");
        stream
            .write_all(STALLED_AT[n % STALLED_AT.len()])
            .await
            .expect("sent");
        stalled.push(stream);
    }
    let opened = Instant::now();
    // The service takes as many as it may, and not one more.
    let most_held = wait_for(held, |held| held >= MAX_CONNECTIONS).await;
    let rss_during = rss();

    let newcomer = reqwest::Client::new()
        .get(format!("{}/healthz", app.address))
        .timeout(BOUND)
        .send()
        .await
        .expect("the new client is answered");
    let waited = opened.elapsed();
    assert_eq!(newcomer.status(), 200);
    drop(newcomer);

    drop(stalled);
    let most_held = most_held.max(wait_for(held, |held| held == 0).await);
    (waited, most_held, rss_during)
}

/// `host:port` of an `http://host:port` address.
fn socket_address(address: &str) -> std::net::SocketAddr {
    address
        .trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

async fn exchange(stream: &mut TcpStream, request: &[u8]) -> u16 {
    exchange_full(stream, request).await.0
}

async fn exchange_full(stream: &mut TcpStream, request: &[u8]) -> (u16, String) {
    stream.write_all(request).await.expect("sent");
    read_response(stream).await
}

/// One response: its status and body (by its `content-length`).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = tokio::time::timeout(BOUND, stream.read(&mut chunk))
            .await
            .expect("an answer within the bound")
            .expect("readable");
        assert!(read > 0, "closed mid-answer: {received:?}");
        received.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|length| length.trim().parse().ok())
        .unwrap_or_else(|| panic!("a content-length: {head}"));
    let mut body = received.split_off(head_end);
    while body.len() < length {
        let read = tokio::time::timeout(BOUND, stream.read(&mut chunk))
            .await
            .expect("the body within the bound")
            .expect("readable");
        assert!(read > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..read]);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits (at most [`BOUND`]) for the service to close `stream`, and checks
/// that it sent nothing more.
async fn assert_closed_without_an_answer(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        // A reset is a close too.
        Ok(Err(error)) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
        Err(_) => panic!("still open after {BOUND:?}"),
    }
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("its status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// How many sockets the process has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("its file descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Polls `count` until `done` says so (at most [`BOUND`]); returns the
/// highest count seen meanwhile.
async fn wait_for(count: &impl Fn() -> usize, done: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + BOUND;
    let mut most = 0;
    loop {
        let now = count();
        most = most.max(now);
        if done(now) {
            return most;
        }
        assert!(Instant::now() < deadline, "still {now} after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets the file limit (`RLIMIT_NOFILE`) of process `pid`, as `ulimit -n`
/// would, through `prlimit --pid` (`unsafe` is forbidden here): both the
/// soft and the hard limit to `nofile` when `exactly`, else the soft one
/// raised to at least `nofile`, as far as the hard one allows.
fn set_fd_limit(pid: u32, nofile: u64, exactly: bool) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
    let fields: Vec<&str> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    // Either may read "unlimited".
    let limit = |field: usize| fields[field].parse::<u64>().unwrap_or(u64::MAX);
    let (soft, hard) = (limit(0), limit(1));
    let setting = if exactly {
        format!("--nofile={nofile}:{nofile}")
    } else if soft >= nofile {
        return;
    } else {
        assert!(
            hard >= nofile,
            "the hard file limit ({hard}) is below {nofile}"
        );
        format!("--nofile={nofile}:")
    };
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &setting])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit {setting} failed on {pid}");
}
