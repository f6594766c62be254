//! The SQL storage adapter: the repository's storage and the unit of work's
//! transaction (book chapters 2 and 6) with optimistic concurrency (chapter
//! 7), and the read model (chapter 12), on SQLite or PostgreSQL.
//!
//! One implementation serves both databases through sqlx's `Any` driver:
//! the queries are the same text on both (`$1` placeholders work on SQLite
//! too), and `Dialect` holds the few places where they must differ: how a
//! write transaction begins, how connections are set up, which migrations
//! apply.
//!
//! A commit writes what each product's events say happened, in order, as
//! `service_layer::memory` does: nothing is read back, and only the rows a
//! command touched are written.

mod database_url;
pub mod maintenance;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use domain::events::{Allocated, AllocationCancelled, Deallocated};
use domain::{Batch, BatchRef, Event, OrderId, OrderLine, Product, Quantity, Sku};
use service_layer::ports::{
    AllocationView, BatchView, ClaimedMessage, Outbox, OutboxBacklog, OutboxMessage, ReadModel,
};
use service_layer::ports::{
    ChangeSet, Lines, ProductChanges, Store, StoreError, StoreTransaction, ViewChange,
};
use sqlx::any::AnyRow;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::pool::PoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection as _, Executor, Row};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

pub use database_url::redact as redact_url;
pub use database_url::{DatabaseUrl, SUPPORTED_FORMS, UnsupportedDatabaseUrl};

/// The lookups the service makes, named so that the query-plan tests check
/// these very statements against the indexes they need.
pub mod queries {
    /// A product (`$1`), its batches in creation order, and the lines of
    /// its batches that `$lines` picks, one row per batch and line. A
    /// product without batches still gives one row, with NULL batch columns.
    macro_rules! product_with_lines {
        ($lines:literal) => {
            concat!(
                "SELECT p.version_number, b.reference, b.eta, b.purchased_quantity, ",
                "b.allocated_quantity, a.orderid AS line_orderid, a.qty AS line_qty ",
                "FROM products p ",
                "LEFT JOIN batches b ON b.sku = p.sku ",
                "LEFT JOIN allocations a ON ",
                $lines,
                " WHERE p.sku = $1 ORDER BY b.id"
            )
        };
    }

    /// A product, its batches, and (with `$2`) the line of order `$2`: what
    /// every command loads.
    pub const PRODUCT_WITH_ORDER_LINE: &str =
        product_with_lines!("a.batch_id = b.id AND a.orderid = $2 AND a.sku = $1");

    /// As [`PRODUCT_WITH_ORDER_LINE`], with the lines of every order in `$2`,
    /// a JSON array of order ids: what a group of allocations loads. SQLite
    /// reads the array with `json_each`, PostgreSQL with `jsonb`'s functions
    /// (sqlx's `Any` driver binds no arrays). `+a.batch_id` keeps both
    /// planners off the `(batch_id, id)` index, which would read every line
    /// the batch ever took: the lines are found through `(orderid, sku)`.
    pub const PRODUCT_WITH_ORDER_LINES_SQLITE: &str = product_with_lines!(
        "+a.batch_id = b.id AND a.sku = $1 AND a.orderid IN (SELECT value FROM json_each($2))"
    );

    /// [`PRODUCT_WITH_ORDER_LINES_SQLITE`] for PostgreSQL.
    pub const PRODUCT_WITH_ORDER_LINES_POSTGRES: &str = product_with_lines!(
        "+a.batch_id = b.id AND a.sku = $1 \
         AND a.orderid = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))"
    );

    /// The lines of batch `$1` (of product `$2`), oldest first: what
    /// shrinking a batch loads.
    pub const LINES_OF_BATCH: &str = "SELECT a.orderid, a.qty \
         FROM batches b JOIN allocations a ON a.batch_id = b.id \
         WHERE b.reference = $1 AND b.sku = $2 \
         ORDER BY a.id";

    /// An order's allocations, from the read model.
    pub const ALLOCATIONS_OF_ORDER: &str =
        "SELECT sku, batchref FROM allocations_view WHERE orderid = $1 ORDER BY sku";

