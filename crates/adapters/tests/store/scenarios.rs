//! The storage contract, written once and run against every backend: the
//! in-memory store (the reference), SQLite on a fresh temporary file, and
//! PostgreSQL on a fresh database when `DATABASE_URL` is a `postgres://` URL.
//!
//! Each scenario is a generic `async fn` over `S: Store + ReadModel`; the
//! `scenarios!` macro turns it into one test per backend. SKUs, references
//! and order ids are random, so scenarios never see each other's data.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adapters::{PoolSettings, SqlError, SqlStore};
use chrono::NaiveDate;
use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::{BatchRef, DomainError, OrderId, OrderLine, Product, Quantity, Sku};
use service_layer::handlers::update_read_model;
use service_layer::memory::{RecordingNotifications, RecordingPublisher};
use service_layer::ports::{AllocationView, BatchView, ReadModel};
use service_layer::unit_of_work::{ChangeSet, Lines, ProductChanges, ViewChange};
use service_layer::{
    Error, MessageBus, RetryPolicy, Store, StoreError, StoreTransaction, UnitOfWork,
};
use sqlx::{Connection, Executor, Row};

// ---------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------

/// One test per scenario per backend: `scenarios!(mod name on [backends] {
/// scenario, ... })`.
macro_rules! scenarios {
    (mod $module:ident on [$($backend:ident),*] $scenarios:tt) => {
        mod $module {
            $( scenarios!(@backend $backend $scenarios); )*
        }
    };
    (@backend memory { $($scenario:ident),* $(,)? }) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::super::$scenario(service_layer::memory::MemoryStore::new()).await;
                }
            )*
        }
    };
    (@backend sqlite { $($scenario:ident),* $(,)? }) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let db = super::super::SqliteDb::create().await;
                    super::super::$scenario(db.store.clone()).await;
                }
            )*
        }
    };
    (@backend postgres { $($scenario:ident),* $(,)? }) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(db) = super::super::PostgresDb::create().await else {
                        return;
                    };
                    super::super::$scenario(db.store.clone()).await;
                }
            )*
        }
    };
}

scenarios!(mod every_backend on [memory, sqlite, postgres] {
    a_created_product_reloads_with_its_batches_in_creation_order,
    ties_between_batches_go_to_the_oldest,
    allocations_persist_and_one_order_loads_only_its_line,
    a_batch_loads_its_lines_oldest_first,
    deallocation_removes_the_line_and_frees_stock,
    a_change_of_quantity_persists_and_bumped_lines_are_reallocated,
    uncommitted_work_is_rolled_back_on_drop,
    a_failing_handler_writes_nothing,
    a_commit_from_a_stale_version_conflicts_and_writes_nothing,
    a_new_product_whose_sku_was_taken_meanwhile_conflicts,
    a_batch_reference_taken_by_another_product_conflicts,
    the_read_model_is_written_with_the_commit_and_removed_on_deallocation,
    batches_report_purchased_and_allocated_quantities,
    concurrent_allocations_never_over_allocate,
});

// SQLite serialises writers at BEGIN IMMEDIATE, so two units of work cannot
// be open at once there: see `sqlite_write_transactions_queue_instead_of_conflicting`.
scenarios!(mod interleaving_backends on [memory, postgres] {
    interleaved_units_of_work_conflict_and_the_loser_writes_nothing,
});

// The memory store returns an order's allocations in the order they were
// made; the SQL stores sort them by SKU as `ReadModel::allocations` says.
scenarios!(mod sql_backends on [sqlite, postgres] {
    an_orders_allocations_come_back_by_sku,
});

/// Small pools: sqlx caps connections per test binary, and tests run in parallel.
fn test_pool() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    }
}

/// A SQLite database in a fresh temporary directory.
struct SqliteDb {
    store: SqlStore,
    dir: tempfile::TempDir,
}

impl SqliteDb {
    async fn create() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = sqlite_url(&dir, "store.db");
        let store = SqlStore::connect(&url, test_pool())
            .await
            .expect("open a fresh SQLite database");
        Self { store, dir }
    }
}

fn sqlite_url(dir: &tempfile::TempDir, file: &str) -> String {
    format!("sqlite://{}", dir.path().join(file).display())
}

