//! What operators and their tools read: liveness and readiness probes,
//! Prometheus metrics and the OpenAPI document.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use service_layer::Store;
use service_layer::ports::{Outbox, ReadModel};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::openapi::documented;
use super::{ApiError, AppState, ErrorBody};

/// This resource's routes, with their descriptions and schemas.
pub fn routes<S: Store + ReadModel + Outbox>() -> OpenApiRouter<AppState<S>> {
    probe_routes().routes(documented::<__path_openapi_document, _, _, _>(
        openapi_document,
    ))
}

/// The probes and the metrics: what every process kind serves.
pub fn probe_routes<S: Store + ReadModel + Outbox>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(documented::<__path_healthz, _, _, _>(healthz))
        .routes(documented::<__path_readyz, _, _, _>(readyz::<S>))
        .routes(documented::<__path_prometheus_metrics, _, _, _>(
            prometheus_metrics::<S>,
        ))
}

#[derive(Debug, OpenApi)]
#[openapi(components(schemas(StatusResponse)))]
struct Schemas;

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
