//! Checkout holds end to end (docs/contract.md section 6.2), on the built
//! binary over HTTP and Redis, against SQLite and PostgreSQL: placed, read,
//! extended, released, converted by an order, and blocking every other
//! allocation until the moment they expire.

use std::time::{Duration, Instant};

use adapters::messages::ALLOCATE;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{BOUND, RunningApp, publish, unique, with_redis};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    a_hold_is_placed_read_extended_and_released,
    an_order_converts_exactly_the_held_units,
    bad_holds_are_refused_and_hold_nothing,
});

per_backend!(mod over_redis on [sqlite, postgres] via with_redis {
    a_hold_blocks_http_and_redis_allocations_until_it_expires,
});

fn time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    assert!(text.ends_with('Z'), "UTC: {text}");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

async fn batch(app: &RunningApp, sku: &str) -> Value {
    let (status, body) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(status, 200, "{body}");
    body["batches"][0].clone()
}

async fn a_hold_is_placed_read_extended_and_released(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, lamps) = (unique("lamp"), unique("lamps"));
    app.add_batch(&lamps, &sku, 10, None).await;

    let asked = Utc::now();
    let body = json!({ "lines": [{ "sku": sku, "qty": 4 }], "ttl_seconds": 60 });
    let (status, placed) = app.post("/holds", &body).await;
    assert_eq!(status, 201, "{placed}");
    let hold_id = placed["hold_id"].as_str().expect("an id").to_owned();
    let expires_at = time(&placed["expires_at"]);
    let ttl = (expires_at - asked).num_milliseconds();
    assert!((59_000..=61_000).contains(&ttl), "{ttl} ms");
    assert_eq!(
        placed["lines"],
        json!([{ "sku": sku, "qty": 4, "allocations": [{ "batchref": lamps, "qty": 4 }] }])
    );
    let stock = batch(&app, &sku).await;
    assert_eq!(
        (&stock["held"], &stock["available"]),
        (&json!(4), &json!(6))
    );

    let (status, shown) = app.get(&format!("/holds/{hold_id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["expires_at"], placed["expires_at"]);
    assert_eq!(shown["lines"], placed["lines"]);

    let extend = format!("/holds/{hold_id}/extend");
    let (status, extended) = app.post(&extend, &json!({ "ttl_seconds": 600 })).await;
    assert_eq!(status, 200, "{extended}");
    assert!(time(&extended["expires_at"]) > expires_at + chrono::Duration::seconds(500));

    assert_eq!(app.delete(&format!("/holds/{hold_id}")).await, 204);
    assert_eq!(app.delete(&format!("/holds/{hold_id}")).await, 204, "again");
    let (_, shown) = app.get(&format!("/holds/{hold_id}")).await;
    assert_eq!(shown["status"], "released");
    assert_eq!(batch(&app, &sku).await["available"], 10);
    let (status, gone) = app.post(&extend, &json!({})).await;
    assert_eq!(status, 410, "{gone}");

    let unknown = unique("no-such-hold");
    assert_eq!(app.get(&format!("/holds/{unknown}")).await.0, 404);
    assert_eq!(app.delete(&format!("/holds/{unknown}")).await, 404);
    let (status, _) = app
        .post(&format!("/holds/{unknown}/extend"), &json!({}))
        .await;
    assert_eq!(status, 404);
}

async fn an_order_converts_exactly_the_held_units(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sofa, chair) = (unique("sofa"), unique("chair"));
    app.add_batch(&unique("sofas"), &sofa, 2, None).await;
    app.add_batch(&unique("chairs"), &chair, 10, None).await;
    let lines = json!([{ "sku": sofa, "qty": 2 }, { "sku": chair, "qty": 4 }]);
    let (status, placed) = app.post("/holds", &json!({ "lines": lines })).await;
    assert_eq!(status, 201, "{placed}");
    let hold_id = placed["hold_id"].as_str().expect("an id").to_owned();
    // The default: 15 minutes.
    let ttl = time(&placed["expires_at"]) - Utc::now();
    assert!((890..=900).contains(&ttl.num_seconds()), "{ttl}");

    // The sofas are held: an order without the hold cannot have them.
    let orderid = unique("order");
    let path = format!("/orders/{orderid}/allocate");
    let (status, refused) = app.post(&path, &json!({ "lines": lines })).await;
    assert_eq!(status, 409, "{refused}");
    let other = json!({ "lines": [{ "sku": sofa, "qty": 2 }], "hold_id": hold_id });
    let (status, refused) = app.post(&path, &other).await;
    assert_eq!(status, 409, "other lines than held: {refused}");
    let unknown = json!({ "lines": lines, "hold_id": unique("no-such-hold") });
    assert_eq!(app.post(&path, &unknown).await.0, 404);

    let converting = json!({ "lines": lines, "hold_id": hold_id });
    let (status, allocated) = app.post(&path, &converting).await;
    assert_eq!(status, 202, "{allocated}");
    let mut converted = allocated["lines"].clone();
    for line in converted.as_array_mut().into_iter().flatten() {
        let status = line.as_object_mut().and_then(|l| l.remove("status"));
        assert_eq!(status, Some(json!("allocated")), "{allocated}");
    }
    assert_eq!(converted, placed["lines"], "exactly the held units");
    let (_, shown) = app.get(&format!("/holds/{hold_id}")).await;
    assert_eq!(shown["status"], "converted");
    let sofas = batch(&app, &sofa).await;
    assert_eq!(
        (&sofas["allocated"], &sofas["held"], &sofas["available"]),
        (&json!(2), &json!(0), &json!(0))
    );
    assert_eq!(
        app.post(&path, &converting).await,
        (202, allocated),
        "again"
    );
    assert_eq!(app.delete(&format!("/holds/{hold_id}")).await, 204);
    assert_eq!(
        batch(&app, &sofa).await["allocated"],
        2,
        "still the order's"
    );
}

