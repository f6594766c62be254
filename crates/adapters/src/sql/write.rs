//! What a commit writes, the same on both backends: a change set turned into
//! a [`Plan`], the version check then *runs* of rows, each run written by
//! its [`Kind`]'s writer in one multi-row statement (`postgres`, `sqlite`).
//!
//! Order matters only within a product (a line deallocated then allocated
//! again; deallocations before a batch shrinks) and within the read-model
//! changes; rows of different products are independent. So the plan takes,
//! from every product, its leading events of one kind as one run, and
//! repeats; then consecutive read-model changes of one kind; then the outbox.
//! A group of allocations of several products is thus one run of lines, one
//! of read-model rows and one of messages, written by the same writers as a
//! lone allocation.
//!
//! Adding a kind of change: a [`Kind`] (and a field of [`Row`] if it needs
//! a new column), the event's arm in [`change_of`], and its writer in each
//! of `postgres` and `sqlite`.

mod changes;
mod kept_texts;
pub(super) mod postgres;
pub(super) mod sqlite;

use std::time::SystemTime;

use domain::Sku;
use serde::Serialize;
use service_layer::ports::{ChangeSet, StoreError, ViewChange};
use sqlx::AnyConnection;

use super::Dialect;
use super::rows::{mismatch, time_to_db, to_i64, unix_millis};
pub(super) use changes::{Columns, Row, Value};
use changes::{change_of, change_of_view, message_row};

/// A kind of change a commit writes: one writer per backend each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    BatchesCreated,
    LinesAllocated,
    /// Deallocated and AllocationCancelled: a line leaves its batch.
    LinesRemoved,
    /// Shipped and LineCancelled: a line stops being allocated, and stays.
    LinesClosed,
    BatchQuantitiesChanged,
    ViewRowsSet,
    ViewRowsRemoved,
    OutboxMessages,
    HoldPartsPlaced,
    HoldPartsExtended,
    /// Released or converted: a part stops setting units aside.
    HoldPartsEnded,
    /// A batch's quantity moved: its ledger's new entry.
    StockMoved,
    BackordersPlaced,
    /// Filled or deallocated (the row goes), or cancelled with its order
    /// (the row stays, cancelled).
    BackordersEnded,
    SettingsChanged,
    /// A product's stock level, as last announced.
    StockLevelsChanged,
    /// Incoming messages handled (`ChangeSet::deliveries`).
    DeliveriesRecorded,
}

/// The tables writers write. The version check writes `products`, which no
/// writer touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Batches,
    Allocations,
    AllocationsView,
    Outbox,
    HoldParts,
    StockMovements,
    Backorders,
    ProductSettings,
    StockLevels,
    Deliveries,
}

impl Kind {
    /// The name of its writer: PostgreSQL's CTE, and the column counting
    /// its rows.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::BatchesCreated => "batches_created",
            Self::LinesAllocated => "lines_allocated",
            Self::LinesRemoved => "lines_removed",
            Self::LinesClosed => "lines_closed",
            Self::BatchQuantitiesChanged => "batch_quantities_changed",
            Self::ViewRowsSet => "view_rows_set",
            Self::ViewRowsRemoved => "view_rows_removed",
            Self::OutboxMessages => "outbox_messages",
            Self::HoldPartsPlaced => "hold_parts_placed",
            Self::HoldPartsExtended => "hold_parts_extended",
            Self::HoldPartsEnded => "hold_parts_ended",
            Self::StockMoved => "stock_moved",
            Self::BackordersPlaced => "backorders_placed",
            Self::BackordersEnded => "backorders_ended",
            Self::SettingsChanged => "settings_changed",
            Self::StockLevelsChanged => "stock_levels_changed",
            Self::DeliveriesRecorded => "deliveries_recorded",
        }
    }

    pub(super) fn tables(self) -> &'static [Table] {
        match self {
            Self::BatchesCreated | Self::BatchQuantitiesChanged => &[Table::Batches],
            Self::LinesAllocated | Self::LinesRemoved | Self::LinesClosed => {
                &[Table::Batches, Table::Allocations]
            }
            Self::ViewRowsSet | Self::ViewRowsRemoved => &[Table::AllocationsView],
            Self::OutboxMessages => &[Table::Outbox],
            Self::HoldPartsPlaced | Self::HoldPartsExtended | Self::HoldPartsEnded => {
                &[Table::HoldParts]
            }
            Self::StockMoved => &[Table::StockMovements],
            Self::BackordersPlaced | Self::BackordersEnded => &[Table::Backorders],
            Self::SettingsChanged => &[Table::ProductSettings],
            Self::StockLevelsChanged => &[Table::StockLevels],
            Self::DeliveriesRecorded => &[Table::Deliveries],
        }
    }

    /// Whether a row that is not as loaded makes this writer write fewer
    /// rows, rather than fail on a constraint: a line or a batch that is not
    /// stored. Its rows are counted, so it must run where a shortfall can
    /// still be rolled back. (A line allocated to a batch that is not stored
    /// gets no `batch_id`, which its NOT NULL refuses; a batch created or a
    /// line allocated twice breaks a unique key.)
    pub(super) fn counted(self) -> bool {
        matches!(
            self,
            Self::LinesRemoved
                | Self::LinesClosed
                | Self::BatchQuantitiesChanged
                | Self::HoldPartsEnded
        )
    }
}

