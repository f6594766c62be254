//! SQLite's writers: the version check, then each kind of change as one or
//! two statements, all in one call inside the unit of work's `BEGIN
//! IMMEDIATE` transaction, which holds the database's write lock, so
//! nothing can change between them. A statement that fails fails the call;
//! the caller drops the transaction, which rolls back.
//!
//! Every writer reads its run's rows from a JSON array with `json_each`
//! (`{rows}`, the run's parameter), and the counted ones return a row per
//! row they wrote, tagged with the run's place (`{run}`; see
//! `Kind::counted`).

use std::sync::Arc;

use domain::Sku;
use service_layer::ports::StoreError;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::kept_texts::KeptTexts;
use super::{Kind, Plan};
use crate::sql::rows::{get, identifier, mismatch};

/// Bumps each stored product from the version it was loaded at, and
/// inserts the new ones; returns a row per product it wrote. A stored
/// product that is not at the version it was loaded at gets a NULL
/// version, which its NOT NULL refuses: the statement fails, and the call
/// writes nothing after it (see [`refused_version`]). A new product that
/// another commit inserted first is a duplicate key: a conflict.
const VERSIONED: &str = r#"
UPDATE products SET version_number =
    CASE WHEN products.version_number = c.stored_version THEN c.new_version END
FROM (SELECT value ->> 'sku' AS sku,
             value ->> 'stored_version' AS stored_version,
             value ->> 'new_version' AS new_version
      FROM json_each({rows}) WHERE value ->> 'stored_version' IS NOT NULL) AS c
WHERE products.sku = c.sku
RETURNING {run} AS run;
INSERT INTO products (sku, version_number)
SELECT value ->> 'sku', value ->> 'new_version' FROM json_each({rows})
WHERE value ->> 'stored_version' IS NULL
RETURNING {run} AS run"#;

/// The first product (in SKU order) not at the version it was loaded at,
/// or not stored at all: what a refused version check names.
const STALE: &str = r#"
SELECT c.value ->> 'sku' AS sku
FROM json_each($1) AS c
LEFT JOIN products p
    ON p.sku = c.value ->> 'sku' AND p.version_number = c.value ->> 'stored_version'
WHERE c.value ->> 'stored_version' IS NOT NULL AND p.sku IS NULL
ORDER BY 1 LIMIT 1"#;

/// New batches, in the order they were created: their ids order them.
const BATCHES_CREATED: &str = r#"
INSERT INTO batches (reference, sku, quantity_in, eta)
SELECT value ->> 'reference', value ->> 'sku', value ->> 'qty', value ->> 'eta'
FROM json_each({rows}) ORDER BY value ->> 'n'"#;

/// Lines (or parts of lines) allocated: each batch takes the sum of its
/// new units, then the lines are inserted in the order they were
/// allocated; a part of a line whose part is on that batch already joins
/// it (a reallocated part). A batch that is not stored leaves its lines'
/// `batch_id` NULL, which its NOT NULL refuses. `WHERE true`: see
/// [`VIEW_ROWS_SET`].
const LINES_ALLOCATED: &str = r#"
UPDATE batches SET allocated_quantity = allocated_quantity + t.qty
FROM (SELECT value ->> 'sku' AS sku, value ->> 'batchref' AS batchref,
             sum(value ->> 'qty') AS qty
      FROM json_each({rows}) GROUP BY 1, 2) AS t
WHERE batches.reference = t.batchref AND batches.sku = t.sku;
INSERT INTO allocations (orderid, sku, batch_id, qty)
SELECT r.orderid, r.sku,
       (SELECT id FROM batches b WHERE b.reference = r.batchref AND b.sku = r.sku),
       r.qty
FROM (SELECT value ->> 'n' AS n, value ->> 'sku' AS sku, value ->> 'orderid' AS orderid,
             value ->> 'batchref' AS batchref, value ->> 'qty' AS qty
      FROM json_each({rows})) AS r
WHERE true ORDER BY r.n
ON CONFLICT (orderid, sku, batch_id) DO UPDATE SET qty = qty + excluded.qty"#;

/// Lines (or parts of lines) that left their batches (deallocated, or
/// cancelled): the stored line on that batch says how much to give back,
/// before it goes.
const LINES_REMOVED: &str = r#"
UPDATE batches SET allocated_quantity = allocated_quantity - t.qty
FROM (SELECT a.batch_id, sum(a.qty) AS qty
      FROM (SELECT value ->> 'sku' AS sku, value ->> 'orderid' AS orderid,
                   value ->> 'batchref' AS batchref
            FROM json_each({rows})) AS r
      JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
      JOIN allocations a ON a.orderid = r.orderid AND a.sku = r.sku AND a.batch_id = b.id
          AND a.state = 'allocated'
      GROUP BY a.batch_id) AS t
