//! The HTTP API (axum): the book's three routes exactly as its clients know
//! them, plus deallocation, batch quantity changes, the product query and
//! health probes (docs/contract.md section 2).
//!
//! Writes go through the message bus; reads go straight to the read model
//! (CQRS, book chapter 12). Every error is rendered once, by [`ApiError`].
//!
//! Each route is registered together with its `#[utoipa::path]` description
//! (see [`documented`]), so the OpenAPI document at `GET /openapi.json` is
//! derived from the same list as the router and cannot leave a route out.

mod auth;
mod error;
mod observe;
mod openapi;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use axum::{Json, Router};
use chrono::NaiveDate;
use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::{BatchRef, OrderId, Quantity, Sku, ValueError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service_layer::ports::{AllocationView, Outbox, ReadModel};
use service_layer::{MessageBus, Store};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa::openapi::path::Paths;
use utoipa_axum::PathItemExt;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

pub use auth::ApiTokens;
pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;

/// Request bodies are a few hundred bytes; anything near this is abuse.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler can reach: the bus for writes, the read model for reads.
#[derive(Debug, Clone)]
pub struct AppState<S> {
    pub bus: Arc<MessageBus<S>>,
    pub read_model: S,
}

/// Limits and access control (`serve --request-timeout`, `--api-token`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    /// `None`: no authentication.
    pub api_tokens: Option<ApiTokens>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            api_tokens: None,
        }
    }
}

/// The whole API with the default settings, ready to serve.
pub fn router<S: Store + ReadModel + Outbox>(state: AppState<S>) -> Router {
    router_with(state, &HttpSettings::default())
}

