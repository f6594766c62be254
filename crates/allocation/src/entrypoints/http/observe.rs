//! What the HTTP API tells operators: a span per request (with the ids the
//! handlers add to it), request counts and latencies by route template, and
//! the request timeout answered like every other error.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Span;
use tracing::field::Empty;

use super::ApiError;
use crate::metrics::{HTTP_REQUEST_DURATION, HTTP_REQUESTS};

/// The route template (`/allocations/{orderid}`), never the raw path: ids
/// would make a series per order. Requests no route matched share one label.
fn route_of(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// A label for the method, from a fixed set whatever the client sends.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The span each request is handled in. Handlers record the ids they parse
/// (`orderid`, `sku`, `batchref`) into it, so every log line of the request
/// carries them.
pub fn request_span(request: &Request) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route_of(request),
        orderid = Empty,
        sku = Empty,
        batchref = Empty,
    )
}

/// Counts each request and records its latency, by method, route and status.
pub async fn record_request(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = route_of(&request).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    // Labels given with `=>` are moved in; a `&'static str` is not copied.
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method, "route" => route, "status" => status)
        .record(started.elapsed());
    response
}

/// Answers 503 with a JSON message when the handler takes longer than
/// `limit`. The handler is dropped: a command cut short either rolled back
/// or committed, and since commands are idempotent a retry is safe.
pub async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "Request timed out after {} s; it may have taken effect",
            limit.as_secs_f64()
        ))
        .into_response(),
    }
}

/// Adds one of a handler's parsed ids (`orderid`, `sku`, `batchref`) to
/// the current request's span.
pub fn record_id(field: &'static str, value: &str) {
    Span::current().record(field, value);
}