WHERE batches.id = t.batch_id;
DELETE FROM allocations
WHERE state = 'allocated' AND (orderid, sku, batch_id) IN (
    SELECT r.value ->> 'orderid', r.value ->> 'sku', b.id
    FROM json_each({rows}) AS r
    JOIN batches b ON b.reference = r.value ->> 'batchref' AND b.sku = r.value ->> 'sku')
RETURNING {run} AS run"#;

/// A batch's new quantity: what it gains comes in, what it loses goes out.
const BATCH_QUANTITIES_CHANGED: &str = r#"
UPDATE batches
SET quantity_in = quantity_in + MAX(r.qty - (quantity_in - quantity_out), 0),
    quantity_out = quantity_out + MAX((quantity_in - quantity_out) - r.qty, 0)
FROM (SELECT value ->> 'sku' AS sku, value ->> 'reference' AS reference,
             value ->> 'qty' AS qty
      FROM json_each({rows})) AS r
WHERE batches.reference = r.reference AND batches.sku = r.sku
RETURNING {run} AS run"#;

/// `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert's,
/// not a join's.
const VIEW_ROWS_SET: &str = r#"
INSERT INTO allocations_view (orderid, sku, batchref)
SELECT value ->> 'orderid', value ->> 'sku', value ->> 'batchref' FROM json_each({rows})
WHERE true
ON CONFLICT (orderid, sku, batchref) DO NOTHING"#;

const VIEW_ROWS_REMOVED: &str = r#"
DELETE FROM allocations_view
WHERE (orderid, sku, batchref) IN (
    SELECT value ->> 'orderid', value ->> 'sku', value ->> 'batchref' FROM json_each({rows}))"#;

/// Messages, in the order they were written: the relay sends them in id
/// order.
const OUTBOX_MESSAGES: &str = r#"
INSERT INTO outbox (message_id, channel, destination, orderid, sku, qty, batchref, available,
                    threshold, created_at)
SELECT value ->> 'message_id', value ->> 'channel', value ->> 'destination', value ->> 'orderid',
       value ->> 'sku', value ->> 'qty', value ->> 'batchref', value ->> 'available',
       value ->> 'threshold', value ->> 'created_at'
FROM json_each({rows}) ORDER BY value ->> 'n'"#;

/// A product's stock level, in the order they changed: the last one stays.
/// `WHERE true`: see [`VIEW_ROWS_SET`].
const STOCK_LEVELS_CHANGED: &str = r#"
INSERT INTO stock_levels (sku, level)
SELECT value ->> 'sku', value ->> 'level' FROM json_each({rows}) WHERE true ORDER BY value ->> 'n'
ON CONFLICT (sku) DO UPDATE SET level = excluded.level"#;

/// Incoming messages handled: a key recorded twice breaks the primary key.
const DELIVERIES_RECORDED: &str = r#"
INSERT INTO deliveries (delivery, recorded_at)
SELECT value ->> 'delivery', value ->> 'created_at' FROM json_each({rows}) ORDER BY value ->> 'n'"#;

/// Allocated lines (parts) that ship or are cancelled: they leave their
/// batch's allocated total, and a shipped one its quantity too.
const LINES_CLOSED: &str = r#"
UPDATE batches SET allocated_quantity = allocated_quantity - t.qty,
    quantity_out = quantity_out + t.shipped
FROM (SELECT a.batch_id, sum(a.qty) AS qty,
             sum(CASE WHEN r.state = 'shipped' THEN a.qty ELSE 0 END) AS shipped
      FROM (SELECT value ->> 'sku' AS sku, value ->> 'orderid' AS orderid,
                   value ->> 'batchref' AS batchref, value ->> 'state' AS state
            FROM json_each({rows})) AS r
      JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
      JOIN allocations a ON a.orderid = r.orderid AND a.sku = r.sku AND a.batch_id = b.id
          AND a.state = 'allocated'
      GROUP BY a.batch_id) AS t
WHERE batches.id = t.batch_id;
UPDATE allocations SET state = r.state
FROM (SELECT value ->> 'sku' AS sku, value ->> 'orderid' AS orderid,
             value ->> 'state' AS state, b.id AS batch_id
      FROM json_each({rows})
      JOIN batches b ON b.reference = value ->> 'batchref' AND b.sku = value ->> 'sku') AS r