/// The whole API, ready to serve.
pub fn router_with<S: Store + ReadModel + Outbox>(
    state: AppState<S>,
    settings: &HttpSettings,
) -> Router {
    let (routes, document) = documented_routes::<S>().split_for_parts();
    // Installed now, so that the first scrape already has every `# HELP`.
    crate::metrics::prometheus();
    let routes = match settings.api_tokens.clone() {
        Some(tokens) => routes.layer(from_fn_with_state(tokens, auth::require_token)),
        None => routes,
    };
    // Outermost last: the span, then the metrics (which see the final
    // status, 401 and 503 included), the time limit, the token check.
    routes
        .fallback(|| async { ApiError::NotFound("No such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Body {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "Method not allowed on this route".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(Arc::new(document)))
        .layer(from_fn_with_state(
            settings.request_timeout,
            observe::time_limit,
        ))
        .layer(from_fn(observe::record_request))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .with_state(state)
}

/// Every route of the API with its OpenAPI description: one list for both,
/// so that no route is served undocumented. Add routes here, nowhere else.
fn documented_routes<S: Store + ReadModel + Outbox>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(documented::<__path_add_batch, _, _, _>(add_batch::<S>))
        .routes(documented::<__path_allocate, _, _, _>(allocate::<S>))
        .routes(documented::<__path_allocations_of_order, _, _, _>(
            allocations_of_order::<S>,
        ))
        .routes(documented::<__path_deallocate, _, _, _>(deallocate::<S>))
        .routes(documented::<__path_change_batch_quantity, _, _, _>(
            change_batch_quantity::<S>,
        ))
        .routes(documented::<__path_batches_of_product, _, _, _>(
            batches_of_product::<S>,
        ))
        .routes(documented::<__path_healthz, _, _, _>(healthz))
        .routes(documented::<__path_readyz, _, _, _>(readyz::<S>))
        .routes(documented::<__path_prometheus_metrics, _, _, _>(
            prometheus_metrics::<S>,
        ))
        .routes(documented::<__path_openapi_document, _, _, _>(
            openapi_document,
        ))
}

/// A handler served at the path and methods its `#[utoipa::path]` names,
/// with that description for the document: what `utoipa_axum::routes!`
/// does, for handlers that are generic over the store (which the macro
/// cannot name). Schemas are listed in [`ApiDoc`].
fn documented<P, H, T, S>(handler: H) -> UtoipaMethodRouter<S>
where
    P: utoipa::Path,
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let methods = P::methods();
    let method_router = methods.iter().fold(MethodRouter::new(), |router, method| {
        router.on(method.to_method_filter(), handler.clone())
    });
    let mut paths = Paths::new();
    paths.add_path_operation(P::path(), methods, P::operation());
    (Vec::new(), paths, method_router)
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

/// Quantities arrive as any JSON integer, so that zero, negative and huge
/// ones are refused with a message rather than by the JSON decoder.
#[derive(Debug, Deserialize, ToSchema)]
struct AddBatchRequest {
    /// The batch reference (1 to 255 characters).
    #[serde(rename = "ref")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    reference: String,
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    sku: String,
    /// Units purchased: a positive integer.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    qty: i64,
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
        (status = 400, description = "Invalid body or value", body = ErrorBody),
        (status = 409, description = "The reference exists with different data", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (only with --api-token)", body = ErrorBody),
        (status = 503, description = "Concurrent changes kept conflicting, the database is unavailable, or the request timed out; try again", body = ErrorBody),
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
        qty: quantity(body.qty)?,
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

#[derive(Debug, Deserialize, ToSchema)]
struct AllocateRequest {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    orderid: String,
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    sku: String,
    /// Units ordered: a positive integer.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    qty: i64,
}

/// `batchref` is `null` when no batch has enough stock; `message` says so.
#[derive(Debug, Serialize, ToSchema)]
struct AllocateResponse {
    batchref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[utoipa::path(
    post,
    path = "/allocate",
    tag = "book",
    request_body = AllocateRequest,
    responses(
        (status = 202, description = "Allocated to `batchref`, or out of stock (`batchref` null)", body = AllocateResponse),
        (status = 400, description = "Invalid body or value, or `Invalid sku <sku>` for an unknown SKU", body = ErrorBody),
        (status = 409, description = "The order line is already allocated", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (only with --api-token)", body = ErrorBody),
        (status = 503, description = "Concurrent changes kept conflicting, the database is unavailable, or the request timed out; try again", body = ErrorBody),
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
        qty: quantity(body.qty)?,
    };
    observe::record_id("orderid", command.orderid.as_str());
    observe::record_id("sku", command.sku.as_str());
    let sku = command.sku.clone();
    let answer = match state.bus.handle(command).await? {
        Some(batchref) => AllocateResponse {
            batchref: Some(batchref.to_string()),
            message: None,
        },
        None => AllocateResponse {
            batchref: None,
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
    params(("orderid" = String, Path, description = "The order's id", min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")),
    responses(
        (status = 200, description = "The order's allocations, from the read model", body = Vec<AllocationResponse>),
        (status = 400, description = "Invalid order id", body = ErrorBody),
        (status = 404, description = "The order has no allocations", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or the request timed out; try again", body = ErrorBody),
    )
)]
async fn allocations_of_order<S: ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(orderid) = orderid?;
    let orderid = OrderId::parse(&orderid)?;
    observe::record_id("orderid", orderid.as_str());
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
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    orderid: String,
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    sku: String,
}

/// The line that was freed, and the batch it was allocated to.
#[derive(Debug, Serialize, ToSchema)]
struct DeallocatedResponse {
    orderid: String,
    sku: String,
    batchref: String,
}

#[utoipa::path(
    post,
    path = "/deallocate",
    tag = "allocation",
    request_body = DeallocateRequest,
    responses(
        (status = 200, description = "Deallocated; waiting lines may now be reallocated", body = DeallocatedResponse),
        (status = 400, description = "Invalid body or value, or unknown SKU", body = ErrorBody),
        (status = 404, description = "The order has no line for this SKU", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (only with --api-token)", body = ErrorBody),
        (status = 503, description = "Concurrent changes kept conflicting, the database is unavailable, or the request timed out; try again", body = ErrorBody),
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
    let batchref = state.bus.handle(command).await?;
    Ok(Json(DeallocatedResponse {
        orderid,
        sku,
        batchref: batchref.to_string(),
    }))
}

/// The same payload as the `change_batch_quantity` Redis message.
#[derive(Debug, Deserialize, ToSchema)]
struct ChangeBatchQuantityRequest {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    batchref: String,
    /// The batch's new purchased quantity: a positive integer.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    qty: i64,
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
        (status = 400, description = "Invalid body or value", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (only with --api-token)", body = ErrorBody),
        (status = 503, description = "Concurrent changes kept conflicting, the database is unavailable, or the request timed out; try again", body = ErrorBody),
    ),
    security((), ("api_token" = []))
)]
async fn change_batch_quantity<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<ChangeBatchQuantityRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = ChangeBatchQuantity {
        reference: BatchRef::parse(&body.batchref)?,
        qty: quantity(body.qty)?,
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
    params(("sku" = String, Path, description = "The product's SKU", min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")),
    responses(
        (status = 200, description = "The product's batches in creation order, from the read model", body = ProductResponse),
        (status = 400, description = "Invalid SKU", body = ErrorBody),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or the request timed out; try again", body = ErrorBody),
    )
)]
async fn batches_of_product<S: ReadModel>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(sku) = sku?;
    let sku = Sku::parse(&sku)?;
    observe::record_id("sku", sku.as_str());
    let batches = state.read_model.batches(&sku).await?;
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
        })
        .collect();
    Ok(Json(ProductResponse {
        sku: sku.to_string(),
        batches,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct StatusResponse {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is alive", body = StatusResponse))
)]
async fn healthz() -> impl IntoResponse {
    Json(StatusResponse { status: "ok" })
}

/// Readiness: the database answers reads, and a write transaction can
/// begin and commit, each within [`READINESS_BOUND`]. A database can answer
/// reads while every write waits (a writer stuck holding SQLite's lock,
/// connections stuck in a transaction): such an instance must leave the
/// load balancer too.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers reads and takes writes", body = StatusResponse),
        (status = 503, description = "The database does not answer, or cannot take a write now", body = ErrorBody),
    )
)]
async fn readyz<S: Store + ReadModel>(
    State(state): State<AppState<S>>,
) -> Result<impl IntoResponse, ApiError> {
    let probe = async {
        state.read_model.ping().await?;
        state.read_model.check_writable().await
    };
    match tokio::time::timeout(READINESS_BOUND, probe).await {
        Ok(Ok(())) => Ok(Json(StatusResponse { status: "ready" })),
        Ok(Err(error)) => Err(ApiError::Unavailable(format!(
            "database unavailable: {error}"
        ))),
        Err(_) => Err(ApiError::Unavailable(format!(
            "database did not take a write within {READINESS_BOUND:?}"
        ))),
    }
}

/// How long `/readyz` waits for the database. Short: a probe that hangs is
/// an answer too, and load balancers give up after a second or two.
const READINESS_BOUND: Duration = Duration::from_secs(2);

/// This document: every route, its bodies and its errors.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
async fn openapi_document(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> impl IntoResponse {
    Json(document)
}

/// Prometheus metrics. The outbox gauges are sampled now, from the store,
/// so that they are exact at each scrape and cost nothing between scrapes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"))
)]
async fn prometheus_metrics<S: Outbox>(State(state): State<AppState<S>>) -> impl IntoResponse {
    use crate::metrics::{OUTBOX_MESSAGES, OUTBOX_OLDEST_AGE};
    match state.read_model.backlog().await {
        Ok(backlog) => {
            metrics::gauge!(OUTBOX_MESSAGES).set(backlog.messages as f64);
            let age = backlog.oldest_age.unwrap_or_default();
            metrics::gauge!(OUTBOX_OLDEST_AGE).set(age.as_secs_f64());
        }
        // The other series are still worth serving; the gauges keep their
        // last value and the log says why.
        Err(error) => tracing::warn!(%error, "cannot sample the outbox for /metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::prometheus().render(),
    )
}
