//! The query side (book chapter 12): an order's allocations from the
//! `allocations_view` table; an order's lines, a hold and a product's
//! batches from the write tables.

use chrono::{DateTime, Utc};
use domain::{BatchRef, Closed, HoldId, OrderId, Reason, Settings, Sku};
use service_layer::ports::{
    AllocationView, BatchView, HoldView, LineStatus, MovementView, OrderLineView, PartView,
    ReadModel, StoreError,
};

use super::rows::{
    closed_from_db, eta_from_db, get, identifier, mismatch, time_from_db, time_to_db, to_u64,
};
use super::{SqlStore, holds, queries};

impl ReadModel for SqlStore {
    async fn allocations(&self, orderid: &OrderId) -> Result<Vec<AllocationView>, StoreError> {
        let rows = sqlx::query(queries::ALLOCATIONS_OF_ORDER)
            .bind(orderid.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter()
            .map(|row| {
                Ok(AllocationView {
                    sku: identifier(&get::<String>(row, "sku")?, Sku::parse)?,
                    batchref: identifier(&get::<String>(row, "batchref")?, BatchRef::parse)?,
                })
            })
            .collect()
    }

    async fn order(&self, orderid: &OrderId) -> Result<Vec<OrderLineView>, StoreError> {
        let rows = sqlx::query(queries::LINES_OF_ORDER)
            .bind(orderid.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        let mut lines: Vec<OrderLineView> = Vec::new();
        for row in &rows {
            let sku = identifier(&get::<String>(row, "sku")?, Sku::parse)?;
            let part = PartView {
                batchref: identifier(&get::<String>(row, "batchref")?, BatchRef::parse)?,
                qty: to_u64(get(row, "qty")?, "qty")?,
            };
            // Rows come sorted by SKU: a line's parts are consecutive.
            match lines.last_mut() {
                Some(line) if line.sku == sku => {
                    line.qty += part.qty;
                    line.parts.push(part);
                }
                _ => lines.push(OrderLineView {
                    sku,
                    qty: part.qty,
                    status: match closed_from_db(&get::<String>(row, "state")?)? {
                        None => LineStatus::Allocated,
                        Some(Closed::Shipped) => LineStatus::Shipped,
                        Some(Closed::Cancelled) => LineStatus::Cancelled,
                    },
                    parts: vec![part],
                }),
            }
        }
        let backorders = sqlx::query(queries::BACKORDERS_OF_ORDER)
            .bind(orderid.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        for row in &backorders {
            let state: String = get(row, "state")?;
            lines.push(OrderLineView {
                sku: identifier(&get::<String>(row, "sku")?, Sku::parse)?,
                qty: to_u64(get(row, "qty")?, "qty")?,
                status: match state.as_str() {
                    "waiting" => LineStatus::Backordered,
                    "cancelled" => LineStatus::Cancelled,
                    other => return Err(mismatch(format!("a backorder in state {other}"))),
                },
                parts: Vec::new(),
            });
        }
        // Stable: an order has one line per SKU, whichever table it is in.
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        Ok(lines)
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<HoldView>, StoreError> {
        let rows = sqlx::query(queries::HOLD)
            .bind(hold_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        holds::hold_of_rows(hold_id, &rows)
    }

    async fn batches(&self, sku: &Sku, now: DateTime<Utc>) -> Result<Vec<BatchView>, StoreError> {
        let rows = sqlx::query(queries::BATCHES_OF_PRODUCT)
            .bind(sku.as_str())
            .bind(time_to_db(now))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter()
            .map(|row| {
                Ok(BatchView {
                    reference: identifier(&get::<String>(row, "reference")?, BatchRef::parse)?,
                    eta: eta_from_db(get(row, "eta")?)?,
                    purchased: to_u64(get(row, "quantity")?, "quantity")?,
                    allocated: to_u64(get(row, "allocated_quantity")?, "allocated_quantity")?,
                    held: to_u64(get(row, "held_quantity")?, "held_quantity")?,
                })
            })
            .collect()
    }

    async fn settings(&self, sku: &Sku) -> Result<Option<Settings>, StoreError> {
        let row = sqlx::query(queries::SETTINGS_OF_PRODUCT)
            .bind(sku.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        row.map(|row| {
            Ok(Settings {
                backorder_limit: to_u64(get(&row, "backorder_limit")?, "backorder_limit")?,
                low_stock_threshold: to_u64(
                    get(&row, "low_stock_threshold")?,
                    "low_stock_threshold",
                )?,
            })
        })
        .transpose()
    }

    async fn backordered(&self, sku: &Sku) -> Result<u64, StoreError> {
        let units: i64 = sqlx::query_scalar(queries::BACKORDERED_OF_PRODUCT)
            .bind(sku.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        to_u64(units, "units")
    }

    async fn movements(
        &self,
        reference: &BatchRef,
    ) -> Result<Option<Vec<MovementView>>, StoreError> {
        let rows = sqlx::query(queries::MOVEMENTS_OF_BATCH)
            .bind(reference.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        if rows.is_empty() {
            // Every batch has at least the movement it was received with;
            // asked for anyway, so that a ledger lost would not pass for
            // an unknown batch.
            let known = sqlx::query(queries::SKU_OF_BATCH)
                .bind(reference.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            return Ok(known.map(|_| Vec::new()));
        }
        let movements = rows
            .iter()
            .map(|row| {
                let reason: String = get(row, "reason")?;
                Ok(MovementView {
                    number: to_u64(get(row, "number")?, "number")?,
                    at: time_from_db(get(row, "at")?)?,
                    delta: get(row, "delta")?,
                    qty_after: to_u64(get(row, "qty_after")?, "qty_after")?,
                    reason: Reason::parse(&reason)
                        .ok_or_else(|| mismatch(format!("unknown movement reason {reason:?}")))?,
                    note: get(row, "note")?,
                    source: get(row, "source")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(movements))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }
}
