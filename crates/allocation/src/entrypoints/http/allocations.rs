//! Order lines and their allocations: allocating one (the book's `POST
//! /allocate`), an order's allocations (the book's query), and deallocating.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use domain::commands::{Allocate, Deallocate};
use domain::{Allocation, OrderId, Sku};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::ports::{AllocationView, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::input::{ApiJson, Identifier, Units, path_id};
use super::openapi::{ReadRefusals, UnknownSku, WriteRefusals, documented};
use super::orders::PartResponse;
use super::{ApiError, AppState, ErrorBody, observe};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_allocate, _, _, _>(allocate::<S>))
        .routes(documented::<__path_allocations_of_order, _, _, _>(
            allocations_of_order::<S>,
        ))
        .routes(documented::<__path_deallocate, _, _, _>(deallocate::<S>))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(
    AllocateRequest,
    AllocateResponse,
    AllocationResponse,
    DeallocateRequest,
    DeallocatedResponse,
)))]
struct Schemas;

#[derive(Debug, Deserialize, ToSchema)]
struct AllocateRequest {
    #[schema(value_type = Identifier)]
    orderid: String,
    #[schema(value_type = Identifier)]
    sku: String,
    /// Units ordered.
    #[schema(value_type = Units)]
    qty: Units,
}

/// `batchref` is `null` when no batch has enough stock; `message` says
/// so, and `backordered` (present only then) whether the line waits for
/// stock as a backorder.
#[derive(Debug, Serialize, ToSchema)]
struct AllocateResponse {
    batchref: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    backordered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[utoipa::path(
    post,
    path = "/allocate",
    tag = "book",
    request_body = AllocateRequest,
    responses(
        (status = 202, description = "Allocated to `batchref`; or backordered, or out of stock (`batchref` null)", body = AllocateResponse),
        (status = 409, description = "The order line is already allocated or backordered, with another quantity", body = ErrorBody),
        UnknownSku,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn allocate<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<AllocateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = Allocate {
        orderid: OrderId::parse(&body.orderid)?,
        sku: Sku::parse(&body.sku)?,
        qty: body.qty.quantity()?,
    };
    observe::record_id("orderid", command.orderid.as_str());
    observe::record_id("sku", command.sku.as_str());
    let sku = command.sku.clone();
    let answer = match state.bus.handle(command).await? {
        Allocation::Batch(batchref) => AllocateResponse {
            batchref: Some(batchref.to_string()),
            backordered: false,
            message: None,
        },
        Allocation::Backordered => AllocateResponse {
            batchref: None,
            backordered: true,
            message: Some(format!(
                "Backordered: {sku} will be allocated when stock arrives"
            )),
        },
        Allocation::OutOfStock => AllocateResponse {
            batchref: None,
            backordered: false,
            message: Some(format!("Out of stock for sku {sku}")),
        },
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[derive(Debug, Serialize, ToSchema)]
struct AllocationResponse {
    sku: String,
    batchref: String,
}

#[utoipa::path(
    get,
    path = "/allocations/{orderid}",
    tag = "book",
    params(("orderid" = Identifier, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order's allocations, from the read model", body = Vec<AllocationResponse>),
        (status = 404, description = "The order has no allocations", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn allocations_of_order<S: ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let orderid = path_id(orderid, "orderid", OrderId::parse)?;
    let rows = state.read_model.allocations(&orderid).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "Order {orderid} has no allocations"
        )));
    }
    let rows: Vec<_> = rows
        .into_iter()
        .map(|AllocationView { sku, batchref }| AllocationResponse {
            sku: sku.to_string(),
            batchref: batchref.to_string(),
        })
        .collect();
    Ok(Json(rows))
}

#[derive(Debug, Deserialize, ToSchema)]
struct DeallocateRequest {
    #[schema(value_type = Identifier)]
    orderid: String,
    #[schema(value_type = Identifier)]
    sku: String,
}

/// The line that was freed, and the batch it was allocated to: the first,
/// if it was split over several (`allocations` lists them all); `null`,
/// with no allocations, for a line that was waiting as a backorder.
#[derive(Debug, Serialize, ToSchema)]
struct DeallocatedResponse {
    orderid: String,
    sku: String,
    batchref: Option<String>,
    allocations: Vec<PartResponse>,
}

#[utoipa::path(
    post,
    path = "/deallocate",
    tag = "allocation",
    request_body = DeallocateRequest,
    responses(
        (status = 200, description = "Deallocated, its units free for waiting backorders; or, waiting as a backorder itself, withdrawn", body = DeallocatedResponse),
        (status = 404, description = "The order has no line for this SKU", body = ErrorBody),
        UnknownSku,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn deallocate<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<DeallocateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = Deallocate {
        orderid: OrderId::parse(&body.orderid)?,
        sku: Sku::parse(&body.sku)?,
    };
    observe::record_id("orderid", command.orderid.as_str());
    observe::record_id("sku", command.sku.as_str());
    let (orderid, sku) = (command.orderid.to_string(), command.sku.to_string());
    let parts = state.bus.handle(command).await?;
    let batchref = parts.first().map(|part| part.batchref.to_string());
    Ok(Json(DeallocatedResponse {
        orderid,
        sku,
        batchref,
        allocations: parts.into_iter().map(PartResponse::from).collect(),
    }))
}
