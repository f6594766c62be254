//! PostgreSQL's writers: the version check and each kind of change as
//! data-modifying CTEs, composed into as few statements as a commit allows.
//!
//! A statement opens with `versioned`, the version check, and every writer
//! joins its rows to it: a product that is not as loaded writes nothing.
//! Runs join the statement in order until one would touch a table an
//! earlier CTE of the statement wrote (CTEs of one statement share one
//! snapshot: they cannot see each other's writes, and must not update a row
//! twice); that run starts the next statement. A lone allocation, or a group
//! of allocations of one product or several, is thus one statement, atomic
//! on its own: no `BEGIN`/`COMMIT`. Several statements, or a writer whose
//! rows are counted (`Kind::counted`), run inside a transaction. How a
//! statement's text is put together, once per shape: `statement`.

mod statement;

use service_layer::ports::StoreError;
use sqlx::{AnyConnection, Connection as _};

use super::{Kind, Plan};
use crate::sql::Dialect;
use statement::compose;

/// The version check of a commit that changes one stored product: bumps it
/// from the version it was loaded at, or returns no row. A concurrent commit
/// of the product makes it wait, then find the version moved on.
const VERSIONED_ONE: &str = r#"
versioned AS (
    UPDATE products p SET version_number = r.new_version
    FROM {rows}
    WHERE p.sku = r.sku AND p.version_number = r.stored_version
    RETURNING p.sku)"#;

/// The version check of several products (or new ones), all or nothing:
/// `locked` locks the stored ones in SKU order, as every locking writer
/// does (so no deadlock), and in READ COMMITTED sees their latest committed
/// versions; only if every one is as loaded are they bumped and the new
/// ones inserted. A new product that another commit inserted first is a
/// duplicate key: a conflict.
const VERSIONED_ALL: &str = r#"
checked AS (SELECT * FROM {rows}),
locked AS (
    SELECT sku, version_number FROM products
    WHERE sku IN (SELECT sku FROM checked WHERE stored_version IS NOT NULL)
    ORDER BY sku FOR UPDATE),
all_current AS (
    SELECT count(*) = (SELECT count(stored_version) FROM checked) AS yes
    FROM locked JOIN checked c ON c.sku = locked.sku AND c.stored_version = locked.version_number),
bumped AS (
    UPDATE products p SET version_number = c.new_version FROM checked c
    WHERE p.sku = c.sku AND p.version_number = c.stored_version
    AND (SELECT yes FROM all_current)
    RETURNING p.sku),
created AS (
    INSERT INTO products (sku, version_number)
    SELECT sku, new_version FROM checked
    WHERE stored_version IS NULL AND (SELECT yes FROM all_current)
    RETURNING sku),
versioned AS (SELECT sku FROM bumped UNION ALL SELECT sku FROM created)"#;

/// The first stored product that is not as loaded, with [`VERSIONED_ALL`].
const STALE_OF_ALL: &str = r#"(
    SELECT c.sku FROM checked c
    LEFT JOIN locked l ON l.sku = c.sku AND l.version_number = c.stored_version
    WHERE c.stored_version IS NOT NULL AND l.sku IS NULL
    ORDER BY c.sku LIMIT 1)"#;

/// In the statements after the first, inside the transaction: the products
/// the first one checked.
const VERSIONED_ALREADY: &str = r#"
versioned AS (SELECT r.sku FROM {rows})"#;

/// New batches, in the order they were created: their ids order them.
const BATCHES_CREATED: &str = r#"
batches_created AS (
    INSERT INTO batches (reference, sku, quantity_in, eta)
    SELECT r.reference, r.sku, r.qty, r.eta
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ORDER BY r.n)"#;

/// Lines (or parts of lines) allocated, each with its batch's id, inserted
/// in the order they were allocated; a part of a line whose part is on
/// that batch already joins it (a reallocated part). Rows of one part are
/// summed first: one statement may not update a row twice. Then each batch
/// takes the sum of its new units (as `LINES_REMOVED` gives them back). A
/// batch that is not stored gives its lines no `batch_id`, which its NOT
/// NULL refuses, failing the whole statement.
const LINES_ALLOCATED: &str = r#"
lines_allocated AS (
    SELECT r.orderid, r.sku, b.id AS batch_id, sum(r.qty)::bigint AS qty, min(r.n) AS n
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    LEFT JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
    GROUP BY r.orderid, r.sku, b.id),
