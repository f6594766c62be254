//! Maintenance of a live database: rebuilding the read model from the write
//! tables (book chapter 12's sidebar), and checking that the two agree.
//!
//! Both are safe while the service runs. The rebuild works one product at a
//! time, holding that product the way a command does (by bumping its
//! version), so no command's writes can interleave with it; the check reads
//! one consistent snapshot and writes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use service_layer::{StoreError, ports};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

use super::rows::time_to_db;
use super::{Dialect, SqlStore, get, read_outbox_backlog, to_u64};

mod statements;

use statements::{check, rebuild};

/// How many examples of each kind of difference a report lists; all are
/// counted. A badly broken database should not make the report unreadable.
pub const EXAMPLES_PER_KIND: usize = 100;

/// How often the final pass of a rebuild starts again after a concurrent
/// command changed a row it meant to delete (PostgreSQL only).
const ORPHAN_PASS_ATTEMPTS: u32 = 10;

/// What a rebuild of the read model changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Products whose rows were rebuilt.
    pub products: u64,
    /// Rows added for allocated lines the read model did not show.
    pub added: u64,
    /// Rows that showed another batch than the one the line is on.
    pub changed: u64,
    /// Rows removed because no allocated line stands behind them.
    pub removed: u64,
}

impl RebuildReport {
    /// Rows added, changed or removed: zero when the read model was right.
    pub fn changes(&self) -> u64 {
        self.added + self.changed + self.removed
    }
}

/// How the read model and the write model compare, and whether the write
/// model keeps its own rules, in one snapshot of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyReport {
    pub totals: Totals,
    /// Parts of allocated lines the read model does not show (`batchref`:
    /// the batch it should show).
    pub missing_rows: Findings<ViewRow>,
    /// Read-model rows with no allocated line behind them.
    pub extra_rows: Findings<ViewRow>,
    /// Read-model rows that show a batch the line has no part on.
    pub wrong_batch: Findings<WrongBatch>,
    /// Batches whose `allocated_quantity` is not the total of their lines.
    pub allocated_totals: Findings<BatchTotal>,
    /// Batches with more allocated and held (by live holds) than purchased.
    pub over_allocated: Findings<OverAllocated>,
    /// Order lines `(orderid, sku)` with two rows on one batch.
    pub duplicate_lines: Findings<DuplicateLine>,
    /// Lines allocated to a batch of another SKU.
    pub lines_on_foreign_batches: Findings<ForeignBatchLine>,
    /// Batches whose quantity is not the sum of their stock movements.
    pub ledger_drift: Findings<LedgerDrift>,
    /// Not a difference: what the outbox relay has yet to publish.
    pub outbox: OutboxBacklog,
}

impl ConsistencyReport {
    /// Differences between the read and the write model, which a rebuild
    /// repairs.
    pub fn read_model_differences(&self) -> u64 {
        self.missing_rows.count + self.extra_rows.count + self.wrong_batch.count
    }

    /// Broken rules of the write model itself, which no rebuild repairs.
    pub fn write_model_violations(&self) -> u64 {
        self.allocated_totals.count
            + self.over_allocated.count
            + self.duplicate_lines.count
            + self.lines_on_foreign_batches.count
            + self.ledger_drift.count
    }

    pub fn is_consistent(&self) -> bool {
        self.read_model_differences() == 0 && self.write_model_violations() == 0
    }
}

/// How many rows each table held in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub products: u64,
    pub batches: u64,
    pub allocations: u64,
    pub view_rows: u64,
}

/// All rows of one kind of difference are counted; the first
/// [`EXAMPLES_PER_KIND`] are kept, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Findings<T> {
    pub count: u64,
    pub examples: Vec<T>,
}

impl<T> Default for Findings<T> {
    fn default() -> Self {
        Self {
            count: 0,
            examples: Vec::new(),
        }
    }
}

