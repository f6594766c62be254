//! Concurrency across instances (book chapter 7; docs/contract.md sections
//! 1 and 5: the rules hold across instances, and a write that lost a race
//! is detected and run again), through the message bus as the service runs
//! commands:
//!
//! - a version conflict between two instances, forced at a chosen moment,
//!   then retried by the bus;
//! - two instances under load, checked afterwards with plain SQL.
//!
//! Both watch the commits through [`Watched`], a store wrapper that records
//! each commit's outcome and version numbers and can hold one back.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use domain::commands::ChangeBatchQuantity;
use domain::{BatchRef, DomainError, Event, OrderId, Product, Sku};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use service_layer::ports::{ChangeSet, Lines};
use service_layer::ports::{Outbox, ReadModel};
use service_layer::{Error, RetryPolicy, Store, StoreError, StoreTransaction};
use sqlx::Row;
use test_support::{TestDatabase, on_database, per_backend};
use tokio::sync::oneshot;

use crate::backends::{connect_directly, open, two_instances};
use crate::helpers::*;

// ---------------------------------------------------------------------------
// A store that watches its commits
// ---------------------------------------------------------------------------

/// A store that records every commit made through it and can hold the next
/// one back until the test lets it go. Clones share what they record.
#[derive(Debug, Clone)]
struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

#[derive(Debug, Default)]
struct Watch {
    commits: Mutex<Vec<Commit>>,
    gate: Mutex<Option<Gate>>,
}

/// Holds a commit back: `reached` tells the test it got there, and the
/// commit goes on when the test sends on the other end of `release`.
#[derive(Debug)]
struct Gate {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// One commit attempt, as the store saw it.
#[derive(Debug, Clone)]
struct Commit {
    /// Each product it wrote: SKU, version it was loaded at, new version.
    products: Vec<(Sku, Option<u64>, u64)>,
    events: Vec<Event>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Committed,
    Conflict,
    Failed(String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Store> Watched<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            watch: Arc::default(),
        }
    }

    /// Makes the next commit wait, just before it writes anything. Returns
    /// a receiver that fires when a commit is waiting, and the sender that
    /// lets it go on.
    fn hold_next_commit(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached, reached_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        *lock(&self.watch.gate) = Some(Gate { reached, release });
        (reached_rx, release_tx)
    }

    fn commits(&self) -> Vec<Commit> {
        lock(&self.watch.commits).clone()
    }
}

impl<S: Store> Store for Watched<S> {
    type Transaction = WatchedTransaction<S::Transaction>;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        Ok(WatchedTransaction {
            inner: self.inner.begin().await?,
            watch: self.watch.clone(),
        })
    }

    async fn begin_locking(&self) -> Result<Self::Transaction, StoreError> {
        Ok(WatchedTransaction {
            inner: self.inner.begin_locking().await?,
            watch: self.watch.clone(),
        })
    }
}

#[derive(Debug)]
struct WatchedTransaction<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T: StoreTransaction> StoreTransaction for WatchedTransaction<T> {
    async fn load(&mut self, sku: &Sku, lines: Lines<'_>) -> Result<Option<Product>, StoreError> {
        self.inner.load(sku, lines).await
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        self.inner.sku_of_batch(reference).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        let gate = lock(&self.watch.gate).take();
        if let Some(Gate { reached, release }) = gate {
            // Errors only mean the test stopped waiting: go on regardless.
            let _ = reached.send(());
            let _ = release.await;
        }
        let products = changes
            .products
            .iter()
            .map(|p| (p.sku.clone(), p.stored_version, p.new_version))
            .collect();
        let events = changes
            .products
            .iter()
            .flat_map(|p| p.events.iter().cloned())
            .collect();
        let result = self.inner.commit(changes).await;
        let outcome = match &result {
            Ok(()) => Outcome::Committed,
            Err(StoreError::Conflict { .. }) => Outcome::Conflict,
            Err(error) => Outcome::Failed(error.to_string()),
        };
        lock(&self.watch.commits).push(Commit {
            products,
            events,
            outcome,
        });
        result
    }
}

/// `future`, or a panic if it takes more than 30 s: a test that waits on
/// another task fails rather than hangs.
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 30 s"))
}

