//! How the bus runs a command (book chapters 6, 7 and 10): in a unit of
//! work, with its transactional event handlers, committed, and run again
//! from scratch after a version conflict.
//!
//! Every command takes the same path. It queues in its lane ([`lanes`]);
//! whoever leads the lane runs all that is queued there as one group, in
//! one unit of work with one commit. A lone command is a group of one. A
//! group runs in its products' turns ([`product_turns`]), so that commands
//! on one product queue in this process instead of colliding at commit.
//! Neither changes what a command does, only how many commits it shares.

mod lanes;
mod product_turns;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::commands::{
    AdjustBatch, Allocate, AllocateOrder, CancelOrder, ChangeBatchQuantity, ChangeSettings,
    CreateBatch, Deallocate, ExtendHold, PlaceHold, ReleaseHold, ShipOrder,
};
use domain::{Event, OrderId, Sku};
use rand::Rng;
use tracing::{debug, warn};

use crate::caller::Caller;
use crate::error::Error;
use crate::handlers::{self, CommandHandler};
use crate::ports::{Clock, Store, StoreError, StoreTransaction, SystemClock};
use crate::telemetry::{metric_names, record_group_size};
use crate::unit_of_work::UnitOfWork;
use lanes::Lanes;
use product_turns::ProductTurns;

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

    pub(crate) fn event_handler_wait(&self, attempt: u32) -> Duration {
        self.event_handler_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(10))
    }
}

/// A committed command's reply, and the events it raised for the
/// after-commit handlers.
#[derive(Debug)]
pub struct Committed<R> {
    pub(crate) reply: R,
    pub(crate) events: Vec<Event>,
}

/// What a command's caller gets from its group.
pub type Answer<C> = Result<Committed<<C as CommandHandler>::Reply>, Error>;

/// The lanes of one kind of command: a group holds commands of one kind.
pub type LanesOf<C> = Lanes<(C, Caller), Answer<C>>;

/// Runs commands for the bus. Generic over the store, like the bus.
#[derive(Debug)]
pub(crate) struct Runner<S> {
    store: S,
    retry: RetryPolicy,
    product_turns: ProductTurns,
    lanes: CommandLanes,
    clock: Arc<dyn Clock>,
}

/// Every kind of command's lanes.
#[derive(Debug)]
pub struct CommandLanes {
    create_batch: LanesOf<CreateBatch>,
    allocate: LanesOf<Allocate>,
    allocate_order: LanesOf<AllocateOrder>,
    ship_order: LanesOf<ShipOrder>,
    cancel_order: LanesOf<CancelOrder>,
    place_hold: LanesOf<PlaceHold>,
    extend_hold: LanesOf<ExtendHold>,
    release_hold: LanesOf<ReleaseHold>,
    change_batch_quantity: LanesOf<ChangeBatchQuantity>,
    adjust_batch: LanesOf<AdjustBatch>,
    change_settings: LanesOf<ChangeSettings>,
    deallocate: LanesOf<Deallocate>,
}

/// A command the runner knows where to queue: in its kind's lanes. A new
/// kind of command gets lanes of its own in [`CommandLanes`].
pub trait Grouped: CommandHandler {
    #[doc(hidden)]
    fn lanes(all: &CommandLanes) -> &LanesOf<Self>;
}

macro_rules! grouped {
    ($($command:ty => $field:ident),* $(,)?) => {
        impl CommandLanes {
            fn new(lanes: usize) -> Self {
                Self { $($field: Lanes::new(lanes)),* }
            }
        }
        $(impl Grouped for $command {
            fn lanes(all: &CommandLanes) -> &LanesOf<Self> {
                &all.$field
            }
        })*
    };
}

grouped! {
    CreateBatch => create_batch,
    Allocate => allocate,
    AllocateOrder => allocate_order,
    ShipOrder => ship_order,
    CancelOrder => cancel_order,
    PlaceHold => place_hold,
    ExtendHold => extend_hold,
    ReleaseHold => release_hold,
    ChangeBatchQuantity => change_batch_quantity,
    AdjustBatch => adjust_batch,
    ChangeSettings => change_settings,
    Deallocate => deallocate,
}

