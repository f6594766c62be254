//! The `minimal` variant, the baseline: the fewest round trips a correct
//! hand-written allocation needs, doing what the service's `Allocate` does
//! for a line that some batch can take (docs/contract.md sections 1, 6
//! and 7):
//!
//! - a line already allocated, or already waiting as a backorder, changes
//!   nothing;
//! - otherwise the preferred batch whose available units take the line
//!   gets it (warehouse first, then earliest ETA, ties by creation order),
//!   where available means bought, less shipped, less allocated, less what
//!   holds alive now set aside;
//! - the line, its `allocations_view` row and its `line_allocated` message
//!   in the `outbox`, and the batch's allocated total, in the same
//!   transaction as the product's version bump;
//! - and, when the allocation takes the product's stock to another level
//!   than the one it last announced (in stock, low against its
//!   threshold, out), the new level and its `low_stock` or
//!   `stock_exhausted` message.
//!
//! A line nothing can take ends the transaction with no change; the
//! workload never asks for one (its stock never runs out), so the backorder
//! and `out_of_stock` writes that would follow are not written here.

use sqlx::{PgPool, SqlitePool};

use super::{message_id, pg_lock_then_allocate, sqlite_pick_then_write, unix_millis};
use crate::stats::Outcome;
use crate::workload::Line;

/// The units a batch `b` has for allocations at `$now` (unix
/// milliseconds), the same SQL on both backends.
macro_rules! available_units {
    ($now:literal) => {
        concat!(
            "b.quantity_in - b.quantity_out - b.allocated_quantity - COALESCE((",
            "SELECT SUM(h.qty) FROM hold_parts h WHERE h.batch_id = b.id ",
            "AND h.state = 'active' AND h.expires_at > ",
            $now,
            "), 0)"
        )
    };
}

/// PostgreSQL, after the product's lock, in one statement: `$1` sku, `$2`
/// orderid, `$3` qty, `$4` the line's message id, `$5` now (unix
/// milliseconds), `$6` the stock-level message's id. Returns the batch and
/// whether the line is new; no row when nothing can take it. The CTEs share
/// one snapshot, so `level` sums the units as they were before `bumped`
/// and takes the line off.
const PG_ALLOCATE: &str = concat!(
    "WITH existing AS (
    SELECT b.reference FROM allocations a JOIN batches b ON b.id = a.batch_id
    WHERE a.orderid = $2 AND a.sku = $1
), waiting AS (
    SELECT 1 FROM backorders WHERE sku = $1 AND orderid = $2 AND state = 'waiting'
), stock AS (
    SELECT b.id, b.eta, ",
    available_units!("$5"),
    " AS available
    FROM batches b WHERE b.sku = $1
), chosen AS (
    SELECT id FROM stock
    WHERE available >= $3
      AND NOT EXISTS (SELECT 1 FROM existing) AND NOT EXISTS (SELECT 1 FROM waiting)
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
), level AS (
    SELECT t.available, t.threshold, COALESCE(l.level, 'in') AS announced,
           CASE WHEN t.available = 0 THEN 'out'
                WHEN t.available < t.threshold THEN 'low' ELSE 'in' END AS reached
    FROM (SELECT CAST(SUM(available) AS BIGINT) - $3 AS available,
                 (SELECT COALESCE(MAX(low_stock_threshold), 0) FROM product_settings
                  WHERE sku = $1) AS threshold
          FROM stock) t
    LEFT JOIN stock_levels l ON l.sku = $1
    WHERE EXISTS (SELECT 1 FROM bumped)
), level_stored AS (
    INSERT INTO stock_levels (sku, level)
    SELECT $1, reached FROM level WHERE reached <> announced
    ON CONFLICT (sku) DO UPDATE SET level = excluded.level
), level_message AS (
    INSERT INTO outbox (message_id, channel, sku, available, threshold, created_at)
    SELECT $6, CASE reached WHEN 'out' THEN 'stock_exhausted' ELSE 'low_stock' END,
           $1, available, threshold, $5
    FROM level WHERE reached = 'out' AND announced <> 'out'
                  OR reached = 'low' AND announced = 'in'
)
SELECT reference, TRUE AS is_new FROM bumped
UNION ALL
SELECT reference, FALSE AS is_new FROM existing"
);

