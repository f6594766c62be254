//! The HTTP API (axum): the book's three routes exactly as its clients know
//! them, plus deallocation, batch quantity changes, the product query and
//! health probes (CONTRACT.md section 2).
//!
//! Writes go through the message bus; reads go straight to the read model
//! (CQRS, book chapter 12). Every error is rendered once, by [`ApiError`].

mod error;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::{BatchRef, OrderId, Quantity, Sku, ValueError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_layer::ports::{AllocationView, ReadModel};
use service_layer::{MessageBus, Store};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// Request bodies are a few hundred bytes; anything near this is abuse.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler can reach: the bus for writes, the read model for reads.
#[derive(Debug)]
pub struct AppState<S> {
    pub bus: Arc<MessageBus<S>>,
    pub read_model: S,
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            read_model: self.read_model.clone(),
        }
    }
}

/// The whole API, ready to serve.
pub fn router<S: Store + ReadModel>(state: AppState<S>) -> Router {
    Router::new()
        .route("/add_batch", post(add_batch::<S>))
        .route("/allocate", post(allocate::<S>))
        .route("/allocations/{orderid}", get(allocations_of_order::<S>))
        .route("/deallocate", post(deallocate::<S>))
        .route("/change_batch_quantity", post(change_batch_quantity::<S>))
        .route("/products/{sku}/batches", get(batches_of_product::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .fallback(|| async { ApiError::NotFound("No such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Body {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "Method not allowed on this route".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `axum::Json`, with its rejections rendered as our JSON errors.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

fn quantity(value: i64) -> Result<Quantity, ValueError> {
    Quantity::parse(value.into(), "qty")
}

#[derive(Debug, Deserialize)]
struct AddBatchRequest {
    #[serde(rename = "ref")]
    reference: String,
    sku: String,
    qty: i64,
    #[serde(default)]
    eta: Option<NaiveDate>,
}

#[derive(Debug, Serialize)]
struct BatchCreatedResponse {
    #[serde(rename = "ref")]
    reference: String,
    sku: String,
    qty: u32,
    eta: Option<NaiveDate>,
}

async fn add_batch<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<AddBatchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = CreateBatch {
        reference: BatchRef::parse(&body.reference)?,
        sku: Sku::parse(&body.sku)?,
        qty: quantity(body.qty)?,
        eta: body.eta,
    };
    let created = BatchCreatedResponse {
        reference: command.reference.to_string(),
        sku: command.sku.to_string(),
        qty: command.qty.get(),
        eta: command.eta,
    };
    state.bus.handle(command).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Deserialize)]
struct AllocateRequest {
    orderid: String,
    sku: String,
    qty: i64,
}

async fn allocate<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<AllocateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = Allocate {
        orderid: OrderId::parse(&body.orderid)?,
        sku: Sku::parse(&body.sku)?,
        qty: quantity(body.qty)?,
    };
    let sku = command.sku.clone();
    let answer = match state.bus.handle(command).await? {
        Some(batchref) => json!({ "batchref": batchref.as_str() }),
        None => json!({ "batchref": null, "message": format!("Out of stock for sku {sku}") }),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[derive(Debug, Serialize)]
struct AllocationResponse {
    sku: String,
    batchref: String,
}

async fn allocations_of_order<S: ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(orderid) = orderid.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let orderid = OrderId::parse(&orderid)?;
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

#[derive(Debug, Deserialize)]
struct DeallocateRequest {
    orderid: String,
    sku: String,
}

async fn deallocate<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<DeallocateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = Deallocate {
        orderid: OrderId::parse(&body.orderid)?,
        sku: Sku::parse(&body.sku)?,
    };
    let (orderid, sku) = (command.orderid.to_string(), command.sku.to_string());
    let batchref = state.bus.handle(command).await?;
    Ok(Json(
        json!({ "orderid": orderid, "sku": sku, "batchref": batchref.as_str() }),
    ))
}

/// The same payload as the `change_batch_quantity` Redis message.
#[derive(Debug, Deserialize)]
struct ChangeBatchQuantityRequest {
    batchref: String,
    qty: i64,
}

async fn change_batch_quantity<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<ChangeBatchQuantityRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = ChangeBatchQuantity {
        reference: BatchRef::parse(&body.batchref)?,
        qty: quantity(body.qty)?,
    };
    let answer = json!({ "batchref": command.reference.as_str(), "qty": command.qty.get() });
    state.bus.handle(command).await?;
    Ok(Json(answer))
}

#[derive(Debug, Serialize)]
struct BatchResponse {
    #[serde(rename = "ref")]
    reference: String,
    eta: Option<NaiveDate>,
    purchased: u64,
    allocated: u64,
    available: u64,
}

async fn batches_of_product<S: ReadModel>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(sku) = sku.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let sku = Sku::parse(&sku)?;
    let batches = state.read_model.batches(&sku).await?;
    if batches.is_empty() {
        return Err(ApiError::NotFound(format!("Unknown sku {sku}")));
    }
    let batches: Vec<_> = batches
        .into_iter()
        .map(|batch| BatchResponse {
            available: batch.available(),
            reference: batch.reference.to_string(),
            eta: batch.eta,
            purchased: batch.purchased,
            allocated: batch.allocated,
        })
        .collect();
    Ok(Json(json!({ "sku": sku.as_str(), "batches": batches })))
}

/// Liveness: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers too.
async fn readyz<S: ReadModel>(
    State(state): State<AppState<S>>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .read_model
        .ping()
        .await
        .map_err(|error| ApiError::Unavailable(format!("database unreachable: {error}")))?;
    Ok(Json(json!({ "status": "ready" })))
}
