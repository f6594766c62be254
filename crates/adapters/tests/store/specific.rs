//! What only one backend has to show (SQLite's queueing writers, its file
//! and in-memory modes; how many statements PostgreSQL commits in),
//! connection errors, and migrations.

use std::path::Path;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use adapters::{PoolSettings, SqlError, SqlStore};
use domain::OrderId;
use service_layer::UnitOfWork;
use service_layer::ports::ChangeSet;
use service_layer::ports::Lines;
use service_layer::ports::ReadModel;
use service_layer::{Store, StoreTransaction};
use test_support::{TestDatabase, on_database, per_backend};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

use crate::backends::{connect_directly, one_store, open, test_pool};
use crate::helpers::*;

// ---------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_write_transactions_queue_instead_of_conflicting() {
    let db = TestDatabase::sqlite();
    let store = open(db.url()).await;
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut uow_1 = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    let waiting = tokio::spawn({
        let (store, sku, second) = (store.clone(), sku.clone(), second.clone());
        async move {
            // Waits at BEGIN IMMEDIATE until the first unit of work is done,
            // then reads what it wrote.
            let mut uow_2 = UnitOfWork::begin(&store, chrono::Utc::now())
                .await
                .expect("start");
            let allocated = allocate_in(&mut uow_2, &second, &sku, 6).await;
            uow_2.commit().await.expect("commit");
            allocated
        }
    });
    allocate_in(&mut uow_1, &first, &sku, 6).await;
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
    assert_eq!((loaded.version, loaded.batches[0].allocated), (3, 6));
}

#[tokio::test]
async fn sqlite_creates_the_file_and_uses_wal() {
    let db = TestDatabase::sqlite();
    let path = Path::new(db.url().strip_prefix("sqlite://").expect("a sqlite:// URL"));
    assert!(!path.exists());
    let store = open(db.url()).await;
    assert!(path.exists());

    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut connect_directly(db.url()).await)
        .await
        .expect("read journal mode");
    assert_eq!(mode, "wal");
    drop(store);
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
// Migrations, on both SQL backends
// ---------------------------------------------------------------------------

per_backend!(mod migrations on [sqlite, postgres] via on_database {
    two_instances_starting_at_once_both_migrate_a_fresh_database,
});

/// Two instances starting at once on a fresh database both migrate it and
/// neither fails (PostgreSQL: sqlx's advisory lock; SQLite: one `BEGIN
/// IMMEDIATE` around the run); migrating again changes nothing.
async fn two_instances_starting_at_once_both_migrate_a_fresh_database(db: TestDatabase) {
    let (a, b) = tokio::join!(
        SqlStore::connect(db.url(), test_pool()),
        SqlStore::connect(db.url(), test_pool())
    );
    let (a, b) = (a.expect("first store"), b.expect("second store"));
    assert_eq!(a.backend(), db.backend());
    a.migrate().await.expect("migrate again");
    b.migrate().await.expect("migrate again");
    a.ping().await.expect("ping");
    let bus = bus(&a);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 3, None).await;
    assert_eq!(
        batch_views(&b, &sku).await.len(),
        1,
        "both see one database"
    );

    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut connect_directly(db.url()).await)
        .await
        .expect("read migrations");
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("migrations folder")
        .count();
    assert_eq!(migrations as usize, shipped, "each migration applied once");
}

// ---------------------------------------------------------------------------
// PostgreSQL only
// ---------------------------------------------------------------------------

per_backend!(mod postgres_statements on [postgres] via one_store {
    allocations_commit_in_one_statement_without_a_transaction,
});

per_backend!(mod postgres_commits on [postgres] via on_database {
    a_statement_committed_on_its_own_is_answered_after_its_commit,
});

