//! A tiny SMTP sink on a free loopback port, speaking just enough of the
//! protocol (RFC 5321) to take messages and record their envelope and data:
//! for tests of what the service really sends, from the adapter up to the
//! built binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Far above what an exchange on loopback needs, far below a hang.
const BOUND: Duration = Duration::from_secs(20);

/// What one SMTP session delivered.
#[derive(Debug, Default, Clone)]
pub struct Delivered {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Headers and body as sent, dot-stuffing undone.
    pub data: String,
}

impl Delivered {
    /// The value of header `name` (as written, case and all).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.data
            .lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    /// What follows the headers.
    ///
    /// # Panics
    ///
    /// When the data has no blank line after its headers.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\n\n")
            .map(|(_, body)| body)
            .expect("headers, a blank line, a body")
    }
}

/// How the sink behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts every message.
    Accepting,
    /// Refuses every recipient, as a server that does not know the address.
    RefusingRecipients,
    /// Answers "try again later" (SMTP 451) to the recipient of the first
    /// `n` sessions, as a busy server does, then accepts.
    BusyFirst(usize),
    /// Accepts connections and never says a word.
    Silent,
}

/// A running sink; it stops with the test's runtime.
#[derive(Debug)]
pub struct SmtpSink {
    url: String,
    received: mpsc::UnboundedReceiver<Delivered>,
    sessions: Arc<AtomicUsize>,
}

impl SmtpSink {
    /// Starts a sink on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_at("127.0.0.1:0", behaviour).await
    }

    /// A loopback address nothing listens on (yet): an SMTP server that is
    /// down, for a sink started there later ([`SmtpSink::start_at`]) to
    /// bring up.
    pub fn free_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.local_addr().expect("a bound address").to_string()
    }

    /// Starts a sink at `address` (`host:port`).
    ///
    /// # Panics
    ///
    /// When the address cannot be bound.
    pub async fn start_at(address: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(address)
            .await
            .unwrap_or_else(|error| panic!("bind {address}: {error}"));
        let url = format!("smtp://{}", listener.local_addr().expect("a bound address"));
        let (sender, received) = mpsc::unbounded_channel();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sessions);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                let earlier = counted.fetch_add(1, Ordering::Relaxed);
                let behaviour = match behaviour {
                    Behaviour::BusyFirst(n) if earlier >= n => Behaviour::Accepting,
                    other => other,
                };
                tokio::spawn(async move {
                    if behaviour == Behaviour::Silent {
                        // Hold the connection open without greeting.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(stream);
                        return;
                    }
                    if let Ok(Some(delivered)) = session(stream, behaviour).await {
                        let _ = sender.send(delivered);
                    }
                });
            }
        });
        Self {
            url,
            received,
            sessions,
        }
    }

    /// How many connections it has taken so far: one per attempt at an
    /// email.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next message delivered.
    ///
    /// # Panics
    ///
    /// When none arrives within 20 s.
    pub async fn next(&mut self) -> Delivered {
        self.next_within(BOUND)
            .await
            .unwrap_or_else(|| panic!("the SMTP sink received no message within {BOUND:?}"))
    }

    /// The next message delivered within `wait`, if any: to show that no
    /// more came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Delivered> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

/// One SMTP session: the server's side of a conversation with one client.
async fn session(stream: TcpStream, behaviour: Behaviour) -> std::io::Result<Option<Delivered>> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut delivered = Delivered::default();
    let mut complete = false;
    writer.write_all(b"220 sink ESMTP ready\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sink\r\n",
            "MAIL" => {
                delivered.mail_from = address(&line);
                b"250 OK\r\n"
            }
            "RCPT" if behaviour == Behaviour::RefusingRecipients => b"550 no such user\r\n",
            "RCPT" if matches!(behaviour, Behaviour::BusyFirst(_)) => {
                b"451 busy, try again later\r\n"
            }
            "RCPT" => {
                delivered.rcpt_to.push(address(&line));
                b"250 OK\r\n"
            }
            "DATA" => {
                writer.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                while let Some(data_line) = lines.next_line().await? {
                    if data_line == "." {
                        break;
                    }
                    // A leading dot was doubled by the client (RFC 5321 4.5.2).
                    let data_line = data_line.strip_prefix('.').unwrap_or(&data_line);
                    delivered.data.push_str(data_line);
                    delivered.data.push('\n');
                }
                complete = true;
                b"250 OK queued\r\n"
            }
            "RSET" | "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                writer.write_all(b"221 bye\r\n").await?;
                break;
            }
            _ => b"502 not implemented\r\n",
        };
        writer.write_all(reply).await?;
    }
    Ok(complete.then_some(delivered))
}

/// The address in `MAIL FROM:<a@b> ...` or `RCPT TO:<a@b>`.
fn address(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}