    /// A product's batches, from the write tables (they are the read model
    /// of the product query).
    pub const BATCHES_OF_PRODUCT: &str = "SELECT reference, eta, purchased_quantity, allocated_quantity \
         FROM batches WHERE sku = $1 ORDER BY id";
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

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

/// Where the two databases need different SQL or setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Claims a batch of outbox rows for a lease. On PostgreSQL, `FOR UPDATE
    /// SKIP LOCKED` lets relays of several instances claim side by side,
    /// each skipping the rows another is claiming right now. SQLite runs one
    /// writer at a time, so the plain statement is already exclusive.
    fn claim_outbox_statement(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "UPDATE outbox SET claimed_until = $1 WHERE id IN (\
                 SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until <= $2 \
                 ORDER BY id LIMIT $3) \
                 RETURNING id, message_id, orderid, sku, qty, batchref"
            }
            // `= ANY(ARRAY(...))` rather than `IN (...)`: the ids are
            // picked first and then updated through the primary key. With
            // `IN`, the planner may hash-join against a scan of the whole
            // table, whose size is mostly the dead rows the relay leaves
            // behind until vacuum: the claim would slow down as the outbox
            // churns.
            Self::Postgres => {
                "UPDATE outbox SET claimed_until = $1 WHERE id = ANY(ARRAY(\
                 SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until <= $2 \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)) \
                 RETURNING id, message_id, orderid, sku, qty, batchref"
            }
        }
    }

    /// Writes one `AllocationStep` in one call:
    /// bumps product `$2`'s version from `$3` to `$1`, adds `$4` to batch
    /// `$5`'s allocated quantity, and inserts order `$6`'s line, its
    /// read-model row and its outbox message (`$7`, created at `$8`).
    ///
    /// PostgreSQL: one statement, atomic without a transaction. Every write
    /// hangs off the version check (`FROM product`), so a conflict writes
    /// nothing and returns no row. A batch that is not stored leaves the
    /// line's `batch_id` NULL, which its NOT NULL constraint refuses,
    /// failing the whole statement.
    ///
    /// SQLite: no data-modifying CTEs, but one call may carry several
    /// statements (`$n` means the same argument in each): one call instead of
    /// five, each a hop to sqlx's SQLite thread and back. `changes()` is the
    /// number of rows the previous statement changed, so each statement runs
    /// only if the one before changed its one row: the version check gates
    /// the rest, as `FROM product` does on PostgreSQL. All five rows, or the
    /// caller (inside `BEGIN IMMEDIATE`) rolls back: none means a conflict,
    /// some means the rows were not as loaded.
    fn write_allocation_statement(self) -> &'static str {
        match self {
            Self::Postgres => {
                "WITH product AS (\
                     UPDATE products SET version_number = $1 \
                     WHERE sku = $2 AND version_number = $3 RETURNING sku), \
                 batch AS (\
                     UPDATE batches SET allocated_quantity = allocated_quantity + $4 \
                     WHERE reference = $5 AND sku = (SELECT sku FROM product) RETURNING id), \
                 line AS (\
                     INSERT INTO allocations (orderid, sku, batch_id, qty) \
                     SELECT $6, sku, (SELECT id FROM batch), $4 FROM product), \
                 view AS (\
                     INSERT INTO allocations_view (orderid, sku, batchref) \
                     SELECT $6, sku, $5 FROM product \
                     ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref), \
                 message AS (\
                     INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
                     SELECT $7, $6, sku, $4, $5, $8 FROM product) \
                 SELECT 1 AS versioned FROM product"
            }
            Self::Sqlite => {
                "UPDATE products SET version_number = $1 WHERE sku = $2 AND version_number = $3; \
                 UPDATE batches SET allocated_quantity = allocated_quantity + $4 \
                 WHERE reference = $5 AND sku = $2 AND changes() = 1; \
                 INSERT INTO allocations (orderid, sku, batch_id, qty) \
                 SELECT $6, $2, id, $4 FROM batches \
                 WHERE reference = $5 AND sku = $2 AND changes() = 1; \
                 INSERT INTO allocations_view (orderid, sku, batchref) \
                 SELECT $6, $2, $5 WHERE changes() = 1 \
                 ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref; \
                 INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
                 SELECT $7, $6, $2, $4, $5, $8 WHERE changes() = 1"
            }
        }
    }

    /// PostgreSQL only: a group's allocations, of one product or several, in
    /// one statement. `$1` lists the products (`sku`, the `stored` version
    /// checked, the `new` one), `$2` the allocations in the order they were
    /// made (`n`, which orders their ids), both JSON arrays: sqlx's `Any`
    /// driver binds no arrays. `$3` is how many products there are.
    ///
    /// All or nothing without `BEGIN`/`COMMIT`: `locked` locks the products
    /// (in SKU order, as every locking writer does, so no deadlock) and, in
    /// READ COMMITTED, sees their latest committed versions; only if every
    /// one is as loaded does `product` bump them, and every write hangs off
    /// `product`. A conflict writes nothing, and names a `stale` product; a
    /// batch that is not stored leaves a line's `batch_id` NULL, which
    /// fails the statement.
    const WRITE_ALLOCATIONS_POSTGRES: &str = "WITH checked AS (\
             SELECT * FROM jsonb_to_recordset($1::jsonb) AS c(sku text, stored bigint, new bigint)), \
         input AS (\
             SELECT * FROM jsonb_to_recordset($2::jsonb) \
             AS l(n bigint, sku text, orderid text, batchref text, qty bigint, message_id text)), \
         locked AS (\
             SELECT p.sku, p.version_number FROM products p \
             WHERE p.sku IN (SELECT sku FROM checked) ORDER BY p.sku FOR UPDATE), \
         current AS (\
             SELECT count(*) = $3 AS all_current FROM locked \
             JOIN checked c ON c.sku = locked.sku AND c.stored = locked.version_number), \
         product AS (\
             UPDATE products p SET version_number = c.new FROM checked c \
             WHERE p.sku = c.sku AND p.version_number = c.stored \
             AND (SELECT all_current FROM current) RETURNING p.sku), \
         batch AS (\
             UPDATE batches b SET allocated_quantity = b.allocated_quantity + t.qty \
             FROM (SELECT sku, batchref, sum(qty)::bigint AS qty FROM input GROUP BY sku, batchref) t \
             JOIN product ON product.sku = t.sku \
             WHERE b.reference = t.batchref AND b.sku = t.sku \
             RETURNING b.id, b.reference), \
         line AS (\
             INSERT INTO allocations (orderid, sku, batch_id, qty) \
             SELECT l.orderid, l.sku, batch.id, l.qty \
             FROM input l JOIN product ON product.sku = l.sku \
             LEFT JOIN batch ON batch.reference = l.batchref \
             ORDER BY l.n), \
         view AS (\
             INSERT INTO allocations_view (orderid, sku, batchref) \
             SELECT l.orderid, l.sku, l.batchref FROM input l JOIN product ON product.sku = l.sku \
             ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref), \
         message AS (\
             INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
             SELECT l.message_id, l.orderid, l.sku, l.qty, l.batchref, $4 \
             FROM input l JOIN product ON product.sku = l.sku ORDER BY l.n) \
         SELECT (SELECT count(*) FROM product) AS versioned, \
             (SELECT c.sku FROM checked c LEFT JOIN locked l \
              ON l.sku = c.sku AND l.version_number = c.stored \
              WHERE l.sku IS NULL ORDER BY c.sku LIMIT 1) AS stale";

    /// `queries::PRODUCT_WITH_ORDER_LINES_*`: the JSON functions differ.
    fn product_with_order_lines_statement(self) -> &'static str {
        match self {
            Self::Sqlite => queries::PRODUCT_WITH_ORDER_LINES_SQLITE,
            Self::Postgres => queries::PRODUCT_WITH_ORDER_LINES_POSTGRES,
        }
    }

    /// How a unit of work's transaction begins.
    ///
    /// SQLite: a plain (deferred) `BEGIN` takes the write lock only at the
    /// first write. If another connection committed since this one started
    /// reading, that upgrade fails at once with SQLITE_BUSY whatever the
    /// busy timeout (waiting cannot refresh a stale snapshot). `BEGIN
    /// IMMEDIATE` takes the write lock up front, where the busy timeout does
    /// wait, so write transactions queue instead of failing. Writers are thus
    /// serialised, and never hit a version conflict.
    ///
    /// PostgreSQL: a unit of work reads outside any transaction (see
    /// `Connection::Optimistic`); a commit that needs several statements,
    /// and a locking unit of work, run in READ COMMITTED, spelled out so that a server configured
    /// with another default does not change the behaviour. Concurrent writers
    /// to one product are caught by the version check at commit.
    ///
    /// Both go through `Pool::begin_with` (sqlx 0.8.4 and later, hence the
    /// workspace's version floor). Through `Any` it hands the statement to
    /// the backend's own transaction manager, which still tracks the
    /// transaction, so dropping it rolls back as usual.
    fn begin_statement(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }
}

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
    /// SQLite lets one connection write at a time: this process's writers
    /// take turns here (see `Store::begin`).
    write_turn: Option<Arc<Semaphore>>,
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
        if target.dialect == Dialect::Sqlite {
            options = options.after_connect(|conn, _meta| Box::pin(set_sqlite_pragmas(conn)));
        }
        let pool = options
            .connect(&target.connect)
            .await
            .map_err(|cause| SqlError::Connect {
                url: target.redacted.clone(),
                cause,
            })?;
        let write_turn = (target.dialect == Dialect::Sqlite).then(|| Arc::new(Semaphore::new(1)));
        let store = SqlStore {
            pool,
            dialect: target.dialect,
            url: target.redacted.into(),
            write_turn,
        };
        store.migrate().await?;
        tracing::debug!(backend = store.backend(), url = %store.url, "database ready");
        Ok(store)
    }

    /// Applies the migrations this build embeds that the database lacks.
    /// Safe to run again, and from several processes at once: PostgreSQL
    /// takes an advisory lock; on SQLite the whole run is one `BEGIN
    /// IMMEDIATE` transaction (sqlx does not lock SQLite), so a second
    /// process waits and then finds nothing to do.
    pub async fn migrate(&self) -> Result<(), SqlError> {
        let result = match self.dialect {
            Dialect::Sqlite => self.migrate_sqlite().await,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await,
        };
        result.map_err(|cause| SqlError::Migrate {
            url: self.url.to_string(),
            cause,
        })
    }

    async fn migrate_sqlite(&self) -> Result<(), MigrateError> {
        let mut transaction = self
            .pool
            .begin_with(Dialect::Sqlite.begin_statement())
            .await?;
        // Each migration's own transaction becomes a savepoint inside this one.
        SQLITE_MIGRATIONS.run(&mut *transaction).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// On SQLite, waits until no other writer of this process holds the
    /// database's write lock (see `Store::begin`); the turn lasts as long as
    /// the permit. PostgreSQL locks rows, not the database: no turn.
    async fn wait_for_write_turn(&self) -> Result<Option<OwnedSemaphorePermit>, StoreError> {
        match &self.write_turn {
            Some(turn) => Ok(Some(
                turn.clone()
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
    /// lanes (4, 2) made bigger groups of several products but measured no
    /// faster: PostgreSQL's work per allocation is in its rows, not in its
    /// statements and commits (docs/BENCHMARKS.md).
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
            // SQLite: wait for this process's turn before asking SQLite for
            // its write lock, a queue here instead of `busy_timeout`'s
            // sleep-and-poll, which left writers idle for milliseconds after
            // the lock came free. (PostgreSQL has no turns.)
            let turn = self.wait_for_write_turn().await?;
            let transaction = self.begin_with(self.dialect.begin_statement()).await?;
            Connection::Transaction {
                transaction,
                _turn: turn,
            }
        };
        Ok(SqlTransaction {
            connection,
            dialect: self.dialect,
        })
    }
}

/// One unit of work's hold on the database. Dropping it rolls back.
#[derive(Debug)]
pub struct SqlTransaction {
    connection: Connection,
    dialect: Dialect,
}

/// How a unit of work reads, which depends on how the database lets writers
/// wait for each other.
#[derive(Debug)]
enum Connection {
    /// A transaction around the whole unit of work. On SQLite it holds the
    /// database's write lock from the start (see `Dialect::begin_statement`),
    /// so reads and writes are one serialised transaction. On PostgreSQL it
    /// is a locking unit of work (`Store::begin_locking`): each product's
    /// row is locked before the product is read.
    Transaction {
        transaction: sqlx::Transaction<'static, Any>,
        _turn: Option<OwnedSemaphorePermit>,
    },
    /// PostgreSQL: reads run on their own, outside any transaction, and the
    /// commit opens one just for the writes. The version check at commit
    /// (optimistic offline lock, book chapter 7) is what makes this safe: a
    /// product read here and changed by anyone before the commit fails that
    /// check, and the command runs again. It saves the `BEGIN` round trip,
    /// and holds no transaction open while the handler thinks.
    Optimistic(PoolConnection<Any>),
}

impl Connection {
    fn reader(&mut self) -> &mut AnyConnection {
        match self {
            Self::Transaction { transaction, .. } => transaction,
            Self::Optimistic(connection) => connection,
        }
    }
}

impl StoreTransaction for SqlTransaction {
    async fn load(&mut self, sku: &Sku, lines: Lines<'_>) -> Result<Option<Product>, StoreError> {
        // A PostgreSQL unit of work holds a transaction only when it locks
        // its products (SQLite's lock covers the whole database already).
        let lock_first = self.dialect == Dialect::Postgres
            && matches!(self.connection, Connection::Transaction { .. });
        let conn = self.connection.reader();
        if lock_first {
            // Lock, then read: under READ COMMITTED the next statement's
            // snapshot is taken once the lock is held, so it sees the last
            // committed state of the product. (`FOR UPDATE` on the load
            // itself would not: rows joined to a row it waited for would
            // come from the snapshot taken before the wait.)
            sqlx::query("SELECT version_number FROM products WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| write_error(e, sku))?;
        }
        // The product, its batches and, when a command concerns orders,
        // their lines, in one round trip: the hot path of allocation. A
        // product without batches still gives one row, with NULL batch
        // columns; a line's columns are set on the row of its batch.
        let orderids_json;
        let (statement, orders) = match lines {
            Lines::OfOrder(orderid) => (queries::PRODUCT_WITH_ORDER_LINE, Some(orderid.as_str())),
            Lines::OfOrders(orderids) => {
                let orderids: Vec<&str> = orderids.iter().map(OrderId::as_str).collect();
                orderids_json = serde_json::to_string(&orderids).map_err(StoreError::backend)?;
                (
                    self.dialect.product_with_order_lines_statement(),
                    Some(orderids_json.as_str()),
                )
            }
            Lines::None | Lines::OfBatch(_) => (queries::PRODUCT_WITH_ORDER_LINE, None),
        };
        let rows = sqlx::query(statement)
            .bind(sku.as_str())
            .bind(orders)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::backend)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let version = to_u64(get::<i64>(first, "version_number")?, "version_number")?;
        let mut batches: Vec<Batch> = Vec::with_capacity(rows.len());
        let mut order_lines = Vec::new();
        for row in &rows {
            let Some(reference) = get::<Option<String>>(row, "reference")? else {
                continue;
            };
            let reference = identifier(&reference, BatchRef::parse)?;
            if let Some(orderid) = get::<Option<String>>(row, "line_orderid")? {
                let line = OrderLine {
                    orderid: identifier(&orderid, OrderId::parse)?,
                    sku: sku.clone(),
                    qty: quantity_from_db(get(row, "line_qty")?)?,
                };
                order_lines.push((reference.clone(), line));
            }
            if batches
                .last()
                .is_some_and(|batch| batch.reference() == &reference)
            {
                continue; // another line of the same batch
            }
            batches.push(Batch::restore(
                reference,
                sku.clone(),
                eta_from_db(get(row, "eta")?)?,
                quantity_from_db(get(row, "purchased_quantity")?)?,
                to_u64(get(row, "allocated_quantity")?, "allocated_quantity")?,
            ));
        }
        let mut product = Product::restore(sku.clone(), version, batches);
        for (reference, line) in order_lines {
            product.load_lines(&reference, [line]);
        }
        if let Lines::OfBatch(reference) = lines {
            load_lines_of_batch(conn, &mut product, reference).await?;
        }
        Ok(Some(product))
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        let row = sqlx::query("SELECT sku FROM batches WHERE reference = $1")
            .bind(reference.as_str())
            .fetch_optional(self.connection.reader())
            .await
            .map_err(StoreError::backend)?;
        row.map(|row| identifier(&get::<String>(&row, "sku")?, Sku::parse))
            .transpose()
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        let allocations = Allocations::of(&changes);
        match self.connection {
            Connection::Transaction {
                mut transaction, ..
            } => {
                match allocations {
                    Some(allocations) => allocations.write(&mut transaction, self.dialect).await?,
                    None => write_changes(&mut transaction, &changes).await?,
                }
                transaction.commit().await.map_err(StoreError::backend)
            }
            Connection::Optimistic(mut connection) => {
                if changes.is_empty() {
                    return Ok(());
                }
                // PostgreSQL writes allocations in one statement, atomic on
                // its own: no `BEGIN`/`COMMIT`. (SQLite never reads outside
                // a transaction.)
                if let Some(allocations) = &allocations {
                    return allocations.write(&mut connection, self.dialect).await;
                }
                let mut transaction = connection
                    .begin_with(self.dialect.begin_statement())
                    .await
                    .map_err(StoreError::backend)?;
                write_changes(&mut transaction, &changes).await?;
                transaction.commit().await.map_err(StoreError::backend)
            }
        }
    }
}

/// Writes a change set statement by statement, inside the caller's
/// transaction: each product's version check first, then its events, the
/// read model and the outbox.
async fn write_changes(conn: &mut AnyConnection, changes: &ChangeSet) -> Result<(), StoreError> {
    for product in &changes.products {
        write_product(conn, product).await?;
    }
    for view in &changes.views {
        write_view(conn, view).await?;
    }
    for message in &changes.outbox {
        write_outbox_message(conn, message).await?;
    }
    Ok(())
}

/// The change set of the hot path, a group of `Allocate` commands (one or
/// many): stored products that only gained allocations (and maybe ran out of
/// stock, which writes nothing), each allocation with its read-model row and
/// its outbox message. PostgreSQL writes it in one statement, without
/// `BEGIN`/`COMMIT` (`Dialect::write_allocation_statement` for one
/// allocation, `Dialect::WRITE_ALLOCATIONS_POSTGRES` for more); SQLite in one
/// call per allocation, instead of a statement per row.
#[derive(Debug)]
struct Allocations<'a> {
    /// In the order the commands ran, which is the order the lines and the
    /// messages get their ids in.
    steps: Vec<AllocationStep<'a>>,
}

/// One allocation: bumps its product from `stored_version` by one.
#[derive(Debug, Clone, Copy)]
struct AllocationStep<'a> {
    sku: &'a Sku,
    stored_version: u64,
    allocated: &'a Allocated,
    message: &'a OutboxMessage,
}

