//! Batches of stock: adding one (the book's `POST /add_batch`), changing
//! its purchased quantity, and the query of a product's batches.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::NaiveDate;
use domain::commands::{ChangeBatchQuantity, CreateBatch};
use domain::{BatchRef, Sku};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::ports::ReadModel;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::input::{ApiJson, Identifier, Units, path_id};
use super::openapi::{InvalidBody, ReadRefusals, WriteRefusals, documented};
use super::{ApiError, AppState, ErrorBody, observe};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_add_batch, _, _, _>(add_batch::<S>))
        .routes(documented::<__path_change_batch_quantity, _, _, _>(
            change_batch_quantity::<S>,
        ))
        .routes(documented::<__path_batches_of_product, _, _, _>(
            batches_of_product::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(
    AddBatchRequest,
    BatchCreatedResponse,
    ChangeBatchQuantityRequest,
    BatchQuantityResponse,
    BatchResponse,
    ProductResponse,
)))]
struct Schemas;

#[derive(Debug, Deserialize, ToSchema)]
struct AddBatchRequest {
    /// The batch's reference, unique across all products.
    #[serde(rename = "ref")]
    #[schema(value_type = Identifier)]
    reference: String,
    #[schema(value_type = Identifier)]
    sku: String,
    /// Units purchased.
    #[schema(value_type = Units)]
    qty: Units,
    /// Expected arrival; `null` for stock already in the warehouse.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    eta: Option<NaiveDate>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchCreatedResponse {
    #[serde(rename = "ref")]
    reference: String,
    sku: String,
    qty: u32,
    eta: Option<NaiveDate>,
}

#[utoipa::path(
    post,
    path = "/add_batch",
    tag = "book",
    request_body = AddBatchRequest,
    responses(
        (status = 201, description = "The batch exists (created now, or earlier with the same data)", body = BatchCreatedResponse),
        (status = 409, description = "The reference exists with different data", body = ErrorBody),
        InvalidBody,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn add_batch<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<AddBatchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = CreateBatch {
        reference: BatchRef::parse(&body.reference)?,
        sku: Sku::parse(&body.sku)?,
        qty: body.qty.quantity()?,
        eta: body.eta,
    };
    observe::record_id("batchref", command.reference.as_str());
    observe::record_id("sku", command.sku.as_str());
    let created = BatchCreatedResponse {
        reference: command.reference.to_string(),
        sku: command.sku.to_string(),
        qty: command.qty.get(),
        eta: command.eta,
    };
    state.bus.handle(command).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The same payload as the `change_batch_quantity` Redis message.
#[derive(Debug, Deserialize, ToSchema)]
struct ChangeBatchQuantityRequest {
    #[schema(value_type = Identifier)]
    batchref: String,
    /// The batch's new purchased quantity.
    #[schema(value_type = Units)]
    qty: Units,
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchQuantityResponse {
    batchref: String,
    qty: u32,
}

#[utoipa::path(
    post,
    path = "/change_batch_quantity",
    tag = "allocation",
    request_body = ChangeBatchQuantityRequest,
    responses(
        (status = 200, description = "Changed; lines that no longer fit are deallocated and reallocated", body = BatchQuantityResponse),
        (status = 404, description = "No such batch", body = ErrorBody),
        InvalidBody,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn change_batch_quantity<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<ChangeBatchQuantityRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = ChangeBatchQuantity {
        reference: BatchRef::parse(&body.batchref)?,
        qty: body.qty.quantity()?,
    };
    observe::record_id("batchref", command.reference.as_str());
    let answer = BatchQuantityResponse {
        batchref: command.reference.to_string(),
        qty: command.qty.get(),
    };
    state.bus.handle(command).await?;
    Ok(Json(answer))
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchResponse {
    #[serde(rename = "ref")]
    reference: String,
    eta: Option<NaiveDate>,
    purchased: u64,
    allocated: u64,
    /// Set aside by checkout holds that live now.
    held: u64,
    /// Neither allocated nor held.
    available: u64,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProductResponse {
    sku: String,
    batches: Vec<BatchResponse>,
}

#[utoipa::path(
    get,
    path = "/products/{sku}/batches",
    tag = "allocation",
    params(("sku" = Identifier, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The product's batches in creation order, from the read model", body = ProductResponse),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn batches_of_product<S: ReadModel>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let sku = path_id(sku, "sku", Sku::parse)?;
    let batches = state.read_model.batches(&sku, state.bus.now()).await?;
    if batches.is_empty() {
        return Err(ApiError::NotFound(format!("Unknown sku {sku}")));
    }
    let batches = batches
        .into_iter()
        .map(|batch| BatchResponse {
            available: batch.available(),
            reference: batch.reference.to_string(),
            eta: batch.eta,
            purchased: batch.purchased,
            allocated: batch.allocated,
            held: batch.held,
        })
        .collect();
    Ok(Json(ProductResponse {
        sku: sku.to_string(),
        batches,
    }))
}
