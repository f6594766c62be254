//! Helpers the tests share: random identifiers, a message bus with
//! recording fakes, and loading what a store holds in a comparable form.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::NaiveDate;
use domain::commands::{Allocate, CreateBatch, Deallocate};
use domain::events::{AllocationCancelled, Deallocated};
use domain::{Allocation, BatchRef, Event, OrderId, OrderLine, Product, Quantity, Sku};
use service_layer::UnitOfWork;
use service_layer::handlers::handle_in_transaction;
use service_layer::handlers::notification_of;
use service_layer::memory::ManualClock;
use service_layer::ports::{AllocationView, BatchView, Outbox, OutboxMessage, ReadModel};
use service_layer::ports::{ChangeSet, Lines, Outgoing, ProductChanges, ViewChange};
use service_layer::ports::{Destination, Notification};
use service_layer::relay::Wakeups;
use service_layer::{Error, MessageBus, RetryPolicy, Store, StoreError, StoreTransaction};
pub use test_support::unique;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use uuid::Uuid;

pub fn sku() -> Sku {
    Sku::parse(&unique("sku")).expect("valid sku")
}

pub fn batchref(prefix: &str) -> BatchRef {
    BatchRef::parse(&unique(prefix)).expect("valid reference")
}

pub fn orderid(prefix: &str) -> OrderId {
    OrderId::parse(&unique(prefix)).expect("valid order id")
}

pub fn qty(units: u32) -> Quantity {
    Quantity::parse(i128::from(units), "qty").expect("valid quantity")
}

pub fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
}

pub fn line(orderid: &OrderId, sku: &Sku, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid.clone(),
        sku: sku.clone(),
        qty: qty(units),
    }
}

/// Allocates a line in `uow` as the bus would, without committing: the
/// Allocate handler's work, then the transactional read-model handler.
pub async fn allocate_in<T: StoreTransaction>(
    uow: &mut UnitOfWork<T>,
    orderid: &OrderId,
    sku: &Sku,
    units: u32,
) -> Option<BatchRef> {
    let product = uow
        .products()
        .get_for_order(sku, orderid)
        .await
        .expect("load")
        .expect("stored");
    let allocated = product
        .allocate(line(orderid, sku, units))
        .expect("allocate");
    for event in uow.collect_new_events() {
        handle_in_transaction(&event, uow).await.expect("handled");
    }
    allocated.batchref()
}

/// A message bus over `store`; no relay runs, so what it tells the outside
/// world waits in the outbox.
pub struct Bus<S> {
    pub bus: Arc<MessageBus<S>>,
}

pub fn bus<S: Store>(store: &S) -> Bus<S> {
    bus_with(store, RetryPolicy::default())
}

/// Three SKUs, named so that their order is known.
pub fn three_skus() -> [Sku; 3] {
    ["a", "b", "c"].map(|name| Sku::parse(&unique(&format!("{name}-sku"))).expect("sku"))
}

/// A bus whose time is `clock`'s.
pub fn bus_with_clock<S: Store>(store: &S, clock: Arc<ManualClock>) -> Bus<S> {
    let Bus { bus } = bus(store);
    let bus = Arc::into_inner(bus).expect("the only handle on a new bus");
    Bus {
        bus: Arc::new(bus.with_clock(clock)),
    }
}

pub fn bus_with<S: Store>(store: &S, retry: RetryPolicy) -> Bus<S> {
    let bus = Arc::new(MessageBus::new(store.clone(), Wakeups::new(), retry));
    Bus { bus }
}

impl<S: Store> Bus<S> {
    pub async fn add_batch(
        &self,
        reference: &BatchRef,
        sku: &Sku,
        units: u32,
        eta: Option<NaiveDate>,
    ) {
        self.bus
            .handle(CreateBatch {
                reference: reference.clone(),
                sku: sku.clone(),
                qty: qty(units),
                eta,
            })
            .await
            .expect("create batch");
    }

    pub async fn allocate(&self, orderid: &OrderId, sku: &Sku, units: u32) -> Option<BatchRef> {
        self.try_allocate(orderid, sku, units)
            .await
            .expect("allocate")
    }