/// A fresh PostgreSQL database, dropped with the value; `None` (the run
/// skipped) unless `DATABASE_URL` is a `postgres://` URL.
struct PostgresDb {
    store: SqlStore,
    url: String,
    admin_url: String,
    name: String,
}

impl PostgresDb {
    async fn create() -> Option<Self> {
        let admin_url = postgres_admin_url()?;
        let name = format!("adapters_test_{:016x}", random_u64());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        admin.close().await.expect("disconnect");
        let url = with_database(&admin_url, &name);
        let store = SqlStore::connect(&url, test_pool())
            .await
            .expect("open the test database");
        Some(Self {
            store,
            url,
            admin_url,
            name,
        })
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down:
        // drop the database from a thread with its own runtime.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                admin.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {}: {error}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

fn postgres_admin_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CI=true but DATABASE_URL is not a postgres:// URL: the PostgreSQL tests must run in CI"
            )
        }
        _ => {
            eprintln!("skipped on PostgreSQL: set DATABASE_URL=postgres://... to run it there");
            None
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut result = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn random_u64() -> u64 {
    // std's hasher keys are random per process and per `RandomState`.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", random_u64())
}

fn sku() -> Sku {
    Sku::parse(&unique("sku")).expect("valid sku")
}

fn batchref(prefix: &str) -> BatchRef {
    BatchRef::parse(&unique(prefix)).expect("valid reference")
}

fn orderid(prefix: &str) -> OrderId {
    OrderId::parse(&unique(prefix)).expect("valid order id")
}

fn qty(units: u32) -> Quantity {
    Quantity::parse(i128::from(units), "qty").expect("valid quantity")
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
}

fn line(orderid: &OrderId, sku: &Sku, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid.clone(),
        sku: sku.clone(),
        qty: qty(units),
    }
}

/// A message bus over `store` with recording fakes for the outside world.
struct Bus<S> {
    bus: MessageBus<S>,
    notifications: Arc<RecordingNotifications>,
    publisher: Arc<RecordingPublisher>,
}

fn bus<S: Store>(store: &S) -> Bus<S> {
    bus_with(store, RetryPolicy::default())
}

fn bus_with<S: Store>(store: &S, retry: RetryPolicy) -> Bus<S> {
    let notifications = Arc::new(RecordingNotifications::new());
    let publisher = Arc::new(RecordingPublisher::new());
    let bus = MessageBus::new(
        store.clone(),
        notifications.clone(),
        publisher.clone(),
        retry,
    );
    Bus {
        bus,
        notifications,
        publisher,
    }
}