lines_allocated_inserted AS (
    INSERT INTO allocations AS a (orderid, sku, batch_id, qty)
    SELECT orderid, sku, batch_id, qty FROM lines_allocated ORDER BY n
    ON CONFLICT (orderid, sku, batch_id) DO UPDATE SET qty = a.qty + excluded.qty),
lines_allocated_to AS (
    UPDATE batches b SET allocated_quantity = b.allocated_quantity + t.qty
    FROM (SELECT batch_id, sum(qty)::bigint AS qty FROM lines_allocated GROUP BY batch_id) t
    WHERE b.id = t.batch_id)"#;

/// Lines (or parts of lines) that left their batches (deallocated, or
/// cancelled): the stored line on that batch says how much to give back.
const LINES_REMOVED: &str = r#"
lines_removed AS (
    DELETE FROM allocations a
    USING {rows} JOIN versioned v ON v.sku = r.sku
    JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
    WHERE a.orderid = r.orderid AND a.sku = r.sku AND a.batch_id = b.id
    AND a.state = 'allocated'
    RETURNING a.batch_id, a.qty),
lines_removed_from AS (
    UPDATE batches b SET allocated_quantity = b.allocated_quantity - t.qty
    FROM (SELECT batch_id, sum(qty)::bigint AS qty FROM lines_removed GROUP BY batch_id) t
    WHERE b.id = t.batch_id)"#;

/// A batch's new quantity: what it gains comes in, what it loses goes out.
const BATCH_QUANTITIES_CHANGED: &str = r#"
batch_quantities_changed AS (
    UPDATE batches b
    SET quantity_in = b.quantity_in + GREATEST(r.qty - (b.quantity_in - b.quantity_out), 0),
        quantity_out = b.quantity_out + GREATEST((b.quantity_in - b.quantity_out) - r.qty, 0)
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    WHERE b.reference = r.reference AND b.sku = r.sku
    RETURNING b.id)"#;

const VIEW_ROWS_SET: &str = r#"
view_rows_set AS (
    INSERT INTO allocations_view (orderid, sku, batchref)
    SELECT r.orderid, r.sku, r.batchref
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ON CONFLICT (orderid, sku, batchref) DO NOTHING)"#;

const VIEW_ROWS_REMOVED: &str = r#"
view_rows_removed AS (
    DELETE FROM allocations_view a
    USING {rows} JOIN versioned v ON v.sku = r.sku
    WHERE a.orderid = r.orderid AND a.sku = r.sku AND a.batchref = r.batchref)"#;

/// Messages, in the order they were written: the relay sends them in id
/// order.
const OUTBOX_MESSAGES: &str = r#"
outbox_messages AS (
    INSERT INTO outbox (message_id, channel, destination, orderid, sku, qty, batchref, available,
                        threshold, created_at)
    SELECT r.message_id, r.channel, r.destination, r.orderid, r.sku, r.qty, r.batchref,
           r.available, r.threshold, r.created_at
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ORDER BY r.n)"#;

/// A product's stock level: the last one of each SKU in the run.
const STOCK_LEVELS_CHANGED: &str = r#"
stock_levels_changed AS (
    INSERT INTO stock_levels AS l (sku, level)
    SELECT DISTINCT ON (r.sku) r.sku, r.level
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ORDER BY r.sku, r.n DESC
    ON CONFLICT (sku) DO UPDATE SET level = excluded.level)"#;

/// Incoming messages handled: a key recorded twice breaks the primary key,
/// a conflict (another instance ran the same message).
const DELIVERIES_RECORDED: &str = r#"
deliveries_recorded AS (
    INSERT INTO deliveries (delivery, recorded_at)
    SELECT r.delivery, r.created_at
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ORDER BY r.n)"#;

/// Allocated lines (parts) that ship or are cancelled: they leave their
/// batch's allocated total, and a shipped one its quantity too.
const LINES_CLOSED: &str = r#"
lines_closed AS (
    UPDATE allocations a SET state = r.state
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
    WHERE a.orderid = r.orderid AND a.sku = r.sku AND a.batch_id = b.id
    AND a.state = 'allocated'
    RETURNING a.batch_id, a.qty, r.state),
