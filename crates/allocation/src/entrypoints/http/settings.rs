//! A SKU's settings (docs/contract.md section 7.2): how many units may wait
//! as backorders, and below how many available units it is low on stock.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use domain::commands::ChangeSettings;
use domain::{Settings, Sku};
use serde::{Deserialize, Serialize};
use service_layer::Store;
use service_layer::ports::ReadModel;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::input::{ApiJson, Identifier, Whole, count, path_id};
use super::openapi::{InvalidBody, ReadRefusals, WriteRefusals, documented};
use super::{ApiError, AppState, ErrorBody, observe};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_settings, _, _, _>(settings::<S>))
        .routes(documented::<__path_change_settings, _, _, _>(
            change_settings::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(SettingsRequest, SettingsResponse)))]
struct Schemas;

/// Either or both (not neither); one left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    /// Units that may wait as backorders at once; 0 (the default): none,
    /// a line no batch can take is out of stock.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    backorder_limit: Option<Whole>,
    /// Below how many available units the SKU is low on stock; 0 (the
    /// default): never.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    low_stock_threshold: Option<Whole>,
}

#[derive(Debug, Serialize, ToSchema)]
struct SettingsResponse {
    sku: String,
    backorder_limit: u64,
    low_stock_threshold: u64,
}

impl SettingsResponse {
    fn of(sku: &Sku, settings: Settings) -> Self {
        Self {
            sku: sku.to_string(),
            backorder_limit: settings.backorder_limit,
            low_stock_threshold: settings.low_stock_threshold,
        }
    }
}

#[utoipa::path(
    get,
    path = "/products/{sku}/settings",
    tag = "stock",
    params(("sku" = Identifier, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The SKU's settings (0 and 0 until changed)", body = SettingsResponse),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        ReadRefusals,
    )
)]
async fn settings<S: ReadModel>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let sku = path_id(sku, "sku", Sku::parse)?;
    let Some(settings) = state.read_model.settings(&sku).await? else {
        return Err(ApiError::NotFound(format!("Unknown sku {sku}")));
    };
    Ok(Json(SettingsResponse::of(&sku, settings)))
}

#[utoipa::path(
    put,
    path = "/products/{sku}/settings",
    tag = "stock",
    params(("sku" = Identifier, Path, description = "The product's SKU")),
    request_body = SettingsRequest,
    responses(
        (status = 200, description = "Changed: the SKU's settings now. A lower backorder limit withdraws no waiting backorder; it stops new ones until fewer units wait", body = SettingsResponse),
        (status = 400, description = "Invalid body: neither setting, or one below 0 or above 1 000 000 000", body = ErrorBody),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        InvalidBody,
        WriteRefusals,
    ),
    security((), ("api_token" = []))
)]
async fn change_settings<S: Store>(
    State(state): State<AppState<S>>,
    sku: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<SettingsRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let sku = path_id(sku, "sku", Sku::parse)?;
    observe::record_id("sku", sku.as_str());
    if body.backorder_limit.is_none() && body.low_stock_threshold.is_none() {
        let wanted = "give backorder_limit, low_stock_threshold or both";
        return Err(ApiError::BadRequest(wanted.to_owned()));
    }
    let setting = |value: Option<Whole>, field| value.map(|Whole(n)| count(n, field)).transpose();
    let command = ChangeSettings {
        sku: sku.clone(),
        backorder_limit: setting(body.backorder_limit, "backorder_limit")?,
        low_stock_threshold: setting(body.low_stock_threshold, "low_stock_threshold")?,
    };
    let settings = state.bus.handle(command).await?;
    Ok(Json(SettingsResponse::of(&sku, settings)))
}
