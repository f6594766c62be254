//! The HTTP API (axum): the book's three routes exactly as its clients know
//! them, plus deallocation, batch quantity changes, whole orders, checkout
//! holds, the product query and health probes (docs/contract.md sections 2
//! and 6).
//!
//! Writes go through the message bus; reads go straight to the read model
//! (CQRS, book chapter 12). Every error is rendered once, by [`ApiError`].
//!
//! Each resource module registers its routes together with their
//! `#[utoipa::path]` descriptions (see [`openapi::documented`]); this module
//! only composes them and adds the layers every route shares. The OpenAPI
//! document at `GET /openapi.json` is thus derived from the same lists as
//! the router and cannot leave a route out.

mod allocations;
mod auth;
mod availability;
mod batches;
mod error;
mod holds;
mod idempotency;
mod input;
mod ledger;
mod observe;
mod openapi;
mod operations;
mod orders;
pub mod server;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use service_layer::MessageBus;
use service_layer::Store;
use service_layer::ports::{IdempotencyKeys, Outbox, ReadModel};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

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
pub fn router<S: Store + ReadModel + Outbox + IdempotencyKeys>(state: AppState<S>) -> Router {
    router_with(state, &HttpSettings::default())
}

/// The whole API, ready to serve.
pub fn router_with<S: Store + ReadModel + Outbox + IdempotencyKeys>(
    state: AppState<S>,
    settings: &HttpSettings,
) -> Router {
    let (routes, mut document) = documented_routes::<S>().split_for_parts();
    openapi::declare_idempotency_keys(&mut document);
    // Installed now, so that the first scrape already has every `# HELP`.
    crate::metrics::prometheus();
    // Inside the token check: a refused request claims no key.
    let routes = routes.layer(from_fn_with_state(
        state.read_model.clone(),
        idempotency::replay::<S>,
    ));
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

/// Only the probes and the metrics (`/healthz`, `/readyz`, `/metrics`):
/// what `consume` and `relay`, which take no requests, serve.
pub fn probes_router<S: Store + ReadModel + Outbox>(state: AppState<S>) -> Router {
    crate::metrics::prometheus();
    let (routes, _) = operations::probe_routes::<S>().split_for_parts();
    routes
        .fallback(|| async { ApiError::NotFound("No such route".into()) })
        .layer(from_fn(observe::record_request))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .with_state(state)
}

/// Every route of the API with its OpenAPI description, resource by
/// resource. A new resource module is added here, and nowhere else.
fn documented_routes<S: Store + ReadModel + Outbox>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(batches::routes())
        .merge(allocations::routes())
        .merge(orders::routes())
        .merge(holds::routes())
        .merge(ledger::routes())
        .merge(availability::routes())
        .merge(settings::routes())
        .merge(operations::routes())
}