impl<S: Store> Bus<S> {
    async fn add_batch(&self, reference: &BatchRef, sku: &Sku, units: u32, eta: Option<NaiveDate>) {
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

    async fn allocate(&self, orderid: &OrderId, sku: &Sku, units: u32) -> Option<BatchRef> {
        self.try_allocate(orderid, sku, units)
            .await
            .expect("allocate")
    }

    async fn try_allocate(
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
    }

    async fn deallocate(&self, orderid: &OrderId, sku: &Sku) -> Result<BatchRef, Error> {
        self.bus
            .handle(Deallocate {
                orderid: orderid.clone(),
                sku: sku.clone(),
            })
            .await
    }
}

/// What a load gives, in a form that compares across backends.
#[derive(Debug, PartialEq, Eq)]
struct LoadedBatch {
    reference: BatchRef,
    eta: Option<NaiveDate>,
    purchased: Quantity,
    allocated: u64,
    lines: Vec<OrderLine>,
}

#[derive(Debug, PartialEq, Eq)]
struct Loaded {
    version: u64,
    batches: Vec<LoadedBatch>,
}

fn snapshot(product: &Product) -> Loaded {
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
async fn load<S: Store>(store: &S, sku: &Sku, lines: Lines<'_>) -> Option<Loaded> {
    let mut transaction = store.begin().await.expect("begin");
    let product = transaction.load(sku, lines).await.expect("load");
    product.as_ref().map(snapshot)
}

async fn lines_of_batch<S: Store>(store: &S, sku: &Sku, reference: &BatchRef) -> Vec<OrderLine> {
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

fn loaded_lines(loaded: &Loaded) -> Vec<OrderLine> {
    loaded
        .batches
        .iter()
        .flat_map(|b| b.lines.clone())
        .collect()
}

fn view(sku: &Sku, batchref: &BatchRef) -> AllocationView {
    AllocationView {
        sku: sku.clone(),
        batchref: batchref.clone(),
    }
}

async fn allocations<S: ReadModel>(store: &S, orderid: &OrderId) -> Vec<AllocationView> {
    store.allocations(orderid).await.expect("read allocations")
}

async fn batch_views<S: ReadModel>(store: &S, sku: &Sku) -> Vec<BatchView> {
    store.batches(sku).await.expect("read batches")
}

fn allocated_totals(views: &[BatchView]) -> Vec<u64> {
    views.iter().map(|b| b.allocated).collect()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

async fn a_created_product_reloads_with_its_batches_in_creation_order<S: Store + ReadModel>(
    store: S,
) {
    let sku = sku();
    let (later, warehouse, sooner) = (batchref("later"), batchref("warehouse"), batchref("sooner"));

    let mut uow = store.start().await.expect("start");
    let mut product = Product::new(sku.clone());
    product
        .add_batch(later.clone(), qty(10), Some(date(2030, 1, 2)))
        .expect("add batch");
    product
        .add_batch(warehouse.clone(), qty(20), None)
        .expect("add batch");
    product
        .add_batch(sooner.clone(), qty(30), Some(date(2030, 1, 1)))
        .expect("add batch");
    uow.products().add(product);
    uow.commit().await.expect("commit");

    let batch = |reference: &BatchRef, eta, units| LoadedBatch {
        reference: reference.clone(),
        eta,
        purchased: qty(units),
        allocated: 0,
        lines: Vec::new(),
    };
    assert_eq!(
        load(&store, &sku, Lines::None).await,
        Some(Loaded {
            version: 3,
            batches: vec![
                batch(&later, Some(date(2030, 1, 2)), 10),
                batch(&warehouse, None, 20),
                batch(&sooner, Some(date(2030, 1, 1)), 30),
            ],
        })
    );
    assert_eq!(
        load(&store, &self::sku(), Lines::None).await,
        None,
        "an unknown SKU loads nothing"
    );

    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(
        transaction.sku_of_batch(&sooner).await.expect("read"),
        Some(sku.clone())
    );
    assert_eq!(
        transaction
            .sku_of_batch(&batchref("unknown"))
            .await
            .expect("read"),
        None
    );
}

async fn ties_between_batches_go_to_the_oldest<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let sku = sku();
    // Named so that alphabetical order is the opposite of creation order.
    let (first, second) = (batchref("z-first"), batchref("a-second"));
    bus.add_batch(&first, &sku, 10, Some(date(2031, 3, 3)))
        .await;
    bus.add_batch(&second, &sku, 10, Some(date(2031, 3, 3)))
        .await;

    assert_eq!(bus.allocate(&orderid("o"), &sku, 1).await, Some(first));
}

async fn allocations_persist_and_one_order_loads_only_its_line<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 100, None).await;
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch.clone()));
    assert_eq!(bus.allocate(&second, &sku, 20).await, Some(batch.clone()));

    let loaded = load(&store, &sku, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(loaded.version, 3);
    assert_eq!(
        loaded.batches[0].allocated, 30,
        "the total covers every line"
    );
    assert_eq!(loaded_lines(&loaded), vec![line(&first, &sku, 10)]);

    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![], "no lines unless asked for");
    let loaded = load(&store, &sku, Lines::OfOrder(&orderid("none")))
        .await
        .expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![]);

    // Sending the same allocation again answers with its batch and writes nothing.
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch));
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (3, 30));
}

async fn a_batch_loads_its_lines_oldest_first<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    bus.add_batch(&warehouse, &sku, 15, None).await;
    bus.add_batch(&shipment, &sku, 100, Some(date(2030, 6, 1)))
        .await;
    // Named so that alphabetical order differs from allocation order.
    let orders = [orderid("c"), orderid("a"), orderid("b")];
    for order in &orders {
        assert_eq!(bus.allocate(order, &sku, 5).await, Some(warehouse.clone()));
    }
    let overflow = orderid("d");
    assert_eq!(
        bus.allocate(&overflow, &sku, 5).await,
        Some(shipment.clone())
    );

    let expected: Vec<_> = orders.iter().map(|o| line(o, &sku, 5)).collect();
    assert_eq!(lines_of_batch(&store, &sku, &warehouse).await, expected);
    let loaded = load(&store, &sku, Lines::OfBatch(&warehouse))
        .await
        .expect("stored");
    assert_eq!(loaded.batches[1].lines, vec![], "only the batch asked for");
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&overflow, &sku, 5)]
    );
}

