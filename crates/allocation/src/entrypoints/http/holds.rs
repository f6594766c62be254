//! Checkout holds (beyond the book): setting stock aside while a customer
//! pays, keeping it longer, giving it back, and asking after it. An order
//! converts a hold through `POST /orders/<orderid>/allocate` (`orders`).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::HoldId;
use domain::commands::{ExtendHold, PlaceHold, ReleaseHold};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::ports::{HoldLineView, HoldState, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use super::input::{ApiJson, Identifier, path_id};
use super::openapi::{ReadRefusals, UnknownSku, WriteRefusals, documented};
use super::orders::{AllocatedLineResponse, PartResponse, RequestedLine, requested_lines};
use super::{ApiError, AppState, ErrorBody};

/// How long a hold lives unless the request says otherwise, and at most.
const DEFAULT_TTL_SECONDS: u64 = 900;
const MAX_TTL_SECONDS: u64 = service_layer::handlers::MAX_HOLD_TTL.as_secs();

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_place_hold, _, _, _>(place_hold::<S>))
        .routes(documented::<__path_hold, _, _, _>(hold::<S>))
        .routes(documented::<__path_extend_hold, _, _, _>(extend_hold::<S>))
        .routes(documented::<__path_release_hold, _, _, _>(
            release_hold::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(
    HoldRequest,
    PlacedHoldResponse,
    ExtendRequest,
    ExtendedResponse,
    HoldResponse
)))]
struct Schemas;

#[derive(Debug, Deserialize, ToSchema)]
struct HoldRequest {
    /// 1 to 100 lines, each SKU at most once.
    #[schema(min_items = 1, max_items = 100)]
    lines: Vec<RequestedLine>,
    /// How long the units stay set aside, in seconds.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 86400, default = 900)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct ExtendRequest {
    /// How long from now the units stay set aside, in seconds.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 86400, default = 900)]
    ttl_seconds: Option<u64>,
}

/// A time as the API writes it: RFC 3339, UTC, to the millisecond.
pub(super) fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The TTL a request asks for, within 1 second to a day.
fn ttl(seconds: Option<u64>) -> Result<Duration, ApiError> {
    match seconds.unwrap_or(DEFAULT_TTL_SECONDS) {
        seconds @ 1..=MAX_TTL_SECONDS => Ok(Duration::from_secs(seconds)),
        seconds => Err(ApiError::BadRequest(format!(
            "ttl_seconds must be from 1 to {MAX_TTL_SECONDS}, got {seconds}"
        ))),
    }
}

/// A hold just placed: its id, until when, and where each line's units are.
#[derive(Debug, Serialize, ToSchema)]
struct PlacedHoldResponse {
    hold_id: String,
    /// RFC 3339, UTC.
    expires_at: String,
    lines: Vec<AllocatedLineResponse>,
}

#[utoipa::path(
    post,
    path = "/holds",
    tag = "allocation",
    request_body = HoldRequest,
    responses(
        (status = 201, description = "Every line's units set aside, by the allocation policy", body = PlacedHoldResponse),
        (status = 409, description = "Refused whole, nothing held: lines short of stock (`short`, with what is available now)", body = super::error::ShortBody),
        UnknownSku,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn place_hold<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let command = PlaceHold {
        hold_id: HoldId::parse(&Uuid::new_v4().to_string())?,
        lines: requested_lines(&body.lines)?,
        ttl: ttl(body.ttl_seconds)?,
    };
    let hold_id = command.hold_id.to_string();
    let placed = state.bus.handle(command).await?;
    let answer = PlacedHoldResponse {
        hold_id,
        expires_at: rfc3339(placed.expires_at),
        lines: placed
            .lines
            .into_iter()
            .map(AllocatedLineResponse::from)
            .collect(),
    };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// A hold as it stands now.
#[derive(Debug, Serialize, ToSchema)]
struct HoldResponse {
    hold_id: String,
    /// RFC 3339, UTC.
    expires_at: String,
    /// `active`, `expired`, `released` or `converted`.
    status: &'static str,
    /// By SKU.
    lines: Vec<HoldLineResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
struct HoldLineResponse {
    sku: String,
    qty: u64,
    allocations: Vec<PartResponse>,
}

#[utoipa::path(
    get,
    path = "/holds/{hold_id}",
    tag = "allocation",
    params(("hold_id" = Identifier, Path, description = "The hold's id, as placing it answered")),
    responses(
        (status = 200, description = "The hold, with its status now", body = HoldResponse),
        (status = 404, description = "No hold was ever placed with this id", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn hold<S: ReadModel>(
    State(state): State<AppState<S>>,
    hold_id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let hold_id = path_id(hold_id, "hold_id", HoldId::parse)?;
    let Some(hold) = state.read_model.hold(&hold_id).await? else {
        return Err(ApiError::NotFound(format!("Unknown hold {hold_id}")));
    };
    let status = match hold.state {
        HoldState::Active if hold.expires_at <= state.bus.now() => "expired",
        HoldState::Active => "active",
        HoldState::Released => "released",
        HoldState::Converted => "converted",
    };
    Ok(Json(HoldResponse {
        hold_id: hold_id.to_string(),
        expires_at: rfc3339(hold.expires_at),
        status,
        lines: hold
            .lines
            .into_iter()
            .map(|HoldLineView { sku, qty, parts }| HoldLineResponse {
                sku: sku.to_string(),
                qty,
                allocations: parts.into_iter().map(PartResponse::from).collect(),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct ExtendedResponse {
    hold_id: String,
    /// RFC 3339, UTC: `ttl_seconds` from now.
    expires_at: String,
}

#[utoipa::path(
    post,
    path = "/holds/{hold_id}/extend",
    tag = "allocation",
    params(("hold_id" = Identifier, Path, description = "The hold's id")),
    request_body = ExtendRequest,
    responses(
        (status = 200, description = "The hold lives `ttl_seconds` from now", body = ExtendedResponse),
        (status = 404, description = "No hold was ever placed with this id", body = ErrorBody),
        (status = 410, description = "The hold expired, was released or became an order", body = ErrorBody),
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn extend_hold<S: Store>(
    State(state): State<AppState<S>>,
    hold_id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<ExtendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let hold_id = path_id(hold_id, "hold_id", HoldId::parse)?;
    let command = ExtendHold {
        hold_id: hold_id.clone(),
        ttl: ttl(body.ttl_seconds)?,
    };
    let expires_at = state.bus.handle(command).await?;
    Ok(Json(ExtendedResponse {
        hold_id: hold_id.to_string(),
        expires_at: rfc3339(expires_at),
    }))
}

#[utoipa::path(
    delete,
    path = "/holds/{hold_id}",
    tag = "allocation",
    params(("hold_id" = Identifier, Path, description = "The hold's id")),
    responses(
        (status = 204, description = "Released (or released already, or ended otherwise): its units are free"),
        (status = 404, description = "No hold was ever placed with this id", body = ErrorBody),
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn release_hold<S: Store>(
    State(state): State<AppState<S>>,
    hold_id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let hold_id = path_id(hold_id, "hold_id", HoldId::parse)?;
    state.bus.handle(ReleaseHold { hold_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
