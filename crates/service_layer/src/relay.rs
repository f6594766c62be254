//! The outbox relay (transactional outbox pattern, the book's chapter 11
//! done without its footgun). Commits write the messages for other systems,
//! and the out-of-stock emails for people, into the outbox table, in the
//! same transaction as the change; a relay per [`Destination`] sends what
//! was committed and marks it sent.
//!
//! Delivery is at least once: a message is marked sent only after it went
//! out, so a crash in between sends it again (consumers drop the duplicate
//! by its `message_id`, mail systems by the email's Message-ID). Several
//! relays of a destination may run at once (one per instance): each claims
//! a batch for a lease, and the others skip claimed messages. Relays of
//! different destinations never claim each other's messages, so SMTP being
//! down holds up no Redis message, nor the other way round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::handlers::notification_of;
use crate::ports::{Destination, Notifications, OutboxMessage, StoreError};
use crate::ports::{Outbox, PublishError, Publisher};

/// How the relay paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    /// Messages claimed and published per round.
    pub batch_size: u32,
    /// How long a claim keeps other relays away; longer than a round takes.
    pub lease: Duration,
    /// How often to look for messages when no commit in this process said
    /// there are some (commits in other processes only show up this way).
    pub idle_poll: Duration,
    /// Longest wait between attempts while publishing keeps failing.
    pub max_backoff: Duration,
    /// How long to wait after a commit's wake-up before claiming, so that
    /// the commits landing meanwhile go out in the same round. Under load a
    /// round per commit would cost the database more statements than the
    /// commits themselves; this bounds the rounds to one per linger, for
    /// that much more latency on each message.
    pub linger: Duration,
    /// How long the relay may go on once shutdown has begun: the round in
    /// hand and one last one. What is not sent by then stays in the outbox
    /// for the next start (or another instance): a hung server must not
    /// hold up the exit, and the outbox loses nothing.
    pub shutdown_grace: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            linger: Duration::from_millis(10),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Why a round of relaying stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("outbox unavailable: {0}")]
    Store(#[from] StoreError),
}

/// The bus's wake-up calls to the relays, one per destination: a commit
/// that wrote messages for a destination rings its relay, which then sends
/// them at once instead of at its next poll. One `Notify` each, because
/// `notify_one` wakes a single waiter: with one for both, the email relay
/// could take the call meant for the Redis one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    messages: Arc<Notify>,
    notifications: Arc<Notify>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the relay of `destination` waits on.
    pub fn of(&self, destination: Destination) -> Arc<Notify> {
        match destination {
            Destination::Messages => Arc::clone(&self.messages),
            Destination::Notifications => Arc::clone(&self.notifications),
        }
    }

    /// Wakes the relay of `destination` (or, if it is busy, has its next
    /// wait end at once).
    pub fn ring(&self, destination: Destination) {
        match destination {
            Destination::Messages => self.messages.notify_one(),
            Destination::Notifications => self.notifications.notify_one(),
        }
    }
}

/// The notifications relay's publisher: turns each outbox message into the
/// notification it is and sends it through the [`Notifications`] port
/// (email, or the log). A failed send is a failed publish: the relay keeps
/// the notification and tries again with its backoff.
#[derive(Debug)]
pub struct NotificationPublisher {
    notifications: Arc<dyn Notifications>,
}

impl NotificationPublisher {
    pub fn new(notifications: Arc<dyn Notifications>) -> Self {
        Self { notifications }
    }
}

/// An outbox message that is not a notification, claimed as one: a row
/// written with the wrong destination.
#[derive(Debug, thiserror::Error)]
#[error("outbox message {message_id} is not a notification")]
pub struct NotANotification {
    pub message_id: uuid::Uuid,
}

#[async_trait]
impl Publisher for NotificationPublisher {
    /// One email after the other: a failed send stops the round there, so
    /// that nobody gets an email twice for the ones sent before it.
    async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError> {
        for (sent, message) in messages.iter().enumerate() {
            let notification = notification_of(message).ok_or_else(|| {
                PublishError::after(
                    sent,
                    NotANotification {
                        message_id: message.message_id,
                    },
                )
            })?;
            self.notifications
                .send(&notification)
                .await
                .map_err(|error| PublishError::after(sent, error))?;
        }
        Ok(())
    }
}