async fn deallocation_removes_the_line_and_frees_stock<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch.clone()));
    assert_eq!(bus.allocate(&second, &sku, 1).await, None, "out of stock");

    assert_eq!(
        bus.deallocate(&first, &sku).await.expect("deallocate"),
        batch
    );

    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), vec![0]);
    let loaded = load(&store, &sku, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(lines_of_batch(&store, &sku, &batch).await, vec![]);
    assert_eq!(allocations(&store, &first).await, vec![]);
    assert!(
        matches!(
            bus.deallocate(&first, &sku).await,
            Err(Error::Rejected(DomainError::NotAllocated { .. }))
        ),
        "deallocating twice is refused"
    );
    assert_eq!(
        bus.allocate(&second, &sku, 1).await,
        Some(batch),
        "the stock is free again"
    );
    assert_eq!(bus.notifications.sent().len(), 1);
}

async fn a_change_of_quantity_persists_and_bumped_lines_are_reallocated<S: Store + ReadModel>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    bus.add_batch(&warehouse, &sku, 30, None).await;
    bus.add_batch(&shipment, &sku, 30, Some(date(2030, 2, 1)))
        .await;
    let orders = [orderid("o1"), orderid("o2"), orderid("o3")];
    for order in &orders {
        assert_eq!(bus.allocate(order, &sku, 10).await, Some(warehouse.clone()));
    }

    bus.bus
        .handle(ChangeBatchQuantity {
            reference: warehouse.clone(),
            qty: qty(25),
        })
        .await
        .expect("change quantity");

    let views = batch_views(&store, &sku).await;
    let quantities: Vec<_> = views.iter().map(|b| (b.purchased, b.allocated)).collect();
    assert_eq!(quantities, vec![(25, 20), (30, 10)]);
    assert_eq!(
        lines_of_batch(&store, &sku, &warehouse).await,
        vec![line(&orders[0], &sku, 10), line(&orders[1], &sku, 10)],
        "the latest line gave way"
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&orders[2], &sku, 10)]
    );
    assert_eq!(
        allocations(&store, &orders[2]).await,
        vec![view(&sku, &shipment)]
    );
    let published = bus.publisher.published();
    assert_eq!(published.len(), 4, "three allocations and one reallocation");
    assert_eq!(published[3].batchref, shipment);
}

async fn uncommitted_work_is_rolled_back_on_drop<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));

    // A new product, never committed.
    {
        let mut uow = store.start().await.expect("start");
        let mut product = Product::new(sku.clone());
        product
            .add_batch(batch.clone(), qty(10), None)
            .expect("add batch");
        uow.products().add(product);
    }
    assert_eq!(load(&store, &sku, Lines::None).await, None);
    assert_eq!(batch_views(&store, &sku).await, vec![]);

    // A change to a stored product, never committed.
    bus.add_batch(&batch, &sku, 10, None).await;
    {
        let mut uow = store.start().await.expect("start");
        let product = uow
            .products()
            .get_for_order(&sku, &order)
            .await
            .expect("load")
            .expect("stored");
        product.allocate(line(&order, &sku, 4)).expect("allocate");
        for event in uow.collect_new_events() {
            update_read_model(&event, &mut uow);
        }
    }
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (1, 0));
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &order).await, vec![]);
}

/// A handler that changes a product and then fails: `?` returns before the
/// commit, and the unit of work is dropped.
async fn allocate_then_fail<T: StoreTransaction>(
    mut uow: UnitOfWork<T>,
    sku: &Sku,
    order: &OrderId,
) -> Result<(), &'static str> {
    let product = uow
        .products()
        .get_for_order(sku, order)
        .await
        .map_err(|_| "load failed")?
        .ok_or("no such product")?;
    product
        .allocate(line(order, sku, 3))
        .map_err(|_| "refused")?;
    a_later_step_that_fails()?;
    uow.commit().await.map_err(|_| "commit failed")
}

fn a_later_step_that_fails() -> Result<(), &'static str> {
    Err("something went wrong after the change")
}

