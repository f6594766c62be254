//! `EmailNotifications` against a real SMTP conversation: a tiny SMTP sink
//! that each test starts on a free loopback port, speaking just enough of
//! the protocol (RFC 5321) to take one message and record its envelope and
//! data. The out-of-stock email goes through the service layer's own
//! handler, so the test checks what the service really sends.

use std::time::{Duration, Instant};

use adapters::email::{DEFAULT_RECIPIENT, DEFAULT_SENDER, EmailNotifications};
use domain::Sku;
use domain::events::OutOfStock;
use service_layer::handlers::send_out_of_stock_notification;
use service_layer::ports::{Notification, Notifications};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Far above what any of these exchanges needs on loopback, far below a hang.
const BOUND: Duration = Duration::from_secs(10);

/// What one SMTP session delivered.
#[derive(Debug, Default)]
struct Delivered {
    mail_from: String,
    rcpt_to: Vec<String>,
    /// Headers and body as sent, dot-stuffing undone.
    data: String,
}

/// How the sink behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Accepts every message.
    Accepting,
    /// Refuses every recipient, as a server that does not know the address.
    RefusingRecipients,
    /// Accepts connections and never says a word.
    Silent,
}

/// Starts a sink on a free port; returns its `smtp://` URL and the messages
/// it received, one per session.
async fn start_sink(behaviour: Sink) -> (String, mpsc::UnboundedReceiver<Delivered>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("smtp://{}", listener.local_addr().expect("a bound address"));
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                if behaviour == Sink::Silent {
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
    (url, receiver)
}

/// One SMTP session: the server's side of a conversation with one client.
async fn session(stream: TcpStream, behaviour: Sink) -> std::io::Result<Option<Delivered>> {
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
            "RCPT" if behaviour == Sink::RefusingRecipients => b"550 no such user\r\n",
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

async fn next_delivery(receiver: &mut mpsc::UnboundedReceiver<Delivered>) -> Delivered {
    tokio::time::timeout(BOUND, receiver.recv())
        .await
        .expect("the sink received a message in time")
        .expect("the sink is running")
}

fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    data.lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

#[tokio::test]
async fn out_of_stock_is_emailed_to_the_default_recipient_from_the_default_sender() {
    let (url, mut received) = start_sink(Sink::Accepting).await;
    let notifications =
        EmailNotifications::new(&url, DEFAULT_RECIPIENT, DEFAULT_SENDER).expect("valid settings");
    let event = OutOfStock {
        sku: Sku::parse("SMALL-TABLE").expect("a valid SKU"),
    };

    send_out_of_stock_notification(&event, &notifications)
        .await
        .expect("the sink accepts the email");

    let mail = next_delivery(&mut received).await;
    assert_eq!(mail.mail_from, "allocations@example.com");
    assert_eq!(mail.rcpt_to, ["stock@made.com"]);
    assert_eq!(header(&mail.data, "From"), Some("allocations@example.com"));
    assert_eq!(header(&mail.data, "To"), Some("stock@made.com"));
    assert_eq!(
        header(&mail.data, "Subject"),
        Some("Out of stock for SMALL-TABLE")
    );
    let body = mail
        .data
        .split_once("\n\n")
        .map(|(_, body)| body)
        .expect("headers, a blank line, a body");
    assert!(body.contains("Out of stock for SMALL-TABLE"), "{body:?}");
}

#[tokio::test]
async fn recipient_and_sender_are_configurable() {
    let (url, mut received) = start_sink(Sink::Accepting).await;
    let notifications =
        EmailNotifications::new(&url, "buyers@shop.test", "Stock robot <robot@shop.test>")
            .expect("valid settings");

    notifications
        .send(&Notification {
            subject: "Restock".into(),
            // A line starting with a dot must survive SMTP's dot-stuffing.
            body: "first line\n.second line starts with a dot\n".into(),
        })
        .await
        .expect("the sink accepts the email");

    let mail = next_delivery(&mut received).await;
    assert_eq!(mail.mail_from, "robot@shop.test");
    assert_eq!(mail.rcpt_to, ["buyers@shop.test"]);
    assert_eq!(
        header(&mail.data, "From"),
        Some("\"Stock robot\" <robot@shop.test>")
    );
    assert!(
        mail.data.contains("\n.second line starts with a dot\n"),
        "{:?}",
        mail.data
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_notification_error() {
    // A port that was free a moment ago: nothing listens there now.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let notifications = EmailNotifications::new(
        &format!("smtp://127.0.0.1:{port}"),
        DEFAULT_RECIPIENT,
        DEFAULT_SENDER,
    )
    .expect("valid settings");

    let started = Instant::now();
    let error = send_out_of_stock_notification(
        &OutOfStock {
            sku: Sku::parse("LAMP").expect("a valid SKU"),
        },
        &notifications,
    )
    .await
    .expect_err("nobody listens");

    assert!(started.elapsed() < BOUND);
    let message = error.to_string();
    assert!(
        message.starts_with("notification not sent: SMTP server 127.0.0.1:"),
        "{message}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_notification_error_after_the_timeout() {
    let (url, _received) = start_sink(Sink::Silent).await;
    let timeout = Duration::from_millis(300);
    let notifications = EmailNotifications::new(&url, DEFAULT_RECIPIENT, DEFAULT_SENDER)
        .expect("valid settings")
        .with_timeout(timeout);

    let started = Instant::now();
    let error = notifications
        .send(&Notification {
            subject: "s".into(),
            body: "b".into(),
        })
        .await
        .expect_err("the server never greets");

    let elapsed = started.elapsed();
    assert!(elapsed >= timeout && elapsed < BOUND, "{elapsed:?}");
    assert!(
        error.to_string().contains("did not finish within 300ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_recipient_is_a_notification_error() {
    let (url, _received) = start_sink(Sink::RefusingRecipients).await;
    let notifications =
        EmailNotifications::new(&url, DEFAULT_RECIPIENT, DEFAULT_SENDER).expect("valid settings");

    let error = notifications
        .send(&Notification {
            subject: "s".into(),
            body: "b".into(),
        })
        .await
        .expect_err("the server refuses the recipient");

    let message = error.to_string();
    assert!(message.contains("refused or failed"), "{message}");
}
