//! The lookups the service makes, named so that the query-plan tests check
//! these very statements against the indexes they need.

/// A product (`$1`), its batches in creation order, and the lines of
/// its batches that `$lines` picks, one row per batch and line. A
/// product without batches still gives one row, with NULL batch columns.
macro_rules! product_with_lines {
    ($lines:literal) => {
        concat!(
            "SELECT p.version_number, b.reference, b.eta, b.purchased_quantity, ",
            "b.allocated_quantity, a.orderid AS line_orderid, a.qty AS line_qty ",
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

/// The lines of batch `$1` (of product `$2`), oldest first: what
/// shrinking a batch loads.
pub const LINES_OF_BATCH: &str = "SELECT a.orderid, a.qty \
     FROM batches b JOIN allocations a ON a.batch_id = b.id \
     WHERE b.reference = $1 AND b.sku = $2 \
     ORDER BY a.id";

/// The SKU of the product that holds batch `$1`.
pub const SKU_OF_BATCH: &str = "SELECT sku FROM batches WHERE reference = $1";

/// An order's allocations, from the read model.
pub const ALLOCATIONS_OF_ORDER: &str =
    "SELECT sku, batchref FROM allocations_view WHERE orderid = $1 ORDER BY sku, batchref";

/// An order's lines, one row per part, from the write tables (what
/// `GET /orders/<orderid>` shows): found through `(orderid, sku,
/// batch_id)`, in its order, so a split line's parts come in the order
/// their batches were created.
pub const LINES_OF_ORDER: &str = "SELECT a.sku, b.reference AS batchref, a.qty \
     FROM allocations a JOIN batches b ON b.id = a.batch_id \
     WHERE a.orderid = $1 ORDER BY a.sku, a.batch_id";

/// A product's batches, from the write tables (they are the read model
/// of the product query).
pub const BATCHES_OF_PRODUCT: &str = "SELECT reference, eta, purchased_quantity, allocated_quantity \
     FROM batches WHERE sku = $1 ORDER BY id";
