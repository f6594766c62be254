//! A unit of work's hold on the database (book chapter 6): how it reads
//! products, and how its commit hands the change set to the writer.

use chrono::{DateTime, Utc};
use domain::{
    Backorder, Batch, BatchRef, HoldId, OrderId, OrderLine, Product, Settings, Sku, StockLevel,
};
use service_layer::ports::{ChangeSet, Lines, StoreError, StoreTransaction};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};
use tokio::sync::OwnedSemaphorePermit;

use super::rows::{
    closed_from_db, eta_from_db, get, identifier, mismatch, quantity_from_db, time_to_db, to_u64,
};
use super::write::{self, Plan};
use super::{Dialect, holds, queries};

/// One unit of work's hold on the database. Dropping it rolls back.
#[derive(Debug)]
pub struct SqlTransaction {
    pub(super) connection: Connection,
    pub(super) dialect: Dialect,
}

/// How a unit of work reads, which depends on how the database lets writers
/// wait for each other.
#[derive(Debug)]
pub(super) enum Connection {
    /// A transaction around the whole unit of work. On SQLite it holds the
    /// database's write lock from the start (see `Dialect::begin_statement`),
    /// so reads and writes are one serialised transaction. On PostgreSQL it
    /// is a locking unit of work (`Store::begin_locking`): each product's
    /// row is locked before the product is read.
    Transaction {
        transaction: sqlx::Transaction<'static, Any>,
        /// SQLite: this writer's place at the head of the writer queue
        /// (`SqlStore::wait_to_write`), given up when the transaction ends.
        _writing: Option<OwnedSemaphorePermit>,
    },
    /// PostgreSQL: reads run on their own, outside any transaction, and the
    /// commit writes in one statement, atomic on its own, or opens a
    /// transaction just for its statements. The version check at commit
    /// (optimistic offline lock, book chapter 7) is what makes this safe: a
    /// product read here and changed by anyone before the commit fails that
    /// check, and the command runs again. It saves the `BEGIN` round trip,
    /// and holds no transaction open while the handler thinks.
    Optimistic(PoolConnection<Any>),
}

impl Connection {
    fn reader(&mut self) -> &mut AnyConnection {
        match self {
            Self::Transaction { transaction, .. } => transaction,
            Self::Optimistic(connection) => connection,
        }
    }
}

impl StoreTransaction for SqlTransaction {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>, StoreError> {
        // A PostgreSQL unit of work holds a transaction only when it locks
        // its products (SQLite's lock covers the whole database already).
        let lock_first = self.dialect == Dialect::Postgres
            && matches!(self.connection, Connection::Transaction { .. });
        let conn = self.connection.reader();
        if lock_first {
            // Lock, then read: under READ COMMITTED the next statement's
            // snapshot is taken once the lock is held, so it sees the last
            // committed state of the product. (`FOR UPDATE` on the load
            // itself would not: rows joined to a row it waited for would
            // come from the snapshot taken before the wait.)
            sqlx::query("SELECT version_number FROM products WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| write::write_error(e, sku))?;
        }
        // The product, its batches and, when a command concerns orders,
        // their lines, in one round trip: the hot path of allocation. A
        // product without batches still gives one row, with NULL batch
        // columns; a line's columns are set on the row of its batch.
        let orderids_json;
        let (statement, orders) = match lines {
            Lines::OfOrder(orderid) => (queries::PRODUCT_WITH_ORDER_LINE, Some(orderid.as_str())),
            Lines::OfOrders(orderids) => {
                let orderids: Vec<&str> = orderids.iter().map(OrderId::as_str).collect();
                orderids_json = serde_json::to_string(&orderids).map_err(StoreError::backend)?;
                (
                    self.dialect.product_with_order_lines_statement(),
                    Some(orderids_json.as_str()),
                )
            }
            Lines::None | Lines::OfBatch(_) | Lines::OfHold(_) => {
                (queries::PRODUCT_WITH_ORDER_LINE, None)
            }
        };
        let rows = sqlx::query(statement)
            .bind(sku.as_str())
            .bind(orders)
            .bind(time_to_db(now))
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::backend)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let version = to_u64(get::<i64>(first, "version_number")?, "version_number")?;
        let mut batches: Vec<Batch> = Vec::with_capacity(rows.len());
        let mut order_lines = Vec::new();
        for row in &rows {
            let Some(reference) = get::<Option<String>>(row, "reference")? else {
                continue;
            };
            let reference = identifier(&reference, BatchRef::parse)?;
            if let Some(orderid) = get::<Option<String>>(row, "line_orderid")? {
                let line = OrderLine {
                    orderid: identifier(&orderid, OrderId::parse)?,
                    sku: sku.clone(),
                    qty: quantity_from_db(get(row, "line_qty")?)?,
                };
                let closed = closed_from_db(&get::<String>(row, "line_state")?)?;
                order_lines.push((reference.clone(), line, closed));
            }
            if batches
                .last()
                .is_some_and(|batch| batch.reference() == &reference)
            {
                continue; // another line of the same batch
            }
            batches.push(Batch::restore(
                reference,
                sku.clone(),
                eta_from_db(get(row, "eta")?)?,
                to_u64(get(row, "quantity")?, "quantity")?,
                to_u64(get(row, "allocated_quantity")?, "allocated_quantity")?,
                to_u64(get(row, "held_quantity")?, "held_quantity")?,
            ));
        }
        let settings = Settings {
            backorder_limit: to_u64(get(first, "backorder_limit")?, "backorder_limit")?,
            low_stock_threshold: to_u64(get(first, "low_stock_threshold")?, "low_stock_threshold")?,
        };
        let announced = get::<Option<String>>(first, "announced_level")?
            .map(|level| {
                StockLevel::parse(&level)
                    .ok_or_else(|| mismatch(format!("a stock level {level:?}")))
            })
            .transpose()?
            .unwrap_or(StockLevel::In);
        let mut product = Product::restore(sku.clone(), version, batches)
            .with_settings(settings)
            .with_announced_level(announced);
        if get::<i64>(first, "backorders_waiting")? != 0 {
            load_waiting_backorders(conn, &mut product).await?;
        }
        for (reference, line, closed) in order_lines {
            match closed {
                None => product.load_lines(&reference, [line]),
                Some(closed) => product.load_closed(&reference, [(line, closed)]),
            }
        }
        match lines {
            Lines::OfBatch(reference) => {
                load_lines_of_batch(conn, &mut product, reference).await?;
                holds::load_live_holds_of_batch(conn, &mut product, reference, now).await?;
            }
            Lines::OfHold(hold_id) => {
                holds::load_parts_of_hold(conn, &mut product, hold_id, now).await?;
            }
            Lines::None | Lines::OfOrder(_) | Lines::OfOrders(_) => {}
        }
        Ok(Some(product))
    }