// ---------------------------------------------------------------------------
// A conflict between two instances, retried by the bus
// ---------------------------------------------------------------------------

// Not on SQLite: there a write transaction takes the database's write lock
// when it begins (BEGIN IMMEDIATE), so writers are serialised and the
// conflict this test forces cannot arise (see
// `specific::sqlite_write_transactions_queue_instead_of_conflicting`); and
// holding instance 1 before its commit would deadlock, since instance 2
// could not even begin until instance 1 has finished.
per_backend!(mod conflict_between_instances on [memory, postgres] via two_instances {
    a_conflict_with_another_instance_is_retried_by_the_bus,
});

/// The book's concurrency test (chapter 7), made deterministic and run
/// through the bus: instance 1 allocates an order and, just before it
/// commits, instance 2 allocates another order of the same SKU and commits.
/// Instance 1's commit then conflicts, and the bus runs its command again on
/// what is stored now, which makes it choose another batch.
async fn a_conflict_with_another_instance_is_retried_by_the_bus<S: Store + ReadModel + Outbox>(
    one: S,
    two: S,
) {
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    let setup = bus(&one);
    setup.add_batch(&warehouse, &sku, 10, None).await;
    setup
        .add_batch(&shipment, &sku, 10, Some(date(2031, 1, 1)))
        .await;
    let store = one.clone();

    let (one, two) = (Watched::new(one), Watched::new(two));
    let (bus_one, bus_two) = (Arc::new(bus(&one)), bus(&two));
    let (first, second) = (orderid("first"), orderid("second"));
    let (reached, release) = one.hold_next_commit();
    let allocating = tokio::spawn({
        let (bus, first, sku) = (bus_one.clone(), first.clone(), sku.clone());
        async move { bus.allocate(&first, &sku, 5).await }
    });
    bounded("instance 1 reaches its commit", reached)
        .await
        .expect("instance 1 commits");
    // Instance 1 has read 10 free in the warehouse and allocated 5 there.
    assert_eq!(
        bounded("instance 2", bus_two.allocate(&second, &sku, 8)).await,
        Some(warehouse.clone()),
        "instance 2 runs to completion meanwhile"
    );
    release.send(()).expect("instance 1 is waiting");
    let reply = bounded("instance 1", allocating)
        .await
        .expect("the task ran");
    assert_eq!(
        reply,
        Some(shipment.clone()),
        "run again, it saw instance 2's allocation: 5 no longer fit in the warehouse's 2"
    );

    // Exactly one conflict: instance 1's first commit, from version 2.
    let commits = |store: &Watched<S>| -> Vec<_> {
        let commits = store.commits();
        commits
            .into_iter()
            .map(|c| (c.outcome, c.products))
            .collect()
    };
    let change = |from, to| vec![(sku.clone(), Some(from), to)];
    assert_eq!(
        commits(&one),
        vec![
            (Outcome::Conflict, change(2, 3)),
            (Outcome::Committed, change(3, 4)),
        ]
    );
    assert_eq!(commits(&two), vec![(Outcome::Committed, change(2, 3))]);

    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(
        loaded.version, 4,
        "two batches and two allocations: none lost, none counted twice"
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &sku).await),
        vec![8, 5]
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &warehouse).await,
        vec![line(&second, &sku, 8)]
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&first, &sku, 5)]
    );
    assert_eq!(
        allocations(&store, &first).await,
        vec![view(&sku, &shipment)]
    );
    assert_eq!(
        allocations(&store, &second).await,
        vec![view(&sku, &warehouse)]
    );
    // What the refused attempt decided never reached the outbox.
    assert_eq!(
        outbox_of(&store).await,
        vec![(second, warehouse), (first, shipment)]
    );
    assert!(bus_one.notifications.sent().is_empty());
}

// ---------------------------------------------------------------------------
// Two instances under load
// ---------------------------------------------------------------------------

per_backend!(mod hot_product_across_instances on [sqlite, postgres] via on_database {
    a_retry_locks_the_product_so_it_cannot_lose_twice,
});

