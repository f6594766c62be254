//! Notifications by email over SMTP: the production adapter of the
//! `Notifications` port (book chapters 9 and 13: the out-of-stock email of
//! `send_out_of_stock_notification`, an after-commit event handler, behind
//! an abstraction so tests use a fake and the binary picks this at start).
//!
//! Plain `smtp://host:port` only (docs/contract.md section 4): the service hands
//! its mail to a relay next to it, which takes care of delivery, TLS and
//! authentication onwards. One connection per email: out-of-stock mail is
//! rare, and a fresh connection cannot have gone stale.
//!
//! Sending happens off the request's path. [`EmailNotifications::send`],
//! which the message bus awaits before it answers, only puts the email on a
//! bounded queue; one background task, the [`EmailSender`], takes emails
//! off it and hands each to the SMTP server, each attempt bounded in time
//! and a failed one tried again a few times. So a slow or hung mail server
//! delays other emails, never an HTTP answer or the Redis consumer. When
//! the queue is full (the server has been failing for a while), a new email
//! is dropped, logged and counted rather than waited for.
//!
//! The price: a queued email lives only in this process's memory. At
//! shutdown the sender gets a short grace period for what is queued; a
//! crash loses it. (Durable email, through an outbox as `line_allocated`
//! has, is for later.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use service_layer::ports::{Notification, NotificationError, Notifications};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use url::{Host, Url};

use crate::redact::redact_url;

/// Where out-of-stock mail goes unless configured otherwise (docs/contract.md
/// section 4, as in the book).
pub const DEFAULT_RECIPIENT: &str = "stock@made.com";
/// Who out-of-stock mail comes from unless configured otherwise.
pub const DEFAULT_SENDER: &str = "allocations@example.com";
/// SMTP's own port, when the URL names none.
const DEFAULT_PORT: u16 = 25;
/// How long the sender may go on sending queued emails once shutdown has
/// begun: long enough for a healthy relay on the same network, short
/// enough that a hung one does not hold up the process's exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Metric names (described in the `allocation` crate's `metrics` module).
pub mod metric_names {
    pub const EMAILS_SENT: &str = "allocation_emails_sent_total";
    /// By `reason`: `queue_full`, `failed` (refused for good, or every
    /// attempt failed) or `shutdown` (still queued when the grace ended).
    pub const EMAILS_DROPPED: &str = "allocation_emails_dropped_total";
}
use metric_names::{EMAILS_DROPPED, EMAILS_SENT};

/// How the background sender works; `EmailSettings::default()` is what the
/// service runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailSettings {
    /// The longest one attempt at one email may take, connecting included.
    pub timeout: Duration,
    /// Attempts at one email. A permanent refusal (SMTP 5xx) is not tried
    /// again: it would only be refused again.
    pub attempts: u32,
    /// The wait after the first failed attempt, doubled after each further
    /// one: a server that is restarting gets a moment to come back.
    pub backoff: Duration,
    /// Emails that may wait to be sent; beyond this, new ones are dropped.
    pub queue_capacity: usize,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_secs(1),
            // Out-of-stock mail is rare: a hundred waiting means the
            // server has been away for a while, and the log says so.
            queue_capacity: 100,
        }
    }
}

/// Why the email settings cannot be used: a configuration error, reported
/// at start.
#[derive(Debug, thiserror::Error)]
pub enum EmailConfigError {
    #[error("invalid SMTP URL {url}: {reason} (expected smtp://host[:port])")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "unsupported SMTP URL scheme {scheme:?} in {url}: only plain smtp://host[:port] is \
         supported (send through a local relay for TLS or authentication)"
    )]
    UnsupportedScheme { url: String, scheme: String },
    #[error("invalid {role} email address {address:?}: {cause}")]
    InvalidAddress {
        role: &'static str,
        address: String,
        cause: lettre::address::AddressError,
    },
}

/// Why one attempt at one email failed; the sender logs it.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("cannot build the email: {0}")]
    Build(#[source] lettre::error::Error),
    #[error("SMTP server {server} refused or failed: {cause}")]
    Smtp {
        server: Arc<str>,
        #[source]
        cause: lettre::transport::smtp::Error,
    },
    #[error("SMTP server {server} did not finish within {after:?}")]
    TimedOut { server: Arc<str>, after: Duration },
}

impl EmailError {
    /// Whether trying again cannot help: the email cannot be built, or the
    /// server refused it for good (5xx). Timeouts, lost connections and
    /// "try again later" (4xx) are worth another attempt.
    fn is_permanent(&self) -> bool {
        match self {
            Self::Build(_) => true,
            Self::Smtp { cause, .. } => cause.is_permanent(),
            Self::TimedOut { .. } => false,
        }
    }
}

/// Puts each notification on the queue of the background [`EmailSender`],
/// which emails it as plain text to one recipient. Cheap to clone: clones
/// share the queue.
#[derive(Clone, Debug)]
pub struct EmailNotifications {
    queue: mpsc::Sender<Notification>,
    /// Emails queued or being sent: what shutdown would drop.
    pending: Arc<AtomicUsize>,
    /// `host:port`, for messages.
    server: Arc<str>,
}

