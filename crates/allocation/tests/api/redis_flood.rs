//! Issue 13: a flood of incoming Redis messages must not grow the service's
//! memory without limit. redis-rs reads the socket as fast as Redis sends,
//! into a queue of no bound; the consumer used to let 400 000 small
//! `allocate` messages take it from 11 to 191 MB (a debug build, in this
//! test: from 25 to 89-96 MB). The subscription now moves them into a
//! bounded buffer and drops what does not fit (counted): 24 to 32-38 MB.
//!
//! On a `redis-server` of the test's own, so that the flood reaches no
//! other test's service on the shared Redis.

use std::time::{Duration, Instant};

use adapters::messages::ALLOCATE;
use serde_json::json;
use test_support::TestDatabase;
use test_support::process::free_port;
use test_support::redis::{RedisServer, redis_server_program};
use tokio::sync::watch;

use crate::helpers::{BOUND, RunningApp, publish, unique};

/// Messages in the flood, the figure of the issue: pipelined, Redis takes
/// them in a second or two.
const FLOOD: usize = 400_000;

/// How much the service's resident memory may grow under the flood: it
/// grew by 64 to 71 MB before the bound, 8 to 13 MB with it.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;

/// The resident set size of process `pid`, in KiB (`VmRSS`, Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_messages_keeps_memory_bounded_and_the_consumer_working() {
    let Some(program) = redis_server_program() else {
        return;
    };
    if rss_kib(std::process::id()).is_none() {
        println!("skipped the Redis flood test: no /proc/<pid>/status here");
        return;
    }
    let redis = RedisServer::start(&program, free_port()).await;
    // Redis closes a subscriber that falls 32 MB behind (its
    // `client-output-buffer-limit pubsub`), which would cut the flood
    // short: off here, so that the service has to take in every message.
    redis
        .config_set("client-output-buffer-limit", "pubsub 0 0 0")
        .await;
    let db = TestDatabase::sqlite();
    let app = RunningApp::start_consuming(&db, &redis.url()).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 10, None).await;
    let pid = app.process.pid().expect("the service runs");
    let before = rss_kib(pid).expect("its memory is readable");

    // Sample the service's memory while the flood lasts.
    let (flooding, mut done) = watch::channel(true);
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while *done.borrow_and_update() {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            let _ = tokio::time::timeout(Duration::from_millis(10), done.changed()).await;
        }
        peak.max(rss_kib(pid).unwrap_or(0))
    });
    // Well-formed, small, and refused (an unknown SKU): each one the
    // consumer takes costs a database read, so it falls far behind.
    let unknown = unique("no-such-sku");
    let payloads: Vec<String> = (0..FLOOD)
        .map(|n| json!({ "orderid": format!("flood-{n}"), "sku": unknown, "qty": 1 }).to_string())
        .collect();
    let started = Instant::now();
    redis
        .publish_all(ALLOCATE, &payloads, Duration::from_secs(120))
        .await;
    let published_in = started.elapsed();
    // Until the service has read the whole flood: Redis holds nothing
    // more for it (and the sockets' buffers, a few hundred KB, get a
    // moment to empty too).
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis.pubsub_output_bytes().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the service did not read the flood within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    flooding.send_replace(false);
    let peak = sampler.await.expect("the sampler");
    println!(
        "{FLOOD} messages published in {published_in:?}, read in {read_in:?}; service RSS \
         {before} KiB before, {peak} KiB at most"
    );
    assert!(
        peak.saturating_sub(before) < RSS_GROWTH_BOUND_KIB,
        "the service grew from {before} to {peak} KiB under a flood of {FLOOD} messages"
    );

    // Still consuming: a message sent now is handled. The buffer may still
    // be full of flood for a while, dropping new messages, so send it again
    // until it is (allocating the same line twice changes nothing).
    let orderid = unique("order");
    let message = json!({ "orderid": orderid, "sku": sku, "qty": 1 }).to_string();
    let deadline = Instant::now() + BOUND;
    loop {
        publish(&redis.url(), ALLOCATE, &message).await;
        let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
        if status == 200 {
            assert_eq!(body, json!([{ "sku": sku, "batchref": batch }]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a message after the flood was not handled within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The excess was dropped, and counted.
    let metrics = app.metrics_page().await;
    let dropped: u64 = metrics
        .lines()
        .find(|line| {
            line.starts_with("allocation_redis_messages_dropped_total{channel=\"allocate\"}")
        })
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of dropped messages in:\n{metrics}"));
    println!("{dropped} of {FLOOD} messages dropped");
    assert!(dropped > 0, "a flood this size overflows the buffer");
}
