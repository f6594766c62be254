//! The outbox's promise end to end (docs/contract.md section 3): every committed
//! allocation is published, even when Redis was down at the time, and even
//! when the service died before it could publish; on SQLite and PostgreSQL.
//!
//! - Redis goes down (a `redis-server` of the test's own, killed): the API
//!   keeps answering, and once Redis is back every allocation made
//!   meanwhile is announced.
//! - The service crashes (SIGKILL) with messages still in its outbox: an
//!   `allocation relay` started on the same database publishes each of
//!   them exactly once.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use test_support::process::free_port;
use test_support::redis::{RedisServer, redis_server_program};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{
    BOUND, LineAllocated, Process, RunningApp, check_line_allocated, unique, with_redis,
};

per_backend!(mod redis_outage on [sqlite, postgres] via on_database {
    allocations_made_while_redis_is_down_are_published_once_it_is_back,
});

per_backend!(mod service_crash on [sqlite, postgres] via with_redis {
    messages_left_by_a_crash_are_published_by_the_relay_exactly_once,
});

/// The relay logs this after each failed round, once it has given back
/// what it claimed.
const RELAY_FAILED: &str = "outbox relay failed";

/// Allocates `count` lines of `sku` over HTTP, each accepted (202) on
/// `batch`: `(orderid, qty)` of each, in order.
async fn allocate_lines(
    app: &RunningApp,
    sku: &str,
    batch: &str,
    count: u32,
) -> Vec<(String, u32)> {
    let mut lines = Vec::new();
    for qty in 1..=count {
        let orderid = unique("order");
        assert_eq!(
            app.allocate(&orderid, sku, qty).await.as_deref(),
            Some(batch)
        );
        lines.push((orderid, qty));
    }
    lines
}

/// Checks that `announced` holds one message per line of `lines`, in order,
/// each with an id of its own.
fn check_one_message_per_line(
    announced: &[Value],
    lines: &[(String, u32)],
    sku: &str,
    batch: &str,
) {
    assert_eq!(announced.len(), lines.len(), "{announced:#?}");
    let mut ids = HashSet::new();
    for (message, (orderid, qty)) in announced.iter().zip(lines) {
        let id = check_line_allocated(message, orderid, sku, *qty, batch);
        assert!(ids.insert(id), "message_id seen twice: {announced:#?}");
    }
}

async fn allocations_made_while_redis_is_down_are_published_once_it_is_back(db: TestDatabase) {
    let Some(program) = redis_server_program() else {
        return;
    };
    let port = free_port();
    let redis = RedisServer::start(&program, port).await;
    let app = RunningApp::start_consuming(&db, &redis.url()).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 100, None).await;

    redis.kill();
    let lines = allocate_lines(&app, &sku, &batch, 5).await;
    // It tried while Redis was down, and failed.
    app.log().wait_for(RELAY_FAILED, 1).await;

    // Back on the same port; subscribed through its socket before the
    // service can reach it, so nothing it publishes can be missed.
    let redis = RedisServer::start_closed(&program, port).await;
    let mut line_allocated = LineAllocated::subscribe(&redis.unix_url()).await;
    redis.open().await;

    // At least once: a publish retried after a lost answer may come twice.
    let announced = line_allocated.take_distinct_for(&[&sku], lines.len()).await;
    check_one_message_per_line(&announced, &lines, &sku, &batch);
    // And the consumer found its way back by itself.
    app.log().wait_for("subscribed to Redis again", 1).await;
}

async fn messages_left_by_a_crash_are_published_by_the_relay_exactly_once(
    db: TestDatabase,
    redis: String,
) {
    // Nothing listens there: every publish fails, the outbox keeps all.
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let app = RunningApp::start_with(&db, &["--redis-url", &nowhere]).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 100, None).await;
    let lines = allocate_lines(&app, &sku, &batch, 4).await;

    // Crash between two attempts of its relay, when it holds no claim: a
    // claim would keep the messages from the next relay until its lease
    // (30 s) ran out. (Were it held anyway, they come out after the lease,
    // still once each, hence the longer wait below.)
    let failures = app.log().count(RELAY_FAILED);
    app.log().wait_for(RELAY_FAILED, failures + 1).await;
    app.kill().await;

    let mut line_allocated = LineAllocated::subscribe(&redis).await;
    let relay = Process::spawn(&[
        "relay",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        db.url(),
        "--redis-url",
        &redis,
    ]);
    let mut announced = Vec::new();
    for _ in &lines {
        let wait = BOUND + Duration::from_secs(30);
        let next = line_allocated.next_within(&[&sku], wait).await;
        announced.push(next.unwrap_or_else(|| {
            panic!(
                "{} of {} announced; the relay's log:\n{}",
                announced.len(),
                lines.len(),
                relay.log().text()
            )
        }));
    }
    // Anything sent twice would follow at once.
    let quiet = Duration::from_secs(1);
    if let Some(again) = line_allocated.next_within(&[&sku], quiet).await {
        announced.push(again);
    }
    check_one_message_per_line(&announced, &lines, &sku, &batch);

    let (status, _) = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}
