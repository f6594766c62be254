//! Dependency injection (book chapter 13): the one place that picks concrete
//! adapters and wires them into the message bus and the outbox relay.
//! Handlers and entrypoints only ever see the traits.

use std::sync::Arc;

use adapters::email::{EmailNotifications, EmailSender, EmailSettings, SHUTDOWN_GRACE};
use adapters::log::{LogNotifications, LogPublisher};
use adapters::redis::RedisPublisher;
use adapters::sql::{DatabaseUrl, PoolSettings, SqlStore};
use service_layer::ports::{Notifications, Outbox, Publisher};
use service_layer::relay::{OutboxRelay, RelaySettings};
use service_layer::{MessageBus, RetryPolicy, Store};
use tokio::sync::Notify;

use crate::config::MessagingArgs;

/// The adapters through which the service tells the outside world what
/// happened: notifications (email when SMTP is configured) and the outbox
/// relay's publisher (Redis when configured); the log for whichever is not.
/// Chosen from the [`MessagingArgs`] by [`OutboundAdapters::start`].
#[derive(Debug, Clone)]
pub struct OutboundAdapters {
    pub notifications: Arc<dyn Notifications>,
    pub publisher: Arc<dyn Publisher>,
}

impl Default for OutboundAdapters {
    /// Log-only: what runs with no SMTP server and no Redis configured.
    fn default() -> Self {
        Self {
            notifications: Arc::new(LogNotifications),
            publisher: Arc::new(LogPublisher),
        }
    }
}

impl OutboundAdapters {
    /// The adapters the configuration asks for, their background work
    /// started. Fails on a malformed URL; an unreachable server is not an
    /// error here (it may come up later).
    pub fn start(args: &MessagingArgs) -> anyhow::Result<(Self, OutboundAdapterTasks)> {
        let mut tasks = OutboundAdapterTasks::default();
        let notifications: Arc<dyn Notifications> = match &args.smtp_url {
            Some(url) => {
                let (email, sender) = EmailNotifications::start(
                    url,
                    &args.notify_email,
                    &args.notify_from,
                    EmailSettings::default(),
                )?;
                tasks.email = Some(sender);
                Arc::new(email)
            }
            None => Arc::new(LogNotifications),
        };
        let publisher: Arc<dyn Publisher> = match &args.redis_url {
            Some(url) => Arc::new(RedisPublisher::connect(url, !args.streams.no_streams)?),
            None => Arc::new(LogPublisher),
        };
        let adapters = Self {
            notifications,
            publisher,
        };
        Ok((adapters, tasks))
    }
}

/// The background tasks of the [`OutboundAdapters`], to be given time to
/// finish at shutdown: today the sender of queued emails.
#[derive(Debug, Default)]
pub struct OutboundAdapterTasks {
    email: Option<EmailSender>,
}

impl OutboundAdapterTasks {
    /// The last step of a shutdown, once no command can queue another
    /// email: the queued ones get a short grace period
    /// ([`SHUTDOWN_GRACE`]) to go out, and the rest are dropped (logged and
    /// counted), so that a hung SMTP server cannot hold up the exit.
    pub async fn finish(self) {
        if let Some(email) = self.email {
            email.finish(SHUTDOWN_GRACE).await;
        }
    }
}

/// The service, wired: the bus for commands, the relay for the outbox, and
/// the store that also answers queries.
#[derive(Debug)]
pub struct Service<S> {
    pub bus: Arc<MessageBus<S>>,
    pub relay: Arc<OutboxRelay<S>>,
    pub store: S,
}

/// Builds the message bus and the outbox relay over `store`.
pub fn bootstrap<S: Store + Outbox>(store: S, outbound: OutboundAdapters) -> Service<S> {
    // The bus rings this after each commit that wrote to the outbox, so the
    // relay publishes at once instead of at its next poll.
    let outbox_written = Arc::new(Notify::new());
    let bus = MessageBus::new(
        store.clone(),
        outbound.notifications,
        outbox_written.clone(),
        RetryPolicy::default(),
    );
    let relay = OutboxRelay::new(
        store.clone(),
        outbound.publisher,
        outbox_written,
        RelaySettings::default(),
    );
    Service {
        bus: Arc::new(bus),
        relay: Arc::new(relay),
        store,
    }
}

/// Connects to the SQLite or PostgreSQL database and migrates its schema.
pub async fn open_sql_store(url: &DatabaseUrl, pool: PoolSettings) -> anyhow::Result<SqlStore> {
    // The error already names the database, password hidden.
    Ok(SqlStore::connect(url.expose(), pool).await?)
}