impl<'a> Allocations<'a> {
    /// The change set in this shape, if it is; anything else takes the
    /// general path. The transactional handlers write a view row and an
    /// outbox message per allocation, in the order the allocations happened,
    /// so message `i` and view row `i` belong to allocation `i`, and each
    /// product's own allocations come in its version order.
    fn of(changes: &'a ChangeSet) -> Option<Self> {
        if changes.outbox.is_empty() || changes.views.len() != changes.outbox.len() {
            return None;
        }
        let mut next_versions: Vec<(&ProductChanges, u64)> = changes
            .products
            .iter()
            .map(|product| Some((product, product.stored_version?)))
            .collect::<Option<_>>()?;
        let mut steps = Vec::with_capacity(changes.outbox.len());
        for (view, message) in changes.views.iter().zip(&changes.outbox) {
            let allocated = &message.event;
            let expected_view = ViewChange::Allocated {
                orderid: allocated.orderid.clone(),
                sku: allocated.sku.clone(),
                batchref: allocated.batchref.clone(),
            };
            if *view != expected_view {
                return None;
            }
            let (product, next_version) = next_versions
                .iter_mut()
                .find(|(product, _)| product.sku == allocated.sku)?;
            steps.push(AllocationStep {
                sku: &product.sku,
                stored_version: *next_version,
                allocated,
                message,
            });
            *next_version += 1;
        }
        // Each product's events must be exactly its allocations, in order
        // (out of stock aside), and its version must have moved by them.
        for (product, next_version) in &next_versions {
            let mut own_steps = steps.iter().filter(|step| step.sku == &product.sku);
            for event in &product.events {
                match event {
                    Event::OutOfStock(_) => {}
                    Event::Allocated(e) if own_steps.next()?.allocated == e => {}
                    _ => return None,
                }
            }
            if own_steps.next().is_some() || product.new_version != *next_version {
                return None;
            }
        }
        Some(Self { steps })
    }

