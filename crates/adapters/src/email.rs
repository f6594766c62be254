//! Notifications by email over SMTP: the production adapter of the
//! `Notifications` port (book chapters 9 and 13: the out-of-stock email of
//! `send_out_of_stock_notification`, an after-commit event handler, behind
//! an abstraction so tests use a fake and the binary picks this at start).
//!
//! Plain `smtp://host:port` only (CONTRACT.md section 4): the service hands
//! its mail to a relay next to it, which takes care of delivery, TLS and
//! authentication onwards. One connection per email: out-of-stock mail is
//! rare, and a fresh connection cannot have gone stale.
//!
//! Failures become a [`NotificationError`]; the message bus logs and retries
//! them and never fails the command that raised the event. Every send is
//! bounded in time, so a mail server that stops answering cannot hold a
//! handler forever.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use service_layer::ports::{Notification, NotificationError, Notifications};
use url::{Host, Url};

use crate::sql::redact_url;

/// Where out-of-stock mail goes unless configured otherwise (CONTRACT.md
/// section 4, as in the book).
pub const DEFAULT_RECIPIENT: &str = "stock@made.com";
/// Who out-of-stock mail comes from unless configured otherwise.
pub const DEFAULT_SENDER: &str = "allocations@example.com";
/// SMTP's own port, when the URL names none.
const DEFAULT_PORT: u16 = 25;
/// The longest one email may take, connecting included, unless
/// [`EmailNotifications::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Why one email was not sent; carried inside a [`NotificationError`].
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("cannot build the email: {0}")]
    Build(#[source] lettre::error::Error),
    #[error("SMTP server {server} refused or failed: {cause}")]
    Smtp {
        server: String,
        #[source]
        cause: lettre::transport::smtp::Error,
    },
    #[error("SMTP server {server} did not finish within {after:?}")]
    TimedOut { server: String, after: Duration },
}

/// Sends each notification as a plain-text email to one recipient.
#[derive(Clone)]
pub struct EmailNotifications {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    recipient: Mailbox,
    sender: Mailbox,
    /// `host:port`, for messages.
    server: String,
    timeout: Duration,
}

impl fmt::Debug for EmailNotifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailNotifications")
            .field("server", &self.server)
            .field("recipient", &self.recipient.to_string())
            .field("sender", &self.sender.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmailNotifications {
    /// Mail through the SMTP server at `smtp_url` (`smtp://host[:port]`,
    /// port 25 by default) to `recipient`, from `sender`
    /// ([`DEFAULT_RECIPIENT`] and [`DEFAULT_SENDER`] are the service's
    /// defaults). Nothing is contacted until the first email.
    pub fn new(smtp_url: &str, recipient: &str, sender: &str) -> Result<Self, EmailConfigError> {
        let (host, port) = parse_smtp_url(smtp_url)?;
        let recipient = mailbox("recipient", recipient)?;
        let sender = mailbox("sender", sender)?;
        // "Dangerous" only in that it speaks plain SMTP, which is what an
        // smtp:// URL asks for. lettre's timeout bounds the TCP connect;
        // `send` bounds the whole exchange (lettre's tokio transport does
        // not time out reads, so a server that accepts and then stays
        // silent would otherwise hang the handler).
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(DEFAULT_TIMEOUT))
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
            server,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The longest one email may take, connecting included.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn send_email(&self, notification: &Notification) -> Result<(), EmailError> {
        let email = Message::builder()
            .from(self.sender.clone())
            .to(self.recipient.clone())
            .subject(notification.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(EmailError::Build)?;
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(cause)) => Err(EmailError::Smtp {
                server: self.server.clone(),
                cause,
            }),
            Err(_) => Err(EmailError::TimedOut {
                server: self.server.clone(),
                after: self.timeout,
            }),
        }
    }
}

#[async_trait]
impl Notifications for EmailNotifications {
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError> {
        self.send_email(notification).await?;
        tracing::info!(
            server = %self.server,
            recipient = %self.recipient,
            subject = %notification.subject,
            "notification emailed"
        );
        Ok(())
    }
}

impl From<EmailError> for NotificationError {
    fn from(error: EmailError) -> Self {
        Self(Box::new(error))
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
        let error =
            EmailNotifications::new("smtp://localhost:1025", "not an address", DEFAULT_SENDER)
                .expect_err("invalid recipient");
        assert!(
            error
                .to_string()
                .starts_with("invalid recipient email address"),
            "{error}"
        );
        assert!(EmailNotifications::new("smtp://localhost:1025", DEFAULT_RECIPIENT, "@").is_err());
        let ok = EmailNotifications::new(
            "smtp://localhost:1025",
            DEFAULT_RECIPIENT,
            "Allocations <allocations@example.com>",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