// Identifiers are plain strings here: a report must be able to show stored
// values that no longer parse as the domain's types.

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewRow {
    pub orderid: String,
    pub sku: String,
    pub batchref: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrongBatch {
    pub orderid: String,
    pub sku: String,
    /// What `GET /allocations/<orderid>` shows.
    pub shown: String,
    /// Where the line is allocated.
    pub allocated: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchTotal {
    pub batchref: String,
    pub sku: String,
    pub allocated_quantity: u64,
    pub lines_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverAllocated {
    pub batchref: String,
    pub sku: String,
    pub allocated_quantity: u64,
    /// Held by checkout holds live at the time of the check.
    pub held_quantity: u64,
    pub quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerDrift {
    pub batchref: String,
    pub sku: String,
    pub quantity: u64,
    /// The sum of its movements' deltas.
    pub ledger_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateLine {
    pub orderid: String,
    pub sku: String,
    pub lines: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignBatchLine {
    pub orderid: String,
    pub sku: String,
    pub batchref: String,
    pub batch_sku: String,
}

/// The outbox at the time of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxBacklog {
    /// Messages committed and not yet published.
    pub messages: u64,
    /// How long the oldest of them has waited, in milliseconds, by this
    /// process's clock (the outbox records the writer's clock).
    pub oldest_age_ms: Option<u64>,
}

impl From<ports::OutboxBacklog> for OutboxBacklog {
    fn from(backlog: ports::OutboxBacklog) -> Self {
        Self {
            messages: backlog.messages,
            oldest_age_ms: backlog
                .oldest_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl OutboxBacklog {
    pub fn oldest_age(&self) -> Option<Duration> {
        self.oldest_age_ms.map(Duration::from_millis)
    }
}

impl Dialect {
    /// A transaction that only reads, all from one snapshot. SQLite in WAL
    /// mode gives a deferred transaction the snapshot of its first read, and
    /// keeps it until the end without blocking writers.
    fn snapshot_statement(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN",
            Self::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        }
    }

    /// The rebuild's final pass. On PostgreSQL, REPEATABLE READ turns "a
    /// command changed this row since my snapshot" into a serialization
    /// failure (retried), where READ COMMITTED would delete a row that a
    /// concurrent allocation had just made right again.
    fn orphan_pass_statement(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        }
    }
}

impl SqlStore {
    /// Makes the read model (`allocations_view`) show exactly the allocated
    /// lines, changing only the rows that differ. Safe while the service
    /// runs: one short transaction per product, which holds the product
    /// like a command does, then one pass removing rows of no line.
    /// Commands on the product being rebuilt wait a moment, or are retried
    /// by the message bus.
    pub async fn rebuild_read_model(&self) -> Result<RebuildReport, StoreError> {
        let mut report = RebuildReport::default();
        // Products created after this list have been kept right by their
        // commands; only existing rows can be wrong.
        let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM products ORDER BY sku")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        for sku in &skus {
            let mut transaction = self.begin_with(self.dialect.begin_statement()).await?;
            let conn = &mut *transaction;
            execute(conn, rebuild::TAKE_PRODUCT, sku).await?;
            let wrong = execute(conn, rebuild::REMOVE_WRONG_ROWS, sku).await?;
            let added = execute(conn, rebuild::ADD_MISSING_ROWS, sku).await?;
            transaction.commit().await.map_err(StoreError::backend)?;
            // A wrong row replaced by the right one was changed.
            let changed = wrong.min(added);
            report.changed += changed;
            report.added += added - changed;
            report.removed += wrong - changed;
            report.products += 1;
        }
        report.removed += self.remove_orphan_rows().await?;
        Ok(report)
    }

    async fn remove_orphan_rows(&self) -> Result<u64, StoreError> {
        let mut attempt = 1;
        loop {
            let mut transaction = self
                .begin_with(self.dialect.orphan_pass_statement())
                .await?;
            let deleted = sqlx::query(rebuild::REMOVE_ORPHANS)
                .execute(&mut *transaction)
                .await;
            let outcome = match deleted {
                Ok(deleted) => transaction.commit().await.map(|()| deleted.rows_affected()),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(removed) => return Ok(removed),
                Err(error)
                    if is_serialization_failure(&error) && attempt < ORPHAN_PASS_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "a command changed the read model meanwhile; again");
                    attempt += 1;
                }
                Err(error) => return Err(StoreError::backend(error)),
            }
        }
    }

    /// Compares the read model with the allocations, and checks the rules
    /// the write tables keep, all in one snapshot; writes nothing.
    pub async fn check_consistency(
        &self,
        now: DateTime<Utc>,
    ) -> Result<ConsistencyReport, StoreError> {
        let mut transaction = self.begin_with(self.dialect.snapshot_statement()).await?;
        let conn = &mut *transaction;
        let totals = sqlx::query(check::TOTALS)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::backend)?;
        let totals = Totals {
            products: count(&totals, "products")?,
            batches: count(&totals, "batches")?,
            allocations: count(&totals, "allocations")?,
            view_rows: count(&totals, "view_rows")?,
        };
        let view_row = |row: &AnyRow| {
            Ok(ViewRow {
                orderid: get(row, "orderid")?,
                sku: get(row, "sku")?,
                batchref: get(row, "batchref")?,
            })
        };
        let missing_rows = findings(conn, sqlx::query(check::MISSING_ROWS), view_row).await?;
        let extra_rows = findings(conn, sqlx::query(check::EXTRA_ROWS), view_row).await?;
        let wrong_batch = findings(conn, sqlx::query(check::WRONG_BATCH), |row| {
            Ok(WrongBatch {
                orderid: get(row, "orderid")?,
                sku: get(row, "sku")?,
                shown: get(row, "shown")?,
                allocated: get(row, "allocated")?,
            })
        })
        .await?;
        let allocated_totals = findings(conn, sqlx::query(check::ALLOCATED_TOTALS), |row| {
            Ok(BatchTotal {
                batchref: get(row, "reference")?,
                sku: get(row, "sku")?,
                allocated_quantity: count(row, "allocated_quantity")?,
                lines_total: count(row, "lines_total")?,
            })
        })
        .await?;
        let over_allocated = findings(
            conn,
            sqlx::query(check::OVER_ALLOCATED).bind(time_to_db(now)),
            |row| {
                Ok(OverAllocated {
                    batchref: get(row, "reference")?,
                    sku: get(row, "sku")?,
                    allocated_quantity: count(row, "allocated_quantity")?,
                    held_quantity: count(row, "held_quantity")?,
                    quantity: count(row, "quantity")?,
                })
            },
        )
        .await?;
        let duplicate_lines = findings(conn, sqlx::query(check::DUPLICATE_LINES), |row| {
            Ok(DuplicateLine {
                orderid: get(row, "orderid")?,
                sku: get(row, "sku")?,
                lines: count(row, "lines")?,
            })
        })
        .await?;
        let lines_on_foreign_batches =
            findings(conn, sqlx::query(check::LINES_ON_FOREIGN_BATCHES), |row| {
                Ok(ForeignBatchLine {
                    orderid: get(row, "orderid")?,
                    sku: get(row, "sku")?,
                    batchref: get(row, "reference")?,
                    batch_sku: get(row, "batch_sku")?,
                })
            })
            .await?;
        let ledger_drift = findings(conn, sqlx::query(check::LEDGER_DRIFT), |row| {
            Ok(LedgerDrift {
                batchref: get(row, "reference")?,
                sku: get(row, "sku")?,
                quantity: count(row, "quantity")?,
                ledger_total: get(row, "ledger_total")?,
            })
        })
        .await?;
        let outbox = read_outbox_backlog(&mut *conn).await?.into();
        // Nothing was written; ending it either way releases the snapshot.
        transaction.rollback().await.map_err(StoreError::backend)?;
        Ok(ConsistencyReport {
            totals,
            missing_rows,
            extra_rows,
            wrong_batch,
            allocated_totals,
            over_allocated,
            duplicate_lines,
            lines_on_foreign_batches,
            ledger_drift,
            outbox,
        })
    }
}

/// Runs a statement of one product, `$1` its SKU: how many rows it changed.
async fn execute(
    conn: &mut AnyConnection,
    statement: &'static str,
    sku: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query(statement)
        .bind(sku)
        .execute(conn)
        .await
        .map_err(StoreError::backend)?;
    Ok(done.rows_affected())
}

/// Counts every row `query` gives, keeping the first [`EXAMPLES_PER_KIND`]:
/// streamed, so that memory stays bounded however many there are.
async fn findings<'q, T>(
    conn: &mut AnyConnection,
    query: Query<'q, Any, AnyArguments>,
    decode: impl Fn(&AnyRow) -> Result<T, StoreError>,
) -> Result<Findings<T>, StoreError> {
    let mut found = Findings::default();
    let mut rows = query.fetch(conn);
    while let Some(row) = rows.try_next().await.map_err(StoreError::backend)? {
        found.count += 1;
        if found.examples.len() < EXAMPLES_PER_KIND {
            found.examples.push(decode(&row)?);
        }
    }
    Ok(found)
}

fn count(row: &AnyRow, column: &str) -> Result<u64, StoreError> {
    to_u64(get(row, column)?, column)
}

/// PostgreSQL's "could not serialize access": another transaction changed
/// what this one meant to change; running it again is the remedy.
fn is_serialization_failure(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.code().as_deref() == Some("40001"))
}
