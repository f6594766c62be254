//! The message bus (book chapters 9 and 10).
//!
//! [`MessageBus::handle`] runs a command in a fresh unit of work, runs the
//! transactional event handlers (read model, outbox) in that same unit of
//! work, and commits. Commands on one product take turns within the process
//! (`product_turns`).
//! `Allocate`, the hot path, is committed in groups instead (see
//! `group_commit`): concurrent allocations share one unit of work and one
//! commit.
//! A version conflict at commit (another instance got there first) runs the
//! whole command again, a bounded number of times with jittered backoff, and
//! with the product locked as it is read so that the retry does not lose
//! again. After the commit, the events are handled breadth-first, including
//! the events of the follow-up commands they start.
//! A command's error goes to its caller; an event handler's error is logged
//! and retried with exponential backoff, and never fails the command.

mod telemetry;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::commands::Allocate;
use domain::{BatchRef, Command, DomainError, Event, OrderId, Sku};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::caller::{Caller, ToTheEnd};
use crate::group_commit::Lanes;
use crate::handlers::{self, CommandHandler};
use crate::ports::{NotificationError, Notifications};
use crate::ports::{Store, StoreError, StoreTransaction};
use crate::product_turns::ProductTurns;
use crate::unit_of_work::UnitOfWork;
use telemetry::{count_handled, event_handled_key, handled_key, record_group_size};

pub use telemetry::metric_names;

/// Why a command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The command names a SKU the service has no batches for.
    #[error("Invalid sku {0}")]
    InvalidSku(Sku),
    /// The domain model refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Every attempt hit a version conflict: the product is too contended.
    #[error(
        "gave up after {attempts} attempts: concurrent changes to the same product kept conflicting"
    )]
    Contention { attempts: u32 },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Its caller went away while the command waited for its turn, so it
    /// never began (see `MessageBus::handle`). Nobody is left to read this.
    #[error("the caller left before the command began; nothing was done")]
    CallerLeft,
}

impl Error {
    /// Whether trying the same command again might succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Contention { .. } | Self::Store(_) | Self::CallerLeft
        )
    }
}

/// How hard the bus tries before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts at a command whose commit hits version conflicts.
    pub command_attempts: u32,
    /// Upper bound of the first conflict backoff; doubles each attempt.
    pub conflict_backoff: Duration,
    /// Attempts at one event handler.
    pub event_handler_attempts: u32,
    /// Wait after the first event handler failure; doubles each attempt.
    pub event_handler_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            command_attempts: 10,
            conflict_backoff: Duration::from_millis(2),
            event_handler_attempts: 3,
            event_handler_backoff: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// "Full jitter": a random wait below an exponentially growing bound, so
    /// that writers that collided once do not collide again in lockstep.
    fn conflict_wait(&self, attempt: u32) -> Duration {
        let bound = self.conflict_backoff.saturating_mul(1 << attempt.min(10));
        bound.mul_f64(rand::rng().random::<f64>())
    }

    fn event_handler_wait(&self, attempt: u32) -> Duration {
        self.event_handler_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(10))
    }
}

/// Why an after-commit event handler failed.
#[derive(Debug, thiserror::Error)]
enum EventHandlerError {
    #[error(transparent)]
    Notification(#[from] NotificationError),
    #[error("follow-up command failed: {0}")]
    Command(#[from] Error),
}

impl EventHandlerError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Command(error) => error.is_transient(),
            Self::Notification(_) => true,
        }
    }
}

/// Routes commands and events to their handlers. Cheap to share: wrap it in
/// an `Arc`, every handler takes `&self`.
#[derive(Debug)]
pub struct MessageBus<S> {
    store: S,
    notifications: Arc<dyn Notifications>,
    /// Tells the outbox relay that a commit just wrote to the outbox.
    outbox_written: Arc<Notify>,
    retry: RetryPolicy,
    product_turns: ProductTurns,
    allocation_lanes: Lanes<Allocate, Handled<Option<BatchRef>>>,
    /// The commands running in tasks of their own (see `handle`), for a
    /// shutdown to wait for.
    running: TaskTracker,
}

/// A command's reply and the events it raised, once committed.
pub(crate) type Handled<R> = Result<(R, Vec<Event>), Error>;