async fn a_failing_handler_writes_nothing<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let uow = store.start().await.expect("start");
    assert!(allocate_then_fail(uow, &sku, &order).await.is_err());
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (1, 0));
    assert_eq!(loaded_lines(&loaded), vec![]);

    // Through the bus: a rejected command writes nothing either.
    let unknown = self::sku();
    assert!(matches!(
        bus.try_allocate(&order, &unknown, 1).await,
        Err(Error::InvalidSku(s)) if s == unknown
    ));
    assert_eq!(load(&store, &unknown, Lines::None).await, None);
    let refused = bus
        .bus
        .handle(CreateBatch {
            reference: batch.clone(),
            sku: sku.clone(),
            qty: qty(99),
            eta: None,
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(DomainError::BatchExists { .. }))
    ));
    let views = batch_views(&store, &sku).await;
    assert_eq!(
        views.iter().map(|b| b.purchased).collect::<Vec<_>>(),
        vec![10]
    );
}

/// What a unit of work would write for `product` at commit.
fn changes_of(
    product: &mut Product,
    stored_version: Option<u64>,
    views: Vec<ViewChange>,
) -> ChangeSet {
    ChangeSet {
        products: vec![ProductChanges {
            sku: product.sku().clone(),
            stored_version,
            new_version: product.version(),
            events: product.take_events(),
        }],
        views,
    }
}

/// Two units of work load the product at the same version; the first to
/// commit wins, the other is refused and writes nothing. (Each load runs in
/// its own transaction so that this also runs on SQLite, whose write
/// transactions cannot overlap.)
async fn a_commit_from_a_stale_version_conflicts_and_writes_nothing<S: Store + ReadModel>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let load_product = |order: OrderId| {
        let (store, sku) = (store.clone(), sku.clone());
        async move {
            let mut transaction = store.begin().await.expect("begin");
            transaction
                .load(&sku, Lines::OfOrder(&order))
                .await
                .expect("load")
                .expect("stored")
        }
    };
    let mut product_1 = load_product(first.clone()).await;
    let mut product_2 = load_product(second.clone()).await;
    assert_eq!(product_1.version(), product_2.version());
    let stored_version = Some(product_1.version());

    assert_eq!(
        product_1.allocate(line(&first, &sku, 6)),
        Ok(Some(batch.clone()))
    );
    let view_1 = ViewChange::Allocated {
        orderid: first.clone(),
        sku: sku.clone(),
        batchref: batch.clone(),
    };
    let changes = changes_of(&mut product_1, stored_version, vec![view_1]);
    let transaction = store.begin().await.expect("begin");
    transaction
        .commit(changes)
        .await
        .expect("the first commit wins");

    assert_eq!(
        product_2.allocate(line(&second, &sku, 6)),
        Ok(Some(batch.clone()))
    );
    let view_2 = ViewChange::Allocated {
        orderid: second.clone(),
        sku: sku.clone(),
        batchref: batch.clone(),
    };
    let changes = changes_of(&mut product_2, stored_version, vec![view_2]);
    let transaction = store.begin().await.expect("begin");
    match transaction.commit(changes).await {
        Err(StoreError::Conflict { sku: conflicted }) => assert_eq!(conflicted, sku),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let loaded = load(&store, &sku, Lines::OfOrder(&second))
        .await
        .expect("stored");
    assert_eq!(
        (loaded.version, loaded.batches[0].allocated),
        (2, 6),
        "over-allocation refused"
    );
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
    assert_eq!(allocations(&store, &first).await, vec![view(&sku, &batch)]);
}

async fn a_new_product_whose_sku_was_taken_meanwhile_conflicts<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, stored, late) = (sku(), batchref("stored"), batchref("late"));
    bus.add_batch(&stored, &sku, 10, None).await;

    // Built as if the product did not exist yet when it was read.
    let mut product = Product::new(sku.clone());
    product
        .add_batch(late.clone(), qty(5), None)
        .expect("add batch");
    let transaction = store.begin().await.expect("begin");
    let result = transaction
        .commit(changes_of(&mut product, None, Vec::new()))
        .await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == sku),
        "{result:?}"
    );

    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(transaction.sku_of_batch(&late).await.expect("read"), None);
    // On SQLite an open transaction holds the write lock: end it first.
    drop(transaction);
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!((loaded.version, loaded.batches.len()), (1, 1));
}