WHERE allocations.orderid = r.orderid AND allocations.sku = r.sku
AND allocations.batch_id = r.batch_id AND allocations.state = 'allocated'
RETURNING {run} AS run"#;

/// Movements of the stock ledger.
const STOCK_MOVED: &str = r#"
INSERT INTO stock_movements (reference, number, sku, at, delta, qty_after, reason, note, source)
SELECT value ->> 'reference', value ->> 'number', value ->> 'sku', value ->> 'at',
       value ->> 'delta', value ->> 'qty_after', value ->> 'reason', value ->> 'note',
       value ->> 'source'
FROM json_each({rows})"#;

/// Hold parts, inserted in the order they were placed. A batch that is not
/// stored leaves `batch_id` NULL, which its NOT NULL refuses.
const HOLD_PARTS_PLACED: &str = r#"
INSERT INTO hold_parts (hold_id, sku, batch_id, qty, expires_at)
SELECT value ->> 'hold_id', value ->> 'sku',
       (SELECT id FROM batches b
        WHERE b.reference = value ->> 'batchref' AND b.sku = value ->> 'sku'),
       value ->> 'qty', value ->> 'expires_at'
FROM json_each({rows}) ORDER BY value ->> 'n'"#;

const HOLD_PARTS_EXTENDED: &str = r#"
UPDATE hold_parts SET expires_at = r.expires_at
FROM (SELECT value ->> 'hold_id' AS hold_id, value ->> 'sku' AS sku,
             value ->> 'expires_at' AS expires_at
      FROM json_each({rows})) AS r
WHERE hold_parts.hold_id = r.hold_id AND hold_parts.sku = r.sku
AND hold_parts.state = 'active'"#;

/// Active parts that end: released or converted, as the row says.
const HOLD_PARTS_ENDED: &str = r#"
UPDATE hold_parts SET state = r.state
FROM (SELECT value ->> 'hold_id' AS hold_id, value ->> 'sku' AS sku,
             value ->> 'state' AS state, b.id AS batch_id
      FROM json_each({rows})
      JOIN batches b ON b.reference = value ->> 'batchref' AND b.sku = value ->> 'sku') AS r
WHERE hold_parts.hold_id = r.hold_id AND hold_parts.sku = r.sku
AND hold_parts.batch_id = r.batch_id AND hold_parts.state = 'active'
RETURNING {run} AS run"#;

/// Backorders placed, waiting in the order of their numbers. A cancelled
/// order's line placed again waits anew. `WHERE true`: see
/// [`VIEW_ROWS_SET`].
const BACKORDERS_PLACED: &str = r#"
INSERT INTO backorders (sku, orderid, qty, number, state)
SELECT value ->> 'sku', value ->> 'orderid', value ->> 'qty', value ->> 'number', 'waiting'
FROM json_each({rows}) WHERE true
ON CONFLICT (sku, orderid) DO UPDATE
SET qty = excluded.qty, number = excluded.number, state = 'waiting'"#;

/// Waiting backorders that end: removed (filled, or deallocated) or
/// cancelled, as the row says.
const BACKORDERS_ENDED: &str = r#"
DELETE FROM backorders
WHERE state = 'waiting' AND (sku, orderid) IN (
    SELECT value ->> 'sku', value ->> 'orderid' FROM json_each({rows})
    WHERE value ->> 'state' = 'removed');
UPDATE backorders SET state = 'cancelled'
WHERE state = 'waiting' AND (sku, orderid) IN (
    SELECT value ->> 'sku', value ->> 'orderid' FROM json_each({rows})
    WHERE value ->> 'state' = 'cancelled')"#;

/// A SKU's settings, in the order they changed: the last one stays.
const SETTINGS_CHANGED: &str = r#"
INSERT INTO product_settings (sku, backorder_limit, low_stock_threshold)
SELECT value ->> 'sku', value ->> 'backorder_limit', value ->> 'low_stock_threshold'
FROM json_each({rows}) WHERE true ORDER BY value ->> 'n'
ON CONFLICT (sku) DO UPDATE
SET backorder_limit = excluded.backorder_limit,
    low_stock_threshold = excluded.low_stock_threshold"#;

