//! The `book` variant: the allocation as the book has it, with no holds,
//! backorders or stock levels, in the fewest round trips. It was the
//! baseline until the service grew those (issues 15 and 16); it is kept to
//! show what they cost, on both sides.

use sqlx::{PgPool, SqlitePool};

use super::{message_id, pg_lock_then_allocate, sqlite_pick_then_write, unix_millis};
use crate::stats::Outcome;
use crate::workload::Line;

/// Everything after the product lock, in one statement: `$1` sku, `$2`
/// orderid, `$3` qty, `$4` message id, `$5` creation time. Returns the batch and whether the line is new; no row
/// when out of stock.
const PG_ALLOCATE_BOOK: &str = "\
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

pub(super) async fn pg_book(pool: &PgPool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let allocate = sqlx::query_as(PG_ALLOCATE_BOOK)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty)
        .bind(message_id())
        .bind(unix_millis());
    pg_lock_then_allocate(pool, line, allocate).await
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

pub(super) async fn sqlite_book(pool: &SqlitePool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let pick = sqlx::query_as(SQLITE_PICK_AND_BUMP)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty);
    sqlite_pick_then_write(pool, line, pick, |batch_id, reference| {
        sqlx::query(SQLITE_WRITE_LINE)
            .bind(&line.orderid)
            .bind(&line.sku)
            .bind(batch_id)
            .bind(line.qty)
            .bind(reference)
            .bind(message_id())
            .bind(unix_millis())
    })
    .await
}

/// The line, its read-model row, its outbox message and the product's
/// version bump, in one call: `$1` orderid, `$2` sku, `$3` batch id, `$4`
/// qty, `$5` batch reference, `$6` message id, `$7` creation time.
const SQLITE_WRITE_LINE: &str = "INSERT INTO allocations (orderid, sku, batch_id, qty) VALUES ($1, $2, $3, $4); \
     INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $5); \
     INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
     VALUES ($6, $1, $2, $4, $5, $7); \
     UPDATE products SET version_number = version_number + 1 WHERE sku = $2";
