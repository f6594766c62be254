//! Backorders end to end (docs/contract.md section 7.2), on the built binary
//! over HTTP and Redis, against SQLite and PostgreSQL: a SKU's settings, a
//! line waiting within the limit and refused beyond it, and waiting lines
//! filled by a new batch, by a cancel and by an expired hold, each
//! published as `line_allocated`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{BOUND, LineAllocated, RunningApp, unique, with_redis};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    settings_are_read_and_changed_and_bad_ones_refused,
    a_line_waits_within_the_limit_and_is_out_of_stock_beyond_it,
});

per_backend!(mod over_redis on [sqlite, postgres] via with_redis {
    backorders_are_filled_by_a_new_batch_a_cancel_and_an_expired_hold,
});

fn settings(sku: &str) -> String {
    format!("/products/{sku}/settings")
}

impl RunningApp {
    async fn status_of(&self, orderid: &str) -> Vec<(String, String)> {
        let (status, order) = self.get(&format!("/orders/{orderid}")).await;
        assert_eq!(status, 200, "{order}");
        order["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|line| {
                let sku = line["sku"].as_str().unwrap_or_default().to_owned();
                (sku, line["status"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    async fn backordered(&self, sku: &str) -> Value {
        let (status, figures) = self.get(&format!("/products/{sku}/availability")).await;
        assert_eq!(status, 200, "{figures}");
        figures["backordered"].clone()
    }
}

async fn settings_are_read_and_changed_and_bad_ones_refused(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("lamp");
    assert_eq!(app.get(&settings(&sku)).await.0, 404, "unknown SKU");
    let change = json!({ "backorder_limit": 5 });
    assert_eq!(app.put(&settings(&sku), &change).await.0, 404);
    app.add_batch(&unique("lamps"), &sku, 1, None).await;
    let defaults = json!({ "sku": sku, "backorder_limit": 0, "low_stock_threshold": 0 });
    assert_eq!(app.get(&settings(&sku)).await, (200, defaults));

    let (status, changed) = app.put(&settings(&sku), &change).await;
    let expected = json!({ "sku": sku, "backorder_limit": 5, "low_stock_threshold": 0 });
    assert_eq!((status, &changed), (200, &expected));
    let threshold = json!({ "low_stock_threshold": 2 });
    let (_, changed) = app.put(&settings(&sku), &threshold).await;
    assert_eq!(changed["backorder_limit"], 5, "left out: kept");
    assert_eq!(changed["low_stock_threshold"], 2);

    for bad in [
        json!({ "backorder_limit": -1 }),
        json!({ "backorder_limit": 1.5 }),
        json!({ "backorder_limit": "5" }),
        json!({ "backorder_limit": 1_000_000_001_u64 }),
        json!({ "backorder_limit": 1, "colour": "red" }),
        json!({}),
        json!([]),
    ] {
        let (status, refused) = app.put(&settings(&sku), &bad).await;
        assert_eq!(status, 400, "{bad}: {refused}");
        assert!(refused["message"].is_string(), "{refused}");
    }
    let (_, unchanged) = app.get(&settings(&sku)).await;
    assert_eq!(unchanged["backorder_limit"], 5);
    assert_eq!(unchanged["low_stock_threshold"], 2);
}

async fn a_line_waits_within_the_limit_and_is_out_of_stock_beyond_it(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, chair) = (unique("lamp"), unique("chair"));
    app.add_batch(&unique("lamps"), &sku, 2, None).await;
    app.add_batch(&unique("chairs"), &chair, 5, None).await;
    app.put(&settings(&sku), &json!({ "backorder_limit": 6 }))
        .await;

    let waiting = unique("waiting");
    let line = json!({ "orderid": waiting, "sku": sku, "qty": 4 });
    let (status, answer) = app.post("/allocate", &line).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["batchref"], Value::Null);
    assert_eq!(answer["backordered"], true);
    assert!(answer["message"].is_string(), "{answer}");
    assert_eq!(
        app.post("/allocate", &line).await,
        (202, answer),
        "sent again"
    );
    assert_eq!(
        app.status_of(&waiting).await,
        [(sku.clone(), "backordered".to_owned())]
    );
    assert_eq!(app.backordered(&sku).await, 4);

    let order = unique("order");
    let lines = json!({ "lines": [{ "sku": chair, "qty": 1 }, { "sku": sku, "qty": 2 }] });
    let (status, placed) = app.post(&format!("/orders/{order}/allocate"), &lines).await;
    assert_eq!(status, 202, "{placed}");
    assert_eq!(placed["lines"][0]["status"], "allocated");
    assert_eq!(
        placed["lines"][1],
        json!({ "sku": sku, "qty": 2, "status": "allocated",
                "allocations": [placed["lines"][1]["allocations"][0].clone()] }),
        "the two in stock are allocated, not backordered"
    );

    let beyond = json!({ "orderid": unique("beyond"), "sku": sku, "qty": 3 });
    let (status, refused) = app.post("/allocate", &beyond).await;
    assert_eq!(status, 202, "{refused}");
    assert_eq!(refused["backordered"], Value::Null, "absent: out of stock");
    assert_eq!(
        refused["message"],
        json!(format!("Out of stock for sku {sku}"))
    );
    let short_order = json!({ "lines": [{ "sku": sku, "qty": 3 }] });
    let (status, short) = app
        .post(
            &format!("/orders/{}/allocate", unique("short")),
            &short_order,
        )
        .await;
    assert_eq!(status, 409, "{short}");
    assert_eq!(app.backordered(&sku).await, 4);
    app.log()
        .wait_for(&format!("Out of stock for {sku}"), 1)
        .await;
    assert_eq!(
        app.log().count(&format!("Out of stock for {sku}")),
        1,
        "one email, for the line beyond the limit; none for the waiting one"
    );

    let withdraw = json!({ "orderid": waiting, "sku": sku });
    let (status, withdrawn) = app.post("/deallocate", &withdraw).await;
    assert_eq!(status, 200, "{withdrawn}");
    assert_eq!(
        (&withdrawn["batchref"], &withdrawn["allocations"]),
        (&Value::Null, &json!([]))
    );
    assert_eq!(app.get(&format!("/orders/{waiting}")).await.0, 404);
    assert_eq!(app.backordered(&sku).await, 0);
}

/// Polls until `orderid`'s only line shows `status`.
async fn wait_for_status(app: &RunningApp, orderid: &str, status: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let lines = app.status_of(orderid).await;
        if lines.iter().all(|(_, s)| s == status) {
            return;
        }
        assert!(Instant::now() < deadline, "{orderid}: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backorders_are_filled_by_a_new_batch_a_cancel_and_an_expired_hold(
    db: TestDatabase,
    redis: String,
) {
    let app = RunningApp::start_with(&db, &["--redis-url", &redis]).await;
    let mut published = LineAllocated::subscribe(&redis).await;
    let sku = unique("lamp");
    let home = unique("home");
    app.add_batch(&home, &sku, 2, None).await;
    app.put(&settings(&sku), &json!({ "backorder_limit": 100 }))
        .await;
    let taker = unique("taker");
    assert_eq!(app.allocate(&taker, &sku, 2).await.as_deref(), Some(&*home));
    published.next_for(&[&sku]).await;

    // A new batch.
    let first = unique("first");
    assert_eq!(app.allocate(&first, &sku, 3).await, None);
    let ship = unique("ship");
    app.add_batch(&ship, &sku, 3, None).await;
    let message = published.next_for(&[&sku]).await;
    assert_eq!(
        (&message["orderid"], &message["batchref"], &message["qty"]),
        (&json!(first), &json!(ship), &json!(3))
    );
    assert_eq!(
        app.status_of(&first).await,
        [(sku.clone(), "allocated".to_owned())]
    );

    // A cancel.
    let second = unique("second");
    assert_eq!(app.allocate(&second, &sku, 2).await, None);
    let (status, _) = app
        .post(&format!("/orders/{taker}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let message = published.next_for(&[&sku]).await;
    assert_eq!(
        (&message["orderid"], &message["batchref"]),
        (&json!(second), &json!(home))
    );
    assert_eq!(app.backordered(&sku).await, 0);

    // An expired hold: its units go to the waiting line before the next
    // allocation can take them.
    app.add_batch(&unique("more"), &sku, 1, None).await;
    let (status, hold) = app
        .post(
            "/holds",
            &json!({ "lines": [{ "sku": sku, "qty": 1 }], "ttl_seconds": 1 }),
        )
        .await;
    assert_eq!(status, 201, "{hold}");
    let third = unique("third");
    assert_eq!(app.allocate(&third, &sku, 1).await, None);
    let deadline = Instant::now() + BOUND;
    loop {
        let (_, figures) = app.get(&format!("/products/{sku}/availability")).await;
        if figures["held"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hold never expired: {figures}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newcomer = unique("newcomer");
    assert_eq!(
        app.allocate(&newcomer, &sku, 1).await,
        None,
        "the waiting line came first"
    );
    wait_for_status(&app, &third, "allocated").await;
    let message = published.next_for(&[&sku]).await;
    assert_eq!(message["orderid"], json!(third));
    assert_eq!(
        app.status_of(&newcomer).await,
        [(sku.clone(), "backordered".to_owned())]
    );
}
