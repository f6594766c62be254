//! End-to-end: the built binary over HTTP (book chapter 4's API tests, then
//! concurrency and a crash), each test run twice: against a temporary SQLite
//! file, and against a fresh PostgreSQL database when `DATABASE_URL` is a
//! `postgres://` URL (skipped otherwise; a failure under `CI=true`). Each
//! test takes its database, which outlives the processes it starts.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    happy_path_returns_202_and_allocated_batch,
    unhappy_path_returns_400_and_error_message,
    out_of_stock_is_accepted_with_no_batch,
    deallocating_and_shrinking_batches_show_in_the_product_query,
    concurrent_allocations_never_oversell,
    answered_allocations_survive_a_crash,
});

async fn happy_path_returns_202_and_allocated_batch(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, other_sku) = (unique("sku"), unique("other"));
    let (early, later, other) = (unique("early"), unique("later"), unique("other"));
    app.add_batch(&later, &sku, 100, Some("2011-01-02")).await;
    app.add_batch(&early, &sku, 100, Some("2011-01-01")).await;
    app.add_batch(&other, &other_sku, 100, None).await;

    let orderid = unique("order");
    let (status, body) = app
        .post(
            "/allocate",
            &json!({ "orderid": orderid, "sku": sku, "qty": 3 }),
        )
        .await;
    assert_eq!((status, &body), (202, &json!({ "batchref": early })));

    let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
    assert_eq!(
        (status, body),
        (200, json!([{ "sku": sku, "batchref": early }]))
    );
}

async fn unhappy_path_returns_400_and_error_message(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, orderid) = (unique("badsku"), unique("order"));
    let (status, body) = app
        .post(
            "/allocate",
            &json!({ "orderid": orderid, "sku": sku, "qty": 20 }),
        )
        .await;
    assert_eq!(
        (status, body),
        (400, json!({ "message": format!("Invalid sku {sku}") }))
    );

    let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
    assert_eq!(status, 404);
    assert!(body["message"].is_string());
}

async fn out_of_stock_is_accepted_with_no_batch(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 5, None).await;
    let (status, body) = app
        .post(
            "/allocate",
            &json!({ "orderid": unique("o"), "sku": sku, "qty": 6 }),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["batchref"], Value::Null);
    assert_eq!(
        body["message"],
        json!(format!("Out of stock for sku {sku}"))
    );
}

async fn deallocating_and_shrinking_batches_show_in_the_product_query(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    let (warehouse, shipment) = (unique("wh"), unique("ship"));
    app.add_batch(&warehouse, &sku, 10, None).await;
    app.add_batch(&shipment, &sku, 10, Some("2031-05-01")).await;
    let (first, second) = (unique("o"), unique("o"));
    for order in [&first, &second] {
        let (status, _) = app
            .post(
                "/allocate",
                &json!({ "orderid": order, "sku": sku, "qty": 5 }),
            )
            .await;
        assert_eq!(status, 202);
    }

    // Shrinking the warehouse batch bumps the latest order to the shipment.
    let (status, _) = app
        .post(
            "/change_batch_quantity",
            &json!({ "batchref": warehouse, "qty": 6 }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = app.get(&format!("/allocations/{second}")).await;
    assert_eq!(body, json!([{ "sku": sku, "batchref": shipment }]));

    // Cancelling the first order frees its stock; nothing moves into it.
    let (status, body) = app
        .post("/deallocate", &json!({ "orderid": first, "sku": sku }))
        .await;
    assert_eq!((status, &body["batchref"]), (200, &json!(warehouse)));
    let (status, _) = app.get(&format!("/allocations/{first}")).await;
    assert_eq!(status, 404);

    let (status, body) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["batches"],
        json!([
            { "ref": warehouse, "eta": null, "purchased": 6, "allocated": 0, "held": 0, "available": 6 },
            { "ref": shipment, "eta": "2031-05-01", "purchased": 10, "allocated": 5, "held": 0, "available": 5 },
        ])
    );
}

async fn concurrent_allocations_never_oversell(db: TestDatabase) {
    let app = Arc::new(RunningApp::start(&db).await);
    let skus: Vec<String> = (0..3).map(|_| unique("hot")).collect();
    for sku in &skus {
        app.add_batch(&unique("wh"), sku, 30, None).await;
        app.add_batch(&unique("ship"), sku, 20, Some("2030-01-01"))
            .await;
    }

    // 240 orders of 1 to 3 units for 150 units of stock: most run out.
    let requests = (0..240).map(|i| {
        let app = app.clone();
        let sku = skus[i % skus.len()].clone();
        let orderid = unique("order");
        let qty = 1 + i % 3;
        async move {
            let (status, body) = app
                .post(
                    "/allocate",
                    &json!({ "orderid": orderid, "sku": sku, "qty": qty }),
                )
                .await;
            (sku, orderid, qty, status, body)
        }
    });
    let answers = join_all(requests).await;

    let mut promised: HashMap<String, u64> = HashMap::new();
    for (sku, orderid, qty, status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        if let Some(batchref) = body["batchref"].as_str() {
            *promised.entry(batchref.to_owned()).or_default() += *qty as u64;
            let (_, view) = app.get(&format!("/allocations/{orderid}")).await;
            assert_eq!(view, json!([{ "sku": sku, "batchref": batchref }]));
        }
    }
    for sku in &skus {
        let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
        for batch in body["batches"].as_array().expect("batches") {
            let allocated = batch["allocated"].as_u64().expect("number");
            assert!(
                allocated <= batch["purchased"].as_u64().expect("number"),
                "{batch}"
            );
            let reference = batch["ref"].as_str().expect("ref");
            assert_eq!(
                allocated,
                promised.get(reference).copied().unwrap_or(0),
                "{batch}"
            );
        }
    }
    assert!(
        promised.values().sum::<u64>() >= 140,
        "nearly all stock went out: {promised:?}"
    );
}

async fn answered_allocations_survive_a_crash(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    let batch = unique("b");
    app.add_batch(&batch, &sku, 10, None).await;
    let orderid = unique("o");
    let (status, _) = app
        .post(
            "/allocate",
            &json!({ "orderid": orderid, "sku": sku, "qty": 4 }),
        )
        .await;
    assert_eq!(status, 202);

    app.kill().await;
    let app = RunningApp::start(&db).await;
    let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
    assert_eq!(
        (status, body),
        (200, json!([{ "sku": sku, "batchref": batch }]))
    );
}

#[tokio::test]
async fn a_bad_setting_stops_the_binary_with_one_clear_line() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_allocation"))
        .args(["serve", "--database-url", "mysql://u:secret@h/db"])
        .output()
        .await
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error:") && first.contains("unsupported database URL"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "passwords are never shown: {stderr}"
    );
}

#[tokio::test]
async fn help_documents_every_setting() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_allocation"))
        .args(["serve", "--help"])
        .output()
        .await
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "--database-url",
        "DATABASE_URL",
        "--bind",
        "127.0.0.1:5005",
        "--request-timeout",
        "ALLOCATION_REQUEST_TIMEOUT",
        "--api-token",
        "ALLOCATION_API_TOKEN",
    ] {
        assert!(help.contains(setting), "{setting} missing from:\n{help}");
    }
}
