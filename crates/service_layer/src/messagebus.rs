//! The message bus (book chapters 9 and 10).
//!
//! [`MessageBus::handle`] runs a command in a unit of work, runs the
//! transactional event handlers (read model, outbox) in that same unit of
//! work, and commits; then it handles the command's events, breadth-first,
//! including the events of the follow-up commands they start. How a command
//! is run, in a group with others of its kind and again after a version
//! conflict, is the `runner`'s business.
//!
//! A command's error goes to its caller; an event handler's error is logged
//! and retried with exponential backoff, and never fails the command.

use std::collections::VecDeque;
use std::sync::Arc;

use domain::{Command, Event};
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::caller::{Caller, ToTheEnd};
use crate::error::Error;
use crate::handlers;
use crate::ports::{Clock, Destination, Store};
use crate::relay::Wakeups;
use crate::runner::{Committed, Grouped, RetryPolicy, Runner};
use crate::telemetry::{count_handled, event_handled_key, handled_key, metric_names};

/// Why an after-commit event handler failed.
#[derive(Debug, thiserror::Error)]
enum EventHandlerError {
    #[error("follow-up command failed: {0}")]
    Command(#[from] Error),
}

impl EventHandlerError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Command(error) => error.is_transient(),
        }
    }
}

/// Routes commands and events to their handlers. Cheap to share: wrap it in
/// an `Arc`, every handler takes `&self`.
#[derive(Debug)]
pub struct MessageBus<S> {
    runner: Runner<S>,
    /// Tells the outbox relay of a destination that a commit just wrote
    /// messages for it.
    outbox_written: Wakeups,
    /// The commands running in tasks of their own (see `handle`), for a
    /// shutdown to wait for.
    running: TaskTracker,
}

impl<S> MessageBus<S> {
    /// Reads the time from `clock` instead of the system's (tests move it
    /// on to expire holds).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.runner.set_clock(clock);
        self
    }

    /// The time by the bus's clock: what decides, for a query, whether a
    /// hold has expired.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.runner.clock().now()
    }
}

impl<S: Store> MessageBus<S> {
    /// `outbox_written` wakes the relays (see [`Wakeups`]).
    pub fn new(store: S, outbox_written: Wakeups, retry: RetryPolicy) -> Self {
        Self {
            runner: Runner::new(store, retry),
            outbox_written,
            running: TaskTracker::new(),
        }
    }

    /// Handles a command and everything that follows from it, and returns
    /// the command's reply once its changes are committed.
    ///
    /// A caller that goes away (a client hanging up, a request timing out)
    /// only stops waiting for the answer: the rest of the work moves to a
    /// task of its own (see `caller`), so a unit of work, once begun, always
    /// ends in its `COMMIT` or `ROLLBACK`, and the event handlers its commit
    /// started run. The answer is the truth about what was committed,
    /// whether or not anyone is left to read it. A command whose caller left
    /// while it still waited for its turn never begins: no work for nobody.
    pub async fn handle<C: Grouped>(self: &Arc<Self>, command: C) -> Result<C::Reply, Error> {
        self.handle_delivered(command, None).await
    }

    /// [`handle`](Self::handle) for a command that came in a message which
    /// may be delivered again (a Redis stream entry, under key `delivery`):
    /// its commit records the key, and a later delivery of the same key is
    /// answered [`Error::AlreadyDelivered`] without running it again.
    async fn handle_delivered<C: Grouped>(
        self: &Arc<Self>,
        command: C,
        delivery: Option<Arc<str>>,
    ) -> Result<C::Reply, Error> {
        let bus = Arc::clone(self);
        ToTheEnd::new(&self.running, |caller| {
            bus.handle_to_the_end(command, caller.delivering(delivery))
        })
        .await
    }

    /// Waits until every command has run to its end, those whose callers
    /// went away included: for a clean shutdown, once nothing new comes in,
    /// so that the relay can then publish what they committed.
    pub async fn finish_running_commands(&self) {
        self.running.close();
        self.running.wait().await;
    }

    /// [`handle`](Self::handle)'s work: in the caller's future, or in a
    /// task of its own once the caller has left. The book's `handle`: the
    /// command, then its events.
    ///
    /// It takes the bus and the caller by value so that `handle` can box
    /// this future as it is, with no wrapper holding second copies of them:
    /// every command pays for the box (docs/BENCHMARKS.md, "One path for
    /// every command").
    async fn handle_to_the_end<C: Grouped>(
        self: Arc<Self>,
        command: C,
        caller: Caller,
    ) -> Result<C::Reply, Error> {
        let result = self.runner.run(command, &caller).await;
        count_handled(match &result {
            Ok(_) => handled_key!("command", C::NAME, "ok"),
            Err(Error::CallerLeft) => handled_key!("command", C::NAME, "abandoned"),
            Err(error) if error.is_transient() => handled_key!("command", C::NAME, "failed"),
            Err(_) => handled_key!("command", C::NAME, "rejected"),
        });
        let Committed { reply, events } = result?;
        self.handle_events(events).await;
        Ok(reply)
    }

