//! Bad input never produces a 5xx and never changes state (docs/contract.md
//! section 2): every case is answered 4xx with a JSON `{"message"}`.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use domain::{OrderId, Sku};
use serde_json::{Value, json};
use service_layer::memory::MemoryStore;
use service_layer::ports::ReadModel;
use tower::ServiceExt;

use crate::helpers::in_process_app;

const SKU: &str = "STEADY-LAMP";
const BATCH: &str = "steady-batch";

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("valid request")
}

fn post_json(path: &str, body: &str) -> Request<Body> {
    post(path, "application/json", body.to_owned())
}

/// An app holding one batch with one allocation, to check nothing moves.
async fn seeded_app() -> (axum::Router, MemoryStore) {
    let (app, store) = in_process_app();
    let batch = json!({ "ref": BATCH, "sku": SKU, "qty": 10, "eta": null }).to_string();
    assert_eq!(
        send(&app, post_json("/add_batch", &batch)).await.0,
        StatusCode::CREATED
    );
    let line = json!({ "orderid": "o1", "sku": SKU, "qty": 2 }).to_string();
    assert_eq!(
        send(&app, post_json("/allocate", &line)).await.0,
        StatusCode::ACCEPTED
    );
    (app, store)
}

async fn snapshot(store: &MemoryStore) -> String {
    let sku = Sku::parse(SKU).expect("sku");
    let batches = store
        .batches(&sku, chrono::Utc::now())
        .await
        .expect("query");
    let allocations = store
        .allocations(&OrderId::parse("o1").expect("id"))
        .await
        .expect("query");
    format!("{batches:?} {allocations:?}")
}

async fn assert_refused(
    app: &axum::Router,
    store: &MemoryStore,
    request: Request<Body>,
    expected: StatusCode,
) {
    let before = snapshot(store).await;
    let description = format!("{} {}", request.method(), request.uri());
    let (status, body) = send(app, request).await;
    assert_eq!(status, expected, "{description}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{description}: {body}"
    );
    assert_eq!(snapshot(store).await, before, "{description} changed state");
}

fn long_id() -> String {
    "x".repeat(256)
}

