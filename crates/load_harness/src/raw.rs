//! The raw SQL phases: the allocation transaction written by hand with sqlx,
//! on a database of its own with the same schema and batches as the
//! service's.
//!
//! - `minimal` (the baseline the service is compared with): the fewest
//!   round trips a correct hand-written allocation needs, with sqlx's native
//!   driver and no connection ping on pool checkout. It does what the
//!   service's `Allocate` does: answers an already allocated line with its
//!   batch and changes nothing; otherwise picks the preferred batch that can
//!   take the line (warehouse first, then earliest ETA, ties by creation
//!   order), inserts the allocation row, bumps the batch's
//!   `allocated_quantity` and the product's version number, writes the
//!   `allocations_view` row and the `line_allocated` message in the
//!   `outbox` (docs/contract.md section 3: in the same transaction), all in one
//!   transaction. Publishing the outbox (the service's relay) is not part
//!   of it: that is background work, measured on the service side only.
//!   - PostgreSQL, 4 round trips: `BEGIN`; `UPDATE products SET
//!     version_number = version_number + 1` (locks the product row, the
//!     aggregate's lock, like `SELECT ... FOR UPDATE` but bumping the
//!     version in the same trip); one statement with data-modifying CTEs
//!     that checks for an existing line, picks the batch, updates it and
//!     inserts the three rows; `COMMIT`. Under READ COMMITTED that statement's
//!     snapshot is taken after the lock is held, so it sees the last
//!     committed state of the product's batches.
//!   - SQLite, 4 calls: `BEGIN IMMEDIATE` (the database write lock);
//!     `UPDATE batches ... WHERE id = (SELECT the preferred batch, unless the
//!     line exists) RETURNING`; one call carrying three `INSERT`s and the
//!     `UPDATE products`; `COMMIT`. SQLite has no data-modifying CTEs, but a
//!     call may carry several statements, each call being a hop to sqlx's
//!     SQLite thread.
//! - `service-sql`: the statements the service's `SqlStore` issued (before
//!   it wrote `Allocate` as one statement; kept as a reference point) for
//!   one allocation (load the product and its batches, load the order's line,
//!   version-checked `UPDATE products`, `UPDATE batches ... RETURNING`,
//!   three `INSERT`s), with its optimistic retry on a version conflict, through the
//!   native driver with sqlx's default pool (ping on checkout). Tells apart
//!   the cost of the service's round trips from everything else.
//! - `service-sql-any`: the same through sqlx's `Any` driver, as the service
//!   runs them: tells apart the cost of the `Any` driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AnyPool, Executor, PgPool, Row, SqlitePool};

use crate::database::{Backend, Database};
use crate::stats::Outcome;
use crate::workload::Line;

/// Which hand-written transaction a raw phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawVariant {
    /// Fewest round trips, native driver: the baseline.
    Minimal,
    /// The service's own statements, native driver.
    ServiceSql,
    /// The service's own statements through sqlx's `Any` driver.
    ServiceSqlAny,
}

impl RawVariant {
    pub fn label(self) -> &'static str {
        match self {
            Self::Minimal => "raw minimal",
            Self::ServiceSql => "raw service-sql",
            Self::ServiceSqlAny => "raw service-sql-any",
        }
    }

    /// Short, for database names.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Minimal => "raw",
            Self::ServiceSql => "svcsql",
            Self::ServiceSqlAny => "svcany",
        }
    }
}

/// The same per-connection SQLite settings as the service
/// (`adapters::sql::SQLITE_PRAGMAS`), so that both pay for the same
/// durability.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON;";

/// A pool on one raw phase's database, and what it runs.
#[derive(Debug)]
pub struct RawTarget {
    kind: Kind,
    /// Version conflicts that made a `service-sql*` transaction run again.
    pub conflicts: AtomicU64,
}

#[derive(Debug)]
enum Kind {
    PgMinimal(PgPool),
    SqliteMinimal(SqlitePool),
    PgServiceSql(PgPool),
    SqliteServiceSql(SqlitePool),
    AnyServiceSql(AnyPool, Backend),
}