async fn a_batch_reference_taken_by_another_product_conflicts<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (owner, other, reference) = (sku(), sku(), batchref("shared"));
    bus.add_batch(&reference, &owner, 10, None).await;

    // Past the handler's own check, as a concurrent command would be.
    let mut uow = store.start().await.expect("start");
    let mut product = Product::new(other.clone());
    product
        .add_batch(reference.clone(), qty(5), None)
        .expect("add batch");
    uow.products().add(product);
    let result = uow.commit().await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == other),
        "{result:?}"
    );

    assert_eq!(
        load(&store, &other, Lines::None).await,
        None,
        "nothing written"
    );
    assert_eq!(batch_views(&store, &other).await, vec![]);
    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(
        transaction.sku_of_batch(&reference).await.expect("read"),
        Some(owner.clone())
    );
    drop(transaction);

    // Through the bus, the handler refuses it outright.
    let refused = bus
        .bus
        .handle(CreateBatch {
            reference: reference.clone(),
            sku: other.clone(),
            qty: qty(5),
            eta: None,
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(DomainError::BatchExists { .. }))
    ));
}

async fn the_read_model_is_written_with_the_commit_and_removed_on_deallocation<
    S: Store + ReadModel,
>(
    store: S,
) {
    let bus = bus(&store);
    // Named so that SKU order is known: allocations come back by SKU.
    let (sku_a, sku_b) = (
        Sku::parse(&unique("a-sku")).expect("sku"),
        Sku::parse(&unique("b-sku")).expect("sku"),
    );
    let (batch_a, batch_b, order) = (batchref("a"), batchref("b"), orderid("o"));
    bus.add_batch(&batch_a, &sku_a, 10, None).await;
    bus.add_batch(&batch_b, &sku_b, 10, None).await;

    // The view changes only when the unit of work commits.
    let mut uow = store.start().await.expect("start");
    let product = uow
        .products()
        .get_for_order(&sku_b, &order)
        .await
        .expect("load")
        .expect("stored");
    product.allocate(line(&order, &sku_b, 2)).expect("allocate");
    for event in uow.collect_new_events() {
        update_read_model(&event, &mut uow);
    }
    assert_eq!(
        allocations(&store, &order).await,
        vec![],
        "not before the commit"
    );
    uow.commit().await.expect("commit");
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&sku_b, &batch_b)]
    );

    assert_eq!(bus.allocate(&order, &sku_a, 1).await, Some(batch_a.clone()));
    let mut both = allocations(&store, &order).await;
    both.sort_by(|x, y| x.sku.cmp(&y.sku));
    assert_eq!(both, vec![view(&sku_a, &batch_a), view(&sku_b, &batch_b)]);
    assert_eq!(allocations(&store, &orderid("other")).await, vec![]);

    bus.deallocate(&order, &sku_b).await.expect("deallocate");
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&sku_a, &batch_a)]
    );
    bus.deallocate(&order, &sku_a).await.expect("deallocate");
    assert_eq!(allocations(&store, &order).await, vec![]);
    store.ping().await.expect("ping");
}

async fn an_orders_allocations_come_back_by_sku<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let order = orderid("o");
    // Allocated in an order that is neither SKU order nor its reverse.
    let skus: Vec<Sku> = ["m", "z", "a", "q"]
        .iter()
        .map(|prefix| Sku::parse(&unique(prefix)).expect("sku"))
        .collect();
    let mut expected = Vec::new();
    for sku in &skus {
        let batch = batchref("b");
        bus.add_batch(&batch, sku, 5, None).await;
        assert_eq!(bus.allocate(&order, sku, 1).await, Some(batch.clone()));
        expected.push(view(sku, &batch));
    }
    expected.sort_by(|x, y| x.sku.cmp(&y.sku));
    assert_eq!(allocations(&store, &order).await, expected);
}

