//! Notifications by email over SMTP: the production adapter of the
//! `Notifications` port (book chapters 9 and 13, behind an abstraction so
//! tests use a fake and the binary picks this at start).
//!
//! Plain `smtp://host:port` only (docs/contract.md section 4): the service hands
//! its mail to a relay next to it, which takes care of delivery, TLS and
//! authentication onwards. One connection per email: out-of-stock mail is
//! rare, and a fresh connection cannot have gone stale.
//!
//! The out-of-stock email waits in the outbox, committed with the command
//! that found no stock; the notifications relay calls
//! [`EmailNotifications::send`] for it, off every request's path. So a send
//! is one attempt, bounded in time: a failure that may pass (a timeout, a
//! lost connection, SMTP 4xx) is an error, and the email stays in the
//! outbox for the relay to try again with its backoff, for as long as the
//! server is away. A permanent refusal (SMTP 5xx, or an email that cannot
//! be built) would be refused again on every attempt and hold up the emails
//! behind it: it is logged as an error, counted in
//! `allocation_emails_dropped_total`, and reported as done, so the relay
//! marks it sent.
//!
//! Delivery is at least once: a crash between the server's acceptance and
//! the relay's mark sends it again. Each email's Message-ID is its outbox
//! message's id (`<uuid@allocation>`), the same on every attempt, so that
//! mail systems can drop the duplicate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use service_layer::ports::{Notification, NotificationError, Notifications};
use url::{Host, Url};
use uuid::Uuid;

use crate::redact::redact_url;

/// Where out-of-stock mail goes unless configured otherwise (docs/contract.md
/// section 4, as in the book).
pub const DEFAULT_RECIPIENT: &str = "stock@made.com";
/// Who out-of-stock mail comes from unless configured otherwise.
pub const DEFAULT_SENDER: &str = "allocations@example.com";
/// SMTP's own port, when the URL names none.
const DEFAULT_PORT: u16 = 25;

/// Metric names (described in the `allocation` crate's `metrics` module).
pub mod metric_names {
    pub const EMAILS_SENT: &str = "allocation_emails_sent_total";
    /// By `reason`: `refused` (the server refused it for good, or it could
    /// not be built): marked sent, never to be tried again.
    pub const EMAILS_DROPPED: &str = "allocation_emails_dropped_total";
}
use metric_names::{EMAILS_DROPPED, EMAILS_SENT};

/// How an email is sent; `EmailSettings::default()` is what the service
/// runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailSettings {
    /// The longest one attempt at one email may take, connecting included:
    /// what a hung server costs the notifications relay per round.
    pub timeout: Duration,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
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

/// Why one attempt at one email failed.
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
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Build(_) => true,
            Self::Smtp { cause, .. } => cause.is_permanent(),
            Self::TimedOut { .. } => false,
        }
    }
}

/// The Message-ID of the email of outbox message `id`: the same on every
/// attempt, so that a duplicate can be recognised.
pub fn message_id(id: Uuid) -> String {
    format!("<{}@allocation>", id.hyphenated())
}

/// Emails each notification as plain text to one recipient, through one
/// SMTP server. Cheap to clone.
#[derive(Clone)]
pub struct EmailNotifications {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    recipient: Mailbox,
    sender: Mailbox,
    /// `host:port`, for messages.
    server: Arc<str>,
    settings: EmailSettings,
}

impl std::fmt::Debug for EmailNotifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifications")
            .field("server", &self.server)
            .field("recipient", &self.recipient)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl EmailNotifications {
    /// Mail through the SMTP server at `smtp_url` (`smtp://host[:port]`,
    /// port 25 by default) to `recipient`, from `sender`
    /// ([`DEFAULT_RECIPIENT`] and [`DEFAULT_SENDER`] are the service's
    /// defaults). Nothing is contacted until the first email.
    pub fn new(
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
        // silent would otherwise hang the relay).
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

    /// One attempt: one connection, bounded by the timeout.
    async fn send_once(&self, notification: &Notification) -> Result<(), EmailError> {
        let email = Message::builder()
            .message_id(Some(message_id(notification.id)))
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

#[async_trait]
impl Notifications for EmailNotifications {
    /// One attempt. An error leaves the email in the outbox for the relay to
    /// try again; a permanent refusal is dropped (see the module's doc).
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError> {
        match self.send_once(notification).await {
            Ok(()) => {
                metrics::counter!(EMAILS_SENT).increment(1);
                tracing::info!(
                    server = %self.server,
                    recipient = %self.recipient,
                    subject = %notification.subject,
                    id = %notification.id,
                    "notification emailed"
                );
                Ok(())
            }
            Err(error) if error.is_permanent() => {
                metrics::counter!(EMAILS_DROPPED, "reason" => "refused").increment(1);
                tracing::error!(
                    server = %self.server,
                    recipient = %self.recipient,
                    subject = %notification.subject,
                    id = %notification.id,
                    %error,
                    "email refused for good; dropped, not tried again"
                );
                Ok(())
            }
            Err(error) => Err(NotificationError(Box::new(error))),
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
            EmailNotifications::new("smtp://localhost:1025", recipient, sender, settings)
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
