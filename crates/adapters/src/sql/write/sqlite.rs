//! SQLite's writers: the version check and each kind of change as one call
//! of one or two statements, run in order inside the unit of work's
//! `BEGIN IMMEDIATE` transaction, which holds the database's write lock, so
//! nothing can change between them. A failed check returns at once; the
//! caller drops the transaction, which rolls back.
//!
//! Every writer reads its run's rows from the JSON array `$1` with
//! `json_each` (`$1` is the same argument in each statement of a call).
//! The rows a call returns are the ones a count counts (`Kind::counted`).

use domain::Sku;
use service_layer::ports::StoreError;
use sqlx::AnyConnection;

use super::{Kind, Plan};
use crate::sql::rows::{get, identifier};

/// Bumps each stored product from the version it was loaded at, and
/// inserts the new ones; returns the SKU of each product it wrote. A new
/// product that another commit inserted first is a duplicate key: a
/// conflict.
const VERSIONED: &str = r#"
UPDATE products SET version_number = c.new_version
FROM (SELECT value ->> 'sku' AS sku,
             value ->> 'stored_version' AS stored_version,
             value ->> 'new_version' AS new_version
      FROM json_each($1)) AS c
WHERE products.sku = c.sku AND products.version_number = c.stored_version
RETURNING sku;
INSERT INTO products (sku, version_number)
SELECT value ->> 'sku', value ->> 'new_version' FROM json_each($1)
WHERE value ->> 'stored_version' IS NULL
RETURNING sku"#;

/// New batches, in the order they were created: their ids order them.
const BATCHES_CREATED: &str = r#"
INSERT INTO batches (reference, sku, purchased_quantity, eta)
SELECT value ->> 'reference', value ->> 'sku', value ->> 'qty', value ->> 'eta'
FROM json_each($1) ORDER BY value ->> 'n'"#;

/// Lines allocated: each batch takes the sum of its new lines, then the
/// lines are inserted in the order they were allocated. A batch that is not
/// stored leaves its lines' `batch_id` NULL, which its NOT NULL refuses.
const LINES_ALLOCATED: &str = r#"
UPDATE batches SET allocated_quantity = allocated_quantity + t.qty
FROM (SELECT value ->> 'sku' AS sku, value ->> 'batchref' AS batchref,
             sum(value ->> 'qty') AS qty
      FROM json_each($1) GROUP BY 1, 2) AS t
WHERE batches.reference = t.batchref AND batches.sku = t.sku;
INSERT INTO allocations (orderid, sku, batch_id, qty)
SELECT r.orderid, r.sku,
       (SELECT id FROM batches b WHERE b.reference = r.batchref AND b.sku = r.sku),
       r.qty
FROM (SELECT value ->> 'n' AS n, value ->> 'sku' AS sku, value ->> 'orderid' AS orderid,
             value ->> 'batchref' AS batchref, value ->> 'qty' AS qty
      FROM json_each($1)) AS r
ORDER BY r.n"#;

/// Lines that left their batches (deallocated, or cancelled): the stored
/// lines say which batch and how much to give back, before they go.
const LINES_REMOVED: &str = r#"
UPDATE batches SET allocated_quantity = allocated_quantity - t.qty
FROM (SELECT a.batch_id, sum(a.qty) AS qty
      FROM allocations a
      JOIN (SELECT value ->> 'sku' AS sku, value ->> 'orderid' AS orderid
            FROM json_each($1)) AS r ON a.orderid = r.orderid AND a.sku = r.sku
      GROUP BY a.batch_id) AS t
WHERE batches.id = t.batch_id;
DELETE FROM allocations
WHERE (orderid, sku) IN (SELECT value ->> 'orderid', value ->> 'sku' FROM json_each($1))
RETURNING id"#;

const BATCH_QUANTITIES_CHANGED: &str = r#"
UPDATE batches SET purchased_quantity = r.qty
FROM (SELECT value ->> 'sku' AS sku, value ->> 'reference' AS reference,
             value ->> 'qty' AS qty
      FROM json_each($1)) AS r
WHERE batches.reference = r.reference AND batches.sku = r.sku
RETURNING id"#;

/// `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert's,
/// not a join's.
const VIEW_ROWS_SET: &str = r#"
INSERT INTO allocations_view (orderid, sku, batchref)
SELECT value ->> 'orderid', value ->> 'sku', value ->> 'batchref' FROM json_each($1)
WHERE true
ON CONFLICT (orderid, sku) DO UPDATE SET batchref = excluded.batchref"#;

const VIEW_ROWS_REMOVED: &str = r#"
DELETE FROM allocations_view
WHERE (orderid, sku) IN (SELECT value ->> 'orderid', value ->> 'sku' FROM json_each($1))"#;

/// Messages, in the order they were written: the relay sends them in id
/// order.
const OUTBOX_MESSAGES: &str = r#"
INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at)
SELECT value ->> 'message_id', value ->> 'orderid', value ->> 'sku', value ->> 'qty',
       value ->> 'batchref', value ->> 'created_at'
FROM json_each($1) ORDER BY value ->> 'n'"#;

fn writer(kind: Kind) -> &'static str {
    match kind {
        Kind::BatchesCreated => BATCHES_CREATED,
        Kind::LinesAllocated => LINES_ALLOCATED,
        Kind::LinesRemoved => LINES_REMOVED,
        Kind::BatchQuantitiesChanged => BATCH_QUANTITIES_CHANGED,
        Kind::ViewRowsSet => VIEW_ROWS_SET,
        Kind::ViewRowsRemoved => VIEW_ROWS_REMOVED,
        Kind::OutboxMessages => OUTBOX_MESSAGES,
    }
}

/// Writes `plan` inside the caller's transaction: the version check, then
/// one call per run.
pub(in crate::sql) async fn write(
    conn: &mut AnyConnection,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    if plan.is_empty() {
        return Ok(());
    }
    check_versions(conn, plan).await?;
    for run in &plan.runs {
        let written = sqlx::query(writer(run.kind))
            .bind(run.rows.json()?)
            .fetch_all(&mut *conn)
            .await
            .map_err(|error| plan.failure(error))?;
        if run.kind.counted() {
            plan.check_count(run.kind, run.rows.len(), written.len() as i64)?;
        }
    }
    Ok(())
}

/// The version check: a conflict names the first product (in SKU order)
/// that is not as loaded.
async fn check_versions(conn: &mut AnyConnection, plan: &Plan<'_>) -> Result<(), StoreError> {
    let versioned = sqlx::query(VERSIONED)
        .bind(plan.versions.json()?)
        .fetch_all(&mut *conn)
        .await
        .map_err(|error| plan.failure(error))?;
    if versioned.len() == plan.products.len() {
        return Ok(());
    }
    let versioned = versioned
        .iter()
        .map(|row| identifier(&get::<String>(row, "sku")?, Sku::parse))
        .collect::<Result<Vec<Sku>, StoreError>>()?;
    let stale = plan
        .products
        .iter()
        .find(|sku| !versioned.contains(sku))
        .or(plan.products.first());
    match stale {
        Some(&sku) => Err(StoreError::Conflict { sku: sku.clone() }),
        None => Ok(()),
    }
}