/// A flash sale across two instances: clients of both allocate on one
/// product at once, with the bus allowed only two attempts per command. The
/// first attempt is optimistic and may lose a race with the other instance;
/// the second locks the product as it reads it, so it cannot lose: every
/// command must succeed. (With two optimistic attempts, some lose twice and
/// end in `Contention`.)
async fn a_retry_locks_the_product_so_it_cannot_lose_twice(db: TestDatabase) {
    let stores = [open(db.url()).await, open(db.url()).await];
    let instances = [
        Watched::new(stores[0].clone()),
        Watched::new(stores[1].clone()),
    ];
    let two_attempts = RetryPolicy {
        command_attempts: 2,
        ..RetryPolicy::default()
    };
    let buses = [
        Arc::new(bus_with(&instances[0], two_attempts)),
        Arc::new(bus_with(&instances[1], two_attempts)),
    ];
    let (sku, batch) = (sku(), batchref("flash"));
    buses[0].add_batch(&batch, &sku, 10_000, None).await;

    const HOT_CLIENTS: usize = 8;
    const ALLOCATIONS_PER_CLIENT: usize = 25;
    let clients: Vec<_> = (0..HOT_CLIENTS)
        .map(|i| {
            let (bus, sku) = (buses[i % 2].clone(), sku.clone());
            tokio::spawn(async move {
                for _ in 0..ALLOCATIONS_PER_CLIENT {
                    let order = orderid("flash");
                    match bus.try_allocate(&order, &sku, 1).await {
                        Ok(Some(_)) => {}
                        other => return Err(format!("{order}: {other:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        bounded("a client", client)
            .await
            .expect("the client ran")
            .unwrap_or_else(|failure| panic!("an allocation failed: {failure}"));
    }

    let commits: Vec<Commit> = instances.iter().flat_map(Watched::commits).collect();
    let conflicts = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Conflict)
        .count();
    println!(
        "{}: {} allocations on one product from two instances, {conflicts} conflicts, none lost twice",
        db.backend(),
        HOT_CLIENTS * ALLOCATIONS_PER_CLIENT
    );
    let views = batch_views(&stores[0], &sku).await;
    assert_eq!(
        allocated_totals(&views),
        vec![(HOT_CLIENTS * ALLOCATIONS_PER_CLIENT) as u64]
    );
}

per_backend!(mod two_instances_under_load on [sqlite, postgres] via on_database {
    many_commands_through_two_instances_keep_every_invariant,
});

const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 50;

/// What the clients' commands came to.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    allocated: u32,
    out_of_stock: u32,
    resent: u32,
    deallocated: u32,
    not_allocated: u32,
    changed: u32,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.allocated += other.allocated;
        self.out_of_stock += other.out_of_stock;
        self.resent += other.resent;
        self.deallocated += other.deallocated;
        self.not_allocated += other.not_allocated;
        self.changed += other.changed;
    }
}

/// Two instances (two stores, each with its own pool, and a bus each) and
/// eight clients sending 50 commands each, at once, to three SKUs with
/// little stock: mostly new orders, some sent again, some cancelled, and
/// some batch quantity changes (which bump lines, reallocated by the bus).
/// Every command must end in a domain outcome, never in an error (not even
/// Contention: the bus's retries must absorb ordinary contention), and
/// nothing the bus does after a command may log a warning about these SKUs.
/// Then, with plain SQL: no batch is over-allocated and each batch's total
/// is the sum of its lines; no order line is stored twice; the read model
/// equals the write model row for row; and each product's committed
/// versions form one unbroken chain (two commits from the same version
/// would be a lost update) ending at the stored version.
async fn many_commands_through_two_instances_keep_every_invariant(db: TestDatabase) {
    let warnings = logged_warnings();
    let instances = [
        Watched::new(open(db.url()).await),
        Watched::new(open(db.url()).await),
    ];
    let buses = [Arc::new(bus(&instances[0])), Arc::new(bus(&instances[1]))];
    let skus: Vec<Sku> = (0..3).map(|_| sku()).collect();
    let mut batches = Vec::new();
    for sku in &skus {
        for (i, eta) in [None, Some(date(2030, 1, 1)), Some(date(2030, 6, 1))]
            .into_iter()
            .enumerate()
        {
            let batch = batchref("b");
            buses[i % 2].add_batch(&batch, sku, 25, eta).await;
            batches.push(batch);
        }
    }

    let seed = test_support::random_u64();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let bus = buses[i % 2].clone();
            let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            tokio::spawn(client(bus, skus.clone(), batches.clone(), rng))
        })
        .collect();
    let mut tally = Tally::default();
    for client in clients {
        tally += bounded("a client", client)
            .await
            .unwrap_or_else(|e| panic!("a client failed (seed {seed}): {e}"));
    }
    let elapsed = started.elapsed();

    let commits: Vec<Commit> = instances.iter().flat_map(Watched::commits).collect();
    let failed: Vec<_> = commits
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
        .collect();
    assert!(failed.is_empty(), "commits failed: {failed:?}");
    let conflicts = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Conflict)
        .count();
    let committed: Vec<&Commit> = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Committed)
        .collect();
    let bumped = committed
        .iter()
        .flat_map(|c| &c.events)
        .filter(|e| matches!(e, Event::Deallocated(_)))
        .count();
    println!(
        "{}: {} commands from {CLIENTS} clients in {elapsed:?} (seed {seed}): {tally:?}; \
         {} commits, {conflicts} conflicts, {bumped} lines bumped by a quantity change",
        db.backend(),
        CLIENTS * COMMANDS_PER_CLIENT,
        commits.len(),
    );
    let logged = String::from_utf8_lossy(&lock(warnings)).into_owned();
    for sku in &skus {
        let about_it: Vec<&str> = logged
            .lines()
            .filter(|l| l.contains(sku.as_str()))
            .collect();
        assert!(
            about_it.is_empty(),
            "warnings after commands: {about_it:#?}"
        );
    }
    // Otherwise the test did not exercise what it claims to.
    assert!(
        tally.allocated > 0
            && tally.out_of_stock > 0
            && tally.deallocated > 0
            && tally.changed > 0
            && bumped > 0,
        "every kind of outcome happened (seed {seed}): {tally:?}, {bumped} bumped"
    );
    if db.backend() == "sqlite" {
        assert_eq!(conflicts, 0, "SQLite serialises writers: nothing to retry");
    }

    let stored_versions = check_tables(db.url()).await;
    check_version_chains(&committed, &stored_versions);
    assert_eq!(
        stored_versions.len(),
        skus.len(),
        "only this test's products"
    );
}