async fn batches_report_purchased_and_allocated_quantities<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    assert_eq!(batch_views(&store, &sku).await, vec![], "unknown SKU");
    bus.add_batch(&shipment, &sku, 20, Some(date(2030, 5, 1)))
        .await;
    bus.add_batch(&warehouse, &sku, 10, None).await;
    assert_eq!(
        bus.allocate(&orderid("o"), &sku, 4).await,
        Some(warehouse.clone())
    );

    let views = batch_views(&store, &sku).await;
    assert_eq!(
        views,
        vec![
            BatchView {
                reference: shipment,
                eta: Some(date(2030, 5, 1)),
                purchased: 20,
                allocated: 0,
            },
            BatchView {
                reference: warehouse,
                eta: None,
                purchased: 10,
                allocated: 4,
            },
        ]
    );
    assert_eq!(views[1].available(), 6);
}

/// Many requests for one SKU at once: none fails (on SQLite: no
/// SQLITE_BUSY), and the batch is never over-allocated.
async fn concurrent_allocations_never_over_allocate<S: Store + ReadModel>(store: S) {
    let retry = RetryPolicy {
        command_attempts: 200,
        ..RetryPolicy::default()
    };
    let bus = Arc::new(bus_with(&store, retry));
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (bus, sku) = (bus.clone(), sku.clone());
            tokio::spawn(async move { bus.try_allocate(&orderid(&format!("o{i}")), &sku, 1).await })
        })
        .collect();
    let mut allocated = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(Some(reference)) => {
                assert_eq!(reference, batch);
                allocated += 1;
            }
            Ok(None) => {}
            Err(error) => panic!("a concurrent allocation failed: {error}"),
        }
    }

    assert_eq!(allocated, 10, "exactly the stock there was");
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), vec![10]);
    assert_eq!(lines_of_batch(&store, &sku, &batch).await.len(), 10);
    assert_eq!(
        bus.notifications.sent().len(),
        10,
        "one out-of-stock notice per refusal"
    );
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(loaded.version, 11, "one version per allocation, none lost");
}

async fn interleaved_units_of_work_conflict_and_the_loser_writes_nothing<S: Store + ReadModel>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut uow_1 = store.start().await.expect("start");
    let mut uow_2 = store.start().await.expect("start");
    for (uow, order) in [(&mut uow_1, &first), (&mut uow_2, &second)] {
        let product = uow
            .products()
            .get_for_order(&sku, order)
            .await
            .expect("load")
            .expect("stored");
        product.allocate(line(order, &sku, 6)).expect("allocate");
        for event in uow.collect_new_events() {
            update_read_model(&event, uow);
        }
    }
    uow_1.commit().await.expect("the first commit wins");
    let result = uow_2.commit().await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == sku),
        "{result:?}"
    );

    let loaded = load(&store, &sku, Lines::OfOrder(&second))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 6));
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
}

// ---------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_write_transactions_queue_instead_of_conflicting() {
    let db = SqliteDb::create().await;
    let store = db.store.clone();
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut uow_1 = store.start().await.expect("start");
    let waiting = tokio::spawn({
        let (store, sku, second) = (store.clone(), sku.clone(), second.clone());
        async move {
            // Waits at BEGIN IMMEDIATE until the first unit of work is done,
            // then reads what it wrote.
            let mut uow_2 = store.start().await.expect("start");
            let product = uow_2
                .products()
                .get_for_order(&sku, &second)
                .await
                .expect("load")
                .expect("stored");
            let allocated = product.allocate(line(&second, &sku, 6)).expect("allocate");
            uow_2.commit().await.expect("commit");
            allocated
        }
    });
    let product = uow_1
        .products()
        .get_for_order(&sku, &first)
        .await
        .expect("load")
        .expect("stored");
    product.allocate(line(&first, &sku, 6)).expect("allocate");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the second writer waits for the first"
    );
    uow_1.commit().await.expect("commit");

    assert_eq!(
        waiting.await.expect("task ran"),
        None,
        "it saw the first allocation"
    );
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 6));
}

#[tokio::test]
async fn sqlite_creates_the_file_uses_wal_and_migrates_idempotently() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("new.db");
    assert!(!path.exists());
    let url = format!("sqlite://{}", path.display());

    // Two stores opening a fresh file at once: both migrate, neither fails.
    let (a, b) = tokio::join!(
        SqlStore::connect(&url, test_pool()),
        SqlStore::connect(&url, test_pool())
    );
    let (a, b) = (a.expect("first store"), b.expect("second store"));
    assert!(path.exists());
    assert_eq!(a.backend(), "sqlite");
    a.migrate().await.expect("migrating again changes nothing");
    a.ping().await.expect("ping");
    let bus = bus(&a);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 3, None).await;
    assert_eq!(
        batch_views(&b, &sku).await.len(),
        1,
        "both see one database"
    );

    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open directly");
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("read journal mode")
        .get(0);
    assert_eq!(mode, "wal");
    let migrations: i64 = sqlx::query("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("read migrations")
        .get(0);
    assert_eq!(migrations, 1);
}

