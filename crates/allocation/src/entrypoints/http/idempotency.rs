//! Idempotency keys (docs/contract.md section 6.4): a `POST` sent again
//! with the same `Idempotency-Key`, route and body gets the first answer,
//! status and body, without running again; one that arrives while the
//! first still runs waits for it. The same key with another route or body
//! is refused (422). Without the header nothing changes.
//!
//! The answers are kept by the storage ([`IdempotencyKeys`]), so that every
//! instance sharing a database answers alike. A request runs to its end in
//! a task of its own, so that its answer is kept even when its client has
//! gone: the client's retry then finds it.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use service_layer::ports::{Claim, IdempotencyKeys};
use sha2::{Digest, Sha256};

use super::{ApiError, MAX_BODY_BYTES};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on an answer given again.
pub const REPLAYED: &str = "idempotent-replayed";

/// How long an answer is kept: at least a day.
const KEPT_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// A claim left running this long was abandoned by a process that died:
/// a request with its key takes it over. Far longer than any request may
/// run (`--request-timeout`).
const ABANDONED_AFTER: Duration = Duration::from_secs(120);

/// How often a repeat checks whether the first request has answered.
const WAITING_POLL: Duration = Duration::from_millis(20);

/// The middleware: passes through every request but a `POST` with the
/// header.
pub async fn replay<K: IdempotencyKeys>(
    State(keys): State<K>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let key = match valid_key(key) {
        Ok(key) => key,
        Err(refused) => return refused.into_response(),
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::Body {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: "request body too large or unreadable".into(),
        }
        .into_response();
    };
    let fingerprint = format!(
        "{} {} {:x}",
        parts.method,
        parts.uri.path(),
        Sha256::digest(&body)
    );
    let request = Request::from_parts(parts, Body::from(body));
    loop {
        let now = Utc::now();
        let claim = keys
            .claim(
                &key,
                &fingerprint,
                now,
                now - ABANDONED_AFTER,
                now - KEPT_FOR,
            )
            .await;
        match claim {
            Err(error) => return ApiError::Storage(error).into_response(),
            Ok(Claim::Claimed) => return run_and_keep(keys, key, request, next).await,
            Ok(
                Claim::Running { fingerprint: held }
                | Claim::Answered {
                    fingerprint: held, ..
                },
            ) if held != fingerprint => {
                return reused(&key).into_response();
            }
            Ok(Claim::Answered { status, body, .. }) => return replayed(status, body),
            // Bounded by the request's time limit, which wraps this.
            Ok(Claim::Running { .. }) => tokio::time::sleep(WAITING_POLL).await,
        }
    }
}

/// 1 to 255 printable ASCII characters.
fn valid_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if (1..=255).contains(&bytes.len()) && printable {
        Ok(String::from_utf8_lossy(bytes).into_owned())
    } else {
        Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 printable characters".into(),
        ))
    }
}

fn reused(key: &str) -> ApiError {
    ApiError::Body {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("Idempotency-Key {key} was used with another route or body"),
    }
}

