//! Crash safety end to end on PostgreSQL (docs/contract.md section 5): the
//! service is killed (SIGKILL) in the middle of concurrent allocations and
//! started again on the same database. Every allocation it answered with a
//! batch is still there, no batch holds more than it has, the read model
//! agrees with the allocations and every batch's ledger with its quantity
//! (`allocation check`), every answered adjustment is in its batch's
//! ledger, and the outbox drains: each answered allocation reaches Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::{TestDatabase, per_backend};
use tokio::sync::watch;

use crate::helpers::{BOUND, LineAllocated, RunningApp, unique, with_redis};
use crate::maintenance::check;

per_backend!(mod on_postgres on [postgres] via with_redis {
    a_crash_mid_load_loses_no_answered_allocation,
});

const CLIENTS: usize = 8;

/// Answers to wait for before the crash: enough that some products run out
/// of stock (150 units for about 200 requested) and the crash hits a busy
/// service.
const ANSWERS_BEFORE_CRASH: usize = 100;

/// The relay's lease on the messages it claimed: a relay killed holding a
/// claim leaves those messages to the next one only when the lease ends.
const RELAY_LEASE: Duration = Duration::from_secs(30);

/// An allocation the service answered in full: 202 and a body.
#[derive(Debug, Clone)]
struct Answered {
    orderid: String,
    sku: String,
    qty: u64,
    batchref: Option<String>,
}

async fn a_crash_mid_load_loses_no_answered_allocation(db: TestDatabase, redis: String) {
    let app = RunningApp::start_with(&db, &["--redis-url", &redis]).await;
    let skus: Vec<String> = (0..3).map(|_| unique("sku")).collect();
    for sku in &skus {
        app.add_batch(&unique("wh"), sku, 30, None).await;
        app.add_batch(&unique("ship"), sku, 20, Some("2031-01-01"))
            .await;
    }
    let mut line_allocated = LineAllocated::subscribe(&redis).await;

    let (answers, mut answered_so_far) = watch::channel(0_usize);
    let answers = Arc::new(answers);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, address, skus) = (app.client.clone(), app.address.clone(), skus.clone());
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for n in 0.. {
                    let sku = skus[(client + n) % skus.len()].clone();
                    let (orderid, qty) = (unique("order"), 1 + (client + n) as u64 % 3);
                    let body = json!({ "orderid": orderid, "sku": sku, "qty": qty });
                    let url = format!("{address}/allocate");
                    let Some((status, answer)) = post_while_up(&http, url, &body).await else {
                        break;
                    };
                    assert_eq!(status, 202, "{answer}");
                    answered.push(Answered {
                        orderid,
                        sku,
                        qty,
                        batchref: answer["batchref"].as_str().map(str::to_owned),
                    });
                    answers.send_modify(|count| *count += 1);
                }
                answered
            })
        })
        .collect();

    // Counted by a stocktaker meanwhile: a product of its own, so that no
    // adjustment moves an answered allocation.
    let counted: Vec<String> = (0..2).map(|_| unique("counted")).collect();
    let counted_sku = unique("counted-sku");
    for batch in &counted {
        app.add_batch(batch, &counted_sku, 1_000, None).await;
    }
    let stocktaker = tokio::spawn(adjust_until_gone(
        app.client.clone(),
        app.address.clone(),
        counted,
    ));

    let busy = answered_so_far.wait_for(|count| *count >= ANSWERS_BEFORE_CRASH);
    assert!(
        matches!(tokio::time::timeout(BOUND, busy).await, Ok(Ok(_))),
        "fewer than {ANSWERS_BEFORE_CRASH} answers within {BOUND:?}"
    );
    app.kill().await;
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.expect("client"));
    }
    let adjusted = stocktaker.await.expect("stocktaker");

    let app = RunningApp::start_with(&db, &["--redis-url", &redis]).await;

    // Every answer holds.
    let mut promised: HashMap<String, u64> = HashMap::new();
    for line in &answered {
        let (status, body) = app.get(&format!("/allocations/{}", line.orderid)).await;
        match &line.batchref {
            Some(batchref) => {
                assert_eq!(
                    (status, body),
                    (200, json!([{ "sku": line.sku, "batchref": batchref }])),
                    "{line:?}"
                );
                *promised.entry(batchref.clone()).or_default() += line.qty;
            }
            None => assert_eq!(status, 404, "out of stock, yet allocated: {line:?}"),
        }
    }
    // Nothing is over-allocated; lines committed but never answered (the
    // crash took their answer) may add to what was promised.
    for sku in &skus {
        let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
        for batch in body["batches"].as_array().expect("batches") {
            let allocated = batch["allocated"].as_u64().expect("a number");
            assert!(
                allocated <= batch["purchased"].as_u64().expect("a number"),
                "{batch}"
            );
            let reference = batch["ref"].as_str().expect("a ref");
            assert!(
                allocated >= promised.get(reference).copied().unwrap_or(0),
                "{batch}: less than the answers promised"
            );
        }
    }

    // Every answered adjustment is in its batch's ledger.
    for (batch, movement) in &adjusted {
        let (_, ledger) = app.get(&format!("/batches/{batch}/movements")).await;
        let ledger = ledger.as_array().expect("a ledger");
        assert!(ledger.contains(movement), "{movement} lost from {batch}");
    }

    // The outbox drains, and the database stays consistent all along
    // (batch totals match their lines, the read model the allocations,
    // each batch's quantity its ledger).
    let drained = outbox_drains(&db).await;

    // Every answered allocation was announced, before the crash or after.
    let mut unannounced: HashSet<&str> = answered
        .iter()
        .filter(|line| line.batchref.is_some())
        .map(|line| line.orderid.as_str())
        .collect();
    let sku_names: Vec<&str> = skus.iter().map(String::as_str).collect();
    let deadline = Instant::now() + BOUND;
    while !unannounced.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(message) = line_allocated.next_within(&sku_names, wait).await else {
            panic!("never announced: {unannounced:?}");
        };
        unannounced.remove(message["orderid"].as_str().unwrap_or_default());
    }
    println!(
        "{} answered before the crash ({} allocated, {} adjustments); \
         outbox drained {drained:?} after restart",
        answered.len(),
        promised.values().sum::<u64>(),
        adjusted.len(),
    );
}

