//! The raw SQL phases: the allocation transaction written by hand with sqlx,
//! on a database of its own with the same schema and batches as the
//! service's. One module per variant:
//!
//! - `minimal` (the baseline the service is compared with): the fewest
//!   round trips a correct hand-written allocation needs, with sqlx's native
//!   driver and no connection ping on pool checkout, doing what the
//!   service's `Allocate` does (holds, backorders and stock levels
//!   included). Publishing the outbox (the service's relay) is not part of
//!   it: that is background work, measured on the service side only.
//!   - PostgreSQL, 4 round trips: `BEGIN`; `UPDATE products SET
//!     version_number = version_number + 1` (the product's lock); one
//!     statement with data-modifying CTEs that does the rest; `COMMIT`.
//!   - SQLite, 4 calls: `BEGIN IMMEDIATE` (the database write lock); the
//!     `UPDATE batches ... RETURNING` that picks and bumps the batch; one
//!     call carrying the other writes; `COMMIT`. SQLite has no
//!     data-modifying CTEs, but a call may carry several statements, each
//!     call being a hop to sqlx's SQLite thread.
//! - `book`: the same without holds, backorders or stock levels, the
//!   baseline until the service grew them (issues 15 and 16).
//! - `service-sql`: the statements the service's `SqlStore` issued (before
//!   it wrote `Allocate` as one statement; kept as a reference point) for
//!   one allocation, with its optimistic retry, through the native driver
//!   with sqlx's default pool (ping on checkout). Tells apart the cost of
//!   the service's round trips from everything else.
//! - `service-sql-any`: the same through sqlx's `Any` driver, as the service
//!   runs them: tells apart the cost of the `Any` driver.

mod book;
mod minimal;
mod service_sql;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgArguments;
use sqlx::postgres::PgPoolOptions;
use sqlx::query::{Query, QueryAs};
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AnyPool, Executor, PgPool, Postgres, Sqlite, SqlitePool};

use crate::database::{Backend, Database};
use crate::stats::Outcome;
use crate::workload::Line;

/// Which hand-written transaction a raw phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawVariant {
    /// Fewest round trips, native driver: the baseline.
    Minimal,
    /// The book's allocation alone, fewest round trips: the baseline
    /// before holds, backorders and stock levels.
    Book,
    /// The service's own statements, native driver.
    ServiceSql,
    /// The service's own statements through sqlx's `Any` driver.
    ServiceSqlAny,
}

impl RawVariant {
    pub fn label(self) -> &'static str {
        match self {
            Self::Minimal => "raw minimal",
            Self::Book => "raw book",
            Self::ServiceSql => "raw service-sql",
            Self::ServiceSqlAny => "raw service-sql-any",
        }
    }

    /// Short, for database names.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Minimal => "raw",
            Self::Book => "book",
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
    variant: RawVariant,
    pool: Pool,
    /// Version conflicts that made a `service-sql*` transaction run again.
    pub conflicts: AtomicU64,
}

#[derive(Debug)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
    Any(AnyPool, Backend),
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
        // The fewest-round-trips variants do not ping each connection as it
        // leaves the pool (one round trip); the others keep sqlx's default,
        // as the service does.
        let ping = !matches!(variant, RawVariant::Minimal | RawVariant::Book);
        let pool = match (variant, backend) {
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
                Pool::Any(pool, backend)
            }
            (_, Backend::Postgres) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(ping)
                    .connect(&database.url)
                    .await
                    .context("cannot open the raw phase's PostgreSQL database")?,
            ),
            (_, Backend::Sqlite) => {
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
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(acquire_timeout)
                        .test_before_acquire(ping)
                        .connect_with(options)
                        .await
                        .context("cannot open the raw phase's SQLite database")?,
                )
            }
        };
        Ok(Self {
            variant,
            pool,
            conflicts: AtomicU64::new(0),
        })
    }

    /// Allocates one line; a database error becomes [`Outcome::Failed`].
    pub async fn allocate(&self, line: &Line) -> Outcome {
        let conflicts = &self.conflicts;
        let result = match (self.variant, &self.pool) {
            (RawVariant::Minimal, Pool::Postgres(pool)) => minimal::pg_minimal(pool, line).await,
            (RawVariant::Minimal, Pool::Sqlite(pool)) => minimal::sqlite_minimal(pool, line).await,
            (RawVariant::Book, Pool::Postgres(pool)) => book::pg_book(pool, line).await,
            (RawVariant::Book, Pool::Sqlite(pool)) => book::sqlite_book(pool, line).await,
            (RawVariant::ServiceSql, Pool::Postgres(pool)) => {
                service_sql::pg_service_sql(pool, POSTGRES_BEGIN, line, conflicts).await
            }
            (RawVariant::ServiceSql, Pool::Sqlite(pool)) => {
                service_sql::sqlite_service_sql(pool, SQLITE_BEGIN, line, conflicts).await
            }
            (_, Pool::Any(pool, backend)) => {
                let begin = match backend {
                    Backend::Postgres => POSTGRES_BEGIN,
                    Backend::Sqlite => SQLITE_BEGIN,
                };
                service_sql::any_service_sql(pool, begin, line, conflicts).await
            }
            // `connect` opens an Any pool for it.
            (RawVariant::ServiceSqlAny, _) => Ok(Outcome::Failed(
                "service-sql-any runs on sqlx's Any driver only".to_owned(),
            )),
        };
        result.unwrap_or_else(|error| Outcome::Failed(error.to_string()))
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Any(pool, _) => pool.close().await,
        }
    }
}