impl EmailNotifications {
    /// Mail through the SMTP server at `smtp_url` (`smtp://host[:port]`,
    /// port 25 by default) to `recipient`, from `sender`
    /// ([`DEFAULT_RECIPIENT`] and [`DEFAULT_SENDER`] are the service's
    /// defaults): the adapter, and its background sender, already running.
    /// Nothing is contacted until the first email. Give the sender
    /// [`EmailSender::finish`] at shutdown.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the sender is spawned here.
    pub fn start(
        smtp_url: &str,
        recipient: &str,
        sender: &str,
        settings: EmailSettings,
    ) -> Result<(Self, EmailSender), EmailConfigError> {
        let mailer = Mailer::new(smtp_url, recipient, sender, settings)?;
        let server = Arc::clone(&mailer.server);
        // At least one place: a zero-capacity queue would drop every email.
        let (queue, waiting) = mpsc::channel(settings.queue_capacity.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run_sender(mailer, waiting, stopped, Arc::clone(&pending)));
        let notifications = Self {
            queue,
            pending: Arc::clone(&pending),
            server: Arc::clone(&server),
        };
        let sender = EmailSender {
            stop,
            task,
            pending,
            server,
        };
        Ok((notifications, sender))
    }
}

#[async_trait]
impl Notifications for EmailNotifications {
    /// Queues the email and returns at once. A full queue (or a sender
    /// already shut down) drops the email, with a warning and a count, and
    /// still returns `Ok`: the bus would only retry, and so delay the
    /// answer of the command that raised the event, without making room.
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError> {
        // Counted before it is queued, so that the sender, which counts it
        // down once done, never sees it before this does.
        self.pending.fetch_add(1, Ordering::Relaxed);
        let reason = match self.queue.try_send(notification.clone()) {
            Ok(()) => {
                tracing::debug!(subject = %notification.subject, "email queued");
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "shutdown",
        };
        self.pending.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!(EMAILS_DROPPED, "reason" => reason).increment(1);
        tracing::warn!(
            server = %self.server,
            subject = %notification.subject,
            reason,
            "email dropped: the queue of emails to send is full (or closed)"
        );
        Ok(())
    }
}

/// The background sender of an [`EmailNotifications`]: hand it
/// [`finish`](Self::finish) at shutdown, or the emails still queued when
/// the runtime stops are lost without a word.
#[derive(Debug)]
pub struct EmailSender {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    pending: Arc<AtomicUsize>,
    server: Arc<str>,
}

impl EmailSender {
    /// Shutdown: no more emails are taken; those queued get `grace` to go
    /// out, then the sender gives up on the rest, logging and counting how
    /// many were dropped. Returns within about `grace`, however the SMTP
    /// server behaves.
    pub async fn finish(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if let Ok(done) = tokio::time::timeout(grace, &mut task).await {
            if let Err(error) = done {
                tracing::error!(%error, "the email sender failed");
            }
            return;
        }
        task.abort();
        // Returns at once after `abort`; afterwards nothing changes `pending`.
        let _ = task.await;
        let dropped = self.pending.load(Ordering::Relaxed);
        metrics::counter!(EMAILS_DROPPED, "reason" => "shutdown")
            .increment(u64::try_from(dropped).unwrap_or(u64::MAX));
        tracing::warn!(
            server = %self.server,
            dropped,
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "shutdown: emails not sent within the grace period were dropped"
        );
    }
}

/// Takes emails off the queue and sends them, one at a time, until
/// shutdown has closed the queue and it is empty (or `finish` aborts it).
async fn run_sender(
    mailer: Mailer,
    mut queue: mpsc::Receiver<Notification>,
    mut stop: oneshot::Receiver<()>,
    pending: Arc<AtomicUsize>,
) {
    let mut watching = true;
    loop {
        tokio::select! {
            // Asked to stop: refuse new emails but keep sending the queued
            // ones; `recv` ends once they are out. (A handle dropped without
            // `finish` asks nothing: the sender runs on.)
            asked = &mut stop, if watching => {
                watching = false;
                if asked.is_ok() {
                    queue.close();
                }
            }
            next = queue.recv() => {
                let Some(notification) = next else { return };
                mailer.deliver(&notification).await;
                pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// One SMTP server and the envelope: what sending one email takes.
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    recipient: Mailbox,
    sender: Mailbox,
    /// `host:port`, for messages.
    server: Arc<str>,
    settings: EmailSettings,
}

impl Mailer {
    fn new(
        smtp_url: &str,
        recipient: &str,
        sender: &str,
        settings: EmailSettings,
    ) -> Result<Self, EmailConfigError> {
        let (host, port) = parse_smtp_url(smtp_url)?;
        let recipient = mailbox("recipient", recipient)?;
        let sender = mailbox("sender", sender)?;
        // "Dangerous" only in that it speaks plain SMTP, which is what an
        // smtp:// URL asks for. lettre's timeout bounds the TCP connect;
        // `send_once` bounds the whole exchange (lettre's tokio transport
        // does not time out reads, so a server that accepts and then stays
        // silent would otherwise hang the sender).
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(settings.timeout))
            .build();
        let server = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            transport,
            recipient,
            sender,
            server: server.into(),
            settings,
        })
    }

    /// Sends one email, trying again after a failure that may pass, and
    /// says in the log and the metrics how it went.
    async fn deliver(&self, notification: &Notification) {
        let mut attempt = 1;
        let mut wait = self.settings.backoff;
        loop {
            match self.send_once(notification).await {
                Ok(()) => {
                    metrics::counter!(EMAILS_SENT).increment(1);
                    tracing::info!(
                        server = %self.server,
                        recipient = %self.recipient,
                        subject = %notification.subject,
                        "notification emailed"
                    );
                    return;
                }
                Err(error) if !error.is_permanent() && attempt < self.settings.attempts => {
                    tracing::warn!(
                        subject = %notification.subject,
                        attempt,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "email not sent, retrying"
                    );
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
                Err(error) => {
                    metrics::counter!(EMAILS_DROPPED, "reason" => "failed").increment(1);
                    tracing::error!(
                        subject = %notification.subject,
                        attempts = attempt,
                        %error,
                        "email not sent, giving up"
                    );
                    return;
                }
            }
        }
    }

    /// One attempt: one connection, bounded by the timeout.
    async fn send_once(&self, notification: &Notification) -> Result<(), EmailError> {
        let email = Message::builder()
            .from(self.sender.clone())
            .to(self.recipient.clone())
            .subject(notification.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(EmailError::Build)?;
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.transport.send(email)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(cause)) => Err(EmailError::Smtp {
                server: Arc::clone(&self.server),
                cause,
            }),
            Err(_) => Err(EmailError::TimedOut {
                server: Arc::clone(&self.server),
                after: timeout,
            }),
        }
    }
}

fn mailbox(role: &'static str, address: &str) -> Result<Mailbox, EmailConfigError> {
    address
        .parse()
        .map_err(|cause| EmailConfigError::InvalidAddress {
            role,
            address: address.to_owned(),
            cause,
        })
}

/// The host (without IPv6 brackets, as lettre wants it) and port of an
/// `smtp://` URL; anything the transport would silently ignore (user info,
/// a path, a query) is refused rather than dropped.
fn parse_smtp_url(raw: &str) -> Result<(String, u16), EmailConfigError> {
    let shown = redact_url(raw);
    let invalid = |reason: &str| EmailConfigError::InvalidUrl {
        url: shown.clone(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|error| invalid(&error.to_string()))?;
    if url.scheme() != "smtp" {
        return Err(EmailConfigError::UnsupportedScheme {
            url: shown.clone(),
            scheme: url.scheme().to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials are not supported over plain SMTP"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a path, query or fragment has no meaning here"));
    }
    let host = match url.host() {
        Some(Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Ipv6(address)) => address.to_string(),
        _ => return Err(invalid("no host")),
    };
    Ok((host, url.port().unwrap_or(DEFAULT_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_name_a_host_and_a_port() {
        let parsed = |url: &str| parse_smtp_url(url).map_err(|error| error.to_string());
        assert_eq!(
            parsed("smtp://127.0.0.1:1025"),
            Ok(("127.0.0.1".into(), 1025))
        );
        assert_eq!(
            parsed("smtp://mail.internal"),
            Ok(("mail.internal".into(), 25))
        );
        assert_eq!(parsed("smtp://[::1]:2525/"), Ok(("::1".into(), 2525)));
    }

    #[test]
    fn other_schemes_and_extras_are_refused_clearly() {
        let refused = |url: &str| match parse_smtp_url(url) {
            Ok(parsed) => panic!("{url} was accepted as {parsed:?}"),
            Err(error) => error.to_string(),
        };
        let message = refused("smtps://mail.example.com:465");
        assert!(
            message.starts_with("unsupported SMTP URL scheme \"smtps\""),
            "{message}"
        );
        assert!(refused("http://localhost:1025").contains("\"http\""));
        let message = refused("smtp://user:s3cret@localhost:1025");
        assert!(message.contains("credentials"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(refused("smtp://localhost:1025/inbox").contains("path"));
        assert!(refused("smtp://localhost:99999").starts_with("invalid SMTP URL"));
        assert!(refused("localhost:1025").starts_with("unsupported SMTP URL scheme"));
        assert!(refused("not a url").starts_with("invalid SMTP URL"));
    }

    #[test]
    fn addresses_are_checked_at_start() {
        let settings = EmailSettings::default();
        let mailer = |recipient: &str, sender: &str| {
            Mailer::new("smtp://localhost:1025", recipient, sender, settings)
        };
        let Err(error) = mailer("not an address", DEFAULT_SENDER) else {
            panic!("an invalid recipient was accepted");
        };
        assert!(
            error
                .to_string()
                .starts_with("invalid recipient email address"),
            "{error}"
        );
        assert!(mailer(DEFAULT_RECIPIENT, "@").is_err());
        let ok = mailer(DEFAULT_RECIPIENT, "Allocations <allocations@example.com>");
        assert!(ok.is_ok(), "{:?}", ok.err());
    }
}