lines_closed_from AS (
    UPDATE batches b SET allocated_quantity = b.allocated_quantity - t.qty,
        quantity_out = b.quantity_out + t.shipped
    FROM (SELECT batch_id, sum(qty)::bigint AS qty,
                 sum(CASE WHEN state = 'shipped' THEN qty ELSE 0 END)::bigint AS shipped
          FROM lines_closed GROUP BY batch_id) t
    WHERE b.id = t.batch_id)"#;

/// Movements of the stock ledger. Keyed by batch reference, not id: a
/// batch created in the same statement is not visible to it.
const STOCK_MOVED: &str = r#"
stock_moved AS (
    INSERT INTO stock_movements (reference, number, sku, at, delta, qty_after, reason, note, source)
    SELECT r.reference, r.number, r.sku, r.at, r.delta, r.qty_after, r.reason, r.note, r.source
    FROM {rows} JOIN versioned v ON v.sku = r.sku)"#;

/// Hold parts, inserted in the order they were placed.
const HOLD_PARTS_PLACED: &str = r#"
hold_parts_placed AS (
    INSERT INTO hold_parts (hold_id, sku, batch_id, qty, expires_at)
    SELECT r.hold_id, r.sku, b.id, r.qty, r.expires_at
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    LEFT JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
    ORDER BY r.n)"#;

const HOLD_PARTS_EXTENDED: &str = r#"
hold_parts_extended AS (
    UPDATE hold_parts h SET expires_at = r.expires_at
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    WHERE h.hold_id = r.hold_id AND h.sku = r.sku AND h.state = 'active')"#;

/// Active parts that end: released or converted, as the row says.
const HOLD_PARTS_ENDED: &str = r#"
hold_parts_ended AS (
    UPDATE hold_parts h SET state = r.state
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    JOIN batches b ON b.reference = r.batchref AND b.sku = r.sku
    WHERE h.hold_id = r.hold_id AND h.sku = r.sku AND h.batch_id = b.id
    AND h.state = 'active'
    RETURNING h.id)"#;

/// Backorders placed, waiting in the order of their numbers. A cancelled
/// order's line placed again waits anew.
const BACKORDERS_PLACED: &str = r#"
backorders_placed AS (
    INSERT INTO backorders AS o (sku, orderid, qty, number, state)
    SELECT r.sku, r.orderid, r.qty, r.number, 'waiting'
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ON CONFLICT (sku, orderid) DO UPDATE
    SET qty = excluded.qty, number = excluded.number, state = 'waiting')"#;

/// Waiting backorders that end: removed (filled, or deallocated) or
/// cancelled, as the row says.
const BACKORDERS_ENDED: &str = r#"
backorders_ended AS (
    SELECT r.sku, r.orderid, r.state FROM {rows} JOIN versioned v ON v.sku = r.sku),
backorders_removed AS (
    DELETE FROM backorders o USING backorders_ended e
    WHERE o.sku = e.sku AND o.orderid = e.orderid AND o.state = 'waiting'
    AND e.state = 'removed'),
backorders_cancelled AS (
    UPDATE backorders o SET state = 'cancelled' FROM backorders_ended e
    WHERE o.sku = e.sku AND o.orderid = e.orderid AND o.state = 'waiting'
    AND e.state = 'cancelled')"#;

/// A SKU's settings: the last change of each SKU in the run (one statement
/// may not update a row twice).
const SETTINGS_CHANGED: &str = r#"
settings_changed AS (
    INSERT INTO product_settings AS s (sku, backorder_limit, low_stock_threshold)
    SELECT DISTINCT ON (r.sku) r.sku, r.backorder_limit, r.low_stock_threshold
    FROM {rows} JOIN versioned v ON v.sku = r.sku
    ORDER BY r.sku, r.n DESC
    ON CONFLICT (sku) DO UPDATE
    SET backorder_limit = excluded.backorder_limit,
        low_stock_threshold = excluded.low_stock_threshold)"#;

/// Each kind's writer: CTEs reading the run's rows from `{rows}` (aliased
/// `r`), the first of them named after the kind (what a count counts).
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

/// A column a writer reads: its name (the row's field) and its SQL type.
type Column = (&'static str, &'static str);