/// One client: `COMMANDS_PER_CLIENT` commands, chosen at random, each
/// awaited before the next, as one HTTP client would send them.
async fn client<S: Store>(
    bus: Arc<Bus<S>>,
    skus: Vec<Sku>,
    batches: Vec<BatchRef>,
    mut rng: StdRng,
) -> Tally {
    let mut tally = Tally::default();
    let mut orders: Vec<(OrderId, Sku, u32)> = Vec::new();
    for _ in 0..COMMANDS_PER_CLIENT {
        match rng.random_range(0..100) {
            0..70 => {
                let sku = skus[rng.random_range(0..skus.len())].clone();
                let (order, units) = (orderid("o"), rng.random_range(1..=5));
                match bus.try_allocate(&order, &sku, units).await {
                    Ok(Some(_)) => tally.allocated += 1,
                    Ok(None) => tally.out_of_stock += 1,
                    Err(error) => panic!("allocating {order} {sku} x{units}: {error}"),
                }
                orders.push((order, sku, units));
            }
            // The same line again, as a client that lost the answer would:
            // its batch (it may have moved), or a new try if it was bumped.
            70..78 if !orders.is_empty() => {
                let (order, sku, units) = &orders[rng.random_range(0..orders.len())];
                match bus.try_allocate(order, sku, *units).await {
                    Ok(_) => tally.resent += 1,
                    Err(error) => panic!("allocating {order} {sku} x{units} again: {error}"),
                }
            }
            78..90 if !orders.is_empty() => {
                let (order, sku, _) = &orders[rng.random_range(0..orders.len())];
                match bus.deallocate(order, sku).await {
                    Ok(_) => tally.deallocated += 1,
                    Err(Error::Rejected(DomainError::NotAllocated { .. })) => {
                        tally.not_allocated += 1;
                    }
                    Err(error) => panic!("deallocating {order} {sku}: {error}"),
                }
            }
            _ => {
                let reference = batches[rng.random_range(0..batches.len())].clone();
                let units = rng.random_range(10..=40);
                let command = ChangeBatchQuantity {
                    reference: reference.clone(),
                    qty: qty(units),
                };
                match bus.bus.handle(command).await {
                    Ok(()) => tally.changed += 1,
                    Err(error) => panic!("changing {reference} to {units}: {error}"),
                }
            }
        }
    }
    tally
}