impl<S> Runner<S> {
    /// Reads the time from `clock` instead of the system's.
    pub(crate) fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

impl<S: Store> Runner<S> {
    pub(crate) fn new(store: S, retry: RetryPolicy) -> Self {
        Self {
            retry,
            product_turns: ProductTurns::new(),
            lanes: CommandLanes::new(store.write_lanes()),
            store,
            clock: Arc::new(SystemClock),
        }
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Runs `command` in its group, and answers once the group committed.
    /// A command whose `caller` leaves before its group begins never runs
    /// ([`Error::CallerLeft`]).
    pub(crate) async fn run<C: Grouped>(&self, command: C, caller: &Caller) -> Answer<C> {
        let lane = C::lanes(&self.lanes).lane(command.products().next());
        lane.submit((command, caller.clone()), caller, |group| {
            self.run_group(group)
        })
        .await
        .unwrap_or(Err(Error::CallerLeft))
    }

    /// A group in one unit of work, with one commit, run again from scratch
    /// after a version conflict. A failure of the store fails every command
    /// in the group; a command the model refuses fails alone.
    async fn run_group<C: CommandHandler>(&self, group: Vec<(C, Caller)>) -> Vec<Answer<C>> {
        record_group_size(group.len());
        let mut attempt = 1;
        loop {
            match self.run_group_once(&group, attempt).await {
                Err(Error::Store(StoreError::Conflict { sku }))
                    if attempt < self.retry.command_attempts =>
                {
                    self.product_turns.mark_contended(&sku);
                    debug!(%sku, attempt, group = ?GroupOf(&group), "version conflict, running it again");
                    metrics::counter!(metric_names::CONFLICT_RETRIES, "command" => C::NAME)
                        .increment(group.len() as u64);
                    tokio::time::sleep(self.retry.conflict_wait(attempt)).await;
                    attempt += 1;
                }
                Err(Error::Store(StoreError::Conflict { sku })) => {
                    warn!(%sku, attempts = attempt, group = ?GroupOf(&group), "giving up on a contended product");
                    return failed(&group, &Error::Contention { attempts: attempt });
                }
                Err(error) => return failed(&group, &error),
                Ok(answers) => return answers,
            }
        }
    }

    /// One attempt at a group, in its products' turns: each command handled
    /// in the unit of work, its events handled in the same transaction,
    /// then one commit for all.
    async fn run_group_once<C: CommandHandler>(
        &self,
        group: &[(C, Caller)],
        attempt: u32,
    ) -> Result<Vec<Answer<C>>, Error> {
        let products = group.iter().flat_map(|(command, _)| command.products());
        let turns = self.product_turns.wait_for_all(products).await;
        let mut uow = self.begin(attempt, turns.contended).await?;
        if group.len() > 1 {
            load_together(&mut uow, group).await?;
        }
        let mut answers = Vec::with_capacity(group.len());
        for (command, caller) in group {
            // Its caller left while it waited: no work for nobody.
            if caller.has_left() {
                answers.push(Err(Error::CallerLeft));
                continue;
            }
            // A message delivered again after its commit: done already.
            let delivery = caller.delivery();
            if let Some(delivery) = delivery {
                if uow.was_delivered(delivery).await? {
                    answers.push(Err(Error::AlreadyDelivered));
                    continue;
                }
            }
            let handled = command.handle(&mut uow).await;
            // A refused command changed nothing, but loading its products
            // may have filled their backorders (see `Repository`).
            let events = handle_new_events_in_transaction(&mut uow).await?;
            match handled {
                Ok(reply) => {
                    if let Some(delivery) = delivery {
                        uow.record_delivery(delivery);
                    }
                    answers.push(Ok(Committed { reply, events }));
                }
                Err(error @ Error::Store(_)) => return Err(error),
                // Refused before it changed anything (see `CommandHandler`):
                // the rest of the group stands.
                Err(refused) => answers.push(Err(refused)),
            }
        }
        uow.announce_stock_levels();
        let announced = handle_new_events_in_transaction(&mut uow).await?;
        // For the after-commit handlers (waking the relay), with the last
        // command that succeeded; with none, the relay's poll finds them.
        let last_success = answers.iter_mut().rev().find_map(|a| a.as_mut().ok());
        if let Some(committed) = last_success {
            committed.events.extend(announced);
        }
        uow.commit().await?;
        Ok(answers)
    }

    /// The first attempt is optimistic. After a conflict, the products are
    /// locked as they are read, so that other instances' writers wait for
    /// this one instead of beating it again. So are those that conflicted
    /// in the last second: other instances are fighting over them, and a
    /// lost race would only waste an attempt.
    async fn begin(
        &self,
        attempt: u32,
        contended: bool,
    ) -> Result<UnitOfWork<S::Transaction>, StoreError> {
        let now = self.clock.now();
        if attempt == 1 && !contended {
            UnitOfWork::begin(&self.store, now).await
        } else {
            UnitOfWork::begin_locking(&self.store, now).await
        }
    }
}

/// Loads each product of a group once, with the lines of all its commands'
/// orders: one trip to the store per product instead of one per command
/// (each command's own load then finds it in the unit of work). In SKU
/// order, so that locking groups of several instances lock their products
/// in the same order and cannot deadlock.
async fn load_together<C: CommandHandler, T: StoreTransaction>(
    uow: &mut UnitOfWork<T>,
    group: &[(C, Caller)],
) -> Result<(), StoreError> {
    let mut orders: BTreeMap<&Sku, Vec<OrderId>> = BTreeMap::new();
    for (command, _) in group {
        for sku in command.products() {
            let orders_of_product = orders.entry(sku).or_default();
            orders_of_product.extend(command.order().cloned());
        }
    }
    for (sku, orderids) in &orders {
        uow.products().get_for_orders(sku, orderids).await?;
    }
    Ok(())
}

/// Runs the transactional handlers (read model, outbox, backorders) of the
/// events recorded since the last call, and of the events those record in
/// turn, and returns them all for the after-commit handlers.
async fn handle_new_events_in_transaction<T: StoreTransaction>(
    uow: &mut UnitOfWork<T>,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    loop {
        let new = uow.collect_new_events();
        if new.is_empty() {
            return Ok(events);
        }
        for event in &new {
            handlers::handle_in_transaction(event, uow).await?;
        }
        events.extend(new);
    }
}

/// The same failure for every command of a group.
fn failed<C: CommandHandler>(group: &[(C, Caller)], error: &Error) -> Vec<Answer<C>> {
    group.iter().map(|_| Err(error.clone())).collect()
}

/// How a group shows in the log: a lone command in full, a group by its
/// size (up to 256 commands would drown the line).
struct GroupOf<'a, C>(&'a [(C, Caller)]);

impl<C: fmt::Debug> fmt::Debug for GroupOf<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [(command, _)] => command.fmt(f),
            group => write!(f, "a group of {} commands", group.len()),
        }
    }
}