/// The columns each writer reads, with their types.
fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::BatchesCreated => &[
            ("n", "bigint"),
            ("sku", "text"),
            ("reference", "text"),
            ("qty", "bigint"),
            ("eta", "text"),
        ],
        Kind::LinesAllocated => &[
            ("n", "bigint"),
            ("sku", "text"),
            ("orderid", "text"),
            ("batchref", "text"),
            ("qty", "bigint"),
        ],
        Kind::LinesRemoved | Kind::ViewRowsRemoved | Kind::ViewRowsSet => {
            &[("sku", "text"), ("orderid", "text"), ("batchref", "text")]
        }
        Kind::BatchQuantitiesChanged => {
            &[("sku", "text"), ("reference", "text"), ("qty", "bigint")]
        }
        Kind::OutboxMessages => &[
            ("n", "bigint"),
            ("message_id", "text"),
            ("channel", "text"),
            ("destination", "text"),
            ("sku", "text"),
            ("orderid", "text"),
            ("batchref", "text"),
            ("qty", "bigint"),
            ("available", "bigint"),
            ("threshold", "bigint"),
            ("created_at", "bigint"),
        ],
        Kind::LinesClosed => &[
            ("sku", "text"),
            ("orderid", "text"),
            ("batchref", "text"),
            ("state", "text"),
        ],
        Kind::HoldPartsPlaced => &[
            ("n", "bigint"),
            ("hold_id", "text"),
            ("sku", "text"),
            ("batchref", "text"),
            ("qty", "bigint"),
            ("expires_at", "bigint"),
        ],
        Kind::HoldPartsExtended => &[
            ("hold_id", "text"),
            ("sku", "text"),
            ("expires_at", "bigint"),
        ],
        Kind::HoldPartsEnded => &[
            ("hold_id", "text"),
            ("sku", "text"),
            ("batchref", "text"),
            ("state", "text"),
        ],
        Kind::StockMoved => &[
            ("reference", "text"),
            ("number", "bigint"),
            ("sku", "text"),
            ("at", "bigint"),
            ("delta", "bigint"),
            ("qty_after", "bigint"),
            ("reason", "text"),
            ("note", "text"),
            ("source", "text"),
        ],
        Kind::BackordersPlaced => &[
            ("sku", "text"),
            ("orderid", "text"),
            ("qty", "bigint"),
            ("number", "bigint"),
        ],
        Kind::BackordersEnded => &[("sku", "text"), ("orderid", "text"), ("state", "text")],
        Kind::StockLevelsChanged => &[("n", "bigint"), ("sku", "text"), ("level", "text")],
        Kind::DeliveriesRecorded => &[
            ("n", "bigint"),
            ("sku", "text"),
            ("delivery", "text"),
            ("created_at", "bigint"),
        ],
        Kind::SettingsChanged => &[
            ("n", "bigint"),
            ("sku", "text"),
            ("backorder_limit", "bigint"),
            ("low_stock_threshold", "bigint"),
        ],
    }
}

/// The version check's columns.
const VERSION_COLUMNS: &[Column] = &[
    ("sku", "text"),
    ("stored_version", "bigint"),
    ("new_version", "bigint"),
];

/// Up to this many rows, a writer reads them from a VALUES list of
/// parameters: the planner then knows how many rows come, and nothing is
/// parsed (a JSON array costs its parsing and a set-returning function per
/// writer, which doubled the server's time for a lone allocation). More
/// rows come as one JSON array: a text and a parameter count that stay the
/// same whatever the size, so that large runs neither fill the statement
/// cache nor reach PostgreSQL's limit on parameters.
const VALUES_UP_TO: usize = 32;

/// Writes `plan` on a connection outside any transaction (the optimistic
/// unit of work): in one statement on its own when it can, else in a
/// transaction of its own.
pub(in crate::sql) async fn write_on_its_own(
    conn: &mut AnyConnection,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    let statements = compose(plan)?;
    let atomic_alone = statements.len() <= 1
        && statements
            .iter()
            .all(|statement| statement.counted.is_empty());
    if atomic_alone {
        for statement in statements {
            statement.run(conn, plan).await?;
        }
        return Ok(());
    }
    let mut transaction = conn
        .begin_with(Dialect::Postgres.begin_statement())
        .await
        .map_err(StoreError::backend)?;
    for statement in statements {
        statement.run(&mut transaction, plan).await?;
    }
    transaction.commit().await.map_err(StoreError::backend)
}

/// Writes `plan` inside the caller's transaction (a locking unit of work).
pub(in crate::sql) async fn write_in_transaction(
    conn: &mut AnyConnection,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    for statement in compose(plan)? {
        statement.run(conn, plan).await?;
    }
    Ok(())
}
