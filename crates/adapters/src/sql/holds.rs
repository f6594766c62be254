//! Checkout holds in the SQL stores: loading a hold's parts, or a batch's
//! live ones, into a product, and the hold query. Their writers are with
//! the others (`write`); what each batch holds live is summed by every
//! product load (`queries::held_at!`).

use chrono::{DateTime, Utc};
use domain::{BatchRef, HeldPart, HoldId, Product, Sku};
use service_layer::ports::{HoldLineView, HoldState, HoldView, PartView, StoreError};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

use super::queries;
use super::rows::{get, identifier, mismatch, quantity_from_db, time_from_db, time_to_db, to_u64};

fn held_part(row: &AnyRow, now: DateTime<Utc>) -> Result<HeldPart, StoreError> {
    let expires_at = time_from_db(get(row, "expires_at")?)?;
    Ok(HeldPart {
        hold_id: identifier(&get::<String>(row, "hold_id")?, HoldId::parse)?,
        qty: quantity_from_db(get(row, "qty")?)?,
        expires_at,
        live: expires_at > now,
    })
}

/// Attaches the parts of batch `reference` live at `now`, oldest first: a
/// shrinking batch gives up its newest holds first.
pub(super) async fn load_live_holds_of_batch(
    conn: &mut AnyConnection,
    product: &mut Product,
    reference: &BatchRef,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows = sqlx::query(queries::LIVE_HOLDS_OF_BATCH)
        .bind(reference.as_str())
        .bind(product.sku().as_str())
        .bind(time_to_db(now))
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    let mut parts = rows
        .iter()
        .map(|row| Ok((get::<i64>(row, "id")?, held_part(row, now)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    parts.sort_by_key(|(id, _)| *id);
    product.load_holds(reference, parts.into_iter().map(|(_, part)| part));
    Ok(())
}

/// Attaches the active parts of `hold_id` on this product, live or expired.
pub(super) async fn load_parts_of_hold(
    conn: &mut AnyConnection,
    product: &mut Product,
    hold_id: &HoldId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows = sqlx::query(queries::PARTS_OF_HOLD)
        .bind(hold_id.as_str())
        .bind(product.sku().as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    for row in &rows {
        let reference = identifier(&get::<String>(row, "reference")?, BatchRef::parse)?;
        product.load_holds(&reference, [held_part(row, now)?]);
    }
    Ok(())
}

pub(super) async fn skus_of_hold(
    conn: &mut AnyConnection,
    hold_id: &HoldId,
) -> Result<Vec<Sku>, StoreError> {
    let skus: Vec<String> = sqlx::query_scalar(queries::SKUS_OF_HOLD)
        .bind(hold_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::backend)?;
    skus.iter().map(|sku| identifier(sku, Sku::parse)).collect()
}

/// A hold from its parts, or `None` if it has none: how it ended is how
/// any part ended (a part released by a shrinking batch ends the hold).
pub(super) fn hold_of_rows(
    hold_id: &HoldId,
    rows: &[AnyRow],
) -> Result<Option<HoldView>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut state = HoldState::Active;
    let mut lines: Vec<HoldLineView> = Vec::new();
    for row in rows {
        let sku = identifier(&get::<String>(row, "sku")?, Sku::parse)?;
        let part = PartView {
            batchref: identifier(&get::<String>(row, "batchref")?, BatchRef::parse)?,
            qty: to_u64(get(row, "qty")?, "qty")?,
        };
        state = match (state, get::<String>(row, "state")?.as_str()) {
            (HoldState::Converted, _) | (_, "converted") => HoldState::Converted,
            (HoldState::Released, _) | (_, "released") => HoldState::Released,
            (_, "active") => HoldState::Active,
            (_, other) => return Err(mismatch(format!("a hold part in state {other}"))),
        };
        // Rows come sorted by SKU: a line's parts are consecutive.
        match lines.last_mut() {
            Some(line) if line.sku == sku => {
                line.qty += part.qty;
                line.parts.push(part);
            }
            _ => lines.push(HoldLineView {
                sku,
                qty: part.qty,
                parts: vec![part],
            }),
        }
    }
    Ok(Some(HoldView {
        hold_id: hold_id.clone(),
        expires_at: time_from_db(get(first, "expires_at")?)?,
        state,
        lines,
    }))
}
