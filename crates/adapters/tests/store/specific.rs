//! What only one backend has to show (SQLite's queueing writers, its file
//! and in-memory modes), connection errors, and migrations.

use std::path::Path;
use std::time::Duration;

use adapters::{PoolSettings, SqlError, SqlStore};
use service_layer::ports::Lines;
use service_layer::ports::ReadModel;
use service_layer::UnitOfWork;
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{connect_directly, open, test_pool};
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

    let mut uow_1 = UnitOfWork::begin(&store).await.expect("start");
    let waiting = tokio::spawn({
        let (store, sku, second) = (store.clone(), sku.clone(), second.clone());
        async move {
            // Waits at BEGIN IMMEDIATE until the first unit of work is done,
            // then reads what it wrote.
            let mut uow_2 = UnitOfWork::begin(&store).await.expect("start");
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
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 6));
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