fn writer(kind: Kind) -> &'static str {
    match kind {
        Kind::BatchesCreated => BATCHES_CREATED,
        Kind::LinesAllocated => LINES_ALLOCATED,
        Kind::LinesRemoved => LINES_REMOVED,
        Kind::BatchQuantitiesChanged => BATCH_QUANTITIES_CHANGED,
        Kind::ViewRowsSet => VIEW_ROWS_SET,
        Kind::ViewRowsRemoved => VIEW_ROWS_REMOVED,
        Kind::OutboxMessages => OUTBOX_MESSAGES,
        Kind::LinesClosed => LINES_CLOSED,
        Kind::HoldPartsPlaced => HOLD_PARTS_PLACED,
        Kind::HoldPartsExtended => HOLD_PARTS_EXTENDED,
        Kind::HoldPartsEnded => HOLD_PARTS_ENDED,
        Kind::StockMoved => STOCK_MOVED,
        Kind::BackordersPlaced => BACKORDERS_PLACED,
        Kind::BackordersEnded => BACKORDERS_ENDED,
        Kind::SettingsChanged => SETTINGS_CHANGED,
        Kind::StockLevelsChanged => STOCK_LEVELS_CHANGED,
        Kind::DeliveriesRecorded => DELIVERIES_RECORDED,
    }
}

/// Writes `plan` inside the caller's transaction in one call: the version
/// check, then every run's statements, each reading its own JSON array
/// (`$1` the versions, `$2` the first run's rows, and so on). Every call is
/// a hop to sqlx's SQLite thread and back, which cost a lone allocation
/// more than its statements did when each run made its own. Rows the call
/// returns are tagged with the statement's place (`run`): the version
/// check's `-1`, a counted writer's its run's.
pub(in crate::sql) async fn write(
    conn: &mut AnyConnection,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    if plan.is_empty() {
        return Ok(());
    }
    let query = plan.runs.iter().try_fold(
        sqlx::query(AssertSqlSafe(text_of(plan))).bind(plan.versions.json()?),
        |query, run| Ok::<_, StoreError>(query.bind(run.rows.json()?)),
    )?;
    let written = match query.fetch_all(&mut *conn).await {
        Ok(written) => written,
        Err(error) if refused_version(&error) => return Err(stale(conn, plan).await),
        Err(error) => return Err(plan.failure(error)),
    };
    let mut versioned = 0;
    let mut counted = vec![0_i64; plan.runs.len()];
    for row in &written {
        let run = get::<i64>(row, "run")?;
        match usize::try_from(run)
            .ok()
            .and_then(|run| counted.get_mut(run))
        {
            Some(count) => *count += 1,
            None => versioned += 1,
        }
    }
    if versioned != plan.products.len() {
        return Err(stale(conn, plan).await);
    }
    for (run, written) in plan.runs.iter().zip(counted) {
        if run.kind.counted() {
            plan.check_count(run.kind, run.rows.len(), written)?;
        }
    }
    Ok(())
}

/// Each sequence of run kinds' call text.
static TEXTS: KeptTexts<Vec<Kind>, Arc<str>> = KeptTexts::new();

/// The call's text: the version check, then each run's writer, each
/// reading its own parameter and tagging the rows it returns with its
/// place. It depends only on the runs' kinds, in order.
fn text_of(plan: &Plan<'_>) -> Arc<str> {
    let kinds = plan.runs.iter().map(|run| run.kind).collect();
    TEXTS.get_or_compose(kinds, || {
        let mut text = VERSIONED.replace("{rows}", "$1").replace("{run}", "-1");
        for (place, run) in plan.runs.iter().enumerate() {
            text.push(';');
            text.push_str(
                &writer(run.kind)
                    .replace("{rows}", &format!("${}", place + 2))
                    .replace("{run}", &place.to_string()),
            );
        }
        text.into()
    })
}

/// Whether the version check refused a product (its NULL version, see
/// [`VERSIONED`]).
fn refused_version(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| {
        db.message()
            .starts_with("NOT NULL constraint failed: products.version_number")
    })
}

/// The conflict of a refused version check, naming the first product that
/// is not as loaded. (SQLite rolled back the failed statement only; the
/// caller drops the transaction.)
async fn stale(conn: &mut AnyConnection, plan: &Plan<'_>) -> StoreError {
    let named = async {
        let stale = sqlx::query(STALE)
            .bind(plan.versions.json()?)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::backend)?;
        stale
            .map(|row| identifier(&get::<String>(&row, "sku")?, Sku::parse))
            .transpose()
    };
    match named.await {
        Ok(Some(sku)) => StoreError::Conflict { sku },
        Ok(None) => match plan.blamed() {
            Some(sku) => StoreError::Conflict { sku: sku.clone() },
            None => mismatch("a version check refused, with no product to blame".to_owned()),
        },
        Err(error) => error,
    }
}