impl RawTarget {
    /// Opens a pool of `max_connections` on `database` for `variant`.
    pub async fn connect(
        variant: RawVariant,
        backend: Backend,
        database: &Database,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let acquire_timeout = Duration::from_secs(5);
        // The minimal variant does not ping each connection as it leaves the
        // pool (one round trip); the others keep sqlx's default, as the
        // service does.
        let ping = variant != RawVariant::Minimal;
        let kind = match (variant, backend) {
            (RawVariant::Minimal | RawVariant::ServiceSql, Backend::Postgres) => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(ping)
                    .connect(&database.url)
                    .await
                    .context("cannot open the raw phase's PostgreSQL database")?;
                if variant == RawVariant::Minimal {
                    Kind::PgMinimal(pool)
                } else {
                    Kind::PgServiceSql(pool)
                }
            }
            (RawVariant::Minimal | RawVariant::ServiceSql, Backend::Sqlite) => {
                let path = database
                    .sqlite_path
                    .as_ref()
                    .context("no SQLite file for the raw phase")?;
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(5))
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(ping)
                    .connect_with(options)
                    .await
                    .context("cannot open the raw phase's SQLite database")?;
                if variant == RawVariant::Minimal {
                    Kind::SqliteMinimal(pool)
                } else {
                    Kind::SqliteServiceSql(pool)
                }
            }
            (RawVariant::ServiceSqlAny, backend) => {
                sqlx::any::install_default_drivers();
                let mut options = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout);
                if backend == Backend::Sqlite {
                    options = options.after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    });
                }
                let pool = options
                    .connect(&database.url)
                    .await
                    .context("cannot open the raw phase's database through sqlx Any")?;
                Kind::AnyServiceSql(pool, backend)
            }
        };
        Ok(Self {
            kind,
            conflicts: AtomicU64::new(0),
        })
    }

    /// Allocates one line; a database error becomes [`Outcome::Failed`].
    pub async fn allocate(&self, line: &Line) -> Outcome {
        let result = match &self.kind {
            Kind::PgMinimal(pool) => pg_minimal(pool, line).await,
            Kind::SqliteMinimal(pool) => sqlite_minimal(pool, line).await,
            Kind::PgServiceSql(pool) => {
                pg_service_sql(pool, POSTGRES_BEGIN, line, &self.conflicts).await
            }
            Kind::SqliteServiceSql(pool) => {
                sqlite_service_sql(pool, SQLITE_BEGIN, line, &self.conflicts).await
            }
            Kind::AnyServiceSql(pool, backend) => {
                let begin = match backend {
                    Backend::Postgres => POSTGRES_BEGIN,
                    Backend::Sqlite => SQLITE_BEGIN,
                };
                any_service_sql(pool, begin, line, &self.conflicts).await
            }
        };
        result.unwrap_or_else(|error| Outcome::Failed(error.to_string()))
    }

    pub async fn close(&self) {
        match &self.kind {
            Kind::PgMinimal(pool) | Kind::PgServiceSql(pool) => pool.close().await,
            Kind::SqliteMinimal(pool) | Kind::SqliteServiceSql(pool) => pool.close().await,
            Kind::AnyServiceSql(pool, _) => pool.close().await,
        }
    }
}

/// The service's `Dialect::begin_statement`s.
const POSTGRES_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";

/// Everything after the product lock, in one statement: `$1` sku, `$2`
/// orderid, `$3` qty, `$4` message id, `$5` creation time. Returns the batch and whether the line is new; no row
/// when out of stock.
const PG_ALLOCATE: &str = "\
WITH existing AS (
    SELECT b.reference FROM allocations a JOIN batches b ON b.id = a.batch_id
    WHERE a.orderid = $2 AND a.sku = $1
), chosen AS (
    SELECT id FROM batches
    WHERE sku = $1 AND quantity_in - quantity_out - allocated_quantity >= $3
      AND NOT EXISTS (SELECT 1 FROM existing)
    ORDER BY eta IS NOT NULL, eta, id
    LIMIT 1
), bumped AS (
    UPDATE batches SET allocated_quantity = batches.allocated_quantity + $3
    FROM chosen WHERE batches.id = chosen.id
    RETURNING batches.id, batches.reference
), new_line AS (
    INSERT INTO allocations (orderid, sku, batch_id, qty)
    SELECT $2, $1, id, $3 FROM bumped
), new_view_row AS (
    INSERT INTO allocations_view (orderid, sku, batchref)
    SELECT $2, $1, reference FROM bumped
), new_message AS (
    INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at)
    SELECT $4, $2, $1, $3, reference, $5 FROM bumped
)
SELECT reference, TRUE AS is_new FROM bumped
UNION ALL
SELECT reference, FALSE AS is_new FROM existing";

