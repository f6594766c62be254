//! How much of a product can be sold, in one call: its batches' figures
//! summed (docs/contract.md section 7.3).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::NaiveDate;
use domain::Sku;
use serde::Serialize;
use service_layer::Store;
use service_layer::ports::{AvailabilityView, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::input::{Identifier, path_id};
use super::openapi::{ReadRefusals, documented};
use super::{ApiError, AppState, ErrorBody};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi()).routes(
        documented::<__path_availability, _, _, _>(availability::<S>),
    )
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(AvailabilityResponse)))]
struct Schemas;

#[derive(Debug, Serialize, ToSchema)]
struct AvailabilityResponse {
    sku: String,
    /// Units in batches in the warehouse.
    on_hand: u64,
    /// Units in batches still at sea.
    incoming: u64,
    allocated: u64,
    /// Set aside by checkout holds that live now.
    held: u64,
    /// Units of the lines waiting as backorders.
    backordered: u64,
    /// What an allocation could take now: neither allocated nor held.
    available: u64,
    /// The earliest arrival of a batch at sea with units available.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    next_eta: Option<NaiveDate>,
}

#[utoipa::path(
    get,
    path = "/products/{sku}/availability",
    tag = "stock",
    params(("sku" = Identifier, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "What the product has and can sell, as of the last commit and the holds live now", body = AvailabilityResponse),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn availability<S: ReadModel>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let sku = path_id(sku, "sku", Sku::parse)?;
    let batches = state.read_model.batches(&sku, state.bus.now()).await?;
    let backordered = state.read_model.backordered(&sku).await?;
    let Some(figures) = AvailabilityView::of(&batches, backordered) else {
        return Err(ApiError::NotFound(format!("Unknown sku {sku}")));
    };
    Ok(Json(AvailabilityResponse {
        sku: sku.to_string(),
        on_hand: figures.on_hand,
        incoming: figures.incoming,
        allocated: figures.allocated,
        held: figures.held,
        backordered: figures.backordered,
        available: figures.available,
        next_eta: figures.next_eta,
    }))
}