    async fn skus_of_order(&mut self, orderid: &OrderId) -> Result<Vec<Sku>, StoreError> {
        let skus: Vec<String> = sqlx::query_scalar(queries::SKUS_OF_ORDER)
            .bind(orderid.as_str())
            .fetch_all(self.connection.reader())
            .await
            .map_err(StoreError::backend)?;
        skus.iter().map(|sku| identifier(sku, Sku::parse)).collect()
    }

    async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(queries::DELIVERY)
            .bind(delivery)
            .fetch_optional(self.connection.reader())
            .await
            .map_err(StoreError::backend)?;
        Ok(found.is_some())
    }

    async fn skus_of_hold(&mut self, hold_id: &HoldId) -> Result<Vec<Sku>, StoreError> {
        holds::skus_of_hold(self.connection.reader(), hold_id).await
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        let row = sqlx::query(queries::SKU_OF_BATCH)
            .bind(reference.as_str())
            .fetch_optional(self.connection.reader())
            .await
            .map_err(StoreError::backend)?;
        row.map(|row| identifier(&get::<String>(&row, "sku")?, Sku::parse))
            .transpose()
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        let plan = Plan::of(&changes)?;
        match self.connection {
            Connection::Transaction {
                mut transaction, ..
            } => {
                write::write(&mut transaction, self.dialect, &plan).await?;
                transaction.commit().await.map_err(StoreError::backend)
            }
            // PostgreSQL only: SQLite never reads outside a transaction.
            Connection::Optimistic(mut connection) => {
                write::postgres::write_on_its_own(&mut connection, &plan).await
            }
        }
    }
}

/// Attaches the product's waiting backorders: all of them, as every
/// command on it needs them (see `domain::model::backorders`).
async fn load_waiting_backorders(
    conn: &mut AnyConnection,
    product: &mut Product,
) -> Result<(), StoreError> {
    let rows = sqlx::query(queries::WAITING_BACKORDERS)
        .bind(product.sku().as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    let backorders = rows
        .iter()
        .map(|row| {
            Ok(Backorder {
                orderid: identifier(&get::<String>(row, "orderid")?, OrderId::parse)?,
                qty: quantity_from_db(get(row, "qty")?)?,
                number: to_u64(get(row, "number")?, "number")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    product.load_backorders(backorders);
    Ok(())
}

/// Attaches all lines of batch `reference`, oldest first, each with its
/// parts on other batches: what shrinking it needs. An index range scan
/// (`allocations (batch_id, id)`), then one lookup per line.
async fn load_lines_of_batch(
    conn: &mut AnyConnection,
    product: &mut Product,
    reference: &BatchRef,
) -> Result<(), StoreError> {
    let sku = product.sku().clone();
    let rows = sqlx::query(queries::LINES_OF_BATCH)
        .bind(reference.as_str())
        .bind(sku.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    for row in &rows {
        let line = OrderLine {
            orderid: identifier(&get::<String>(row, "orderid")?, OrderId::parse)?,
            sku: sku.clone(),
            qty: quantity_from_db(get(row, "qty")?)?,
        };
        let on = identifier(&get::<String>(row, "reference")?, BatchRef::parse)?;
        product.load_lines(&on, [line]);
    }
    Ok(())
}
