//! Whole orders (beyond the book): allocating every line of an order or
//! none, and an order's lines with where they stand.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use domain::commands::{AllocateOrder, CancelOrder, ShipOrder};
use domain::{HoldId, OrderId, OrderLines, Part, Sku};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::handlers::AllocatedLine;
use service_layer::ports::{LineStatus, OrderLineView, PartView, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::error::ShortBody;
use super::input::{ApiJson, Identifier, Units, path_id};
use super::openapi::{ReadRefusals, UnknownSku, WriteRefusals, documented};
use super::{ApiError, AppState, ErrorBody};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_allocate_order, _, _, _>(
            allocate_order::<S>,
        ))
        .routes(documented::<__path_order, _, _, _>(order::<S>))
        .routes(documented::<__path_ship_order, _, _, _>(ship_order::<S>))
        .routes(documented::<__path_cancel_order, _, _, _>(
            cancel_order::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(
    OrderRequest,
    RequestedLine,
    OrderResponse,
    OrderedLineResponse,
    AllocatedLineResponse,
    OrderLinesResponse,
    OrderLineResponse,
    ShipRequest,
    PartResponse,
    ShortBody,
    super::error::ShortLine,
)))]
struct Schemas;

#[derive(Debug, Deserialize, ToSchema)]
struct OrderRequest {
    /// 1 to 100 lines, each SKU at most once.
    #[schema(min_items = 1, max_items = 100)]
    lines: Vec<RequestedLine>,
    /// Whether a line no single batch can take may be spread over several
    /// batches, in the order the allocation policy prefers them.
    #[serde(default)]
    #[schema(default = false)]
    split: bool,
    /// A live checkout hold of exactly these lines, to convert into the
    /// order's allocation; an expired one is ignored.
    #[serde(default)]
    #[schema(value_type = Option<Identifier>)]
    hold_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct RequestedLine {
    #[schema(value_type = Identifier)]
    sku: String,
    #[schema(value_type = Units)]
    qty: Units,
}

/// The lines a request lists, as the domain takes them: 1 to 100, no SKU
/// twice (an order's, or a hold's).
pub(super) fn requested_lines(lines: &[RequestedLine]) -> Result<OrderLines, ApiError> {
    let lines = lines
        .iter()
        .map(|line| Ok((Sku::parse(&line.sku)?, line.qty.quantity()?)))
        .collect::<Result<Vec<_>, domain::ValueError>>()?;
    Ok(OrderLines::new(lines)?)
}

/// Every line of the order, in the order the request listed them.
#[derive(Debug, Serialize, ToSchema)]
struct OrderResponse {
    orderid: String,
    lines: Vec<OrderedLineResponse>,
}

/// A line of an order just allocated: on its batches, or waiting for
/// stock as a backorder (`status` `backordered`, no allocations).
#[derive(Debug, Serialize, ToSchema)]
struct OrderedLineResponse {
    sku: String,
    qty: u32,
    #[schema(pattern = "^(allocated|backordered)$")]
    status: &'static str,
    allocations: Vec<PartResponse>,
}

impl From<AllocatedLine> for OrderedLineResponse {
    fn from(line: AllocatedLine) -> Self {
        let status = if line.is_backordered() {
            "backordered"
        } else {
            "allocated"
        };
        let AllocatedLineResponse {
            sku,
            qty,
            allocations,
        } = line.into();
        Self {
            sku,
            qty,
            status,
            allocations,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AllocatedLineResponse {
    sku: String,
    qty: u32,
    allocations: Vec<PartResponse>,
}

impl From<AllocatedLine> for AllocatedLineResponse {
    fn from(AllocatedLine { sku, qty, parts }: AllocatedLine) -> Self {
        Self {
            sku: sku.to_string(),
            qty: qty.get(),
            allocations: parts.into_iter().map(PartResponse::from).collect(),
        }
    }
}

/// Units of a line on one batch.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PartResponse {
    batchref: String,
    qty: u64,
}

impl From<Part> for PartResponse {
    fn from(part: Part) -> Self {
        Self {
            batchref: part.batchref.to_string(),
            qty: part.qty.get().into(),
        }
    }
}

impl From<PartView> for PartResponse {
    fn from(PartView { batchref, qty }: PartView) -> Self {
        Self {
            batchref: batchref.to_string(),
            qty,
        }
    }
}

#[utoipa::path(
    post,
    path = "/orders/{orderid}/allocate",
    tag = "allocation",
    params(("orderid" = Identifier, Path, description = "The order's id")),
    request_body = OrderRequest,
    responses(
        (status = 202, description = "Every line allocated, or backordered within its SKU's limit (or, sent again, the first answer)", body = OrderResponse),
        (status = 409, description = "Refused whole, nothing allocated: lines short of stock (`short`, with what is available now), or a line already allocated with another quantity", body = ShortBody),
        UnknownSku,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn allocate_order<S: Store>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<OrderRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let orderid = path_id(orderid, "orderid", OrderId::parse)?;
    let command = AllocateOrder {
        orderid: orderid.clone(),
        lines: requested_lines(&body.lines)?,
        split: body.split,
        hold_id: body.hold_id.as_deref().map(HoldId::parse).transpose()?,
    };
    let lines = state.bus.handle(command).await?;
    let answer = OrderResponse {
        orderid: orderid.to_string(),
        lines: lines.into_iter().map(OrderedLineResponse::from).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// An order's lines, by SKU.
#[derive(Debug, Serialize, ToSchema)]
struct OrderLinesResponse {
    orderid: String,
    lines: Vec<OrderLineResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
struct OrderLineResponse {
    sku: String,
    qty: u64,
    /// `allocated`, `shipped` or `cancelled`.
    status: &'static str,
    allocations: Vec<PartResponse>,
}

#[utoipa::path(
    get,
    path = "/orders/{orderid}",
    tag = "allocation",
    params(("orderid" = Identifier, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order's lines, allocated through any route, by SKU", body = OrderLinesResponse),
        (status = 404, description = "No line of this order is known", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn order<S: ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let orderid = path_id(orderid, "orderid", OrderId::parse)?;
    Ok(Json(order_as_it_stands(&state.read_model, &orderid).await?))
}

/// The order as `GET /orders/<orderid>` shows it; 404 when none of its
/// lines is known.
async fn order_as_it_stands<S: ReadModel>(
    read_model: &S,
    orderid: &OrderId,
) -> Result<OrderLinesResponse, ApiError> {
    let lines = read_model.order(orderid).await?;
    if lines.is_empty() {
        return Err(ApiError::NotFound(format!("Order {orderid} is not known")));
    }
    let lines = lines
        .into_iter()
        .map(
            |OrderLineView {
                 sku,
                 qty,
                 status,
                 parts,
             }| OrderLineResponse {
                sku: sku.to_string(),
                qty,
                status: match status {
                    LineStatus::Allocated => "allocated",
                    LineStatus::Backordered => "backordered",
                    LineStatus::Shipped => "shipped",
                    LineStatus::Cancelled => "cancelled",
                },
                allocations: parts.into_iter().map(PartResponse::from).collect(),
            },
        )
        .collect();
    Ok(OrderLinesResponse {
        orderid: orderid.to_string(),
        lines,
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
struct ShipRequest {
    /// The SKUs whose lines ship; every allocated line of the order when
    /// left out.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Identifier>>)]
    skus: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/orders/{orderid}/ship",
    tag = "allocation",
    params(("orderid" = Identifier, Path, description = "The order's id")),
    request_body = ShipRequest,
    responses(
        (status = 200, description = "The lines left the warehouse (or had already): the order as it stands", body = OrderLinesResponse),
        (status = 404, description = "No line of this order is known, or none of a SKU asked for", body = ErrorBody),
        (status = 409, description = "Nothing shipped: a line is on a batch that has not arrived, or was cancelled", body = ErrorBody),
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn ship_order<S: Store + ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let orderid = path_id(orderid, "orderid", OrderId::parse)?;
    // No body at all means every line, as `{}` does.
    let body: ShipRequest = if body.is_empty() {
        ShipRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::BadRequest(format!("invalid body: {error}")))?
    };
    let skus = body
        .skus
        .unwrap_or_default()
        .iter()
        .map(|sku| Sku::parse(sku))
        .collect::<Result<Vec<_>, _>>()?;
    let command = ShipOrder {
        orderid: orderid.clone(),
        skus,
    };
    state.bus.handle(command).await?;
    Ok(Json(order_as_it_stands(&state.read_model, &orderid).await?))
}

#[utoipa::path(
    post,
    path = "/orders/{orderid}/cancel",
    tag = "allocation",
    params(("orderid" = Identifier, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Every line not shipped is cancelled, its stock free (and not reallocated): the order as it stands", body = OrderLinesResponse),
        (status = 404, description = "No line of this order is known", body = ErrorBody),
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn cancel_order<S: Store + ReadModel>(
    State(state): State<AppState<S>>,
    orderid: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let orderid = path_id(orderid, "orderid", OrderId::parse)?;
    state
        .bus
        .handle(CancelOrder {
            orderid: orderid.clone(),
        })
        .await?;
    Ok(Json(order_as_it_stands(&state.read_model, &orderid).await?))
}