fn replayed(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Runs the request in a task of its own and keeps its answer: final
/// answers for repeats, a 5xx (try again) given back so that a repeat runs
/// again.
async fn run_and_keep<K: IdempotencyKeys>(
    keys: K,
    key: String,
    request: Request,
    next: Next,
) -> Response {
    let running = tokio::spawn(async move {
        let (parts, body) = next.run(request).await.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let kept = if parts.status.is_server_error() {
            keys.abandon(&key).await
        } else {
            let text = String::from_utf8_lossy(&body);
            keys.complete(&key, parts.status.as_u16(), &text).await
        };
        if let Err(error) = kept {
            // The answer stands; a repeat will wait for the claim to be
            // taken over, then run again.
            tracing::warn!(%error, key, "the answer to an idempotent request was not kept");
        }
        Response::from_parts(parts, Body::from(body))
    });
    match running.await {
        Ok(response) => response,
        Err(error) => ApiError::Internal(Box::new(error)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::middleware::from_fn_with_state;
    use axum::routing::post;
    use service_layer::memory::MemoryStore;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    /// A route that counts its runs, answers 201 with the count, or 503
    /// while `failing`; and waits for `go` when told to.
    #[derive(Clone, Default)]
    struct Counter {
        runs: Arc<AtomicU32>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        gate: Option<Arc<Notify>>,
    }

    fn app(counter: Counter) -> Router {
        let handler = move || {
            let counter = counter.clone();
            async move {
                if let Some(gate) = &counter.gate {
                    gate.notified().await;
                }
                if counter.failing.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "{}".to_owned());
                }
                let run = counter.runs.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!("{{\"run\":{run}}}"))
            }
        };
        Router::new()
            .route("/things", post(handler.clone()).get(handler.clone()))
            .route("/other", post(handler))
            .layer(from_fn_with_state(
                MemoryStore::new(),
                replay::<MemoryStore>,
            ))
    }

    async fn send(app: &Router, path: &str, key: Option<&str>, body: &str) -> (u16, String, bool) {
        let mut request = Request::post(path);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        let request = request.body(Body::from(body.to_owned())).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key(REPLAYED);
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            String::from_utf8_lossy(&body).into_owned(),
            replayed,
        )
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_answer_without_running_again() {
        let counter = Counter::default();
        let app = app(counter.clone());
        let first = send(&app, "/things", Some("k1"), "{\"a\":1}").await;
        assert_eq!(first, (201, "{\"run\":1}".to_owned(), false));
        let again = send(&app, "/things", Some("k1"), "{\"a\":1}").await;
        assert_eq!(again, (201, "{\"run\":1}".to_owned(), true));
        assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
        // Without the header, or with another key, it runs.
        assert_eq!(
            send(&app, "/things", None, "{\"a\":1}").await.1,
            "{\"run\":2}"
        );
        assert_eq!(
            send(&app, "/things", Some("k2"), "{\"a\":1}").await.1,
            "{\"run\":3}"
        );
    }

    #[tokio::test]
    async fn the_same_key_with_another_body_or_route_is_refused() {
        let counter = Counter::default();
        let app = app(counter.clone());
        send(&app, "/things", Some("k1"), "{\"a\":1}").await;
        assert_eq!(send(&app, "/things", Some("k1"), "{\"a\":2}").await.0, 422);
        assert_eq!(send(&app, "/other", Some("k1"), "{\"a\":1}").await.0, 422);
        assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_runs_waits_for_its_answer() {
        let gate = Arc::new(Notify::new());
        let counter = Counter {
            gate: Some(gate.clone()),
            ..Counter::default()
        };
        let app = app(counter.clone());
        let first = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/things", Some("k1"), "{}").await }
        });
        let second = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/things", Some("k1"), "{}").await }
        });
        // Only the one that claimed the key reaches the route: let it go.
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.notify_one();
        let (first, second) = (first.await.expect("first"), second.await.expect("second"));
        assert_eq!((first.0, &first.1), (second.0, &second.1));
        assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
        assert!(first.2 != second.2, "one ran, one was given its answer");
    }

    #[tokio::test]
    async fn an_answer_to_try_again_is_not_kept() {
        let counter = Counter::default();
        counter.failing.store(true, Ordering::SeqCst);
        let app = app(counter.clone());
        assert_eq!(send(&app, "/things", Some("k1"), "{}").await.0, 503);
        counter.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            send(&app, "/things", Some("k1"), "{}").await,
            (201, "{\"run\":1}".to_owned(), false)
        );
    }

    #[tokio::test]
    async fn bad_keys_are_refused_and_other_methods_pass() {
        let counter = Counter::default();
        let app = app(counter.clone());
        let long = "k".repeat(256);
        for key in ["", long.as_str(), "tab\there"] {
            assert_eq!(
                send(&app, "/things", Some(key), "{}").await.0,
                400,
                "{key:?}"
            );
        }
        assert_eq!(counter.runs.load(Ordering::SeqCst), 0);
        for _ in 0..2 {
            let get = Request::get("/things")
                .header(IDEMPOTENCY_KEY, "k1")
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(get).await.expect("infallible");
        }
        assert_eq!(
            counter.runs.load(Ordering::SeqCst),
            2,
            "GET is never replayed"
        );
    }
}
