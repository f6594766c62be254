//! One HTTP request through the real router, in-process over the in-memory
//! store: whatever the method, path, content type and body, the service
//! answers without panicking and never with a 5xx; every refusal is JSON
//! with a string `message` and changes nothing; no batch is over-allocated.
//!
//! Shared by the `http_request` fuzz target and the API tests
//! (`crates/allocation/tests/api/fuzz_inputs.rs`).

use std::sync::Arc;

use allocation::bootstrap::{OutboundAdapters, bootstrap};
use allocation::entrypoints::http::{AppState, router};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, header};
use chrono::NaiveDate;
use domain::commands::{Allocate, CreateBatch};
use domain::{BatchRef, OrderId, Quantity, Sku};
use serde_json::Value;
use service_layer::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
use service_layer::ports::ReadModel;
use tower::ServiceExt;

/// The product the app holds before each request: warehouse stock and a
/// shipment, with one order allocated.
pub const SKU: &str = "FUZZ-LAMP";
pub const STOCK: &str = "fuzz-stock";
pub const SHIPMENT: &str = "fuzz-shipment";
pub const ORDER: &str = "fuzz-order";

/// A fuzz input as a request: `METHOD PATH` on the first line, the content
/// type on the second (empty: no header), the body after it. `None` when it
/// is not a request an HTTP server could hand to the router (an invalid
/// method, target or header value is refused by the server before that).
pub fn parse(input: &[u8]) -> Option<Request<Body>> {
    let (request_line, content_type, body) = lines(input);
    let space = request_line.iter().position(|&byte| byte == b' ')?;
    let method = Method::from_bytes(&request_line[..space]).ok()?;
    let mut request = Request::builder()
        .method(method)
        .uri(&request_line[space + 1..]);
    if !content_type.is_empty() {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.body(Body::from(body.to_vec())).ok()
}

/// The request line, the content type and the body of a fuzz input.
fn lines(input: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut lines = input.splitn(3, |&byte| byte == b'\n');
    let mut next = || lines.next().unwrap_or_default();
    (next(), next(), next())
}

/// The same request as a fuzz input: what [`parse`] takes apart.
pub fn join(method: &str, target: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut input = format!("{method} {target}\n{content_type}\n").into_bytes();
    input.extend_from_slice(body);
    input
}

/// Sends one fuzz input to a freshly seeded app and checks the answer;
/// panics (a finding for libFuzzer, a failure for a test) when the service
/// misbehaves.
pub async fn check(input: &[u8]) {
    let Some(request) = parse(input) else {
        return;
    };
    let described = format!("{} {}", request.method(), request.uri());
    let head = request.method() == Method::HEAD;
    let (_, _, body) = lines(input);
    let body_sku = named_sku(body);
    let (app, store) = seeded_app().await;
    let before = snapshot(&store);

    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    };
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_else(|error| panic!("{described}: the answer's body failed: {error}"));
    let text = String::from_utf8_lossy(&bytes);

    assert!(
        !status.is_server_error(),
        "{described}: answered {status}: {text}"
    );
    if !status.is_success() {
        assert!(
            snapshot(&store) == before,
            "{described}: refused with {status}, but the state changed"
        );
        // A HEAD answer has no body, by definition.
        if !head {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|body| body.get("message").cloned());
            assert!(
                matches!(message, Some(Value::String(_))),
                "{described}: refused with {status} without a JSON message: {text}"
            );
        }
    }
    for sku in std::iter::once(SKU.to_owned()).chain(body_sku) {
        check_not_over_allocated(&store, &sku, &described).await;
    }
}

/// The whole store (products, read model, outbox) as text: equal snapshots
/// mean nothing changed. A hash map iterates in the same order as long as
/// it is not modified, so an unchanged store prints the same.
fn snapshot(store: &MemoryStore) -> String {
    format!("{store:?}")
}

/// The SKU a JSON body names, if any: a request may create or change a
/// product other than the seeded one.
fn named_sku(body: &[u8]) -> Option<String> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("sku")?.as_str().map(str::to_owned)
}

async fn check_not_over_allocated(store: &MemoryStore, sku: &str, described: &str) {
    let Ok(sku) = Sku::parse(sku) else {
        return;
    };
    let batches = store
        .batches(&sku, chrono::Utc::now())
        .await
        .unwrap_or_else(|error| panic!("the memory store failed: {error}"));
    for batch in batches {
        assert!(
            batch.allocated <= batch.purchased,
            "{described}: batch {} over-allocated: {} of {}",
            batch.reference,
            batch.allocated,
            batch.purchased
        );
    }
}

/// The app over a fresh in-memory store, seeded through the bus.
pub async fn seeded_app() -> (Router, MemoryStore) {
    let store = MemoryStore::new();
    let outbound = OutboundAdapters {
        notifications: Arc::new(RecordingNotifications::new()),
        publisher: Arc::new(RecordingPublisher::new()),
    };
    let service = bootstrap(store.clone(), outbound);
    let sku = Sku::parse(SKU).expect("a valid sku");
    let shipment_due = NaiveDate::from_ymd_opt(2030, 1, 1);
    for (reference, units, eta) in [(STOCK, 10, None), (SHIPMENT, 20, shipment_due)] {
        let batch = CreateBatch {
            reference: BatchRef::parse(reference).expect("a valid reference"),
            sku: sku.clone(),
            qty: Quantity::parse(units, "qty").expect("a valid quantity"),
            eta,
        };
        service.bus.handle(batch).await.expect("seeding a batch");
    }
    let line = Allocate {
        orderid: OrderId::parse(ORDER).expect("a valid order id"),
        sku,
        qty: Quantity::parse(3, "qty").expect("a valid quantity"),
    };
    service
        .bus
        .handle(line)
        .await
        .expect("seeding an allocation");
    let app = router(AppState {
        bus: service.bus,
        read_model: store.clone(),
    });
    (app, store)
}