    /// Handles a command that arrived as data (a message, a follow-up), when
    /// the caller needs no reply. Adding a command without a handler here is
    /// a compile error.
    pub async fn dispatch(self: &Arc<Self>, command: Command) -> Result<(), Error> {
        self.dispatch_delivered(command, None).await
    }

    /// [`dispatch`](Self::dispatch) for a command that came in a message
    /// which may be delivered again, under key `delivery` (see
    /// [`handle`](Self::handle)); `None` for one that cannot.
    pub async fn dispatch_delivered(
        self: &Arc<Self>,
        command: Command,
        delivery: Option<&str>,
    ) -> Result<(), Error> {
        let delivery: Option<Arc<str>> = delivery.map(Arc::from);
        match command {
            Command::CreateBatch(c) => self.handle_delivered(c, delivery).await,
            Command::Allocate(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::AllocateOrder(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::ShipOrder(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::CancelOrder(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::PlaceHold(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::ExtendHold(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::ReleaseHold(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::ChangeBatchQuantity(c) => self.handle_delivered(c, delivery).await,
            Command::AdjustBatch(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::ChangeSettings(c) => self.handle_delivered(c, delivery).await.map(drop),
            Command::Deallocate(c) => self.handle_delivered(c, delivery).await.map(drop),
        }
    }

    /// Breadth-first: the command's events, then the events of what they
    /// started, and so on.
    async fn handle_events(&self, events: Vec<Event>) {
        let mut queue = VecDeque::from(events);
        while let Some(event) = queue.pop_front() {
            queue.extend(self.handle_event_with_retries(&event).await);
        }
    }

    async fn handle_event_with_retries(&self, event: &Event) -> Vec<Event> {
        let mut attempt = 1;
        loop {
            match self.handle_event(event).await {
                Ok(follow_up_events) => {
                    count_handled(event_handled_key(event, true));
                    return follow_up_events;
                }
                Err(error)
                    if error.is_transient()
                        && attempt < self.runner.retry_policy().event_handler_attempts =>
                {
                    warn!(event = event.name(), attempt, %error, "event handler failed, retrying");
                    metrics::counter!(metric_names::EVENT_HANDLER_RETRIES, "event" => event.name())
                        .increment(1);
                    tokio::time::sleep(self.runner.retry_policy().event_handler_wait(attempt))
                        .await;
                    attempt += 1;
                }
                Err(error) => {
                    error!(?event, attempts = attempt, %error, "event handler failed, giving up");
                    metrics::counter!(metric_names::EVENT_HANDLER_GIVE_UPS, "event" => event.name()).increment(1);
                    count_handled(event_handled_key(event, false));
                    return Vec::new();
                }
            }
        }
    }

    /// The after-commit handlers of each event (the transactional ones ran
    /// before commit, see `runner`).
    async fn handle_event(&self, event: &Event) -> Result<Vec<Event>, EventHandlerError> {
        match event {
            // The message is in the outbox already; wake its destination's
            // relay so that it goes out now rather than at the relay's next
            // poll.
            Event::Allocated(_) | Event::StockLevelChanged(_) => {
                self.outbox_written.ring(Destination::Messages);
            }
            Event::OutOfStock(_) => self.outbox_written.ring(Destination::Notifications),
            Event::HoldBroken(e) => {
                let follow_up = handlers::release_broken_hold(e);
                // Boxed: every command's future holds its events' handlers,
                // and a follow-up command inline would make each one as
                // large as two commands' for a path few of them take.
                let committed = Box::pin(self.runner.run(follow_up, &Caller::bus())).await?;
                return Ok(committed.events);
            }
            Event::BatchCreated(_)
            | Event::Deallocated(_)
            | Event::Shipped(_)
            | Event::LineCancelled(_)
            | Event::AllocationCancelled(_)
            | Event::BatchQuantityChanged(_)
            | Event::StockMoved(_)
            | Event::Held(_)
            | Event::HoldExtended(_)
            | Event::HoldReleased(_)
            | Event::HoldConverted(_)
            | Event::Backordered(_)
            | Event::BackorderFilled(_)
            | Event::BackorderWithdrawn(_)
            | Event::SettingsChanged(_) => {}
        }
        Ok(Vec::new())
    }
}