/// A stocktaker finding and losing a unit of `batches` in turn, until the
/// service is gone: each batch and movement answered.
async fn adjust_until_gone(
    http: reqwest::Client,
    address: String,
    batches: Vec<String>,
) -> Vec<(String, Value)> {
    let mut answered = Vec::new();
    for n in 0.. {
        let batch = batches[n % batches.len()].clone();
        let (delta, reason) = if n % 2 == 0 {
            (1, "found")
        } else {
            (-1, "lost")
        };
        let body = json!({ "delta": delta, "reason": reason });
        let url = format!("{address}/batches/{batch}/adjust");
        let Some((status, answer)) = post_while_up(&http, url, &body).await else {
            break;
        };
        assert_eq!(status, 200, "{answer}");
        answered.push((batch, answer["movement"].clone()));
    }
    answered
}

/// POSTs `body` to `url`: its status and JSON answer, or `None` once the
/// process is gone (requests fail; an answer cut off by the crash promised
/// nothing either).
async fn post_while_up(http: &reqwest::Client, url: String, body: &Value) -> Option<(u16, Value)> {
    let response = http.post(url).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    let answer = response.json::<Value>().await.ok()?;
    Some((status, answer))
}

/// Polls `allocation check` until the outbox is empty, requiring it to
/// find the database consistent every time: how long draining took.
///
/// # Panics
///
/// When the check finds differences, or the outbox still holds messages
/// after the relay lease plus [`BOUND`].
async fn outbox_drains(db: &TestDatabase) -> Duration {
    let started = Instant::now();
    let deadline = started + RELAY_LEASE + BOUND;
    loop {
        let (code, report) = check(db.url()).await;
        assert_eq!(code, Some(0), "{report:#}");
        if report["outbox"]["messages"] == 0 {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the outbox still holds messages: {}",
            report["outbox"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
