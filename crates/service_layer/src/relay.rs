//! The outbox relay (transactional outbox pattern, the book's chapter 11
//! done without its footgun). Commits write the messages for other systems
//! into the outbox table, in the same transaction as the change; the relay
//! publishes what was committed and marks it sent.
//!
//! Delivery is at least once: a message is marked sent only after it was
//! published, so a crash in between publishes it again (consumers drop the
//! duplicate by its `message_id`). Several relays may run at once: each
//! claims a batch for a lease, and the others skip claimed messages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::ports::StoreError;
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
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            linger: Duration::from_millis(10),
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

/// Publishes committed outbox messages. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct OutboxRelay<O> {
    outbox: O,
    publisher: Arc<dyn Publisher>,
    wakeup: Arc<Notify>,
    settings: RelaySettings,
}

impl<O: Outbox> OutboxRelay<O> {
    /// `wakeup` is the bus's signal that a commit just wrote to the outbox.
    pub fn new(
        outbox: O,
        publisher: Arc<dyn Publisher>,
        wakeup: Arc<Notify>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            publisher,
            wakeup,
            settings,
        }
    }

    /// Publishes everything waiting now, round by round, and returns how
    /// many messages went out. Stops at the first failure, leaving the
    /// unpublished messages for the next attempt.
    pub async fn relay_pending(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let claimed = self
                .outbox
                .claim(self.settings.batch_size, self.settings.lease)
                .await?;
            if claimed.is_empty() {
                return Ok(published);
            }
            let mut sent = Vec::with_capacity(claimed.len());
            let mut failure = None;
            for message in &claimed {
                match self.publisher.publish(&message.message).await {
                    Ok(()) => sent.push(message.position),
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            self.outbox.mark_sent(&sent).await?;
            published += sent.len();
            if let Some(error) = failure {
                // Give the rest back now rather than when the lease ends, so
                // they go out as soon as publishing works again.
                let unsent: Vec<_> = claimed[sent.len()..].iter().map(|m| m.position).collect();
                self.outbox.release(&unsent).await?;
                return Err(error.into());
            }
            // A short batch took everything there was: asking again would
            // only find what was committed since, which its wake-up brings.
            if claimed.len() < self.settings.batch_size as usize {
                return Ok(published);
            }
        }
    }

    /// Relays until `shutdown` resolves, then publishes what is pending one
    /// last time. Waits for a commit's wake-up (then lingers) or the idle
    /// poll when there is nothing to do, and backs off exponentially while
    /// failing.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::ZERO;
        loop {
            let pause = match self.relay_pending().await {
                Ok(published) => {
                    if published > 0 {
                        debug!(published, "relayed outbox messages");
                    }
                    backoff = Duration::ZERO;
                    self.settings.idle_poll
                }
                Err(error) => {
                    backoff = (backoff * 2)
                        .max(Duration::from_millis(100))
                        .min(self.settings.max_backoff);
                    warn!(%error, retry_in = ?backoff, "outbox relay failed; messages stay in the outbox");
                    backoff
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wakeup.notified(), if backoff.is_zero() => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(self.settings.linger) => {}
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
        match self.relay_pending().await {
            Ok(published) => info!(published, "outbox relay stopped"),
            Err(error) => warn!(%error, "outbox relay stopped; unsent messages stay in the outbox"),
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
        wakeup: Arc<Notify>,
    }

    /// A store with `orders` lines allocated and their messages in the outbox.
    async fn with_allocations(orders: usize) -> Setup {
        let store = MemoryStore::new();
        let wakeup = Arc::new(Notify::new());
        let bus = Arc::new(MessageBus::new(
            store.clone(),
            Arc::new(RecordingNotifications::new()),
            wakeup.clone(),
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
        Setup { store, bus, wakeup }
    }

    async fn allocate(bus: &Arc<MessageBus<MemoryStore>>, n: usize) {
        let command = Allocate {
            orderid: OrderId::parse(&format!("o{n}")).expect("orderid"),
            sku: Sku::parse("LAMP").expect("sku"),
            qty: Quantity::parse(1, "qty").expect("qty"),
        };
        bus.handle(command).await.expect("allocated");
    }

    fn relay(setup: &Setup, publisher: &Arc<RecordingPublisher>) -> OutboxRelay<MemoryStore> {
        let settings = RelaySettings {
            batch_size: 2,
            ..RelaySettings::default()
        };
        OutboxRelay::new(
            setup.store.clone(),
            publisher.clone(),
            setup.wakeup.clone(),
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
}