pub(super) async fn pg_minimal(pool: &PgPool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let allocate = sqlx::query_as(PG_ALLOCATE)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty)
        .bind(message_id())
        .bind(unix_millis())
        .bind(message_id());
    pg_lock_then_allocate(pool, line, allocate).await
}

/// SQLite: picks and bumps the preferred batch in one statement: `?1` sku,
/// `?2` orderid, `?3` qty, `?4` now. No row when the line exists or waits,
/// or nothing can take it.
const SQLITE_PICK_AND_BUMP: &str = concat!(
    "UPDATE batches SET allocated_quantity = allocated_quantity + ?3
WHERE id = (
    SELECT b.id FROM batches b
    WHERE b.sku = ?1 AND ",
    available_units!("?4"),
    " >= ?3
      AND NOT EXISTS (SELECT 1 FROM allocations WHERE orderid = ?2 AND sku = ?1)
      AND NOT EXISTS (SELECT 1 FROM backorders
                      WHERE sku = ?1 AND orderid = ?2 AND state = 'waiting')
    ORDER BY b.eta IS NOT NULL, b.eta, b.id
    LIMIT 1
)
RETURNING id, reference"
);

/// The product's stock level now, against the one it announced, for SKU
/// `$2` at `$7` (SQLite: the bump above is already in the tables).
macro_rules! sqlite_level {
    () => {
        concat!(
            "WITH t AS (SELECT COALESCE(SUM(",
            available_units!("$7"),
            "), 0) AS available, ",
            "(SELECT COALESCE(MAX(low_stock_threshold), 0) FROM product_settings ",
            "WHERE sku = $2) AS threshold FROM batches b WHERE b.sku = $2), ",
            "level AS (SELECT t.available, t.threshold, ",
            "COALESCE((SELECT level FROM stock_levels WHERE sku = $2), 'in') AS announced, ",
            "CASE WHEN t.available = 0 THEN 'out' WHEN t.available < t.threshold THEN 'low' ",
            "ELSE 'in' END AS reached FROM t) "
        )
    };
}

/// The line, its read-model row, its outbox message, the product's version
/// bump, and any stock-level crossing (its message first, as it reads the
/// level announced before), in one call: `$1` orderid, `$2` sku, `$3`
/// batch id, `$4` qty, `$5` batch reference, `$6` message id, `$7` now,
/// `$8` the stock-level message's id.
const SQLITE_WRITE_LINE: &str = concat!(
    "INSERT INTO allocations (orderid, sku, batch_id, qty) VALUES ($1, $2, $3, $4); \
     INSERT INTO allocations_view (orderid, sku, batchref) VALUES ($1, $2, $5); \
     INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at) \
     VALUES ($6, $1, $2, $4, $5, $7); \
     UPDATE products SET version_number = version_number + 1 WHERE sku = $2; ",
    sqlite_level!(),
    "INSERT INTO outbox (message_id, channel, sku, available, threshold, created_at) \
     SELECT $8, CASE reached WHEN 'out' THEN 'stock_exhausted' ELSE 'low_stock' END, \
     $2, available, threshold, $7 FROM level \
     WHERE reached = 'out' AND announced <> 'out' OR reached = 'low' AND announced = 'in'; ",
    sqlite_level!(),
    "INSERT INTO stock_levels (sku, level) SELECT $2, reached FROM level \
     WHERE reached <> announced \
     ON CONFLICT (sku) DO UPDATE SET level = excluded.level"
);

pub(super) async fn sqlite_minimal(pool: &SqlitePool, line: &Line) -> Result<Outcome, sqlx::Error> {
    let now = unix_millis();
    let pick = sqlx::query_as(SQLITE_PICK_AND_BUMP)
        .bind(&line.sku)
        .bind(&line.orderid)
        .bind(line.qty)
        .bind(now);
    sqlite_pick_then_write(pool, line, pick, |batch_id, reference| {
        sqlx::query(SQLITE_WRITE_LINE)
            .bind(&line.orderid)
            .bind(&line.sku)
            .bind(batch_id)
            .bind(line.qty)
            .bind(reference)
            .bind(message_id())
            .bind(now)
            .bind(message_id())
    })
    .await
}

#[cfg(test)]
mod tests {
    use sqlx::AnyPool;

    use super::super::{RawTarget, RawVariant};
    use crate::database::{self, Databases};
    use crate::stats::Outcome;
    use crate::workload::{BatchSpec, Line};