/// Rows of one kind, written by one statement of its writer.
#[derive(Debug)]
pub(super) struct Run<'a> {
    pub(super) kind: Kind,
    pub(super) rows: Rows<Row<'a>>,
}

impl<'a> Run<'a> {
    fn of(kind: Kind, rows: Vec<Row<'a>>) -> Self {
        let numbered = rows
            .into_iter()
            .zip(0..)
            .map(|(row, n)| Row { n, ..row })
            .collect();
        Self {
            kind,
            rows: Rows(numbered),
        }
    }
}

/// The rows a writer reads: as one JSON array (sqlx's `Any` driver binds
/// no arrays, and JSON reads the same on both databases) or, on PostgreSQL,
/// as a VALUES list of their columns.
#[derive(Debug)]
pub(super) struct Rows<T>(Vec<T>);

impl<T: Columns> Rows<T> {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// The rows as one JSON array.
    pub(super) fn json(&self) -> Result<String, StoreError> {
        serde_json::to_string(&self.0).map_err(StoreError::backend)
    }
}

/// The version check's row for one product: `stored_version` is `None`
/// for a product that is not stored yet, which the check inserts.
#[derive(Debug, Serialize)]
pub(super) struct VersionRow<'a> {
    sku: &'a str,
    stored_version: Option<i64>,
    new_version: i64,
}

impl Columns for VersionRow<'_> {
    fn value(&self, column: &str) -> Option<Value<'_>> {
        Some(match column {
            "sku" => Value::Text(Some(self.sku)),
            "stored_version" => Value::BigInt(self.stored_version),
            "new_version" => Value::BigInt(Some(self.new_version)),
            _ => return None,
        })
    }
}

/// Everything a commit writes, in the order it must be written.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// The products the commit changes, in SKU order (the order PostgreSQL
    /// locks them in).
    products: Vec<&'a Sku>,
    /// How many of them are stored already; the others are new.
    stored: usize,
    /// The version check's rows ([`VersionRow`]), in SKU order.
    versions: Rows<VersionRow<'a>>,
    runs: Vec<Run<'a>>,
}

