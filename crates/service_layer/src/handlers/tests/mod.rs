//! The book's handler tests (chapters 5, 9, 10), driven through the message
//! bus with in-memory fakes: each command's behaviour (`commands`), then how
//! the bus runs them: retries, groups, callers that leave (`running`).

mod availability;
mod backorders;
mod commands;
mod deliveries;
mod holds;
mod ledger;
mod orders;
mod running;
mod shipping;
mod stock_levels;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{Allocation, BatchRef, Command, DomainError, Sku};

use crate::handlers::notification_of;
use crate::memory::{ManualClock, MemoryStore, MemoryTransaction};
use crate::ports::{AllocationView, ReadModel};
use crate::ports::{ChangeSet, Lines, Store, StoreError, StoreTransaction};
use crate::ports::{Destination, Notification, OutboxMessage};
use crate::relay::Wakeups;
use crate::{Error, MessageBus, RetryPolicy, UnitOfWork};

fn tomorrow() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 26).expect("valid date")
}

fn create_batch(reference: &str, product: &str, units: u32, eta: Option<NaiveDate>) -> CreateBatch {
    CreateBatch {
        reference: batchref(reference),
        sku: sku(product),
        qty: qty(units),
        eta,
    }
}
fn allocate(order: &str, product: &str, units: u32) -> Allocate {
    Allocate {
        orderid: orderid(order),
        sku: sku(product),
        qty: qty(units),
    }
}
fn change_quantity(reference: &str, units: u32) -> ChangeBatchQuantity {
    ChangeBatchQuantity {
        reference: batchref(reference),
        qty: qty(units),
    }
}

/// A bus over fakes, with the fakes kept at hand for assertions.
struct App<S = MemoryStore> {
    bus: Arc<MessageBus<S>>,
    store: MemoryStore,
    outbox_written: Wakeups,
    /// The bus's time, which moves only when a test moves it.
    clock: Arc<ManualClock>,
}

fn app() -> App {
    let store = MemoryStore::new();
    wire(store.clone(), store)
}

fn wire<S: Store>(bus_store: S, store: MemoryStore) -> App<S> {
    let outbox_written = Wakeups::new();
    let start = chrono::DateTime::from_timestamp(1_796_000_000, 0).expect("a time");
    let clock = Arc::new(ManualClock::new(start));
    let bus = MessageBus::new(bus_store, outbox_written.clone(), RetryPolicy::default());
    App {
        bus: Arc::new(bus.with_clock(clock.clone())),
        store,
        outbox_written,
        clock,
    }
}

/// The emails waiting in the outbox, as the notifications relay will send
/// them.
fn emails_of(store: &MemoryStore) -> Vec<Notification> {
    let messages = store.unsent_messages();
    messages.iter().filter_map(notification_of).collect()
}

/// `(orderid, batchref)` of each `line_allocated` waiting in the outbox.
fn outbox_of(store: &MemoryStore) -> Vec<(String, String)> {
    let messages = store.unsent_messages();
    let allocated = messages.iter().filter_map(OutboxMessage::line_allocated);
    allocated
        .map(|event| (event.orderid.to_string(), event.batchref.to_string()))
        .collect()
}

impl<S: Store> App<S> {
    /// The emails its commits left in the outbox.
    fn emails(&self) -> Vec<Notification> {
        emails_of(&self.store)
    }

    async fn add_batch(&self, reference: &str, product: &str, units: u32, eta: Option<NaiveDate>) {
        let command = create_batch(reference, product, units, eta);
        self.bus.handle(command).await.expect("batch created");
    }

    async fn allocate(&self, order: &str, product: &str, units: u32) -> Option<BatchRef> {
        let command = allocate(order, product, units);
        self.bus
            .handle(command)
            .await
            .expect("line handled")
            .batchref()
    }