/// Loading an order's line, or a batch's lines, must not read a product's
/// whole history: both are index lookups. (The queries are copies of those
/// in `adapters::sql::load_lines`.)
#[tokio::test]
async fn sqlite_line_lookups_use_indexes() {
    let db = SqliteDb::create().await;
    let url = sqlite_url(&db.dir, "store.db");
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open directly");
    let plan = |sql: &str| format!("EXPLAIN QUERY PLAN {sql}");
    let of_order = plan(
        "SELECT b.reference, a.qty FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.orderid = $1 AND a.sku = $2",
    );
    let of_batch = plan(
        "SELECT a.orderid, a.qty FROM batches b JOIN allocations a ON a.batch_id = b.id \
         WHERE b.reference = $1 AND b.sku = $2 ORDER BY a.id",
    );
    for (sql, index) in [
        (&of_order, "sqlite_autoindex_allocations_1"),
        (&of_batch, "allocations_batch_id_id"),
    ] {
        let rows = sqlx::query(sql)
            .bind("x")
            .bind("y")
            .fetch_all(&mut conn)
            .await
            .expect("explain");
        let details: Vec<String> = rows.iter().map(|row| row.get("detail")).collect();
        assert!(
            details.iter().any(|d| d.contains(index)),
            "expected {index} in the plan: {details:?}"
        );
        assert!(
            !details
                .iter()
                .any(|d| d.starts_with("SCAN a") || d.contains("TEMP B-TREE")),
            "no scan or sort of allocations: {details:?}"
        );
    }
}

#[tokio::test]
async fn sqlite_in_memory_keeps_its_data_for_the_life_of_the_store() {
    let store = SqlStore::connect("sqlite::memory:", test_pool())
        .await
        .expect("open in memory");
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 5, None).await;
    assert_eq!(bus.allocate(&orderid("o"), &sku, 2).await, Some(batch));
    // Concurrent readers: a pool that opened more connections would hand
    // some of them a fresh, empty database.
    let (a, b, c, d) = tokio::join!(
        batch_views(&store, &sku),
        batch_views(&store, &sku),
        batch_views(&store, &sku),
        batch_views(&store, &sku)
    );
    for views in [a, b, c, d] {
        assert_eq!(allocated_totals(&views), vec![2]);
    }
}

#[tokio::test]
async fn connection_errors_name_the_database_without_its_password() {
    let error = SqlStore::connect("sqlite:///no/such/directory/x.db", test_pool())
        .await
        .expect_err("no such directory");
    assert!(matches!(error, SqlError::Connect { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with("cannot open database sqlite:///no/such/directory/x.db"),
        "{message}"
    );

    let error = SqlStore::connect("mysql://me:hunter2@localhost/db", test_pool())
        .await
        .expect_err("unsupported");
    assert!(matches!(error, SqlError::UnsupportedUrl { .. }));
    assert!(!error.to_string().contains("hunter2"), "{error}");

    let quick = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    let error = SqlStore::connect("postgres://me:hunter2@127.0.0.1:1/db", quick)
        .await
        .expect_err("nothing listens on port 1");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot open database postgres://me:***@127.0.0.1:1/db"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

// ---------------------------------------------------------------------------
// PostgreSQL only
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_safe_to_run_twice_and_concurrently() {
    let Some(db) = PostgresDb::create().await else {
        return;
    };
    assert_eq!(db.store.backend(), "postgres");
    let (a, b) = tokio::join!(
        SqlStore::connect(&db.url, test_pool()),
        SqlStore::connect(&db.url, test_pool())
    );
    let (a, b) = (a.expect("first store"), b.expect("second store"));
    a.migrate().await.expect("migrate again");
    b.migrate().await.expect("migrate again");
    let bus = bus(&a);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 3, None).await;
    assert_eq!(batch_views(&b, &sku).await.len(), 1);
    // Release the extra pools before the database is dropped.
    drop((a, b));
}