    /// Writes every allocation, failing with a conflict when a product is
    /// no longer at the version it was loaded at. On PostgreSQL, in one
    /// statement, atomic on its own; on SQLite, one call per allocation
    /// (calls are cheap there: no network, and the caller's transaction
    /// holds the lock).
    async fn write(&self, conn: &mut AnyConnection, dialect: Dialect) -> Result<(), StoreError> {
        match dialect {
            Dialect::Postgres => match self.steps.as_slice() {
                [single] => single.write(conn, dialect).await?,
                several => write_allocations_postgres(conn, several).await?,
            },
            Dialect::Sqlite => {
                for step in &self.steps {
                    step.write(conn, dialect).await?;
                }
            }
        }
        Ok(())
    }
}

/// A group's allocations with `Dialect::WRITE_ALLOCATIONS_POSTGRES`.
async fn write_allocations_postgres(
    conn: &mut AnyConnection,
    steps: &[AllocationStep<'_>],
) -> Result<(), StoreError> {
    let mut products: Vec<serde_json::Value> = Vec::new();
    let mut seen: Vec<&Sku> = Vec::new();
    for step in steps {
        if seen.contains(&step.sku) {
            continue;
        }
        seen.push(step.sku);
        let allocations = steps.iter().filter(|other| other.sku == step.sku).count();
        products.push(serde_json::json!({
            "sku": step.sku.as_str(),
            "stored": step.stored_version,
            "new": step.stored_version + allocations as u64,
        }));
    }
    let lines: Vec<serde_json::Value> = steps
        .iter()
        .enumerate()
        .map(|(n, step)| {
            serde_json::json!({
                "n": n,
                "sku": step.sku.as_str(),
                "orderid": step.allocated.orderid.as_str(),
                "batchref": step.allocated.batchref.as_str(),
                "qty": step.allocated.qty.get(),
                "message_id": step.message.message_id.to_string(),
            })
        })
        .collect();
    let to_json = |value: &Vec<serde_json::Value>| serde_json::to_string(value);
    let Some(&first_sku) = seen.first() else {
        return Ok(());
    };
    let versioned = sqlx::query(Dialect::WRITE_ALLOCATIONS_POSTGRES)
        .bind(to_json(&products).map_err(StoreError::backend)?)
        .bind(to_json(&lines).map_err(StoreError::backend)?)
        .bind(products.len() as i64)
        .bind(unix_millis(SystemTime::now()))
        .fetch_one(conn)
        .await
        .map_err(|e| write_error(e, first_sku))?;
    match get::<i64>(&versioned, "versioned")? {
        0 => {
            let stale = get::<Option<String>>(&versioned, "stale")?;
            let sku = match stale {
                Some(stale) => identifier(&stale, Sku::parse)?,
                None => first_sku.clone(),
            };
            Err(StoreError::Conflict { sku })
        }
        n if n == products.len() as i64 => Ok(()),
        // Unreachable: `current` lets all products through or none. Were it
        // reached, the statement would have committed already.
        n => Err(mismatch(format!(
            "a group commit bumped {n} of {} products",
            products.len()
        ))),
    }
}

impl AllocationStep<'_> {
    async fn write(&self, conn: &mut AnyConnection, dialect: Dialect) -> Result<(), StoreError> {
        let Self {
            sku,
            allocated,
            message,
            ..
        } = *self;
        let stored_version = to_i64(self.stored_version, "version_number")?;
        let query = sqlx::query(dialect.write_allocation_statement())
            .bind(stored_version + 1)
            .bind(sku.as_str())
            .bind(stored_version)
            .bind(i64::from(allocated.qty.get()))
            .bind(allocated.batchref.as_str())
            .bind(allocated.orderid.as_str())
            .bind(message.message_id.to_string())
            .bind(unix_millis(SystemTime::now()));
        match dialect {
            Dialect::Postgres => {
                let versioned = query
                    .fetch_optional(conn)
                    .await
                    .map_err(|e| write_error(e, sku))?;
                match versioned {
                    Some(_) => Ok(()),
                    None => Err(StoreError::Conflict { sku: sku.clone() }),
                }
            }
            // The caller's transaction is dropped on error, hence rolled back.
            Dialect::Sqlite => {
                let written = query.execute(conn).await.map_err(|e| write_error(e, sku))?;
                match written.rows_affected() {
                    5 => Ok(()),
                    0 => Err(StoreError::Conflict { sku: sku.clone() }),
                    rows => Err(mismatch(format!(
                        "allocating order {} to batch {} of {sku} wrote {rows} rows, not 5",
                        allocated.orderid, allocated.batchref
                    ))),
                }
            }
        }
    }
}