async fn bad_holds_are_refused_and_hold_nothing(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 5, None).await;
    let line = json!({ "sku": sku, "qty": 1 });
    let cases = [
        (json!({ "lines": [] }), 400, "from 1 to 100 lines"),
        (json!({ "lines": [line, line] }), 400, "at most once"),
        (
            json!({ "lines": [line], "ttl_seconds": 0 }),
            400,
            "ttl_seconds",
        ),
        (
            json!({ "lines": [line], "ttl_seconds": 86_401 }),
            400,
            "ttl_seconds",
        ),
        (json!({ "lines": [line], "ttl_seconds": -5 }), 400, ""),
        (
            json!({ "lines": [{ "sku": unique("unknown"), "qty": 1 }] }),
            400,
            "Invalid sku",
        ),
        (
            json!({ "lines": [{ "sku": sku, "qty": 6 }] }),
            409,
            "Not enough stock",
        ),
    ];
    for (body, expected, reason) in cases {
        let (status, answer) = app.post("/holds", &body).await;
        assert_eq!(status, expected, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let (_, short) = app
        .post("/holds", &json!({ "lines": [{ "sku": sku, "qty": 6 }] }))
        .await;
    assert_eq!(
        short["short"],
        json!([{ "sku": sku, "requested": 6, "available": 5 }])
    );
    assert_eq!(batch(&app, &sku).await["held"], 0);
}

/// A hold of every unit for 3 seconds: `POST /allocate` and a Redis
/// `allocate` are both out of stock while it lives; once it expires,
/// with nothing swept, both get the units.
async fn a_hold_blocks_http_and_redis_allocations_until_it_expires(
    db: TestDatabase,
    redis: String,
) {
    let app = RunningApp::start_consuming(&db, &redis).await;
    let (sku, lamps) = (unique("lamp"), unique("lamps"));
    app.add_batch(&lamps, &sku, 5, None).await;
    let body = json!({ "lines": [{ "sku": sku, "qty": 5 }], "ttl_seconds": 3 });
    let (status, placed) = app.post("/holds", &body).await;
    assert_eq!(status, 201, "{placed}");
    let expires_at = time(&placed["expires_at"]);

    assert_eq!(app.allocate(&unique("order"), &sku, 1).await, None);
    let over_redis = unique("order");
    let message = json!({ "orderid": over_redis, "sku": sku, "qty": 1 });
    publish(&redis, ALLOCATE, &message.to_string()).await;
    let out_of_stock = format!("Out of stock for {sku}");
    app.log().wait_for(&out_of_stock, 2).await;
    assert!(Utc::now() < expires_at, "refused while the hold lived");
    assert_eq!(app.get(&format!("/allocations/{over_redis}")).await.0, 404);

    // Polled, not slept: the first allocation to succeed comes after the
    // expiry, and no sooner.
    let deadline = Instant::now() + BOUND;
    let allocated = loop {
        if let Some(batch) = app.allocate(&unique("order"), &sku, 1).await {
            break batch;
        }
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(allocated, lamps);
    assert!(Utc::now() >= expires_at, "not before the hold expired");
    let (_, shown) = app
        .get(&format!(
            "/holds/{}",
            placed["hold_id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(shown["status"], "expired");

    let after = unique("order");
    let message = json!({ "orderid": after, "sku": sku, "qty": 1 });
    publish(&redis, ALLOCATE, &message.to_string()).await;
    assert_eq!(
        app.wait_for_allocations(&after).await,
        json!([{ "sku": sku, "batchref": lamps }])
    );
}