#[tokio::test]
async fn malformed_bodies_are_refused_on_every_write_route() {
    let (app, store) = seeded_app().await;
    for path in [
        "/add_batch",
        "/allocate",
        "/deallocate",
        "/change_batch_quantity",
    ] {
        for body in ["", "{", "[]", "null", "42", "{\"orderid\": }", "\u{0}"] {
            assert_refused(&app, &store, post_json(path, body), StatusCode::BAD_REQUEST).await;
        }
        assert_refused(
            &app,
            &store,
            post(path, "text/plain", "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        let oversized = format!("{{\"pad\": \"{}\"}}", "x".repeat(64 * 1024));
        assert_refused(
            &app,
            &store,
            post_json(path, &oversized),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    }
}

#[tokio::test]
async fn bad_batches_are_refused() {
    let (app, store) = seeded_app().await;
    let long = long_id();
    let cases = [
        json!({ "sku": "S", "qty": 1, "eta": null }),
        json!({ "ref": "b", "qty": 1 }),
        json!({ "ref": "b", "sku": "S" }),
        json!({ "ref": 7, "sku": "S", "qty": 1 }),
        json!({ "ref": "b", "sku": "S", "qty": "1" }),
        json!({ "ref": "b", "sku": "S", "qty": 0 }),
        json!({ "ref": "b", "sku": "S", "qty": -3 }),
        json!({ "ref": "b", "sku": "S", "qty": 1.5 }),
        json!({ "ref": "b", "sku": "S", "qty": 1e30 }),
        json!({ "ref": "b", "sku": "S", "qty": 1_000_000_001 }),
        json!({ "ref": "b", "sku": "S", "qty": u64::MAX }),
        json!({ "ref": "", "sku": "S", "qty": 1 }),
        json!({ "ref": "b", "sku": "", "qty": 1 }),
        json!({ "ref": long, "sku": "S", "qty": 1 }),
        json!({ "ref": "b", "sku": long, "qty": 1 }),
        json!({ "ref": "b", "sku": "S", "qty": 1, "eta": "2026-02-30" }),
        json!({ "ref": "b", "sku": "S", "qty": 1, "eta": "tomorrow" }),
        json!({ "ref": "b", "sku": "S", "qty": 1, "eta": 20260101 }),
    ];
    for case in cases {
        assert_refused(
            &app,
            &store,
            post_json("/add_batch", &case.to_string()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}

/// The document states quantities as JSON Schema `integer`s, which include
/// `3.0` and `1e1`: a client generated from it may send those, so they are
/// taken as the whole numbers they are. A fraction is still refused (above).
#[tokio::test]
async fn whole_numbers_written_as_floats_are_quantities() {
    let (app, store) = seeded_app().await;
    let batch = r#"{"ref": "float-batch", "sku": "STEADY-LAMP", "qty": 20.0, "eta": null}"#;
    let (status, body) = send(&app, post_json("/add_batch", batch)).await;
    assert_eq!(
        (status, &body["qty"]),
        (StatusCode::CREATED, &json!(20)),
        "{body}"
    );
    let line = r#"{"orderid": "float-order", "sku": "STEADY-LAMP", "qty": 3.0}"#;
    let (status, body) = send(&app, post_json("/allocate", line)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["batchref"].is_string(), "{body}");
    let change = r#"{"batchref": "float-batch", "qty": 1e1}"#;
    let (status, body) = send(&app, post_json("/change_batch_quantity", change)).await;
    assert_eq!(
        (status, &body["qty"]),
        (StatusCode::OK, &json!(10)),
        "{body}"
    );

    let sku = Sku::parse(SKU).expect("sku");
    let batches = store
        .batches(&sku, chrono::Utc::now())
        .await
        .expect("query");
    let changed = batches
        .iter()
        .find(|batch| batch.reference.as_str() == "float-batch")
        .expect("the batch was added");
    assert_eq!(changed.purchased, 10);
    let allocated: u64 = batches.iter().map(|batch| batch.allocated).sum();
    assert_eq!(allocated, 2 + 3);
}

#[tokio::test]
async fn a_reference_reused_with_different_data_is_a_conflict() {
    let (app, store) = seeded_app().await;
    let body = json!({ "ref": BATCH, "sku": SKU, "qty": 11, "eta": null }).to_string();
    assert_refused(
        &app,
        &store,
        post_json("/add_batch", &body),
        StatusCode::CONFLICT,
    )
    .await;
    let other_sku = json!({ "ref": BATCH, "sku": "OTHER", "qty": 10, "eta": null }).to_string();
    assert_refused(
        &app,
        &store,
        post_json("/add_batch", &other_sku),
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn bad_order_lines_are_refused() {
    let (app, store) = seeded_app().await;
    let long = long_id();
    let cases = [
        json!({ "sku": SKU, "qty": 1 }),
        json!({ "orderid": "o2", "qty": 1 }),
        json!({ "orderid": "o2", "sku": SKU }),
        json!({ "orderid": 2, "sku": SKU, "qty": 1 }),
        json!({ "orderid": "o2", "sku": SKU, "qty": 0 }),
        json!({ "orderid": "o2", "sku": SKU, "qty": -1 }),
        json!({ "orderid": "o2", "sku": SKU, "qty": 0.5 }),
        json!({ "orderid": "o2", "sku": SKU, "qty": 1e300 }),
        json!({ "orderid": "o2", "sku": SKU, "qty": i64::MAX }),
        json!({ "orderid": "", "sku": SKU, "qty": 1 }),
        json!({ "orderid": long, "sku": SKU, "qty": 1 }),
        json!({ "orderid": "o2", "sku": "NOPE", "qty": 1 }),
        json!({ "orderid": "o\u{7}2", "sku": SKU, "qty": 1 }),
    ];
    for case in cases {
        assert_refused(
            &app,
            &store,
            post_json("/allocate", &case.to_string()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let other_quantity = json!({ "orderid": "o1", "sku": SKU, "qty": 3 }).to_string();
    assert_refused(
        &app,
        &store,
        post_json("/allocate", &other_quantity),
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn bad_deallocations_and_quantity_changes_are_refused() {
    let (app, store) = seeded_app().await;
    let bad_requests = [
        ("/deallocate", json!({ "orderid": "o1" })),
        ("/deallocate", json!({ "orderid": "", "sku": SKU })),
        ("/deallocate", json!({ "orderid": "o1", "sku": "NOPE" })),
        ("/change_batch_quantity", json!({ "batchref": BATCH })),
        (
            "/change_batch_quantity",
            json!({ "batchref": BATCH, "qty": 0 }),
        ),
        (
            "/change_batch_quantity",
            json!({ "batchref": BATCH, "qty": -5 }),
        ),
        (
            "/change_batch_quantity",
            json!({ "batchref": BATCH, "qty": 2.5 }),
        ),
        (
            "/change_batch_quantity",
            json!({ "batchref": "", "qty": 5 }),
        ),
    ];
    for (path, body) in bad_requests {
        assert_refused(
            &app,
            &store,
            post_json(path, &body.to_string()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let not_found = [
        (
            "/deallocate",
            json!({ "orderid": "never-allocated", "sku": SKU }),
        ),
        (
            "/change_batch_quantity",
            json!({ "batchref": "no-such-batch", "qty": 5 }),
        ),
    ];
    for (path, body) in not_found {
        assert_refused(
            &app,
            &store,
            post_json(path, &body.to_string()),
            StatusCode::NOT_FOUND,
        )
        .await;
    }
}

#[tokio::test]
async fn bad_queries_and_routes_are_answered_in_json() {
    let (app, store) = seeded_app().await;
    let get = |uri: String| {
        Request::get(uri)
            .body(Body::empty())
            .expect("valid request")
    };
    assert_refused(
        &app,
        &store,
        get(format!("/allocations/{}", long_id())),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_refused(
        &app,
        &store,
        get("/allocations/unknown".into()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_refused(
        &app,
        &store,
        get("/products/UNKNOWN/batches".into()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_refused(
        &app,
        &store,
        get("/no/such/route".into()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_refused(
        &app,
        &store,
        get("/allocate".into()),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}

#[tokio::test]
async fn health_probes_answer() {
    let (app, _) = in_process_app();
    for path in ["/healthz", "/readyz"] {
        let request = Request::get(path)
            .body(Body::empty())
            .expect("valid request");
        let (status, _) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}