/// The version check on its own: bumps product `sku` from `stored` to `new`,
/// or fails with a conflict if it is no longer at `stored`.
async fn bump_version(
    conn: &mut AnyConnection,
    sku: &Sku,
    stored: i64,
    new: i64,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE products SET version_number = $1 WHERE sku = $2 AND version_number = $3",
    )
    .bind(new)
    .bind(sku.as_str())
    .bind(stored)
    .execute(conn)
    .await
    .map_err(|e| write_error(e, sku))?;
    match updated.rows_affected() {
        1 => Ok(()),
        _ => Err(StoreError::Conflict { sku: sku.clone() }),
    }
}

/// Attaches all lines of batch `reference`, oldest first: what shrinking it
/// needs. An index range scan (`allocations (batch_id, id)`).
async fn load_lines_of_batch(
    conn: &mut AnyConnection,
    product: &mut Product,
    reference: &BatchRef,
) -> Result<(), StoreError> {
    let sku = product.sku().clone();
    let rows = sqlx::query(queries::LINES_OF_BATCH)
        .bind(reference.as_str())
        .bind(sku.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    let loaded = rows
        .iter()
        .map(|row| {
            Ok(OrderLine {
                orderid: identifier(&get::<String>(row, "orderid")?, OrderId::parse)?,
                sku: sku.clone(),
                qty: quantity_from_db(get(row, "qty")?)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    product.load_lines(reference, loaded);
    Ok(())
}

/// Checks and bumps the product's version, then writes its events in order.
async fn write_product(
    conn: &mut AnyConnection,
    changes: &ProductChanges,
) -> Result<(), StoreError> {
    let sku = &changes.sku;
    let new_version = to_i64(changes.new_version, "version_number")?;
    match changes.stored_version {
        // A product created concurrently elsewhere makes this a duplicate
        // key, reported as a conflict.
        None => {
            sqlx::query("INSERT INTO products (sku, version_number) VALUES ($1, $2)")
                .bind(sku.as_str())
                .bind(new_version)
                .execute(&mut *conn)
                .await
                .map_err(|e| write_error(e, sku))?;
        }
        Some(stored) => {
            bump_version(conn, sku, to_i64(stored, "version_number")?, new_version).await?;
        }
    }
    for event in &changes.events {
        write_event(conn, sku, event).await?;
    }
    Ok(())
}

/// Writes what one event says happened, as `memory::StoredProduct::apply`
/// does. An event that does not match the stored rows means the product was
/// loaded from a different state than the one stored, which the version
/// check rules out; it fails the commit rather than write half of it.
async fn write_event(conn: &mut AnyConnection, sku: &Sku, event: &Event) -> Result<(), StoreError> {
    let to_store_error = |e| write_error(e, sku);
    match event {
        Event::BatchCreated(e) => {
            sqlx::query(
                "INSERT INTO batches (reference, sku, purchased_quantity, eta) VALUES ($1, $2, $3, $4)",
            )
            .bind(e.reference.as_str())
            .bind(sku.as_str())
            .bind(i64::from(e.qty.get()))
            .bind(e.eta.map(eta_to_db))
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
        }
        Event::Allocated(e) => {
            let batch = sqlx::query(
                "UPDATE batches SET allocated_quantity = allocated_quantity + $1 \
                 WHERE reference = $2 AND sku = $3 RETURNING id",
            )
            .bind(i64::from(e.qty.get()))
            .bind(e.batchref.as_str())
            .bind(sku.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(to_store_error)?;
            let Some(batch) = batch else {
                return Err(mismatch(format!(
                    "batch {} of product {sku} is not stored",
                    e.batchref
                )));
            };
            sqlx::query(
                "INSERT INTO allocations (orderid, sku, batch_id, qty) VALUES ($1, $2, $3, $4)",
            )
            .bind(e.orderid.as_str())
            .bind(sku.as_str())
            .bind(get::<i64>(&batch, "id")?)
            .bind(i64::from(e.qty.get()))
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
        }
        Event::Deallocated(Deallocated { orderid, .. })
        | Event::AllocationCancelled(AllocationCancelled { orderid, .. }) => {
            // The stored line says which batch and how much to give back.
            let line = sqlx::query(
                "DELETE FROM allocations WHERE orderid = $1 AND sku = $2 RETURNING batch_id, qty",
            )
            .bind(orderid.as_str())
            .bind(sku.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(to_store_error)?;
            let Some(line) = line else {
                return Err(mismatch(format!(
                    "order {orderid} has no stored line of {sku}"
                )));
            };
            sqlx::query(
                "UPDATE batches SET allocated_quantity = allocated_quantity - $1 WHERE id = $2",
            )
            .bind(get::<i64>(&line, "qty")?)
            .bind(get::<i64>(&line, "batch_id")?)
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
        }
        Event::BatchQuantityChanged(e) => {
            let updated = sqlx::query(
                "UPDATE batches SET purchased_quantity = $1 WHERE reference = $2 AND sku = $3",
            )
            .bind(i64::from(e.qty.get()))
            .bind(e.reference.as_str())
            .bind(sku.as_str())
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
            if updated.rows_affected() != 1 {
                return Err(mismatch(format!(
                    "batch {} of product {sku} is not stored",
                    e.reference
                )));
            }
        }
        Event::OutOfStock(_) => {}
    }
    Ok(())
}

async fn write_view(conn: &mut AnyConnection, change: &ViewChange) -> Result<(), StoreError> {
    let query = match change {
        ViewChange::Allocated {
            orderid,
            sku,
            batchref,
        } => sqlx::query(
            "INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $3) \
             ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref",
        )
        .bind(orderid.as_str())
        .bind(sku.as_str())
        .bind(batchref.as_str()),
        ViewChange::Deallocated { orderid, sku } => {
            sqlx::query("DELETE FROM allocations_view WHERE orderid = $1 AND sku = $2")
                .bind(orderid.as_str())
                .bind(sku.as_str())
        }
    };
    query.execute(conn).await.map_err(StoreError::backend)?;
    Ok(())
}

/// A duplicate key (a product, batch reference or order line that another
/// transaction wrote first) is a conflict: the bus runs the command again,
/// and it decides afresh on what is now stored. So are PostgreSQL's
/// serialization failures and deadlocks, which also call for a retry.
fn write_error(error: sqlx::Error, sku: &Sku) -> StoreError {
    let retry = error.as_database_error().is_some_and(|db| {
        db.is_unique_violation() || matches!(db.code().as_deref(), Some("40001" | "40P01"))
    });
    if retry {
        StoreError::Conflict { sku: sku.clone() }
    } else {
        StoreError::backend(error)
    }
}

async fn write_outbox_message(
    conn: &mut AnyConnection,
    message: &OutboxMessage,
) -> Result<(), StoreError> {
    let event = &message.event;
    sqlx::query(
        "INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message.message_id.to_string())
    .bind(event.orderid.as_str())
    .bind(event.sku.as_str())
    .bind(i64::from(event.qty.get()))
    .bind(event.batchref.as_str())
    .bind(unix_millis(SystemTime::now()))
    .execute(conn)
    .await
    .map_err(StoreError::backend)?;
    Ok(())
}

/// How many messages wait in the outbox, and for how long the oldest has:
/// for the metrics (`Outbox::backlog`) and for `check`, in its snapshot.
async fn read_outbox_backlog<'e>(
    executor: impl Executor<'e, Database = Any>,
) -> Result<OutboxBacklog, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS messages, MIN(created_at) AS oldest FROM outbox")
        .fetch_one(executor)
        .await
        .map_err(StoreError::backend)?;
    let messages: i64 = get(&row, "messages")?;
    let oldest: Option<i64> = get(&row, "oldest")?;
    let now = unix_millis(SystemTime::now());
    Ok(OutboxBacklog {
        messages: u64::try_from(messages).unwrap_or_default(),
        // Clocks of several hosts may disagree a little: never negative.
        oldest_age: oldest
            .map(|written| Duration::from_millis(u64::try_from(now - written).unwrap_or_default())),
    })
}

/// Leases use the clock of the process, not of the database, so that the
/// same statements work on both; instances' clocks need only roughly agree
/// (a skew shortens or lengthens a lease, it never loses a message).
fn unix_millis(time: SystemTime) -> i64 {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or_default();
    i64::try_from(millis).unwrap_or(i64::MAX)
}

impl Outbox for SqlStore {
    async fn claim(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedMessage>, StoreError> {
        let _turn = self.wait_for_write_turn().await?;
        let now = SystemTime::now();
        let rows = sqlx::query(self.dialect.claim_outbox_statement())
            .bind(unix_millis(now + lease))
            .bind(unix_millis(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let sku = identifier(&get::<String>(row, "sku")?, Sku::parse)?;
                let event = Allocated {
                    orderid: identifier(&get::<String>(row, "orderid")?, OrderId::parse)?,
                    qty: quantity_from_db(get(row, "qty")?)?,
                    batchref: identifier(&get::<String>(row, "batchref")?, BatchRef::parse)?,
                    sku,
                };
                Ok(ClaimedMessage {
                    position: get(row, "id")?,
                    message: OutboxMessage {
                        message_id: identifier(
                            &get::<String>(row, "message_id")?,
                            Uuid::parse_str,
                        )?,
                        event,
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING gives no order; the relay publishes oldest first.
        claimed.sort_by_key(|message| message.position);
        Ok(claimed)
    }

    async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.for_rows("DELETE FROM outbox WHERE id IN", positions)
            .await
    }

    async fn release(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.for_rows(
            "UPDATE outbox SET claimed_until = NULL WHERE id IN",
            positions,
        )
        .await
    }

    async fn backlog(&self) -> Result<OutboxBacklog, StoreError> {
        read_outbox_backlog(&self.pool).await
    }
}

impl SqlStore {
    /// Runs `statement`, which ends in `WHERE id IN`, for all `ids` in one
    /// round trip. Not cached as a prepared statement: its text changes
    /// with the number of ids.
    async fn for_rows(&self, statement: &str, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _turn = self.wait_for_write_turn().await?;
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!("{statement} ({})", placeholders.join(", "));
        let query = ids.iter().fold(
            sqlx::query(AssertSqlSafe(sql)).persistent(false),
            |query, id| query.bind(*id),
        );
        query
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }
}

impl ReadModel for SqlStore {
    async fn allocations(&self, orderid: &OrderId) -> Result<Vec<AllocationView>, StoreError> {
        let rows = sqlx::query(queries::ALLOCATIONS_OF_ORDER)
            .bind(orderid.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter()
            .map(|row| {
                Ok(AllocationView {
                    sku: identifier(&get::<String>(row, "sku")?, Sku::parse)?,
                    batchref: identifier(&get::<String>(row, "batchref")?, BatchRef::parse)?,
                })
            })
            .collect()
    }

    async fn batches(&self, sku: &Sku) -> Result<Vec<BatchView>, StoreError> {
        let rows = sqlx::query(queries::BATCHES_OF_PRODUCT)
            .bind(sku.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter()
            .map(|row| {
                Ok(BatchView {
                    reference: identifier(&get::<String>(row, "reference")?, BatchRef::parse)?,
                    eta: eta_from_db(get(row, "eta")?)?,
                    purchased: to_u64(get(row, "purchased_quantity")?, "purchased_quantity")?,
                    allocated: to_u64(get(row, "allocated_quantity")?, "allocated_quantity")?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }
}

/// The database holds something this code cannot have written, or a commit
/// disagrees with what is stored.
#[derive(Debug, thiserror::Error)]
#[error("stored data does not match: {0}")]
struct Mismatch(String);

fn mismatch(detail: String) -> StoreError {
    StoreError::backend(Mismatch(detail))
}

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(StoreError::backend)
}

fn identifier<T, E: fmt::Display>(
    raw: &str,
    parse: fn(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(raw).map_err(|e| mismatch(format!("{raw:?}: {e}")))
}

fn quantity_from_db(value: i64) -> Result<Quantity, StoreError> {
    Quantity::parse(i128::from(value), "qty").map_err(|e| mismatch(e.to_string()))
}

fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| mismatch(format!("{column} is negative: {value}")))
}

fn to_i64(value: u64, column: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| mismatch(format!("{column} is too large to store: {value}")))
}

/// Dates are stored as ISO 8601 text: the `Any` driver has no date type,
/// and text sorts and reads the same on both databases.
const ETA_FORMAT: &str = "%Y-%m-%d";

fn eta_to_db(eta: NaiveDate) -> String {
    eta.format(ETA_FORMAT).to_string()
}

fn eta_from_db(eta: Option<String>) -> Result<Option<NaiveDate>, StoreError> {
    eta.map(|text| {
        NaiveDate::parse_from_str(&text, ETA_FORMAT)
            .map_err(|e| mismatch(format!("eta {text:?}: {e}")))
    })
    .transpose()
}
