//! Idempotency keys end to end (docs/contract.md section 6.4), on the
//! built binary, against SQLite and PostgreSQL: a repeat gets the first
//! answer and changes nothing, a reused key with another body or route is
//! refused, and duplicates sent at once are run once.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::json;
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    a_repeated_request_gets_the_first_answer_and_changes_nothing,
    duplicates_sent_at_once_run_once,
});

async fn a_repeated_request_gets_the_first_answer_and_changes_nothing(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 10, None).await;
    let key = unique("key");
    let path = format!("/orders/{}/allocate", unique("order"));
    let body = json!({ "lines": [{ "sku": sku, "qty": 3 }] });

    let (status, first, replayed) = app.post_with_key(&path, &key, &body).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, again, replayed) = app.post_with_key(&path, &key, &body).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(again, first);
    let (_, batches) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(batches["batches"][0]["allocated"], 3);

    let other_body = json!({ "lines": [{ "sku": sku, "qty": 4 }] });
    assert_eq!(app.post_with_key(&path, &key, &other_body).await.0, 422);
    let other_route = json!({ "orderid": unique("order"), "sku": sku, "qty": 3 });
    assert_eq!(
        app.post_with_key("/allocate", &key, &other_route).await.0,
        422
    );
    let (status, refused, _) = app.post_with_key(&path, &"k".repeat(256), &body).await;
    assert_eq!(status, 400, "{refused}");
}

/// Ten identical holds sent at once with one key: one hold, placed once,
/// and every answer is its answer.
async fn duplicates_sent_at_once_run_once(db: TestDatabase) {
    let app = Arc::new(RunningApp::start(&db).await);
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 10, None).await;
    let key = unique("key");
    let body = json!({ "lines": [{ "sku": sku, "qty": 4 }] });
    let sends = (0..10).map(|_| {
        let (app, key, body) = (Arc::clone(&app), key.clone(), body.clone());
        async move { app.post_with_key("/holds", &key, &body).await }
    });
    let answers = join_all(sends).await;
    let (status, first, _) = &answers[0];
    assert_eq!(*status, 201, "{first}");
    for (status, answer, _) in &answers {
        assert_eq!((status, answer), (&201, first));
    }
    assert_eq!(
        answers.iter().filter(|(_, _, replayed)| !replayed).count(),
        1
    );
    let (_, batches) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(batches["batches"][0]["held"], 4, "held once");
}
