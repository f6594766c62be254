//! Messages over Redis end to end (book chapter 11; docs/contract.md section 3):
//! the built binary consuming `allocate` and `change_batch_quantity` and
//! publishing `line_allocated` on the shared Redis of `REDIS_URL`, on SQLite
//! and on PostgreSQL.
//!
//! Other tests (and other instances) share that Redis: each test uses SKUs,
//! references and orders of its own, reads only the `line_allocated`
//! messages about its SKUs, and waits until its service has subscribed
//! before it publishes (pub/sub keeps nothing for late subscribers).

use std::collections::HashSet;
use std::time::Duration;

use adapters::messages::{ALLOCATE, CHANGE_BATCH_QUANTITY};
use serde_json::json;
use test_support::{TestDatabase, per_backend};

use crate::helpers::{
    LineAllocated, RunningApp, check_line_allocated, publish, unique, with_redis,
};

per_backend!(mod over_redis on [sqlite, postgres] via with_redis {
    a_batch_shrunk_over_redis_reallocates_and_announces_the_new_batch,
    an_allocate_message_allocates_and_is_announced,
    malformed_messages_are_skipped_and_the_next_one_is_handled,
    every_http_allocation_is_announced_once_with_its_own_message_id,
});

/// How long to listen for a message that should not come.
const QUIET: Duration = Duration::from_millis(500);

/// The book's `test_change_batch_quantity_leading_to_reallocation`: an
/// order on the earlier of two batches; shrinking that batch over Redis
/// moves the order, and `line_allocated` says where to.
async fn a_batch_shrunk_over_redis_reallocates_and_announces_the_new_batch(
    db: TestDatabase,
    redis: String,
) {
    let app = RunningApp::start_consuming(&db, &redis).await;
    let (orderid, sku) = (unique("order"), unique("sku"));
    let (earlier, later) = (unique("old"), unique("newer"));
    app.add_batch(&earlier, &sku, 10, Some("2011-01-01")).await;
    app.add_batch(&later, &sku, 10, Some("2011-01-02")).await;
    let mut line_allocated = LineAllocated::subscribe(&redis).await;
    assert_eq!(
        app.allocate(&orderid, &sku, 10).await.as_deref(),
        Some(earlier.as_str())
    );
    let first = line_allocated.next_for(&[&sku]).await;
    let first_id = check_line_allocated(&first, &orderid, &sku, 10, &earlier);

    let shrink = json!({ "batchref": earlier, "qty": 5 });
    publish(&redis, CHANGE_BATCH_QUANTITY, &shrink.to_string()).await;

    let moved = line_allocated.next_for(&[&sku]).await;
    let moved_id = check_line_allocated(&moved, &orderid, &sku, 10, &later);
    assert_ne!(moved_id, first_id, "a new event, a new message_id");
    assert_eq!(
        app.wait_for_allocations(&orderid).await,
        json!([{ "sku": sku, "batchref": later }])
    );
    assert_eq!(line_allocated.next_within(&[&sku], QUIET).await, None);
}

async fn an_allocate_message_allocates_and_is_announced(db: TestDatabase, redis: String) {
    let app = RunningApp::start_consuming(&db, &redis).await;
    let (orderid, sku, batch) = (unique("order"), unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 10, None).await;
    let mut line_allocated = LineAllocated::subscribe(&redis).await;

    let allocate = json!({ "orderid": orderid, "sku": sku, "qty": 3 });
    publish(&redis, ALLOCATE, &allocate.to_string()).await;

    assert_eq!(
        app.wait_for_allocations(&orderid).await,
        json!([{ "sku": sku, "batchref": batch }])
    );
    let announced = line_allocated.next_for(&[&sku]).await;
    check_line_allocated(&announced, &orderid, &sku, 3, &batch);
    let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(body["batches"][0]["allocated"], json!(3), "{body}");
}

async fn malformed_messages_are_skipped_and_the_next_one_is_handled(
    db: TestDatabase,
    redis: String,
) {
    let mut app = RunningApp::start_consuming(&db, &redis).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    let (refused, accepted) = (unique("refused"), unique("accepted"));
    app.add_batch(&batch, &sku, 10, None).await;

    let malformed = [
        (ALLOCATE, "{not json".to_owned()),
        (
            ALLOCATE,
            json!({ "orderid": refused, "sku": sku }).to_string(),
        ),
        (
            ALLOCATE,
            json!({ "orderid": refused, "sku": sku, "qty": 0 }).to_string(),
        ),
        (
            ALLOCATE,
            json!({ "orderid": refused, "sku": sku, "qty": "2" }).to_string(),
        ),
        (
            CHANGE_BATCH_QUANTITY,
            json!({ "batchref": batch }).to_string(),
        ),
        (
            CHANGE_BATCH_QUANTITY,
            json!({ "batchref": batch, "qty": -1 }).to_string(),
        ),
    ];
    for (channel, payload) in &malformed {
        publish(&redis, channel, payload).await;
    }
    let valid = json!({ "orderid": accepted, "sku": sku, "qty": 2 });
    publish(&redis, ALLOCATE, &valid.to_string()).await;

    // Handled in the order sent: the valid one comes after all the others.
    assert_eq!(
        app.wait_for_allocations(&accepted).await,
        json!([{ "sku": sku, "batchref": batch }])
    );
    app.log()
        .wait_for("skipping malformed message", malformed.len())
        .await;
    assert!(app.process.is_running(), "the consumer's process lives on");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = app.get(&format!("/allocations/{refused}")).await;
    assert_eq!(status, 404, "nothing of the malformed messages was applied");
    let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(
        (
            &body["batches"][0]["purchased"],
            &body["batches"][0]["allocated"]
        ),
        (&json!(10), &json!(2)),
        "{body}"
    );
}

/// Each allocation answered over HTTP is announced once, with the batch
/// it was answered with, in the order they were made, each message with an
/// id of its own.
async fn every_http_allocation_is_announced_once_with_its_own_message_id(
    db: TestDatabase,
    redis: String,
) {
    let app = RunningApp::start_with(&db, &["--redis-url", &redis]).await;
    let skus = [unique("sku"), unique("sku")];
    for sku in &skus {
        app.add_batch(&unique("b"), sku, 100, None).await;
    }
    let mut line_allocated = LineAllocated::subscribe(&redis).await;

    let mut made = Vec::new();
    for qty in 1..=6 {
        let (orderid, sku) = (unique("order"), skus[qty as usize % 2].clone());
        let batchref = app.allocate(&orderid, &sku, qty).await.expect("in stock");
        made.push((orderid, sku, qty, batchref));
    }

    let sku_names = [skus[0].as_str(), skus[1].as_str()];
    let announced = line_allocated.take_for(&sku_names, made.len()).await;
    let mut ids = HashSet::new();
    for (message, (orderid, sku, qty, batchref)) in announced.iter().zip(&made) {
        let id = check_line_allocated(message, orderid, sku, *qty, batchref);
        assert!(ids.insert(id), "message_id used twice: {announced:#?}");
    }
    assert_eq!(
        line_allocated.next_within(&sku_names, QUIET).await,
        None,
        "one message per allocation"
    );
}