impl<'a> Plan<'a> {
    pub(super) fn of(changes: &'a ChangeSet) -> Result<Self, StoreError> {
        let mut products: Vec<_> = changes.products.iter().collect();
        products.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        let skus: Vec<&Sku> = products.iter().map(|product| &product.sku).collect();
        let versions = products
            .iter()
            .map(|product| {
                Ok(VersionRow {
                    sku: product.sku.as_str(),
                    stored_version: product
                        .stored_version
                        .map(|stored| to_i64(stored, "version_number"))
                        .transpose()?,
                    new_version: to_i64(product.new_version, "version_number")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let stored = versions
            .iter()
            .filter(|row| row.stored_version.is_some())
            .count();
        let versions = Rows(versions);
        let at = time_to_db(changes.at);

        let mut runs = Vec::new();
        let mut pending: Vec<Vec<(Kind, Row<'a>)>> = products
            .iter()
            .map(|product| {
                let mut changes: Vec<_> = product
                    .events
                    .iter()
                    .filter_map(|event| change_of(&product.sku, event, at))
                    .collect();
                changes.reverse(); // popped from the end, oldest first
                changes
            })
            .collect();
        while let Some(kind) = pending
            .iter()
            .find_map(|changes| changes.last().map(|(kind, _)| *kind))
        {
            let mut rows = Vec::new();
            for changes in &mut pending {
                while changes.last().is_some_and(|(next, _)| *next == kind) {
                    if let Some((_, row)) = changes.pop() {
                        rows.push(row);
                    }
                }
            }
            runs.push(Run::of(kind, last_quantity_per_batch(kind, rows)));
        }

        let owned_by_a_product = |sku: &Sku| skus.binary_search(&sku).is_ok();
        let mut views = changes.views.iter().map(change_of_view).peekable();
        while let Some((kind, first)) = views.next() {
            let mut rows = vec![first];
            while let Some((_, row)) = views.next_if(|(next, _)| *next == kind) {
                rows.push(row);
            }
            runs.push(Run::of(kind, rows));
        }
        let view_skus = changes.views.iter().map(|view| match view {
            ViewChange::Allocated { sku, .. } | ViewChange::Deallocated { sku, .. } => sku,
        });
        let message_skus = changes.outbox.iter().map(|message| message.message.sku());
        if let Some(sku) = view_skus
            .chain(message_skus)
            .find(|sku| !owned_by_a_product(sku))
        {
            // Rows hang off their product's version check: one of a product
            // the commit does not change would have none.
            return Err(mismatch(format!(
                "a read-model row or message of product {sku}, which the commit does not change"
            )));
        }
        if !changes.outbox.is_empty() {
            let created_at = unix_millis(SystemTime::now());
            let rows = changes
                .outbox
                .iter()
                .map(|message| message_row(message, created_at))
                .collect();
            runs.push(Run::of(Kind::OutboxMessages, rows));
        }
        // Each hangs off the first product's version check: a delivery is
        // recorded only with the changes its command made.
        if let (Some(sku), false) = (skus.first(), changes.deliveries.is_empty()) {
            let recorded_at = unix_millis(SystemTime::now());
            let rows = changes
                .deliveries
                .iter()
                .map(|delivery| Row {
                    delivery: Some(delivery),
                    created_at: Some(recorded_at),
                    ..Row::of(sku.as_str())
                })
                .collect();
            runs.push(Run::of(Kind::DeliveriesRecorded, rows));
        }
        Ok(Self {
            products: skus,
            stored,
            versions,
            runs,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.products.is_empty() && self.runs.is_empty()
    }

    /// The product a conflict the database reports (a duplicate key, a
    /// serialization failure, a deadlock) is blamed on: it does not say
    /// which, and the bus only needs one to retry.
    fn blamed(&self) -> Option<&Sku> {
        self.products.first().copied()
    }

    /// Maps a write's failure to a conflict or a backend error (see
    /// [`write_error`]).
    fn failure(&self, error: sqlx::Error) -> StoreError {
        match self.blamed() {
            Some(sku) => write_error(error, sku),
            None => StoreError::backend(error),
        }
    }

    /// A run wrote `written` rows where it should have written `expected`.
    fn check_count(&self, run_kind: Kind, expected: usize, written: i64) -> Result<(), StoreError> {
        if usize::try_from(written).ok() == Some(expected) {
            return Ok(());
        }
        Err(mismatch(format!(
            "{} wrote {written} rows, not {expected}: the rows were not as loaded",
            run_kind.name()
        )))
    }
}

/// A later change of one batch's quantity replaces an earlier one in the
/// same run: a multi-row update takes one row per batch.
fn last_quantity_per_batch(kind: Kind, rows: Vec<Row<'_>>) -> Vec<Row<'_>> {
    if kind != Kind::BatchQuantitiesChanged {
        return rows;
    }
    let mut kept: Vec<Row<'_>> = Vec::with_capacity(rows.len());
    for row in rows {
        let earlier = kept.iter().position(|kept| kept.reference == row.reference);
        match earlier {
            Some(at) => kept[at] = row,
            None => kept.push(row),
        }
    }
    kept
}

/// Writes `plan` inside the caller's transaction, which commits it.
pub(super) async fn write(
    conn: &mut AnyConnection,
    dialect: Dialect,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    match dialect {
        Dialect::Sqlite => sqlite::write(conn, plan).await,
        Dialect::Postgres => postgres::write_in_transaction(conn, plan).await,
    }
}

/// A duplicate key (a product, batch reference or order line that another
/// transaction wrote first) is a conflict: the bus runs the command again,
/// and it decides afresh on what is now stored. So are PostgreSQL's
/// serialization failures and deadlocks, which also call for a retry.
pub(super) fn write_error(error: sqlx::Error, sku: &Sku) -> StoreError {
    let retry = error.as_database_error().is_some_and(|db| {
        db.is_unique_violation() || matches!(db.code().as_deref(), Some("40001" | "40P01"))
    });
    if retry {
        StoreError::Conflict { sku: sku.clone() }
    } else {
        StoreError::backend(error)
    }
}