/// The service's `Dialect::begin_statement`s.
const POSTGRES_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";

/// The PostgreSQL transaction of the `minimal` and `book` variants, in 4
/// round trips: `BEGIN`; the product's lock; `allocate`, the rest of the
/// allocation in one statement, returning the batch and whether the line is
/// new (no row when nothing can take it); `COMMIT` of a new line only.
async fn pg_lock_then_allocate(
    pool: &PgPool,
    line: &Line,
    allocate: QueryAs<'_, Postgres, (String, bool), PgArguments>,
) -> Result<Outcome, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    // Locks the product row, the aggregate's lock, like `SELECT ... FOR
    // UPDATE` but bumping the version in the same trip. Under READ
    // COMMITTED the next statement's snapshot is taken after the lock is
    // held, so it sees the last committed state of the product's batches.
    let locked =
        sqlx::query("UPDATE products SET version_number = version_number + 1 WHERE sku = $1")
            .bind(&line.sku)
            .execute(&mut *transaction)
            .await?;
    if locked.rows_affected() != 1 {
        return Ok(Outcome::Failed(format!("unknown sku {}", line.sku)));
    }
    match allocate.fetch_optional(&mut *transaction).await? {
        Some((_, true)) => {
            transaction.commit().await?;
            Ok(Outcome::Allocated)
        }
        // Already allocated or waiting (changes nothing), or nothing can
        // take it.
        Some((_, false)) | None => {
            transaction.rollback().await?;
            Ok(Outcome::NotAllocated)
        }
    }
}

/// The SQLite transaction of the `minimal` and `book` variants, in 4
/// calls: `BEGIN IMMEDIATE`; `pick`, which picks and bumps the preferred
/// batch and returns its id and reference (no row when the line exists or
/// waits, or nothing can take it); one call carrying the other writes,
/// made by `write` for that batch (SQLite takes several statements per
/// call, as the service's own batched write does); `COMMIT`.
async fn sqlite_pick_then_write<'q>(
    pool: &SqlitePool,
    line: &Line,
    pick: QueryAs<'q, Sqlite, (i64, String), SqliteArguments>,
    write: impl FnOnce(i64, String) -> Query<'q, Sqlite, SqliteArguments>,
) -> Result<Outcome, sqlx::Error> {
    let mut transaction = pool.begin_with(SQLITE_BEGIN).await?;
    let Some((batch_id, reference)) = pick.fetch_optional(&mut *transaction).await? else {
        transaction.rollback().await?;
        return Ok(Outcome::NotAllocated);
    };
    let written = write(batch_id, reference)
        .execute(&mut *transaction)
        .await?;
    // The line, its read-model row, its message and the version bump; and
    // a stock-level crossing's two rows, if there is one.
    if written.rows_affected() < 4 {
        return Ok(Outcome::Failed(format!(
            "unknown sku {} ({} rows written, not 4 or more)",
            line.sku,
            written.rows_affected()
        )));
    }
    transaction.commit().await?;
    Ok(Outcome::Allocated)
}

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