async fn pg_minimal(pool: &PgPool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    let locked =
        sqlx::query("UPDATE products SET version_number = version_number + 1 WHERE sku = $1")
            .bind(&line.sku)
            .execute(&mut *transaction)
            .await?;
    if locked.rows_affected() != 1 {
        return Ok(Outcome::Failed(format!("unknown sku {}", line.sku)));
    }
    let chosen: Option<(String, bool)> = sqlx::query_as(PG_ALLOCATE)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty)
        .bind(message_id())
        .bind(unix_millis())
        .fetch_optional(&mut *transaction)
        .await?;
    match chosen {
        Some((_, true)) => {
            transaction.commit().await?;
            Ok(Outcome::Allocated)
        }
        // Already allocated (changes nothing) or out of stock.
        Some((_, false)) | None => {
            transaction.rollback().await?;
            Ok(Outcome::NotAllocated)
        }
    }
}

/// Picks and bumps the preferred batch in one statement: `?1` sku, `?2`
/// orderid, `?3` qty. No row when the line exists or nothing can take it.
const SQLITE_PICK_AND_BUMP: &str = "\
UPDATE batches SET allocated_quantity = allocated_quantity + ?3
WHERE id = (
    SELECT id FROM batches
    WHERE sku = ?1 AND quantity_in - quantity_out - allocated_quantity >= ?3
      AND NOT EXISTS (SELECT 1 FROM allocations WHERE orderid = ?2 AND sku = ?1)
    ORDER BY eta IS NOT NULL, eta, id
    LIMIT 1
)
RETURNING id, reference";

async fn sqlite_minimal(pool: &SqlitePool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let mut transaction = pool.begin_with(SQLITE_BEGIN).await?;
    let chosen: Option<(i64, String)> = sqlx::query_as(SQLITE_PICK_AND_BUMP)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty)
        .fetch_optional(&mut *transaction)
        .await?;
    let Some((batch_id, reference)) = chosen else {
        transaction.rollback().await?;
        return Ok(Outcome::NotAllocated);
    };
    // One call for the four writes, as the service makes one (SQLite takes
    // several statements per call; `$n` is the same argument in each).
    let written = sqlx::query(SQLITE_WRITE_LINE)
        .bind(&line.orderid)
        .bind(&line.sku)
        .bind(batch_id)
        .bind(line.qty)
        .bind(&reference)
        .bind(message_id())
        .bind(unix_millis())
        .execute(&mut *transaction)
        .await?;
    if written.rows_affected() != 4 {
        return Ok(Outcome::Failed(format!(
            "unknown sku {} ({} rows written, not 4)",
            line.sku,
            written.rows_affected()
        )));
    }
    transaction.commit().await?;
    Ok(Outcome::Allocated)
}

/// The line, its read-model row, its outbox message and the product's
/// version bump, in one call: `$1` orderid, `$2` sku, `$3` batch id, `$4`
/// qty, `$5` batch reference, `$6` message id, `$7` creation time.
const SQLITE_WRITE_LINE: &str = "INSERT INTO allocations (orderid, sku, batch_id, qty) VALUES ($1, $2, $3, $4); \
     INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $5); \
     INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
     VALUES ($6, $1, $2, $4, $5, $7); \
     UPDATE products SET version_number = version_number + 1 WHERE sku = $2";

/// The service's outbox row (`write_outbox_message`): `$1` message id,
/// `$2` orderid, `$3` sku, `$4` qty, `$5` batch, `$6` creation time.
const OUTBOX_INSERT: &str = "INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// A unique message id, as long as the service's UUIDs.
fn message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The outbox's `created_at`: unix milliseconds.
fn unix_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// How many times the service runs a conflicting command
/// (`RetryPolicy::command_attempts`).
const ATTEMPTS: u32 = 10;

/// The service's wait before attempt `attempt + 1`: full jitter below
/// 1 ms × 2^attempt (`RetryPolicy::conflict_wait`).
fn conflict_wait(attempt: u32) -> Duration {
    Duration::from_millis(1 << attempt.min(10)).mul_f64(rand::random::<f64>())
}