impl<S: Store> MessageBus<S> {
    pub fn new(
        store: S,
        notifications: Arc<dyn Notifications>,
        outbox_written: Arc<Notify>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            notifications,
            outbox_written,
            retry,
            product_turns: ProductTurns::new(),
            allocation_lanes: Lanes::new(store.write_lanes()),
            running: TaskTracker::new(),
            store,
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
    pub async fn handle<C>(self: &Arc<Self>, command: C) -> Result<C::Reply, Error>
    where
        C: CommandHandler + 'static,
    {
        let bus = Arc::clone(self);
        ToTheEnd::new(&self.running, |caller| async move {
            bus.handle_to_the_end(command, &caller).await
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
    /// task of its own once the caller has left.
    async fn handle_to_the_end<C: CommandHandler>(
        &self,
        command: C,
        caller: &Caller,
    ) -> Result<C::Reply, Error> {
        let result = command.submit_to(self, caller).await;
        count_handled(match &result {
            Ok(_) => handled_key!("command", C::NAME, "ok"),
            Err(Error::CallerLeft) => handled_key!("command", C::NAME, "abandoned"),
            Err(error) if error.is_transient() => handled_key!("command", C::NAME, "failed"),
            Err(_) => handled_key!("command", C::NAME, "rejected"),
        });
        let (reply, events) = result?;
        self.handle_events(events).await;
        Ok(reply)
    }

    /// Handles a command that arrived as data (a message, a follow-up), when
    /// the caller needs no reply. Adding a command without a handler here is
    /// a compile error.
    pub async fn dispatch(self: &Arc<Self>, command: Command) -> Result<(), Error> {
        match command {
            Command::CreateBatch(c) => self.handle(c).await,
            Command::Allocate(c) => self.handle(c).await.map(drop),
            Command::ChangeBatchQuantity(c) => self.handle(c).await,
            Command::Deallocate(c) => self.handle(c).await.map(drop),
        }
    }

    /// The command and the transactional event handlers, committed together,
    /// with the command run again from scratch after a version conflict.
    /// Returns the reply and the events for the after-commit handlers.
    pub(crate) async fn run_in_unit_of_work<C: CommandHandler>(
        &self,
        command: &C,
        caller: &Caller,
    ) -> Handled<C::Reply> {
        self.retrying_conflicts(C::NAME, 1, command, |attempt| {
            self.run_once(command, attempt, caller)
        })
        .await
    }

    /// Runs `attempt_once` (attempt 1, 2, ...) again after each version
    /// conflict, with jittered backoff, until it does not conflict or the
    /// retry policy's attempts are spent (then `Error::Contention`). `name`
    /// and `commands` are for the retries metric, `subject` for the log.
    async fn retrying_conflicts<T, F>(
        &self,
        name: &'static str,
        commands: u64,
        subject: &(dyn fmt::Debug + Sync),
        attempt_once: impl Fn(u32) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match attempt_once(attempt).await {
                Err(Error::Store(StoreError::Conflict { sku }))
                    if attempt < self.retry.command_attempts =>
                {
                    self.product_turns.mark_contended(&sku);
                    debug!(%sku, attempt, ?subject, "version conflict, running it again");
                    metrics::counter!(metric_names::CONFLICT_RETRIES, "command" => name)
                        .increment(commands);
                    tokio::time::sleep(self.retry.conflict_wait(attempt)).await;
                    attempt += 1;
                }
                Err(Error::Store(StoreError::Conflict { sku })) => {
                    warn!(%sku, attempts = attempt, ?subject, "giving up on a contended product");
                    return Err(Error::Contention { attempts: attempt });
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt, in the product's turn when the command names its product:
    /// commands on a hot product queue in this process rather than conflict.
    /// The turn ends before any backoff, so others go meanwhile. The first
    /// attempt is optimistic; after a conflict, the product is locked as it
    /// is read, so that other instances' writers wait for this one instead
    /// of beating it again. So is every command on a product that conflicted
    /// in the last second: other instances are fighting over it, and a lost
    /// race would only waste an attempt.
    async fn run_once<C: CommandHandler>(
        &self,
        command: &C,
        attempt: u32,
        caller: &Caller,
    ) -> Handled<C::Reply> {
        // No product named, no turns to take.
        let turns = tokio::select! {
            biased;
            () = caller.left() => return Err(Error::CallerLeft),
            turns = self.product_turns.wait_for_all(command.product()) => turns,
        };
        let mut uow = self.start_unit_of_work(attempt, turns.contended).await?;
        let reply = command.handle(&mut uow).await?;
        let events = handle_new_events_in_transaction(&mut uow);
        uow.commit().await?;
        Ok((reply, events))
    }

    /// Optimistic on a first attempt; locking after a conflict, or on a
    /// product other instances are fighting over (see `run_once`).
    async fn start_unit_of_work(
        &self,
        attempt: u32,
        contended: bool,
    ) -> Result<UnitOfWork<S::Transaction>, StoreError> {
        if attempt == 1 && !contended {
            UnitOfWork::begin(&self.store).await
        } else {
            UnitOfWork::begin_locking(&self.store).await
        }
    }

    /// Queues an allocation in its product's lane; see `group_commit`.
    /// Running a command again there is harmless: allocating a line that is
    /// already allocated answers its batch and changes nothing.
    pub(crate) async fn allocate_in_group(
        &self,
        command: Allocate,
        caller: &Caller,
    ) -> Handled<Option<BatchRef>> {
        let lane = self.allocation_lanes.lane(&command.sku);
        lane.submit(command, caller, |group| self.run_group(group))
            .await
            .unwrap_or(Err(Error::CallerLeft))
    }

    /// A group of allocations in one unit of work, with one commit, run
    /// again from scratch after a version conflict, as `run_in_unit_of_work`
    /// does for one command. A failure of the store fails every command in
    /// the group; a command the model refuses fails alone.
    async fn run_group(&self, group: Vec<Allocate>) -> Vec<Handled<Option<BatchRef>>> {
        record_group_size(group.len());
        let commands = group.len() as u64;
        let subject = GroupOf(group.len());
        let outcome = self
            .retrying_conflicts(Allocate::NAME, commands, &subject, |attempt| {
                self.run_group_once(&group, attempt)
            })
            .await;
        match outcome {
            Ok(answers) => answers,
            Err(failure) => group.iter().map(|_| Err(failure.clone())).collect(),
        }
    }

    /// One attempt at a group. Each product is loaded once, with the lines
    /// of every order the group allocates, in SKU order: locking groups of
    /// several instances then lock their products in the same order, and
    /// cannot deadlock. Then each command runs as it would alone, and its
    /// events are handled in the transaction and kept for its caller.
    async fn run_group_once(
        &self,
        group: &[Allocate],
        attempt: u32,
    ) -> Result<Vec<Handled<Option<BatchRef>>>, Error> {
        // Other kinds of command on these products wait meanwhile, as they
        // wait for each other (see `run_once`).
        let turns = self
            .product_turns
            .wait_for_all(group.iter().map(|command| &command.sku))
            .await;
        let mut uow = self.start_unit_of_work(attempt, turns.contended).await?;
        // A lone command loads what it needs itself.
        if group.len() > 1 {
            let mut orders: BTreeMap<&Sku, Vec<OrderId>> = BTreeMap::new();
            for command in group {
                let orderid = command.orderid.clone();
                orders.entry(&command.sku).or_default().push(orderid);
            }
            for (sku, orderids) in &orders {
                uow.products().get_for_orders(sku, orderids).await?;
            }
        }
        let mut answers = Vec::with_capacity(group.len());
        for command in group {
            match command.handle(&mut uow).await {
                Ok(reply) => {
                    let events = handle_new_events_in_transaction(&mut uow);
                    answers.push(Ok((reply, events)));
                }
                Err(error @ Error::Store(_)) => return Err(error),
                // Allocate refuses before it changes anything: the rest of
                // the group stands.
                Err(refused) => answers.push(Err(refused)),
            }
        }
        uow.commit().await?;
        Ok(answers)
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
                    if error.is_transient() && attempt < self.retry.event_handler_attempts =>
                {
                    warn!(event = event.name(), attempt, %error, "event handler failed, retrying");
                    metrics::counter!(metric_names::EVENT_HANDLER_RETRIES, "event" => event.name())
                        .increment(1);
                    tokio::time::sleep(self.retry.event_handler_wait(attempt)).await;
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
    /// before commit, in `handlers::handle_in_transaction`).
    async fn handle_event(&self, event: &Event) -> Result<Vec<Event>, EventHandlerError> {
        match event {
            // The message is in the outbox already; wake the relay so that
            // it goes out now rather than at the relay's next poll.
            Event::Allocated(_) => self.outbox_written.notify_one(),
            Event::OutOfStock(e) => {
                handlers::send_out_of_stock_notification(e, &*self.notifications).await?
            }
            Event::Deallocated(e) => {
                let follow_up = handlers::reallocate(e);
                let (_, events) = self.allocate_in_group(follow_up, &Caller::bus()).await?;
                return Ok(events);
            }
            Event::BatchCreated(_)
            | Event::AllocationCancelled(_)
            | Event::BatchQuantityChanged(_) => {}
        }
        Ok(Vec::new())
    }
}

/// Runs the transactional handlers (read model, outbox) of the events
/// recorded since the last call, and returns those events for the
/// after-commit handlers.
fn handle_new_events_in_transaction<T: StoreTransaction>(uow: &mut UnitOfWork<T>) -> Vec<Event> {
    let events = uow.collect_new_events();
    for event in &events {
        handlers::handle_in_transaction(event, uow);
    }
    events
}

/// How a group shows in the log: its size (the conflicting product is
/// logged beside it), not up to 256 commands.
struct GroupOf(usize);

impl fmt::Debug for GroupOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a group of {} allocations", self.0)
    }
}