    pub async fn try_allocate(
        &self,
        orderid: &OrderId,
        sku: &Sku,
        units: u32,
    ) -> Result<Option<BatchRef>, Error> {
        self.bus
            .handle(Allocate {
                orderid: orderid.clone(),
                sku: sku.clone(),
                qty: qty(units),
            })
            .await
            .map(Allocation::batchref)
    }

    /// The batch the line was on (the first, if it was split).
    pub async fn deallocate(&self, orderid: &OrderId, sku: &Sku) -> Result<BatchRef, Error> {
        self.bus
            .handle(Deallocate {
                orderid: orderid.clone(),
                sku: sku.clone(),
            })
            .await
            .map(|parts| parts[0].batchref.clone())
    }
}

/// What a load gives, in a form that compares across backends.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadedBatch {
    pub reference: BatchRef,
    pub eta: Option<NaiveDate>,
    pub purchased: u64,
    pub allocated: u64,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    pub version: u64,
    pub batches: Vec<LoadedBatch>,
}

pub fn snapshot(product: &Product) -> Loaded {
    Loaded {
        version: product.version(),
        batches: product
            .batches()
            .iter()
            .map(|b| LoadedBatch {
                reference: b.reference().clone(),
                eta: b.eta(),
                purchased: b.purchased_quantity(),
                allocated: b.allocated_quantity(),
                lines: b.loaded_lines().to_vec(),
            })
            .collect(),
    }
}

/// Loads `sku` with `lines` in a transaction of its own (then rolled back).
pub async fn load<S: Store>(store: &S, sku: &Sku, lines: Lines<'_>) -> Option<Loaded> {
    let mut transaction = store.begin().await.expect("begin");
    let product = transaction
        .load(sku, lines, chrono::Utc::now())
        .await
        .expect("load");
    product.as_ref().map(snapshot)
}

pub async fn lines_of_batch<S: Store>(
    store: &S,
    sku: &Sku,
    reference: &BatchRef,
) -> Vec<OrderLine> {
    let loaded = load(store, sku, Lines::OfBatch(reference))
        .await
        .expect("stored product");
    loaded
        .batches
        .into_iter()
        .find(|b| &b.reference == reference)
        .expect("stored batch")
        .lines
}

pub fn loaded_lines(loaded: &Loaded) -> Vec<OrderLine> {
    loaded
        .batches
        .iter()
        .flat_map(|b| b.lines.clone())
        .collect()
}

pub fn view(sku: &Sku, batchref: &BatchRef) -> AllocationView {
    AllocationView {
        sku: sku.clone(),
        batchref: batchref.clone(),
    }
}

pub async fn allocations<S: ReadModel>(store: &S, orderid: &OrderId) -> Vec<AllocationView> {
    store.allocations(orderid).await.expect("read allocations")
}

pub async fn batch_views<S: ReadModel>(store: &S, sku: &Sku) -> Vec<BatchView> {
    store
        .batches(sku, chrono::Utc::now())
        .await
        .expect("read batches")
}

pub fn allocated_totals(views: &[BatchView]) -> Vec<u64> {
    views.iter().map(|b| b.allocated).collect()
}

/// `(orderid, batchref)` of every `line_allocated` waiting in the outbox,
/// oldest first.
pub async fn outbox_of<O: Outbox>(outbox: &O) -> Vec<(OrderId, BatchRef)> {
    let claimed = outbox
        .claim(
            10_000,
            std::time::Duration::from_secs(60),
            Destination::Messages,
        )
        .await
        .expect("outbox readable");
    claimed
        .iter()
        .filter_map(|claimed| claimed.message.line_allocated())
        .map(|event| (event.orderid.clone(), event.batchref.clone()))
        .collect()
}