/// The statements `SqlStore` issues for one `Allocate`, with the same
/// retry, for each pool type (sqlx's executors differ by type, the text
/// does not).
macro_rules! service_sql {
    ($name:ident, $pool:ty) => {
        async fn $name(
            pool: &$pool,
            begin: &'static str,
            line: &Line,
            conflicts: &AtomicU64,
        ) -> Result<Outcome, sqlx::Error> {
            for attempt in 1..=ATTEMPTS {
                let mut transaction = pool.begin_with(begin).await?;
                let rows = sqlx::query(
                    "SELECT p.version_number, b.reference, b.eta, b.quantity_in - b.quantity_out AS quantity, b.allocated_quantity \
                     FROM products p LEFT JOIN batches b ON b.sku = p.sku \
                     WHERE p.sku = $1 \
                     ORDER BY b.id",
                )
                .bind(&line.sku)
                .fetch_all(&mut *transaction)
                .await?;
                let Some(first) = rows.first() else {
                    return Ok(Outcome::Failed(format!("unknown sku {}", line.sku)));
                };
                let version: i64 = first.try_get("version_number")?;
                let existing = sqlx::query(
                    "SELECT b.reference, a.qty \
                     FROM allocations a JOIN batches b ON b.id = a.batch_id \
                     WHERE a.orderid = $1 AND a.sku = $2",
                )
                .bind(&line.orderid)
                .bind(&line.sku)
                .fetch_optional(&mut *transaction)
                .await?;
                if existing.is_some() {
                    return Ok(Outcome::NotAllocated);
                }
                // Product::allocate: the preferred batch that can take it.
                let mut chosen: Option<((bool, Option<String>), String)> = None;
                for row in &rows {
                    let Some(reference) = row.try_get::<Option<String>, _>("reference")? else {
                        continue;
                    };
                    let eta: Option<String> = row.try_get("eta")?;
                    let purchased: i64 = row.try_get("quantity")?;
                    let allocated: i64 = row.try_get("allocated_quantity")?;
                    if purchased - allocated < line.qty {
                        continue;
                    }
                    let preference = (eta.is_some(), eta);
                    if chosen.as_ref().is_none_or(|(best, _)| preference < *best) {
                        chosen = Some((preference, reference));
                    }
                }
                let Some((_, reference)) = chosen else {
                    return Ok(Outcome::NotAllocated);
                };
                let updated = sqlx::query(
                    "UPDATE products SET version_number = $1 WHERE sku = $2 AND version_number = $3",
                )
                .bind(version + 1)
                .bind(&line.sku)
                .bind(version)
                .execute(&mut *transaction)
                .await?;
                if updated.rows_affected() != 1 {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                    drop(transaction);
                    tokio::time::sleep(conflict_wait(attempt)).await;
                    continue;
                }
                let batch = sqlx::query(
                    "UPDATE batches SET allocated_quantity = allocated_quantity + $1 \
                     WHERE reference = $2 AND sku = $3 RETURNING id",
                )
                .bind(line.qty)
                .bind(&reference)
                .bind(&line.sku)
                .fetch_one(&mut *transaction)
                .await?;
                let batch_id: i64 = batch.try_get("id")?;
                sqlx::query(
                    "INSERT INTO allocations (orderid, sku, batch_id, qty) VALUES ($1, $2, $3, $4)",
                )
                .bind(&line.orderid)
                .bind(&line.sku)
                .bind(batch_id)
                .bind(line.qty)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(
                    "INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $3) \
                     ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref",
                )
                .bind(&line.orderid)
                .bind(&line.sku)
                .bind(&reference)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(OUTBOX_INSERT)
                    .bind(message_id())
                    .bind(&line.orderid)
                    .bind(&line.sku)
                    .bind(line.qty)
                    .bind(&reference)
                    .bind(unix_millis())
                    .execute(&mut *transaction)
                    .await?;
                transaction.commit().await?;
                return Ok(Outcome::Allocated);
            }
            Ok(Outcome::Failed(format!(
                "gave up after {ATTEMPTS} version conflicts"
            )))
        }
    };
}

service_sql!(pg_service_sql, PgPool);
service_sql!(sqlite_service_sql, SqlitePool);
service_sql!(any_service_sql, AnyPool);