    /// The rules the baseline must share with the service's `Allocate`,
    /// step by step on one product: a warehouse batch of 10 of which a
    /// live hold sets 8 aside, and a shipment of 10; low stock under 15.
    async fn follows_the_services_rules(url: &str) {
        // A tag of its own, as each harness run has: a database left by a
        // run that failed half-way does not stand in the way.
        let tag = format!("rawtest{:08x}", rand::random::<u32>());
        let mut databases = Databases::open(url, &tag).await.expect("server");
        let database = databases.create("minimal").await.expect("database");
        database::migrate(&database).await.expect("migrate");
        let batch = |reference: &str, eta| BatchSpec {
            reference: reference.to_owned(),
            sku: "LAMP".to_owned(),
            qty: 10,
            eta,
        };
        let batches = [batch("warehouse", None), batch("ship", Some("2030-01-01"))];
        database::seed(&database, &batches).await.expect("seed");
        let inspect = database::any_pool(&database.url).await.expect("pool");
        for statement in [
            "INSERT INTO product_settings (sku, backorder_limit, low_stock_threshold) \
             VALUES ('LAMP', 0, 15)",
            "INSERT INTO hold_parts (hold_id, sku, batch_id, qty, expires_at, state) \
             SELECT 'h1', 'LAMP', id, 8, 4000000000000, 'active' FROM batches \
             WHERE reference = 'warehouse'",
            "INSERT INTO backorders (sku, orderid, qty, number, state) \
             VALUES ('LAMP', 'waits', 1, 1, 'waiting')",
        ] {
            sqlx::query(statement)
                .execute(&inspect)
                .await
                .expect("set up");
        }
        let target = RawTarget::connect(RawVariant::Minimal, databases.backend, &database, 1)
            .await
            .expect("connect");
        let line = |orderid: &str, qty| Line {
            seq: 0,
            orderid: orderid.to_owned(),
            sku: "LAMP".to_owned(),
            qty,
            more_skus: [String::new(), String::new()],
        };
        // 2 free in the warehouse (the hold has 8): the shipment takes it,
        // and the 9 left are low.
        assert_eq!(target.allocate(&line("o1", 3)).await, Outcome::Allocated);
        assert_eq!(batch_of(&inspect, "o1").await, "ship");
        // Already allocated, already waiting, too big: no change.
        assert_eq!(target.allocate(&line("o1", 3)).await, Outcome::NotAllocated);
        assert_eq!(
            target.allocate(&line("waits", 1)).await,
            Outcome::NotAllocated
        );
        assert_eq!(
            target.allocate(&line("big", 8)).await,
            Outcome::NotAllocated
        );
        // Still low: no message; then none left: exhausted.
        assert_eq!(target.allocate(&line("o2", 7)).await, Outcome::Allocated);
        assert_eq!(target.allocate(&line("o3", 2)).await, Outcome::Allocated);
        assert_eq!(batch_of(&inspect, "o3").await, "warehouse");
        let messages: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT channel, available, threshold FROM outbox \
             WHERE channel <> 'line_allocated' ORDER BY id",
        )
        .fetch_all(&inspect)
        .await
        .expect("messages");
        assert_eq!(
            messages,
            [
                ("low_stock".to_owned(), 9, 15),
                ("stock_exhausted".to_owned(), 0, 15)
            ],
            "one message per crossing, with the figures after it"
        );
        let level: String = sqlx::query_scalar("SELECT level FROM stock_levels WHERE sku = 'LAMP'")
            .fetch_one(&inspect)
            .await
            .expect("level");
        assert_eq!(level, "out");
        target.close().await;
        inspect.close().await;
        databases.drop_all().await;
    }

    async fn batch_of(pool: &AnyPool, orderid: &str) -> String {
        sqlx::query_scalar(
            "SELECT b.reference FROM allocations a JOIN batches b ON b.id = a.batch_id \
             WHERE a.orderid = $1",
        )
        .bind(orderid)
        .fetch_one(pool)
        .await
        .expect("the line's batch")
    }

    #[tokio::test]
    async fn follows_the_services_rules_on_sqlite() {
        follows_the_services_rules("sqlite:").await;
    }

    /// PostgreSQL when `DATABASE_URL` names a server (CI sets it).
    #[tokio::test]
    async fn follows_the_services_rules_on_postgres() {
        if let Some(url) = test_support::shared_postgres() {
            follows_the_services_rules(&url).await;
        }
    }
}