/// The hot path: a lone allocation, and a group of allocations of several
/// products, commit in one statement with no `BEGIN`/`COMMIT`. A
/// deallocation, whose removed lines are counted, commits in a transaction.
async fn allocations_commit_in_one_statement_without_a_transaction(store: SqlStore) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    bus.add_batch(&lamp_batch, &lamp, 10, None).await;
    bus.add_batch(&table_batch, &table, 10, None).await;
    let orders: Vec<OrderId> = (0..5).map(|n| orderid(&format!("o{n}"))).collect();

    let mut product = load_product(&store, &lamp, Lines::OfOrder(&orders[0])).await;
    let stored = product.version();
    product
        .allocate(line(&orders[0], &lamp, 1))
        .expect("allocates");
    let lone = statements_of_commit(&store, changes_of(&mut product, Some(stored))).await;
    assert_eq!(lone, ["WITH"], "a lone allocation");

    let mut lamp_product = load_product(&store, &lamp, Lines::OfOrders(&orders[1..3])).await;
    let mut table_product = load_product(&store, &table, Lines::OfOrders(&orders[3..])).await;
    let (lamp_stored, table_stored) = (lamp_product.version(), table_product.version());
    for order in &orders[1..3] {
        lamp_product
            .allocate(line(order, &lamp, 1))
            .expect("allocates");
    }
    for order in &orders[3..] {
        table_product
            .allocate(line(order, &table, 1))
            .expect("allocates");
    }
    let group = together([
        changes_of(&mut lamp_product, Some(lamp_stored)),
        changes_of(&mut table_product, Some(table_stored)),
    ]);
    let group = statements_of_commit(&store, group).await;
    assert_eq!(group, ["WITH"], "a group of two products");

    let mut product = load_product(&store, &lamp, Lines::OfOrder(&orders[0])).await;
    let stored = product.version();
    product.deallocate(&orders[0]).expect("deallocates");
    let counted = statements_of_commit(&store, changes_of(&mut product, Some(stored))).await;
    assert_eq!(counted, ["WITH", "COMMIT"], "a deallocation");

    assert_eq!(allocated_totals(&batch_views(&store, &lamp).await), vec![2]);
    assert_eq!(
        allocated_totals(&batch_views(&store, &table).await),
        vec![2]
    );
}

/// A commit in one statement with no transaction around it commits when
/// PostgreSQL has run the statement *and* processed the `Sync` after it:
/// the row the statement returns arrives first, and whatever fails as it
/// commits (here a deferred constraint; a crash or a full disk while the
/// commit's WAL is flushed, in life) comes after it. The commit must wait
/// for that end, or a refused commit would be answered as done.
async fn a_statement_committed_on_its_own_is_answered_after_its_commit(db: TestDatabase) {
    let store = open(db.url()).await;
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));
    bus.add_batch(&batch, &sku, 10, None).await;
    let mut conn = connect_directly(db.url()).await;
    sqlx::raw_sql(
        "CREATE TABLE commit_refusals (orderid TEXT PRIMARY KEY); \
         ALTER TABLE allocations_view ADD CONSTRAINT refused_at_commit \
         FOREIGN KEY (orderid) REFERENCES commit_refusals (orderid) \
         DEFERRABLE INITIALLY DEFERRED",
    )
    .execute(&mut conn)
    .await
    .expect("a constraint checked at commit");

    let mut product = load_product(&store, &sku, Lines::OfOrder(&order)).await;
    let stored = product.version();
    product.allocate(line(&order, &sku, 1)).expect("allocates");
    let transaction = store.begin().await.expect("begin");
    let committed = transaction
        .commit(changes_of(&mut product, Some(stored)))
        .await;
    assert!(
        committed.is_err(),
        "the commit was refused, so it must not be answered as done: {committed:?}"
    );
    assert_eq!(allocations(&store, &order).await, vec![]);
}

/// Commits `changes` and returns the first word of each statement sqlx
/// sent to the database for it. (sqlx logs each statement it runs at debug
/// level; a `BEGIN` is queued with the statement after it and not logged,
/// the `COMMIT` is.)
async fn statements_of_commit(store: &SqlStore, changes: ChangeSet) -> Vec<String> {
    let transaction = store.begin().await.expect("begin");
    let log = StatementLog::default();
    // While only one subscriber exists in the process, `tracing-core` asks
    // the *current thread's* subscriber whether an event site is wanted:
    // a sqlx site first reached by another test's thread meanwhile would be
    // cached as "no one wants it", and this log would stay empty. With the
    // binary's global subscriber installed first, every site asks all of
    // them, this one included, whichever tests run first.
    logged_warnings();
    let subscriber = tracing::Dispatch::new(tracing_subscriber::registry().with(log.clone()));
    transaction
        .commit(changes)
        .with_subscriber(subscriber)
        .await
        .expect("commit");
    log.0.lock().expect("log readable").clone()
}

/// Records the first word of every statement sqlx logs.
#[derive(Debug, Clone, Default)]
struct StatementLog(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut summary = Summary(None);
        event.record(&mut summary);
        if let (Some(summary), Ok(mut log)) = (summary.0, self.0.lock()) {
            log.push(summary.split(' ').next().unwrap_or_default().to_owned());
        }
    }
}

struct Summary(Option<String>);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}