/// The out-of-stock emails waiting in the outbox, oldest first, as the
/// notifications relay would send them. Claimed for no time, so that they
/// can be read again.
pub async fn emails_of<O: Outbox>(outbox: &O) -> Vec<Notification> {
    let claimed = outbox
        .claim(
            10_000,
            std::time::Duration::ZERO,
            Destination::Notifications,
        )
        .await
        .expect("outbox readable");
    claimed
        .iter()
        .map(|claimed| notification_of(&claimed.message).expect("a notification"))
        .collect()
}

/// What a unit of work would write for `product` at commit: its events and,
/// as the transactional handlers do (`handle_in_transaction`), a read-model
/// change per allocation and per line that left its batch, and an outbox
/// message per allocation.
pub fn changes_of(product: &mut Product, stored_version: Option<u64>) -> ChangeSet {
    let events = product.take_events();
    let (mut views, mut outbox) = (Vec::new(), Vec::new());
    for event in &events {
        match event {
            Event::Allocated(allocated) => {
                views.push(ViewChange::Allocated {
                    orderid: allocated.orderid.clone(),
                    sku: allocated.sku.clone(),
                    batchref: allocated.batchref.clone(),
                });
                outbox.push(OutboxMessage {
                    message_id: Uuid::new_v4(),
                    message: Outgoing::LineAllocated(allocated.clone()),
                });
            }
            Event::Deallocated(Deallocated {
                orderid,
                sku,
                batchref,
                ..
            })
            | Event::AllocationCancelled(AllocationCancelled {
                orderid,
                sku,
                batchref,
                ..
            }) => {
                views.push(ViewChange::Deallocated {
                    orderid: orderid.clone(),
                    sku: sku.clone(),
                    batchref: batchref.clone(),
                });
            }
            _ => {}
        }
    }
    ChangeSet {
        at: chrono::Utc::now(),
        products: vec![ProductChanges {
            sku: product.sku().clone(),
            stored_version,
            new_version: product.version(),
            events,
        }],
        views,
        outbox,
        deliveries: Vec::new(),
    }
}

/// Several products' change sets as one unit of work's (a group commit's).
pub fn together(change_sets: impl IntoIterator<Item = ChangeSet>) -> ChangeSet {
    let mut all = ChangeSet::default();
    for changes in change_sets {
        all.products.extend(changes.products);
        all.views.extend(changes.views);
        all.outbox.extend(changes.outbox);
    }
    all
}

/// Loads `sku` with `lines` in a transaction of its own (then rolled back),
/// as a unit of work would before changing it. (So that tests that hold two
/// products' states also run on SQLite, whose write transactions cannot
/// overlap.)
pub async fn load_product<S: Store>(store: &S, sku: &Sku, lines: Lines<'_>) -> Product {
    let mut transaction = store.begin().await.expect("begin");
    transaction
        .load(sku, lines, chrono::Utc::now())
        .await
        .expect("load")
        .expect("stored")
}

/// Commits `changes` in a transaction of its own.
pub async fn commit<S: Store>(store: &S, changes: ChangeSet) -> Result<(), StoreError> {
    let transaction = store.begin().await.expect("begin");
    transaction.commit(changes).await
}

/// Commits `changes` and expects them refused as a conflict on `sku`.
pub async fn assert_conflict<S: Store>(store: &S, changes: ChangeSet, sku: &Sku) {
    match commit(store, changes).await {
        Err(StoreError::Conflict { sku: conflicted }) => assert_eq!(&conflicted, sku),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Every warning and error logged in this test binary, as text. The bus
/// logs, and otherwise swallows, the failures of what it runs after a
/// command (follow-up commands such as reallocation, notifications): this
/// is how a test sees them. Installed once, for the whole binary.
pub fn logged_warnings() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        // The level is the layer's own filter, not the subscriber's: a
        // subscriber-wide WARN would lower the process's maximum level, and
        // sqlx would then stop emitting the DEBUG statement events another
        // test of this binary captures with a scoped subscriber
        // (`specific::statements_of_commit`).
        let warnings = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || SharedLog(writer.clone()))
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        // Fails only if another subscriber was installed first, which no
        // test in this binary does.
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings))
            .expect("the first global subscriber");
        log
    })
}

struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        crate::watched::lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