/// Checks the tables with plain SQL, and returns each product's stored
/// version.
async fn check_tables(url: &str) -> HashMap<String, u64> {
    let mut conn = connect_directly(url).await;
    let batches = sqlx::query(
        "SELECT b.reference, b.purchased_quantity, b.allocated_quantity, \
                CAST(COALESCE(SUM(a.qty), 0) AS BIGINT) AS of_lines \
         FROM batches b LEFT JOIN allocations a ON a.batch_id = b.id \
         GROUP BY b.id, b.reference, b.purchased_quantity, b.allocated_quantity \
         ORDER BY b.id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read batches");
    for batch in &batches {
        let reference: String = batch.get("reference");
        let purchased: i64 = batch.get("purchased_quantity");
        let allocated: i64 = batch.get("allocated_quantity");
        let of_lines: i64 = batch.get("of_lines");
        assert!(
            allocated <= purchased,
            "{reference} over-allocated: {allocated} of {purchased}"
        );
        assert_eq!(
            allocated, of_lines,
            "{reference}: its total is not the sum of its lines"
        );
    }

    let scalar = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let twice = scalar(
        "SELECT COUNT(*) FROM (SELECT orderid, sku FROM allocations \
         GROUP BY orderid, sku HAVING COUNT(*) > 1) AS doubled",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count doubled lines");
    assert_eq!(twice, 0, "an order line stored twice");
    let astray = scalar(
        "SELECT COUNT(*) FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.sku <> b.sku",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count lines in another SKU's batch");
    assert_eq!(astray, 0, "a line in a batch of another SKU");

    let rows = |sql: &'static str| sqlx::query_as::<_, (String, String, String)>(sql);
    let mut written = rows(
        "SELECT a.orderid, a.sku, b.reference FROM allocations a \
         JOIN batches b ON b.id = a.batch_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the write model");
    let mut viewed = rows("SELECT orderid, sku, batchref FROM allocations_view")
        .fetch_all(&mut conn)
        .await
        .expect("read the read model");
    written.sort();
    viewed.sort();
    assert!(!written.is_empty(), "some lines stayed allocated");
    assert_eq!(
        viewed, written,
        "the read model differs from the write model"
    );

    let products = sqlx::query("SELECT sku, version_number FROM products")
        .fetch_all(&mut conn)
        .await
        .expect("read products");
    products
        .iter()
        .map(|row| {
            let version: i64 = row.get("version_number");
            (row.get("sku"), u64::try_from(version).expect("positive"))
        })
        .collect()
}

/// Each product's committed changes, sorted by the version they were loaded
/// at, must go 0 -> a -> b -> ... -> the stored version, with no gap and no
/// version loaded twice.
fn check_version_chains(committed: &[&Commit], stored: &HashMap<String, u64>) {
    let mut chains: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for (sku, from, to) in committed.iter().flat_map(|c| &c.products) {
        chains
            .entry(sku.to_string())
            .or_default()
            .push((from.unwrap_or(0), *to));
    }
    assert_eq!(
        chains.len(),
        stored.len(),
        "every stored product was committed here"
    );
    for (sku, mut chain) in chains {
        chain.sort_unstable();
        let mut at = 0;
        for &(from, to) in &chain {
            assert_eq!(
                from, at,
                "{sku}: a commit from version {from} where {at} was stored: {chain:?}"
            );
            assert!(to > from, "{sku}: a commit that did not move the version");
            at = to;
        }
        assert_eq!(stored.get(&sku), Some(&at), "{sku}: stored version");
    }
}

/// Every warning and error logged in this test binary, as text. The bus
/// logs, and otherwise swallows, the failures of what it runs after a
/// command (follow-up commands such as reallocation, notifications): this
/// is how a test sees them. Installed once, for the whole binary.
fn logged_warnings() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        // Fails only if another subscriber was installed first, which no
        // test in this binary does.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || SharedLog(writer.clone()))
            .try_init()
            .expect("the first global subscriber");
        log
    })
}

struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
