//! The SQL storage adapter: the repository's storage and the unit of work's
//! transaction (book chapters 2 and 6) with optimistic concurrency (chapter
//! 7), and the read model (chapter 12), on SQLite or PostgreSQL.
//!
//! One implementation serves both databases through sqlx's `Any` driver:
//! the reads are the same text on both (`$1` placeholders work on SQLite
//! too), and [`Dialect`] holds the few places where they must differ.
//! A reader new to it might go:
//!
//! - this module: the store, its connection pool, how units of work begin;
//! - `transaction`: loading a product, and committing a change set;
//! - `write`: what a commit writes, as runs of rows of one kind each, and
//!   `write::postgres` / `write::sqlite`: each kind's writer;
//! - `queries`, `read_model`, `outbox`: the reads, the query side, the relay's
//!   side of the outbox; `rows`: how values are stored;
//! - `migrate` and `maintenance`: the schema, and the operator's checks.
//!
//! A commit writes what each product's events say happened, in order, as
//! `service_layer::memory` does: nothing is read back, and only the rows a
//! command touched are written.

mod database_url;
mod dialect;
mod holds;
mod idempotency;
pub mod maintenance;
mod migrate;
mod outbox;
pub mod queries;
mod read_model;
mod rows;
mod transaction;
mod write;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use service_layer::ports::{Store, StoreError};
use sqlx::migrate::MigrateError;
use sqlx::pool::PoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use database_url::{DatabaseUrl, SUPPORTED_FORMS, UnsupportedDatabaseUrl};
use dialect::Dialect;
use outbox::read_outbox_backlog;
use rows::{get, to_u64};
use transaction::Connection;
pub use transaction::SqlTransaction;

/// Set on every SQLite connection as it opens; these are per connection, not
/// stored in the file (except `journal_mode`, which is harmless to repeat).
/// - `busy_timeout` first, so that the others wait for a lock too;
/// - WAL lets readers (the read model) run while a writer holds the lock;
/// - `synchronous=NORMAL` in WAL mode survives a process crash, and loses
///   at most the last commits on a power cut;
/// - SQLite does not enforce foreign keys unless asked, per connection.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON;";

/// How many connections to keep, and how long a request may wait for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the database could not be opened or its schema brought up to date.
/// Messages name the database by its URL with any password hidden.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(
        "unsupported database URL {url}: expected sqlite:<path> (or sqlite::memory:) \
         or postgres://[user[:password]@]host[:port]/database"
    )]
    UnsupportedUrl { url: String },
    #[error("cannot open database {url}: {cause}")]
    Connect { url: String, cause: sqlx::Error },
    #[error("cannot migrate the schema of database {url}: {cause}")]
    Migrate { url: String, cause: MigrateError },
}

/// The products, their allocations and the read model in a SQL database.
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// The URL without its password, for messages.
    url: Arc<str>,
    /// SQLite only, the writer queue: SQLite lets one connection write at a
    /// time, and this process's writers (units of work, outbox claims)
    /// queue here (one permit) for it: see `wait_to_write`.
    writer_queue: Option<Arc<Semaphore>>,
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.dialect.name())
            .field("url", &self.url)
            .field("connections", &self.pool.size())
            .finish()
    }
}

