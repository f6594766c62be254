//! The lookups the service makes, named so that the query-plan tests check
//! these very statements against the indexes they need.

/// The units of batch `b` set aside by holds live at `$n` (unix
/// milliseconds): one range of the partial index `hold_parts_active`.
/// (`SUM` of BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode.)
///
/// The upper bound changes no answer (a hold lives at most a day from its
/// last placing or extending, `MAX_HOLD_TTL`; two days leave room for
/// clocks that differ), but it keeps PostgreSQL's cached plan: with an
/// open-ended `expires_at > $n` the generic plan expects a third of the
/// batch's expired parts, looks costly as they pile up, and every load is
/// planned again; a bounded range it expects to be narrow.
macro_rules! held_at {
    ($now:literal) => {
        concat!(
            "(SELECT CAST(COALESCE(SUM(h.qty), 0) AS BIGINT) FROM hold_parts h ",
            "WHERE h.batch_id = b.id AND h.state = 'active' AND h.expires_at > ",
            $now,
            " AND h.expires_at <= ",
            $now,
            " + 172800000) AS held_quantity"
        )
    };
}
pub(crate) use held_at;

/// A product (`$1`) with its settings and whether backorders wait, its
/// batches in creation order with what live holds hold of each at `$3`,
/// and the lines of its batches that `$lines` picks, one row per batch and
/// line. A product without batches still gives one row, with NULL batch
/// columns. The settings and stock level name `$1`, not the product row,
/// so each is looked up once per load, not once per row.
macro_rules! product_with_lines {
    ($lines:literal) => {
        concat!(
            "SELECT p.version_number, ",
            "COALESCE((SELECT s.backorder_limit FROM product_settings s ",
            "WHERE s.sku = $1), 0) AS backorder_limit, ",
            "COALESCE((SELECT s.low_stock_threshold FROM product_settings s ",
            "WHERE s.sku = $1), 0) AS low_stock_threshold, ",
            "(SELECT l.level FROM stock_levels l WHERE l.sku = $1) AS announced_level, ",
            "CASE WHEN EXISTS (SELECT 1 FROM backorders o ",
            "WHERE o.sku = $1 AND o.state = 'waiting') ",
            "THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END AS backorders_waiting, ",
            "b.reference, b.eta, ",
            "b.quantity_in - b.quantity_out AS quantity, ",
            "b.allocated_quantity, ",
            held_at!("$3"),
            ", a.orderid AS line_orderid, a.qty AS line_qty, a.state AS line_state ",
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

/// The lines of batch `$1` (of product `$2`), oldest first, each with the
/// parts it has on other batches: what shrinking a batch loads (a part it
/// takes off goes back beside its line's other parts).
pub const LINES_OF_BATCH: &str = "SELECT p.reference, a.orderid, a.qty \
     FROM batches b \
     JOIN allocations l ON l.batch_id = b.id AND l.state = 'allocated' \
     JOIN allocations a ON a.orderid = l.orderid AND a.sku = b.sku AND a.state = 'allocated' \
     JOIN batches p ON p.id = a.batch_id \
     WHERE b.reference = $1 AND b.sku = $2 \
     ORDER BY l.id";

/// The SKUs of order `$1`'s lines, whatever became of them, backorders
/// included.
pub const SKUS_OF_ORDER: &str = "SELECT sku FROM allocations WHERE orderid = $1 \
     UNION SELECT sku FROM backorders WHERE orderid = $1 ORDER BY sku";

/// Product `$1`'s waiting backorders: what a load reads when it has some
/// (one range of `backorders_waiting`).
pub const WAITING_BACKORDERS: &str = "SELECT orderid, qty, number FROM backorders \
     WHERE sku = $1 AND state = 'waiting' ORDER BY number";

/// Order `$1`'s backordered lines, waiting or cancelled, by SKU.
pub const BACKORDERS_OF_ORDER: &str =
    "SELECT sku, qty, state FROM backorders WHERE orderid = $1 ORDER BY sku";

/// Product `$1`'s settings: the defaults (0) for one without a row; no row
/// for an unknown product.
pub const SETTINGS_OF_PRODUCT: &str = "SELECT COALESCE(s.backorder_limit, 0) AS backorder_limit, \
     COALESCE(s.low_stock_threshold, 0) AS low_stock_threshold \
     FROM products p LEFT JOIN product_settings s ON s.sku = p.sku WHERE p.sku = $1";

/// The units of product `$1`'s waiting backorders.
pub const BACKORDERED_OF_PRODUCT: &str = "SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) AS units \
     FROM backorders WHERE sku = $1 AND state = 'waiting'";

/// Batch `$1`'s stock ledger, oldest first: one range of its primary key.
pub const MOVEMENTS_OF_BATCH: &str = "SELECT number, at, delta, qty_after, reason, note, source FROM stock_movements \
     WHERE reference = $1 ORDER BY number";

/// Whether incoming message `$1` was handled (`deliveries`' primary key).
pub const DELIVERY: &str = "SELECT 1 AS found FROM deliveries WHERE delivery = $1";

/// The SKU of the product that holds batch `$1`.
pub const SKU_OF_BATCH: &str = "SELECT sku FROM batches WHERE reference = $1";

/// An order's allocations, from the read model.
pub const ALLOCATIONS_OF_ORDER: &str =
    "SELECT sku, batchref FROM allocations_view WHERE orderid = $1 ORDER BY sku, batchref";

/// An order's lines, one row per part, from the write tables (what
/// `GET /orders/<orderid>` shows): found through `(orderid, sku,
/// batch_id)`, in its order, so a split line's parts come in the order
/// their batches were created.
pub const LINES_OF_ORDER: &str = "SELECT a.sku, b.reference AS batchref, a.qty, a.state \
     FROM allocations a JOIN batches b ON b.id = a.batch_id \
     WHERE a.orderid = $1 ORDER BY a.sku, a.batch_id";

/// A product's batches, from the write tables (they are the read model
/// of the product query).
pub const BATCHES_OF_PRODUCT: &str = concat!(
    "SELECT b.reference, b.eta, b.quantity_in - b.quantity_out AS quantity, ",
    "b.allocated_quantity, ",
    held_at!("$2"),
    " FROM batches b WHERE b.sku = $1 ORDER BY b.id"
);

/// The live hold parts of batch `$1` (of product `$2`) at `$3`: what
/// shrinking a batch loads with its lines. Unsorted: the index gives them
/// by expiry, and the few there are are put oldest first by `id` after.
pub const LIVE_HOLDS_OF_BATCH: &str = "SELECT h.id, h.hold_id, h.qty, h.expires_at \
     FROM batches b JOIN hold_parts h ON h.batch_id = b.id \
     WHERE b.reference = $1 AND b.sku = $2 AND h.state = 'active' AND h.expires_at > $3 \
     AND h.expires_at <= $3 + 172800000";

/// The active parts of hold `$1` on product `$2`, live or expired: what
/// extending, releasing or converting the hold loads.
pub const PARTS_OF_HOLD: &str = "SELECT b.reference, h.hold_id, h.qty, h.expires_at \
     FROM hold_parts h JOIN batches b ON b.id = h.batch_id \
     WHERE h.hold_id = $1 AND h.sku = $2 AND h.state = 'active' ORDER BY h.batch_id";

/// The SKUs hold `$1` was placed on, whatever became of it.
pub const SKUS_OF_HOLD: &str =
    "SELECT DISTINCT sku FROM hold_parts WHERE hold_id = $1 ORDER BY sku";

/// Every part of hold `$1`, for `GET /holds/<hold_id>`: by SKU, then batch.
pub const HOLD: &str = "SELECT h.sku, b.reference AS batchref, h.qty, h.expires_at, h.state \
     FROM hold_parts h JOIN batches b ON b.id = h.batch_id \
     WHERE h.hold_id = $1 ORDER BY h.sku, h.batch_id";

/// A relay's claim of a batch of its destination's (`$4`) outbox rows, the
/// oldest first, for a lease until `$1` (rows whose lease ended by `$2` are
/// free again), at most `$3`: a range of the `(destination, id)` index, so
/// the other destination's backlog costs nothing. SQLite runs one writer
/// at a time, so the plain statement is already exclusive.
pub const CLAIM_OUTBOX_SQLITE: &str = "UPDATE outbox SET claimed_until = $1 WHERE id IN (\
     SELECT id FROM outbox WHERE destination = $4 \
     AND (claimed_until IS NULL OR claimed_until <= $2) \
     ORDER BY id LIMIT $3) \
     RETURNING id, message_id, channel, orderid, sku, qty, batchref, available, threshold";

/// [`CLAIM_OUTBOX_SQLITE`] on PostgreSQL: `FOR UPDATE SKIP LOCKED` lets
/// relays of several instances claim side by side, each skipping the rows
/// another is claiming right now. `= ANY(ARRAY(...))` rather than
/// `IN (...)`: the ids are picked first and then updated through the
/// primary key. With `IN`, the planner may hash-join against a scan of the
/// whole table, whose size is mostly the dead rows the relay leaves behind
/// until vacuum: the claim would slow down as the outbox churns.
pub const CLAIM_OUTBOX_POSTGRES: &str = "UPDATE outbox SET claimed_until = $1 WHERE id = ANY(ARRAY(\
     SELECT id FROM outbox WHERE destination = $4 \
     AND (claimed_until IS NULL OR claimed_until <= $2) \
     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)) \
     RETURNING id, message_id, channel, orderid, sku, qty, batchref, available, threshold";

/// The transaction a PostgreSQL claim runs in, begun in one round trip
/// with how [`CLAIM_OUTBOX_POSTGRES`] must be planned: with an index that
/// gives the rows in `id` order, whatever the statistics say. The relay
/// deletes what it sent, so between two vacuums the table and its indexes
/// fill with dead rows while the statistics describe a small table, and
/// the planner picks a sequential or bitmap scan: each reads every dead row
/// again at every claim. An index scan visits each dead entry once, marks
/// it dead in the index, skips it from then on, and stops at the limit:
/// 0.2 against 2.3 ms for a bitmap scan with 21 000 dead rows
/// (docs/BENCHMARKS.md, "The relay's claim").
pub const BEGIN_CLAIM_POSTGRES: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
     SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off";
