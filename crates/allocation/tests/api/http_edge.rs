//! The HTTP edge: the optional bearer token on write routes, the request
//! time limit, and the request span that carries the ids (in-process); the
//! settings of both on the real binary.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allocation::bootstrap::{OutboundAdapters, bootstrap};
use allocation::entrypoints::http::{AppState, HttpSettings, router_with};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use service_layer::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
use test_support::TestDatabase;
use tower::ServiceExt;

use crate::helpers::RunningApp;

const TOKEN: &str = "right-token";

fn app(settings: &HttpSettings) -> Router {
    app_over(MemoryStore::new(), settings)
}

fn app_over(store: MemoryStore, settings: &HttpSettings) -> Router {
    let outbound = OutboundAdapters {
        notifications: Arc::new(RecordingNotifications::new()),
        publisher: Arc::new(RecordingPublisher::new()),
    };
    let service = bootstrap(store.clone(), outbound);
    let state = AppState {
        bus: service.bus,
        read_model: store,
    };
    router_with(state, settings)
}

fn with_tokens(tokens: &str) -> HttpSettings {
    HttpSettings {
        api_tokens: Some(tokens.parse().expect("valid tokens")),
        ..HttpSettings::default()
    }
}

fn post(path: &str, body: &Value, token: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_string())).expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|value| value.to_str().expect("ASCII").to_owned());
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, challenge, body)
}

fn batch() -> Value {
    json!({ "ref": "b1", "sku": "LAMP", "qty": 10, "eta": null })
}

#[tokio::test]
async fn without_a_configured_token_writes_need_none() {
    let app = app(&HttpSettings::default());
    let (status, _, body) = send(&app, post("/add_batch", &batch(), None)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn with_a_token_writes_need_it_and_reads_stay_open() {
    let app = app(&with_tokens(TOKEN));
    for token in [None, Some("wrong-token"), Some("right-token-but-longer")] {
        let (status, challenge, body) = send(&app, post("/add_batch", &batch(), token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert!(body["message"].is_string(), "{body}");
    }
    let (status, _, _) = send(&app, get("/products/LAMP/batches")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "refused writes changed nothing"
    );

    let (status, _, body) = send(&app, post("/add_batch", &batch(), Some(TOKEN))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let line = json!({ "orderid": "o1", "sku": "LAMP", "qty": 1 });
    let (status, _, body) = send(&app, post("/allocate", &line, Some(TOKEN))).await;
    assert_eq!(
        (status, &body["batchref"]),
        (StatusCode::ACCEPTED, &json!("b1"))
    );

    for open in [
        "/allocations/o1",
        "/products/LAMP/batches",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
    ] {
        let response = app.clone().oneshot(get(open)).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn any_of_several_tokens_is_accepted_and_the_scheme_is_case_insensitive() {
    let app = app(&with_tokens("old-token,new-token"));
    let (status, _, body) = send(&app, post("/add_batch", &batch(), Some("old-token"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let request = Request::post("/add_batch")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "bearer new-token")
        .body(Body::from(batch().to_string()))
        .expect("request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_answered_503_in_json() {
    let limit = Duration::from_millis(200);
    let store = MemoryStore::new();
    let app = app_over(
        store.clone(),
        &HttpSettings {
            request_timeout: limit,
            ..HttpSettings::default()
        },
    );
    send(&app, post("/add_batch", &batch(), None)).await;
    // A database that stops answering: the allocation hangs in its commit,
    // as a request stuck on a slow dependency would.
    store.stall_commits();
    let line = json!({ "orderid": "o1", "sku": "LAMP", "qty": 1 });
    let started = std::time::Instant::now();
    let (status, _, body) = send(&app, post("/allocate", &line, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "{body}"
    );
    assert!(started.elapsed() >= limit);
    let (status, _, _) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "the service goes on");
}

/// A `tracing` writer into memory, to read the JSON log lines back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn log_lines_of_a_request_carry_its_route_and_ids() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded: the request runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests, on other threads, may have met the log line's callsite
    // while this subscriber was being registered, and cached "nobody wants
    // it" (tracing-core's per-callsite interest): ask again now.
    tracing::callsite::rebuild_interest_cache();

    let app = app(&HttpSettings::default());
    let unknown = json!({ "orderid": "order-7", "sku": "NO-SUCH-SKU", "qty": 1 });
    let (status, _, _) = send(&app, post("/allocate", &unknown, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let log = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let refused = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON log line"))
        .find(|line| line["fields"]["message"] == "request refused")
        .unwrap_or_else(|| panic!("no 'request refused' line in:\n{log}"));
    let span = &refused["span"];
    assert_eq!(span["name"], "request", "{refused}");
    assert_eq!(span["route"], "/allocate", "{refused}");
    assert_eq!(span["orderid"], "order-7", "{refused}");
    assert_eq!(span["sku"], "NO-SUCH-SKU", "{refused}");
}

#[tokio::test]
async fn the_binary_takes_its_token_from_the_command_line_and_never_logs_it() {
    let db = TestDatabase::sqlite();
    let secret = "binary-secret-token";
    let app = RunningApp::start_with(&db, &["--api-token", secret, "--request-timeout", "5"]).await;
    let url = format!("{}/add_batch", app.address);
    let refused = app
        .client
        .post(&url)
        .json(&batch())
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let accepted = app
        .client
        .post(&url)
        .bearer_auth(secret)
        .json(&batch())
        .send()
        .await
        .expect("sent");
    assert_eq!(accepted.status(), 201);
    assert_eq!(app.get("/products/LAMP/batches").await.0, 200);
    assert!(!app.log().text().contains(secret), "{}", app.log().text());
}
