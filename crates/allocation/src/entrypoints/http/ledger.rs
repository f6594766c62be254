//! The stock ledger: a batch's movements, and the adjustments operators
//! make (by a delta or to a counted figure, with a reason, optionally only
//! if the batch still has the quantity they saw).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use domain::commands::AdjustBatch;
use domain::{Adjustment, AdjustmentReason, BatchRef, Change, Note, Quantity};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::handlers::Adjusted;
use service_layer::ports::{MovementView, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::holds::rfc3339;
use super::input::{ApiJson, Identifier, Whole, count, path_id};
use super::openapi::{InvalidBody, ReadRefusals, WriteRefusals, documented};
use super::{ApiError, AppState, ErrorBody, observe};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_movements, _, _, _>(movements::<S>))
        .routes(documented::<__path_adjust_batch, _, _, _>(
            adjust_batch::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(AdjustRequest, AdjustedResponse, MovementResponse)))]
struct Schemas;

/// One entry of a batch's ledger.
#[derive(Debug, Serialize, ToSchema)]
struct MovementResponse {
    /// Increasing along the batch's ledger.
    id: u64,
    /// RFC 3339, UTC.
    at: String,
    /// Units in (positive) or out (negative); 0 for a count that found the
    /// quantity the batch had.
    delta: i64,
    qty_after: u64,
    /// `received`, `changed`, `shipment`, or an operator's reason.
    reason: String,
    note: Option<String>,
    /// `order:<orderid>` for a shipment; `migration` for the opening
    /// balance of a batch older than the ledger.
    source: Option<String>,
}

impl From<MovementView> for MovementResponse {
    fn from(movement: MovementView) -> Self {
        Self {
            id: movement.number,
            at: rfc3339(movement.at),
            delta: movement.delta,
            qty_after: movement.qty_after,
            reason: movement.reason.as_str().to_owned(),
            note: movement.note,
            source: movement.source,
        }
    }
}

#[utoipa::path(
    get,
    path = "/batches/{ref}/movements",
    tag = "stock",
    params(("ref" = Identifier, Path, description = "The batch's reference")),
    responses(
        (status = 200, description = "The batch's movements, oldest first; they sum to its quantity", body = [MovementResponse]),
        (status = 404, description = "No such batch", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn movements<S: ReadModel>(
    State(state): State<AppState<S>>,
    reference: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let reference = path_id(reference, "ref", BatchRef::parse)?;
    let Some(movements) = state.read_model.movements(&reference).await? else {
        return Err(ApiError::NotFound(format!("Invalid batch ref {reference}")));
    };
    let movements: Vec<MovementResponse> = movements.into_iter().map(Into::into).collect();
    Ok(Json(movements))
}

/// Exactly one of `delta` and `set_to`.
#[derive(Debug, Deserialize, ToSchema)]
struct AdjustRequest {
    /// Units in (positive) or out (negative), not 0.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = -1_000_000_000, maximum = 1_000_000_000)]
    delta: Option<Whole>,
    /// What a count found: the batch's new quantity.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    set_to: Option<Whole>,
    /// `correction`, `damaged`, `lost`, `found`, `cycle_count` or `returned`.
    reason: String,
    /// Up to 1 000 characters.
    #[serde(default)]
    note: Option<String>,
    /// Refuse (409) unless the batch has exactly this quantity now.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    expected_qty: Option<Whole>,
}

impl AdjustRequest {
    fn adjustment(self) -> Result<Adjustment, ApiError> {
        let bad = |message: String| ApiError::BadRequest(message);
        let max = i64::from(Quantity::MAX);
        let change = match (self.delta, self.set_to) {
            (Some(Whole(delta)), None) => Change::By(
                i64::try_from(delta)
                    .ok()
                    .filter(|delta| *delta != 0 && delta.abs() <= max)
                    .ok_or_else(|| {
                        bad(format!(
                            "delta must be a whole number from -{max} to {max}, not 0; got {delta}"
                        ))
                    })?,
            ),
            (None, Some(Whole(counted))) => Change::To(count(counted, "set_to")?),
            _ => return Err(bad("give exactly one of delta and set_to".into())),
        };
        let reason = AdjustmentReason::parse(&self.reason).ok_or_else(|| {
            let reasons: Vec<&str> = AdjustmentReason::ALL.map(AdjustmentReason::as_str).into();
            bad(format!(
                "reason must be one of {}; got {:?}",
                reasons.join(", "),
                self.reason
            ))
        })?;
        Ok(Adjustment {
            change,
            reason,
            note: self
                .note
                .map(|note| Note::parse(&note, "note"))
                .transpose()?,
            expected_qty: self
                .expected_qty
                .map(|Whole(qty)| count(qty, "expected_qty"))
                .transpose()?,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct AdjustedResponse {
    #[serde(rename = "ref")]
    reference: String,
    /// The batch's quantity after the adjustment.
    qty: u64,
    allocated: u64,
    /// Neither allocated nor held by a live hold.
    available: u64,
    movement: MovementResponse,
}

impl From<Adjusted> for AdjustedResponse {
    fn from(adjusted: Adjusted) -> Self {
        Self {
            reference: adjusted.reference.to_string(),
            qty: adjusted.qty,
            allocated: adjusted.allocated,
            available: adjusted.available,
            movement: MovementView::of(&adjusted.movement, adjusted.at).into(),
        }
    }
}

#[utoipa::path(
    post,
    path = "/batches/{ref}/adjust",
    tag = "stock",
    params(("ref" = Identifier, Path, description = "The batch's reference")),
    request_body = AdjustRequest,
    responses(
        (status = 200, description = "Adjusted; lines that no longer fit are deallocated, newest first, and reallocated", body = AdjustedResponse),
        (status = 400, description = "Invalid body, or a result below 0 or above the largest quantity", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 409, description = "The batch's quantity is not `expected_qty`; nothing changed", body = ErrorBody),
        InvalidBody,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn adjust_batch<S: Store>(
    State(state): State<AppState<S>>,
    reference: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<AdjustRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let reference = path_id(reference, "ref", BatchRef::parse)?;
    observe::record_id("batchref", reference.as_str());
    let command = AdjustBatch {
        reference,
        adjustment: body.adjustment()?,
    };
    let adjusted = state.bus.handle(command).await?;
    Ok(Json(AdjustedResponse::from(adjusted)))
}
