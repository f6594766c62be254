//! Redis for tests: the shared server of `REDIS_URL`, and `redis-server`
//! processes of a test's own, which it may kill, freeze and restart.
//!
//! A server of the test's own always listens on a Unix socket in its own
//! temporary directory, and on a TCP port unless started
//! [closed](RedisServer::start_closed): a test can then subscribe through
//! the socket before it [opens](RedisServer::open) the port the service
//! under test connects to, so that not one message published there can be
//! missed (pub/sub keeps nothing for subscribers that are not there yet).
//!
//! The few commands these helpers send go as raw RESP over the socket, so
//! this crate needs no Redis client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{REDIS, REDIS_URL, require_service};

/// Far above what starting or asking a local Redis takes; a bound, not an
/// expectation.
const BOUND: Duration = Duration::from_secs(20);

/// The shared Redis of `REDIS_URL`, under [`require_service`]'s rule: its
/// URL, or `None` (with a skip notice) when it is not set and `CI` is not
/// `true`.
pub fn shared_redis() -> Option<String> {
    require_service(REDIS_URL, REDIS)
}

/// The `redis-server` program (or `REDIS_SERVER`), for tests that start
/// servers of their own, under the same rule as [`require_service`]: `None`
/// with a notice when it cannot run, a panic instead under `CI=true`.
pub fn redis_server_program() -> Option<String> {
    let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some(program);
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but {program:?} cannot be run: this test starts its own Redis server \
         (install redis-server, or set REDIS_SERVER to its path)"
    );
    crate::notice(&format!(
        "skipped {test}: {program:?} cannot be run (install redis-server to run it)"
    ));
    None
}

/// A `redis-server` child process, killed when dropped. Nothing it does
/// outlives it: no persistence, and its directory goes with it.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one listening on `127.0.0.1:port`, and waits until it answers.
    pub async fn start(program: &str, port: u16) -> Self {
        Self::spawn(program, port, true).await
    }

    /// Starts one that listens only on its Unix socket ([`Self::unix_url`])
    /// until [`Self::open`] opens `port`.
    pub async fn start_closed(program: &str, port: u16) -> Self {
        Self::spawn(program, port, false).await
    }

    async fn spawn(program: &str, port: u16, listening: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("redis.sock");
        let tcp_port = if listening { port } else { 0 };
        let child = Command::new(program)
            .args(["--port", &tcp_port.to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let mut server = Self {
            child,
            port,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(reply) = server.command(&["PING"]).await {
                assert_eq!(reply, "+PONG", "redis-server answers PING");
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server on port {port} exited at start ({status}): port taken?");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer within {BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if listening {
            server.wait_for_tcp().await;
        }
        server
    }

    /// Starts listening on the TCP port, after a [`Self::start_closed`].
    pub async fn open(&self) {
        let port = self.port.to_string();
        let reply = self
            .command(&["CONFIG", "SET", "port", &port])
            .await
            .expect("redis-server answers on its socket");
        assert_eq!(reply, "+OK", "redis-server opens port {port}");
        self.wait_for_tcp().await;
    }

    async fn wait_for_tcp(&self) {
        let deadline = Instant::now() + BOUND;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within {BOUND:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL of its Unix socket, open from the start.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Publishes every payload on `channel`, pipelined over one connection
    /// to its Unix socket (as fast as Redis takes them), and returns once
    /// Redis has answered each: a flood, for tests of what a subscriber
    /// does with one. The payloads must need no escaping (no CR or LF).
    ///
    /// # Panics
    ///
    /// When Redis refuses a message, or has not answered them all within
    /// `within`.
    pub async fn publish_all(&self, channel: &str, payloads: &[String], within: Duration) {
        let stream = UnixStream::connect(&self.socket)
            .await
            .expect("redis-server's socket takes a connection");
        let (reader, mut writer) = stream.into_split();
        let expected = payloads.len();
        // Replies are read as they come, so that neither side's buffers
        // fill up while the other waits.
        let replies = tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            let mut answered = 0;
            while answered < expected {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        assert!(line.starts_with(':'), "PUBLISH answered {line:?}");
                        answered += 1;
                    }
                    _ => break,
                }
            }
            answered
        });
        let flood = async {
            let mut batch = Vec::with_capacity(128 * 1024);
            for payload in payloads {
                let command = format!(
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
                    channel.len(),
                    payload.len()
                );
                batch.extend_from_slice(command.as_bytes());
                if batch.len() >= 64 * 1024 {
                    writer.write_all(&batch).await.expect("Redis reads");
                    batch.clear();
                }
            }
            writer.write_all(&batch).await.expect("Redis reads");
            replies.await.expect("the reader of replies")
        };
        let answered = tokio::time::timeout(within, flood)
            .await
            .unwrap_or_else(|_| {
                panic!("Redis did not answer {expected} PUBLISH within {within:?}")
            });
        assert_eq!(answered, expected, "PUBLISH answered");
    }

    /// Sends `signal` to the server (`STOP` freezes it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        crate::process::signal(self.child.id(), signal);
    }

    /// SIGKILL: Redis vanishes as in a crash, closing its connections.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sets a configuration parameter, as `CONFIG SET` does.
    pub async fn config_set(&self, parameter: &str, value: &str) {
        let reply = self
            .command(&["CONFIG", "SET", parameter, value])
            .await
            .expect("redis-server answers on its socket");
        assert_eq!(reply, "+OK", "CONFIG SET {parameter} {value:?}");
    }

    /// The bytes Redis holds for its pub/sub subscribers and has not yet
    /// written to their sockets (`omem` in `CLIENT LIST`): 0 once every
    /// subscriber has read all but what is in the sockets' own buffers.
    pub async fn pubsub_output_bytes(&self) -> u64 {
        let clients = self
            .command(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .await
            .expect("redis-server answers on its socket");
        clients
            .lines()
            .filter_map(|client| {
                let field = client.split(' ').find_map(|f| f.strip_prefix("omem="))?;
                field.parse::<u64>().ok()
            })
            .sum()
    }

    /// Sends one command over the Unix socket; its reply's first line, or
    /// the text of a bulk string reply.
    async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            let mut request = format!("*{}\r\n", args.len());
            for arg in args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            stream.write_all(request.as_bytes()).await?;
            let mut reader = BufReader::new(stream);
            let mut reply = String::new();
            reader.read_line(&mut reply).await?;
            let first = reply.trim_end().to_owned();
            let Some(length) = first
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return Ok(first);
            };
            let mut text = vec![0; length + 2];
            reader.read_exact(&mut text).await?;
            text.truncate(length);
            Ok(String::from_utf8_lossy(&text).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