impl SqlStore {
    /// Opens the database at `url` (`sqlite:<path>` or `postgres://...`)
    /// and brings its schema up to date. A SQLite file is created if missing
    /// (unless the URL sets a `mode`).
    ///
    /// `sqlite::memory:` gives a database that lives as long as the store:
    /// through `Any`, every new connection would open a fresh empty one, so
    /// the pool keeps exactly one connection open for good.
    pub async fn connect(url: &str, settings: PoolSettings) -> Result<SqlStore, SqlError> {
        sqlx::any::install_default_drivers();
        let target = DatabaseUrl::parse(url)?;
        // No ping on every checkout: it costs a round trip per transaction,
        // and a connection that died is reported by the query that uses it.
        let mut options = PoolOptions::<Any>::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(false)
            .after_release(|conn, _meta| Box::pin(close_if_in_transaction(conn)));
        if target.in_memory {
            options = options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        options = match target.dialect {
            Dialect::Sqlite => {
                options.after_connect(|conn, _meta| Box::pin(set_sqlite_pragmas(conn)))
            }
            Dialect::Postgres => {
                options.after_connect(|conn, _meta| Box::pin(cache_generic_plans(conn)))
            }
        };
        let pool = options
            .connect(&target.connect)
            .await
            .map_err(|cause| SqlError::Connect {
                url: target.redacted.clone(),
                cause,
            })?;
        let writer_queue = (target.dialect == Dialect::Sqlite).then(|| Arc::new(Semaphore::new(1)));
        let store = SqlStore {
            pool,
            dialect: target.dialect,
            url: target.redacted.into(),
            writer_queue,
        };
        store.migrate().await?;
        tracing::debug!(backend = store.backend(), url = %store.url, "database ready");
        Ok(store)
    }

    /// On SQLite, waits at the writer queue until no other writer of this
    /// process holds the database's write lock; the returned permit is this
    /// writer's hold on it, until dropped. PostgreSQL locks rows, not the
    /// database: no queue.
    async fn wait_to_write(&self) -> Result<Option<OwnedSemaphorePermit>, StoreError> {
        match &self.writer_queue {
            Some(queue) => Ok(Some(
                queue
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(StoreError::backend)?,
            )),
            None => Ok(None),
        }
    }

    /// A transaction on a connection of the pool, begun with `statement`.
    async fn begin_with(
        &self,
        statement: &'static str,
    ) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        self.pool
            .begin_with(statement)
            .await
            .map_err(StoreError::backend)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.dialect.name()
    }
}

/// Whether a connection coming back to the pool may be reused: never if it
/// is still inside a transaction, or the next unit of work would run inside
/// that one, and its writes would vanish with it (or hold its locks). Units
/// of work run to their end whoever hangs up (`MessageBus::handle`), and
/// sqlx rolls back a dropped transaction (since 0.9.1 also one dropped while
/// its `BEGIN` was on the wire), so this should never fire; it closes the
/// connection rather than trust that every path always gets it right.
async fn close_if_in_transaction(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    if conn.is_in_transaction() {
        tracing::warn!("closing a database connection released inside a transaction");
        return Ok(false);
    }
    Ok(true)
}

// `Executor::execute` on the connection itself: the generic
// `sqlx::raw_sql(..).execute(conn)` future does not satisfy the higher-ranked
// lifetime that `after_connect` asks for.
async fn set_sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(SQLITE_PRAGMAS).await?;
    Ok(())
}

/// Every statement the service prepares is looked up by indexes whatever
/// its values (the query-plan tests check them), so its generic plan is
/// the one to keep. Left to choose, PostgreSQL judged the product load's
/// generic plan too costly once a batch's expired holds piled up (it
/// expects some of them in the live range) and planned every load afresh:
/// 0.3 ms instead of 0.12 (docs/BENCHMARKS.md, issue 15).
async fn cache_generic_plans(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    Ok(())
}

impl Store for SqlStore {
    type Transaction = SqlTransaction;

    async fn begin(&self) -> Result<SqlTransaction, StoreError> {
        self.begin_unit_of_work(false).await
    }

    async fn begin_locking(&self) -> Result<SqlTransaction, StoreError> {
        self.begin_unit_of_work(true).await
    }

    /// SQLite takes one writer at a time: one lane, so that every
    /// allocation waiting for the write lock shares the next transaction.
    /// PostgreSQL writes different products in parallel: a lane per product
    /// (nearly: products share one of 1024 by hash), so that groups form on
    /// a hot product and the rest commit alone as soon as they come. Fewer
    /// lanes would make bigger groups of several products, but PostgreSQL's
    /// work per allocation is in its rows, not in its statements and
    /// commits (measured: docs/BENCHMARKS.md).
    fn write_lanes(&self) -> usize {
        match self.dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => 1024,
        }
    }
}

impl SqlStore {
    async fn begin_unit_of_work(&self, lock_products: bool) -> Result<SqlTransaction, StoreError> {
        let connection = if self.dialect == Dialect::Postgres && !lock_products {
            Connection::Optimistic(self.pool.acquire().await.map_err(StoreError::backend)?)
        } else {
            // SQLite: queue in this process before asking SQLite for its
            // write lock, rather than in `busy_timeout`'s sleep-and-poll,
            // which left writers idle for milliseconds after the lock came
            // free.
            let writing = self.wait_to_write().await?;
            let transaction = self.begin_with(self.dialect.begin_statement()).await?;
            Connection::Transaction {
                transaction,
                _writing: writing,
            }
        };
        Ok(SqlTransaction {
            connection,
            dialect: self.dialect,
        })
    }
}