    async fn allocated_to(&self, product: &str, reference: &str) -> u64 {
        let batches = self
            .store
            .batches(&sku(product), self.bus.now())
            .await
            .expect("query");
        batches
            .iter()
            .find(|b| b.reference == batchref(reference))
            .map(|b| b.allocated)
            .expect("batch exists")
    }

    async fn view_of(&self, order: &str) -> Vec<(String, String)> {
        let rows = self
            .store
            .allocations(&orderid(order))
            .await
            .expect("query");
        rows.into_iter()
            .map(|AllocationView { sku, batchref }| (sku.to_string(), batchref.to_string()))
            .collect()
    }
}

/// A store whose first `conflicts` commits fail as if another instance had
/// changed the product in between; the conflicting commits write nothing.
/// It counts what it was asked for, too.
#[derive(Debug, Clone)]
struct ConflictingStore {
    inner: MemoryStore,
    conflicts_left: Arc<AtomicU32>,
    commits_tried: Arc<AtomicU32>,
    /// Units of work started with `begin_locking`.
    locking_begins: Arc<AtomicU32>,
    /// Loads of a product with every line of one of its batches.
    batch_line_loads: Arc<AtomicU32>,
    /// Loads of a batch's lines that find none, as a read that another
    /// instance's commit overtook between the totals and the lines would.
    stale_batch_line_loads: Arc<AtomicU32>,
}

impl ConflictingStore {
    fn new(inner: MemoryStore, conflicts: u32) -> Self {
        Self {
            inner,
            conflicts_left: Arc::new(AtomicU32::new(conflicts)),
            commits_tried: Arc::default(),
            locking_begins: Arc::default(),
            batch_line_loads: Arc::default(),
            stale_batch_line_loads: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct ConflictingTransaction {
    inner: MemoryTransaction,
    store: ConflictingStore,
}

impl Store for ConflictingStore {
    type Transaction = ConflictingTransaction;

    async fn begin(&self) -> Result<ConflictingTransaction, StoreError> {
        Ok(ConflictingTransaction {
            inner: self.inner.begin().await?,
            store: self.clone(),
        })
    }
    async fn begin_locking(&self) -> Result<ConflictingTransaction, StoreError> {
        self.locking_begins.fetch_add(1, Ordering::SeqCst);
        self.begin().await
    }
}

impl StoreTransaction for ConflictingTransaction {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<domain::Product>, StoreError> {
        let mut lines = lines;
        if let Lines::OfBatch(_) = lines {
            self.store.batch_line_loads.fetch_add(1, Ordering::SeqCst);
            let stale = &self.store.stale_batch_line_loads;
            if stale
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                lines = Lines::None;
            }
        }
        let product = self.inner.load(sku, lines, now).await;
        // Let other commands run between read and commit, as a database
        // round trip would.
        tokio::task::yield_now().await;
        product
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        self.inner.sku_of_batch(reference).await
    }

    async fn skus_of_order(&mut self, orderid: &domain::OrderId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_order(orderid).await
    }

    async fn skus_of_hold(&mut self, hold_id: &domain::HoldId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_hold(hold_id).await
    }

    async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        self.inner.was_delivered(delivery).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        self.store.commits_tried.fetch_add(1, Ordering::SeqCst);
        let conflict = self
            .store
            .conflicts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        match changes.products.first() {
            Some(change) if conflict => Err(StoreError::Conflict {
                sku: change.sku.clone(),
            }),
            _ => self.inner.commit(changes).await,
        }
    }
}

/// A bus over a [`ConflictingStore`] whose first `conflicts` commits fail,
/// with batch `b1` of 10 `LAMP`s.
async fn app_with_conflicts(conflicts: u32) -> (App<ConflictingStore>, ConflictingStore) {
    let setup = app();
    setup.add_batch("b1", "LAMP", 10, None).await;
    let store = setup.store;
    let conflicting = ConflictingStore::new(store.clone(), conflicts);
    let app = wire(conflicting.clone(), store);
    (app, conflicting)
}
