//! The `service-sql` and `service-sql-any` variants: the statements the
//! service's `SqlStore` issued for one allocation before it wrote
//! `Allocate` as one statement, with its optimistic retry, through sqlx's
//! native drivers and through its `Any` driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AnyPool, PgPool, Row, SqlitePool};

use super::{message_id, unix_millis};
use crate::stats::Outcome;
use crate::workload::Line;

/// The service's outbox row (`write_outbox_message`): `$1` message id,
/// `$2` orderid, `$3` sku, `$4` qty, `$5` batch, `$6` creation time.
const OUTBOX_INSERT: &str = "INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";

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
        pub(super) async fn $name(
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
