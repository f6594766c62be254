//! The backends, as runners for `test_support::per_backend!`: each prepares
//! a fresh store of its kind (or skips), hands it to the scenario, and
//! cleans up after it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use adapters::{PoolSettings, SqlStore};
use service_layer::memory::MemoryStore;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection};
use test_support::{TestDatabase, on_database};

/// Small pools: tests run in parallel, and PostgreSQL caps connections.
pub fn test_pool() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    }
}

/// A store over `url`, with its own pool (as another instance of the
/// service would have) and the schema migrated.
pub async fn open(url: &str) -> SqlStore {
    SqlStore::connect(url, test_pool())
        .await
        .expect("open the test database")
}

/// A plain connection to the database at `url`, beside any store, to check
/// its tables with SQL.
pub async fn connect_directly(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .expect("connect to the test database")
}

/// A plain connection to `db`, created with the schema as it was before the
/// migration whose description holds `migration`: for tests of what that
/// migration does to rows an older version wrote.
pub async fn connect_before_migration(db: &TestDatabase, migration: &str) -> AnyConnection {
    let folder = format!("{}/migrations/{}", env!("CARGO_MANIFEST_DIR"), db.backend());
    let mut before = Migrator::new(Path::new(&folder))
        .await
        .expect("the migrations");
    let position = before
        .iter()
        .position(|m| m.description.contains(migration))
        .unwrap_or_else(|| panic!("a migration {migration:?}"));
    before.migrations = before.migrations[..position].to_vec().into();
    // Created by this first connection, as the service would create it.
    let url = match db.backend() {
        "sqlite" => format!("{}?mode=rwc", db.url()),
        _ => db.url().to_owned(),
    };
    let mut conn = connect_directly(&url).await;
    before.run(&mut conn).await.expect("the old schema");
    conn
}

/// `N` stores over `db`, each with its own pool, given to `scenario`; the
/// database goes once the scenario is done with them.
async fn with_stores<const N: usize, F: Future<Output = ()>>(
    db: TestDatabase,
    scenario: impl FnOnce([SqlStore; N]) -> F,
) {
    let mut stores = Vec::with_capacity(N);
    for _ in 0..N {
        stores.push(open(db.url()).await);
    }
    scenario(stores.try_into().expect("N stores")).await;
    drop(db);
}

/// Scenarios that take one store.
pub mod one_store {
    use super::*;

    pub async fn memory<F: Future<Output = ()>>(scenario: impl FnOnce(MemoryStore) -> F) {
        scenario(MemoryStore::new()).await;
    }

    pub async fn sqlite<F: Future<Output = ()>>(scenario: impl FnOnce(SqlStore) -> F) {
        on_database::sqlite(|db| with_stores(db, |[store]| scenario(store))).await;
    }

    pub async fn postgres<F: Future<Output = ()>>(scenario: impl FnOnce(SqlStore) -> F) {
        on_database::postgres(|db| with_stores(db, |[store]| scenario(store))).await;
    }
}

/// Scenarios that take two stores over one database, as two instances of
/// the service would have: separate pools, shared data. (In memory, the
/// second is a clone: the only way two memory stores share data. Not on
/// SQLite: these scenarios hold one transaction open while the other
/// instance writes, and SQLite's write transactions cannot overlap.)
pub mod two_instances {
    use super::*;

    pub async fn memory<F: Future<Output = ()>>(
        scenario: impl FnOnce(MemoryStore, MemoryStore) -> F,
    ) {
        let store = MemoryStore::new();
        scenario(store.clone(), store).await;
    }

    pub async fn postgres<F: Future<Output = ()>>(scenario: impl FnOnce(SqlStore, SqlStore) -> F) {
        on_database::postgres(|db| with_stores(db, |[a, b]| scenario(a, b))).await;
    }
}
