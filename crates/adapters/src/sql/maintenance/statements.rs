//! The SQL of the rebuild and of the check, the same on both databases.
//!
//! The read model shows every part of a line that is allocated or shipped
//! (`state <> 'cancelled'`): a cancelled line was never where it is now.

/// The rebuild's statements for one product, `$1` its SKU. They reach the
/// product's lines through its batches (`batches (sku, id)`, then
/// `allocations (batch_id, id)`) and the read model by its primary key, so
/// each product costs what it holds, not what the database holds.
pub(super) mod rebuild {
    /// Takes the product as a command's commit does: on PostgreSQL the row
    /// lock makes concurrent commits of this product wait, and the new
    /// version fails their version check, so the bus runs them again on
    /// what this transaction leaves. (SQLite serialises writers anyway.)
    pub const TAKE_PRODUCT: &str =
        "UPDATE products SET version_number = version_number + 1 WHERE sku = $1";

    /// Rows of the product's lines that show a batch the line has no part
    /// on.
    pub const REMOVE_WRONG_ROWS: &str = "DELETE FROM allocations_view \
         WHERE sku = $1 AND orderid IN (\
         SELECT a.orderid FROM batches b JOIN allocations a ON a.batch_id = b.id WHERE b.sku = $1) \
         AND NOT EXISTS (\
         SELECT 1 FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.orderid = allocations_view.orderid AND a.sku = allocations_view.sku \
         AND b.reference = allocations_view.batchref AND a.state <> 'cancelled')";

    /// A row for every part of the product's lines that has none.
    pub const ADD_MISSING_ROWS: &str = "INSERT INTO allocations_view (orderid, sku, batchref) \
         SELECT a.orderid, a.sku, b.reference \
         FROM batches b JOIN allocations a ON a.batch_id = b.id \
         WHERE b.sku = $1 AND a.state <> 'cancelled' AND NOT EXISTS (\
         SELECT 1 FROM allocations_view v \
         WHERE v.orderid = a.orderid AND v.sku = a.sku AND v.batchref = b.reference)";

    /// Rows with no line behind them, for every product at once: one pass
    /// over the read model, each row checked by `allocations (orderid, sku)`.
    pub const REMOVE_ORPHANS: &str = "DELETE FROM allocations_view WHERE NOT EXISTS (\
         SELECT 1 FROM allocations a \
         WHERE a.orderid = allocations_view.orderid AND a.sku = allocations_view.sku \
         AND a.state <> 'cancelled')";
}

/// The check's queries, each run once over the whole snapshot.
pub(super) mod check {
    pub const TOTALS: &str = "SELECT \
         (SELECT COUNT(*) FROM products) AS products, \
         (SELECT COUNT(*) FROM batches) AS batches, \
         (SELECT COUNT(*) FROM allocations) AS allocations, \
         (SELECT COUNT(*) FROM allocations_view) AS view_rows";

    /// Parts of lines with no row for their batch, where no row of the
    /// line shows a wrong batch either (that is a `WRONG_BATCH`).
    pub const MISSING_ROWS: &str = "SELECT a.orderid, a.sku, b.reference AS batchref \
         FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.state <> 'cancelled' AND NOT EXISTS (\
         SELECT 1 FROM allocations_view v \
         WHERE v.orderid = a.orderid AND v.sku = a.sku AND v.batchref = b.reference) \
         AND NOT EXISTS (\
         SELECT 1 FROM allocations_view v WHERE v.orderid = a.orderid AND v.sku = a.sku \
         AND NOT EXISTS (\
         SELECT 1 FROM allocations a2 JOIN batches b2 ON b2.id = a2.batch_id \
         WHERE a2.orderid = v.orderid AND a2.sku = v.sku AND b2.reference = v.batchref \
         AND a2.state <> 'cancelled')) \
         ORDER BY a.sku, a.orderid, b.reference";

    /// Rows of lines that are not allocated at all.
    pub const EXTRA_ROWS: &str = "SELECT v.orderid, v.sku, v.batchref \
         FROM allocations_view v \
         WHERE NOT EXISTS (\
         SELECT 1 FROM allocations a WHERE a.orderid = v.orderid AND a.sku = v.sku \
         AND a.state <> 'cancelled') \
         ORDER BY v.sku, v.orderid, v.batchref";

    /// Rows of allocated lines that show a batch the line has no part on,
    /// with the batch of a part that no row shows (or else the first).
    pub const WRONG_BATCH: &str = "SELECT v.orderid, v.sku, v.batchref AS shown, (\
         SELECT b.reference FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.orderid = v.orderid AND a.sku = v.sku AND a.state <> 'cancelled' \
         ORDER BY CASE WHEN EXISTS (\
         SELECT 1 FROM allocations_view w \
         WHERE w.orderid = a.orderid AND w.sku = a.sku AND w.batchref = b.reference) \
         THEN 1 ELSE 0 END, a.batch_id LIMIT 1) AS allocated \
         FROM allocations_view v \
         WHERE EXISTS (SELECT 1 FROM allocations a WHERE a.orderid = v.orderid AND a.sku = v.sku \
         AND a.state <> 'cancelled') \
         AND NOT EXISTS (\
         SELECT 1 FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.orderid = v.orderid AND a.sku = v.sku AND b.reference = v.batchref \
         AND a.state <> 'cancelled') \
         ORDER BY v.sku, v.orderid, v.batchref";

    /// `SUM` of BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode.
    pub const ALLOCATED_TOTALS: &str = "SELECT b.reference, b.sku, b.allocated_quantity, \
         CAST(COALESCE(SUM(a.qty), 0) AS BIGINT) AS lines_total \
         FROM batches b LEFT JOIN allocations a ON a.batch_id = b.id AND a.state = 'allocated' \
         GROUP BY b.id, b.reference, b.sku, b.allocated_quantity \
         HAVING b.allocated_quantity <> COALESCE(SUM(a.qty), 0) \
         ORDER BY b.id";

    /// Batches whose quantity is not the sum of their ledger's movements.
    pub const LEDGER_DRIFT: &str = "SELECT b.reference, b.sku, \
         b.quantity_in - b.quantity_out AS quantity, \
         CAST(COALESCE(m.total, 0) AS BIGINT) AS ledger_total \
         FROM batches b LEFT JOIN (\
         SELECT reference, SUM(delta) AS total FROM stock_movements GROUP BY reference) m \
         ON m.reference = b.reference \
         WHERE b.quantity_in - b.quantity_out <> COALESCE(m.total, 0) \
         ORDER BY b.id";

    /// Batches with more allocated and held by holds live at `$1` than
    /// they have.
    pub const OVER_ALLOCATED: &str = concat!(
        "SELECT reference, sku, allocated_quantity, held_quantity, quantity FROM (",
        "SELECT b.id, b.reference, b.sku, b.allocated_quantity, ",
        "b.quantity_in - b.quantity_out AS quantity, ",
        crate::sql::queries::held_at!("$1"),
        " FROM batches b) t ",
        "WHERE allocated_quantity + held_quantity > quantity ORDER BY id"
    );

    /// A line may have one row per batch, never two on one batch.
    pub const DUPLICATE_LINES: &str = "SELECT orderid, sku, COUNT(*) AS lines \
         FROM allocations GROUP BY orderid, sku, batch_id HAVING COUNT(*) > 1 \
         ORDER BY sku, orderid";

    pub const LINES_ON_FOREIGN_BATCHES: &str = "SELECT a.orderid, a.sku, b.reference, b.sku AS batch_sku \
         FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.sku <> b.sku ORDER BY a.id";
}