/// Sends the committed outbox messages of one destination. Cheap to share
/// behind an `Arc`.
#[derive(Debug)]
pub struct OutboxRelay<O> {
    outbox: O,
    destination: Destination,
    publisher: Arc<dyn Publisher>,
    wakeup: Arc<Notify>,
    settings: RelaySettings,
}

impl<O: Outbox> OutboxRelay<O> {
    /// Sends `destination`'s messages through `publisher`. `wakeup` is the
    /// bus's signal that a commit just wrote some (`Wakeups::of`).
    pub fn new(
        outbox: O,
        destination: Destination,
        publisher: Arc<dyn Publisher>,
        wakeup: Arc<Notify>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            destination,
            publisher,
            wakeup,
            settings,
        }
    }

    pub fn destination(&self) -> Destination {
        self.destination
    }

    /// Publishes everything waiting now, round by round, and returns how
    /// many messages went out. Stops at the first failure, leaving the
    /// unpublished messages for the next attempt.
    pub async fn relay_pending(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let claimed = self
                .outbox
                .claim(
                    self.settings.batch_size,
                    self.settings.lease,
                    self.destination,
                )
                .await?;
            if claimed.is_empty() {
                return Ok(published);
            }
            let (positions, messages): (Vec<i64>, Vec<OutboxMessage>) = claimed
                .into_iter()
                .map(|claimed| (claimed.position, claimed.message))
                .unzip();
            let outcome = self.publisher.publish(&messages).await;
            let sent = match &outcome {
                Ok(()) => positions.len(),
                Err(error) => error.sent.min(positions.len()),
            };
            self.outbox.mark_sent(&positions[..sent]).await?;
            published += sent;
            if let Err(error) = outcome {
                // Give the rest back now rather than when the lease ends, so
                // they go out as soon as publishing works again.
                self.outbox.release(&positions[sent..]).await?;
                return Err(error.into());
            }
            // A short batch took everything there was: asking again would
            // only find what was committed since, which its wake-up brings.
            if positions.len() < self.settings.batch_size as usize {
                return Ok(published);
            }
        }
    }

    /// Relays until `shutdown` resolves, then publishes what is pending one
    /// last time. Waits for a commit's wake-up (then lingers) or the idle
    /// poll when there is nothing to do, and backs off exponentially while
    /// failing. Once `shutdown` resolves, the round in hand and the last
    /// one get [`RelaySettings::shutdown_grace`] together; a round cut off
    /// leaves its messages in the outbox (claimed ones until their lease
    /// ends), so a hung server delays the exit by that much at most.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let destination = self.destination;
        tokio::pin!(shutdown);
        let mut backoff = Duration::ZERO;
        let deadline = loop {
            let round = self.relay_pending();
            tokio::pin!(round);
            let outcome = tokio::select! {
                outcome = &mut round => outcome,
                () = &mut shutdown => {
                    let deadline = Instant::now() + self.settings.shutdown_grace;
                    if tokio::time::timeout_at(deadline, round).await.is_err() {
                        warn!(%destination, "outbox relay stopped mid-round; unsent messages stay in the outbox");
                        return;
                    }
                    break deadline;
                }
            };
            let pause = match outcome {
                Ok(published) => {
                    if published > 0 {
                        debug!(%destination, published, "relayed outbox messages");
                    }
                    backoff = Duration::ZERO;
                    self.settings.idle_poll
                }
                Err(error) => {
                    backoff = (backoff * 2)
                        .max(Duration::from_millis(100))
                        .min(self.settings.max_backoff);
                    warn!(%destination, %error, retry_in = ?backoff, "outbox relay failed; messages stay in the outbox");
                    backoff
                }
            };
            tokio::select! {
                () = &mut shutdown => break Instant::now() + self.settings.shutdown_grace,
                () = self.wakeup.notified(), if backoff.is_zero() => {
                    tokio::select! {
                        () = &mut shutdown => break Instant::now() + self.settings.shutdown_grace,
                        () = tokio::time::sleep(self.settings.linger) => {}
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        };
        match tokio::time::timeout_at(deadline, self.relay_pending()).await {
            Ok(Ok(published)) => info!(%destination, published, "outbox relay stopped"),
            Ok(Err(error)) => {
                warn!(%destination, %error, "outbox relay stopped; unsent messages stay in the outbox");
            }
            Err(_) => warn!(
                %destination,
                "outbox relay stopped mid-round; unsent messages stay in the outbox"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::commands::{Allocate, CreateBatch};
    use domain::{BatchRef, OrderId, Quantity, Sku};

    use super::*;
    use crate::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
    use crate::ports::OutboxMessage;
    use crate::{MessageBus, RetryPolicy};

    struct Setup {
        store: MemoryStore,
        bus: Arc<MessageBus<MemoryStore>>,
        wakeups: Wakeups,
    }

    /// A store with `orders` lines allocated and their messages in the outbox.
    async fn with_allocations(orders: usize) -> Setup {
        let store = MemoryStore::new();
        let wakeups = Wakeups::new();
        let bus = Arc::new(MessageBus::new(
            store.clone(),
            wakeups.clone(),
            RetryPolicy::default(),
        ));
        let sku = Sku::parse("LAMP").expect("sku");
        let batch = CreateBatch {
            reference: BatchRef::parse("b1").expect("ref"),
            sku: sku.clone(),
            qty: Quantity::parse(1000, "qty").expect("qty"),
            eta: None,
        };
        bus.handle(batch).await.expect("created");
        for n in 0..orders {
            allocate(&bus, n).await;
        }
        Setup {
            store,
            bus,
            wakeups,
        }
    }

    async fn allocate(bus: &Arc<MessageBus<MemoryStore>>, n: usize) {
        let command = Allocate {
            orderid: OrderId::parse(&format!("o{n}")).expect("orderid"),
            sku: Sku::parse("LAMP").expect("sku"),
            qty: Quantity::parse(1, "qty").expect("qty"),
        };
        bus.handle(command).await.expect("allocated");
    }

    fn relay<P: Publisher + 'static>(
        setup: &Setup,
        publisher: &Arc<P>,
    ) -> OutboxRelay<MemoryStore> {
        let settings = RelaySettings {
            batch_size: 2,
            ..RelaySettings::default()
        };
        OutboxRelay::new(
            setup.store.clone(),
            Destination::Messages,
            publisher.clone(),
            setup.wakeups.of(Destination::Messages),
            settings,
        )
    }

    fn orderids(publisher: &RecordingPublisher) -> Vec<String> {
        let published = publisher.published();
        published
            .iter()
            .filter_map(OutboxMessage::line_allocated)
            .map(|event| event.orderid.to_string())
            .collect()
    }

    #[tokio::test]
    async fn publishes_committed_messages_once_in_order() {
        let setup = with_allocations(5).await;
        let publisher = Arc::new(RecordingPublisher::new());
        let relay = relay(&setup, &publisher);

        assert_eq!(relay.relay_pending().await.expect("relayed"), 5);
        assert_eq!(relay.relay_pending().await.expect("relayed"), 0);
        assert_eq!(orderids(&publisher), ["o0", "o1", "o2", "o3", "o4"]);
        assert!(setup.store.unsent_messages().is_empty());
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_rest_for_the_next_attempt() {
        let setup = with_allocations(3).await;
        let publisher = Arc::new(RecordingPublisher::failing(1));
        let relay = relay(&setup, &publisher);

        assert!(matches!(
            relay.relay_pending().await,
            Err(RelayError::Publish(_))
        ));
        assert_eq!(setup.store.unsent_messages().len(), 3, "nothing lost");
        assert_eq!(
            relay.relay_pending().await.expect("relayed"),
            3,
            "released at once"
        );
        assert_eq!(orderids(&publisher), ["o0", "o1", "o2"]);
    }

    /// A round that breaks off part-way: what went out is marked sent and
    /// never sent again, the rest goes out at the next attempt.
    #[tokio::test]
    async fn a_round_cut_short_keeps_only_what_did_not_go_out() {
        /// Sends the first message of its first round, then fails.
        #[derive(Debug, Default)]
        struct BreaksAfterOne {
            sent: RecordingPublisher,
            broke: std::sync::atomic::AtomicBool,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("connection lost")]
        struct ConnectionLost;
        #[async_trait]
        impl Publisher for BreaksAfterOne {
            async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError> {
                if self.broke.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return self.sent.publish(messages).await;
                }
                self.sent.publish(&messages[..1]).await?;
                Err(PublishError::after(1, ConnectionLost))
            }
        }
        let setup = with_allocations(3).await;
        let publisher = Arc::new(BreaksAfterOne::default());
        let relay = relay(&setup, &publisher);

        assert!(matches!(
            relay.relay_pending().await,
            Err(RelayError::Publish(PublishError { sent: 1, .. }))
        ));
        assert_eq!(setup.store.unsent_messages().len(), 2, "the first is sent");
        assert_eq!(relay.relay_pending().await.expect("relayed"), 2);
        assert_eq!(
            orderids(&publisher.sent),
            ["o0", "o1", "o2"],
            "each once, in order"
        );
    }

    #[tokio::test]
    async fn two_relays_never_publish_the_same_message() {
        let setup = with_allocations(40).await;
        let publisher = Arc::new(RecordingPublisher::new());
        let (first, second) = (relay(&setup, &publisher), relay(&setup, &publisher));

        let (a, b) = tokio::join!(first.relay_pending(), second.relay_pending());
        assert_eq!(a.expect("relayed") + b.expect("relayed"), 40);
        let mut published = orderids(&publisher);
        published.sort();
        published.dedup();
        assert_eq!(published.len(), 40, "each message once");
    }

    #[tokio::test]
    async fn run_publishes_as_commits_happen_and_flushes_on_shutdown() {
        let setup = with_allocations(0).await;
        let publisher = Arc::new(RecordingPublisher::new());
        let relay = Arc::new(relay(&setup, &publisher));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let relay = relay.clone();
            async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
        });

        allocate(&setup.bus, 1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while publisher.published().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(orderids(&publisher), ["o1"], "published after the commit");

        allocate(&setup.bus, 2).await;
        stop.send(()).expect("relay still running");
        running.await.expect("relay task");
        assert_eq!(orderids(&publisher), ["o1", "o2"], "flushed on shutdown");
    }

    /// An allocation that finds no stock for `orderid`: its email goes to
    /// the outbox.
    async fn run_out(bus: &Arc<MessageBus<MemoryStore>>, orderid: &str) {
        let command = Allocate {
            orderid: OrderId::parse(orderid).expect("orderid"),
            sku: Sku::parse("LAMP").expect("sku"),
            qty: Quantity::parse(5000, "qty").expect("qty"),
        };
        bus.handle(command).await.expect("handled");
    }

    fn email_relay(
        setup: &Setup,
        notifications: &Arc<RecordingNotifications>,
    ) -> OutboxRelay<MemoryStore> {
        OutboxRelay::new(
            setup.store.clone(),
            Destination::Notifications,
            Arc::new(NotificationPublisher::new(notifications.clone())),
            setup.wakeups.of(Destination::Notifications),
            RelaySettings::default(),
        )
    }

    /// Each relay claims its own destination's messages only: emails that
    /// keep failing (SMTP down) hold up no Redis message, and the Redis
    /// relay never takes an email.
    #[tokio::test]
    async fn a_failing_email_relay_does_not_hold_up_messages() {
        let setup = with_allocations(1).await;
        run_out(&setup.bus, "x1").await;
        allocate(&setup.bus, 2).await;
        let notifications = Arc::new(RecordingNotifications::failing(u32::MAX));
        let emails = email_relay(&setup, &notifications);
        let publisher = Arc::new(RecordingPublisher::new());
        let messages = relay(&setup, &publisher);

        assert!(emails.relay_pending().await.is_err(), "SMTP is down");
        assert_eq!(messages.relay_pending().await.expect("relayed"), 2);
        assert_eq!(orderids(&publisher), ["o0", "o2"]);
        assert_eq!(publisher.published().len(), 2, "no email went to Redis");
        let waiting = setup.store.unsent_messages();
        assert_eq!(waiting.len(), 1, "the email waits");
        assert_eq!(waiting[0].message.destination(), Destination::Notifications);
    }

    /// The same the other way round: a failing publisher leaves emails
    /// going out.
    #[tokio::test]
    async fn a_failing_message_relay_does_not_hold_up_emails() {
        let setup = with_allocations(2).await;
        run_out(&setup.bus, "x1").await;
        run_out(&setup.bus, "x2").await;
        let publisher = Arc::new(RecordingPublisher::failing(u32::MAX));
        let messages = relay(&setup, &publisher);
        let notifications = Arc::new(RecordingNotifications::new());
        let emails = email_relay(&setup, &notifications);

        assert!(messages.relay_pending().await.is_err(), "Redis is down");
        assert_eq!(emails.relay_pending().await.expect("sent"), 2);
        let sent = notifications.sent();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|n| n.subject == "Out of stock for LAMP"));
        assert_ne!(sent[0].id, sent[1].id, "an id per email");
        assert_eq!(setup.store.unsent_messages().len(), 2, "messages wait");
    }

    /// Two instances' email relays send each email once.
    #[tokio::test]
    async fn two_email_relays_send_each_email_once() {
        let setup = with_allocations(0).await;
        for n in 0..10 {
            run_out(&setup.bus, &format!("x{n}")).await;
        }
        let notifications = Arc::new(RecordingNotifications::new());
        let (first, second) = (
            email_relay(&setup, &notifications),
            email_relay(&setup, &notifications),
        );
        let (a, b) = tokio::join!(first.relay_pending(), second.relay_pending());
        assert_eq!(a.expect("sent") + b.expect("sent"), 10);
        let mut ids: Vec<_> = notifications.sent().iter().map(|n| n.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10, "each email once");
    }

    /// A commit that wrote an email wakes the email relay: it sends at once,
    /// not at its next poll.
    #[tokio::test]
    async fn the_email_relay_is_woken_by_the_commit() {
        let setup = with_allocations(0).await;
        let notifications = Arc::new(RecordingNotifications::new());
        let settings = RelaySettings {
            idle_poll: Duration::from_secs(3600),
            ..RelaySettings::default()
        };
        let relay = Arc::new(OutboxRelay::new(
            setup.store.clone(),
            Destination::Notifications,
            Arc::new(NotificationPublisher::new(notifications.clone())),
            setup.wakeups.of(Destination::Notifications),
            settings,
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let relay = relay.clone();
            async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
        });
        // Let the relay's first (empty) round pass and its wait begin.
        tokio::task::yield_now().await;

        run_out(&setup.bus, "x1").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while notifications.sent().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(notifications.sent().len(), 1, "sent without a poll");
        stop.send(()).expect("relay still running");
        running.await.expect("relay task");
    }

    /// Shutdown does not wait for a server that hangs beyond the grace: the
    /// email stays in the outbox for the next start.
    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_on_a_hung_server_after_its_grace() {
        #[derive(Debug)]
        struct Hung;
        #[async_trait]
        impl Publisher for Hung {
            async fn publish(&self, _: &[OutboxMessage]) -> Result<(), PublishError> {
                std::future::pending().await
            }
        }
        let setup = with_allocations(0).await;
        run_out(&setup.bus, "x1").await;
        let relay = OutboxRelay::new(
            setup.store.clone(),
            Destination::Notifications,
            Arc::new(Hung),
            setup.wakeups.of(Destination::Notifications),
            RelaySettings::default(),
        );
        let started = tokio::time::Instant::now();
        relay
            .run(tokio::time::sleep(Duration::from_millis(50)))
            .await;
        let took = started.elapsed();
        let grace = RelaySettings::default().shutdown_grace;
        assert!(took <= grace + Duration::from_millis(100), "took {took:?}");
        assert_eq!(setup.store.unsent_messages().len(), 1, "the email waits");
    }
}
