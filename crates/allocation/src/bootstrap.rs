//! Dependency injection (book chapter 13): the one place that picks concrete
//! adapters and wires them into the message bus and the outbox relay.
//! Handlers and entrypoints only ever see the traits.

use std::sync::Arc;

use adapters::email::{EmailNotifications, EmailSettings};
use adapters::log::{LogNotifications, LogPublisher};
use adapters::redis::RedisPublisher;
use adapters::sql::{DatabaseUrl, PoolSettings, SqlStore};
use service_layer::ports::{Destination, Notifications, Outbox, Publisher};
use service_layer::relay::{NotificationPublisher, OutboxRelay, RelaySettings, Wakeups};
use service_layer::{MessageBus, RetryPolicy, Store};

use crate::config::MessagingArgs;

/// The adapters through which the service tells the outside world what
/// happened: notifications (email when SMTP is configured) and the
/// publisher of messages for other systems (Redis when configured); the log
/// for whichever is not. Chosen from the [`MessagingArgs`] by
/// [`OutboundAdapters::start`]. Both are called by outbox relays only.
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
    /// The adapters the configuration asks for. Fails on a malformed URL or
    /// address; an unreachable server is not an error here (it may come up
    /// later, and the outbox keeps what waits for it).
    pub fn start(args: &MessagingArgs) -> anyhow::Result<Self> {
        let notifications: Arc<dyn Notifications> = match &args.smtp_url {
            Some(url) => Arc::new(EmailNotifications::new(
                url,
                &args.notify_email,
                &args.notify_from,
                EmailSettings::default(),
            )?),
            None => Arc::new(LogNotifications),
        };
        let publisher: Arc<dyn Publisher> = match &args.redis_url {
            Some(url) => Arc::new(RedisPublisher::connect(url, !args.streams.no_streams)?),
            None => Arc::new(LogPublisher),
        };
        Ok(Self {
            notifications,
            publisher,
        })
    }
}

/// The service, wired: the bus for commands, a relay per outbox
/// destination, and the store that also answers queries.
#[derive(Debug)]
pub struct Service<S> {
    pub bus: Arc<MessageBus<S>>,
    /// Messages for other systems, through the publisher.
    pub relay: Arc<OutboxRelay<S>>,
    /// Emails for people, through the notifications.
    pub notifications_relay: Arc<OutboxRelay<S>>,
    pub store: S,
}

impl<S> Service<S> {
    /// Every relay, to run side by side.
    pub fn relays(&self) -> [Arc<OutboxRelay<S>>; 2] {
        [
            Arc::clone(&self.relay),
            Arc::clone(&self.notifications_relay),
        ]
    }
}

/// Builds the message bus and the outbox relays over `store`.
pub fn bootstrap<S: Store + Outbox>(store: S, outbound: OutboundAdapters) -> Service<S> {
    // The bus rings a destination's relay after each commit that wrote
    // messages for it, so they go out at once instead of at its next poll.
    let outbox_written = Wakeups::new();
    let bus = MessageBus::new(
        store.clone(),
        outbox_written.clone(),
        RetryPolicy::default(),
    );
    let relay = |destination, publisher, settings| {
        Arc::new(OutboxRelay::new(
            store.clone(),
            destination,
            publisher,
            outbox_written.of(destination),
            settings,
        ))
    };
    // An email may take the SMTP timeout (10 s) and goes alone: a round of
    // them must end within the lease (30 s), or another instance's relay
    // would claim and send the same emails again.
    let email_round = RelaySettings {
        batch_size: 2,
        ..RelaySettings::default()
    };
    let notifications = Arc::new(NotificationPublisher::new(outbound.notifications));
    Service {
        bus: Arc::new(bus),
        relay: relay(
            Destination::Messages,
            outbound.publisher,
            RelaySettings::default(),
        ),
        notifications_relay: relay(Destination::Notifications, notifications, email_round),
        store,
    }
}

/// Connects to the SQLite or PostgreSQL database and migrates its schema.
pub async fn open_sql_store(url: &DatabaseUrl, pool: PoolSettings) -> anyhow::Result<SqlStore> {
    // The error already names the database, password hidden.
    Ok(SqlStore::connect(url.expose(), pool).await?)
}
