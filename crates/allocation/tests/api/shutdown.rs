//! Graceful shutdown (docs/contract.md section 5): SIGTERM stops the built
//! binary promptly, with success and a last word in its log; under load,
//! every request it took is answered in full and kept.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};
use tokio::sync::watch;

use crate::helpers::{BOUND, RunningApp, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    sigterm_stops_an_idle_service_cleanly,
    sigterm_during_load_loses_no_accepted_request,
});

const CLIENTS: usize = 8;

/// Answers to wait for before SIGTERM, so that it lands on a busy service.
const ANSWERS_BEFORE_SIGTERM: usize = 50;

async fn sigterm_stops_an_idle_service_cleanly(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let log = app.log().clone();

    let (status, took) = app.process.terminate(Duration::from_secs(10)).await;

    assert!(status.success(), "{status}; the log:\n{}", log.text());
    // The last lines may still be on their way through the pipe.
    log.wait_for("shut down cleanly", 1).await;
    println!("{}: exited {took:?} after SIGTERM", db.backend());
}

/// What became of one request sent while the service was shutting down.
#[derive(Debug)]
enum Outcome {
    /// 202 with a complete body: the allocation must survive.
    Accepted {
        orderid: String,
        sku: String,
        batchref: String,
        after_sigterm: bool,
    },
    /// No connection: the listener had closed. The client stops here.
    Refused,
    /// Connected, but the connection closed before any answer: the service
    /// never took the request (see below), so it must have done nothing.
    Unanswered { orderid: String },
}

/// Clients allocate continuously; SIGTERM arrives mid-load. Every request
/// gets a complete answer, or finds the listener closed, or (racing the
/// close) is dropped unread; no 5xx, no answer cut off. The process exits 0
/// within the bound, and after a restart every accepted allocation is
/// there while every unanswered one did nothing.
///
/// One connection per request (`pool_max_idle_per_host(0)`): with
/// keep-alive, a request sent on an idle pooled connection just as the
/// server closes it fails without an answer, and a client could not tell
/// that from a request the server dropped after taking it. With a fresh
/// connection, the only ways to get no answer are a refused connect or a
/// connection the server closes before it read the request (accepted by
/// the kernel, but never by the server): either way the service never
/// took the request, which the checks after the restart confirm.
async fn sigterm_during_load_loses_no_accepted_request(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let skus: Vec<String> = (0..2).map(|_| unique("sku")).collect();
    let mut batches = HashMap::new();
    for sku in &skus {
        let batch = unique("b");
        app.add_batch(&batch, sku, 100_000, None).await;
        batches.insert(sku.clone(), batch);
    }
    let RunningApp {
        address, process, ..
    } = app;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(BOUND)
        .build()
        .expect("an HTTP client");

    let (answers, mut answered_so_far) = watch::channel(0_usize);
    let answers = Arc::new(answers);
    let sigterm_sent = Arc::new(OnceLock::<Instant>::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (client, address, sku) = (client.clone(), address.clone(), skus[n % 2].clone());
            let (answers, sigterm_sent) = (answers.clone(), sigterm_sent.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let orderid = unique("order");
                    let body = json!({ "orderid": orderid, "sku": sku, "qty": 1 });
                    let sent = client
                        .post(format!("{address}/allocate"))
                        .json(&body)
                        .send()
                        .await;
                    let response = match sent {
                        Ok(response) => response,
                        Err(error) if error.is_connect() => {
                            outcomes.push(Outcome::Refused);
                            return outcomes;
                        }
                        Err(error) => {
                            assert!(!error.is_timeout(), "{error:?}");
                            outcomes.push(Outcome::Unanswered { orderid });
                            continue;
                        }
                    };
                    let status = response.status().as_u16();
                    // A body that breaks off is an answer cut off mid-way.
                    let text = response.text().await.unwrap_or_else(|error| {
                        panic!("the answer ({status}) to {orderid} broke off: {error:?}")
                    });
                    let answer: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("incomplete answer ({status}): {text:?}"));
                    assert_eq!(status, 202, "{answer}");
                    let batchref = answer["batchref"].as_str().expect("in stock").to_owned();
                    outcomes.push(Outcome::Accepted {
                        orderid,
                        sku: sku.clone(),
                        batchref,
                        after_sigterm: sigterm_sent.get().is_some(),
                    });
                    answers.send_modify(|count| *count += 1);
                }
            })
        })
        .collect();

    let busy = answered_so_far.wait_for(|count| *count >= ANSWERS_BEFORE_SIGTERM);
    assert!(
        matches!(tokio::time::timeout(BOUND, busy).await, Ok(Ok(_))),
        "fewer than {ANSWERS_BEFORE_SIGTERM} answers within {BOUND:?}"
    );
    let log = process.log().clone();
    let _ = sigterm_sent.set(Instant::now());
    let (status, took) = process.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}; the log:\n{}", log.text());
    let mut outcomes = Vec::new();
    for client in clients {
        let client = tokio::time::timeout(BOUND, client).await;
        outcomes.extend(client.expect("clients stop once refused").expect("client"));
    }

    let app = RunningApp::start(&db).await;
    let (mut accepted, mut after_sigterm, mut unanswered) = (0_u64, 0, 0);
    for outcome in &outcomes {
        match outcome {
            Outcome::Accepted {
                orderid,
                sku,
                batchref,
                after_sigterm: late,
            } => {
                assert_eq!(&batches[sku], batchref);
                let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
                assert_eq!(
                    (status, body),
                    (200, json!([{ "sku": sku, "batchref": batchref }])),
                    "accepted, then lost"
                );
                accepted += 1;
                after_sigterm += usize::from(*late);
            }
            Outcome::Unanswered { orderid } => {
                let (status, body) = app.get(&format!("/allocations/{orderid}")).await;
                assert_eq!(status, 404, "allocated without an answer: {body}");
                unanswered += 1;
            }
            Outcome::Refused => {}
        }
    }
    // Each accepted request took one unit; nothing else took any.
    let mut allocated = 0;
    for sku in &skus {
        let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
        allocated += body["batches"][0]["allocated"].as_u64().expect("a number");
    }
    assert_eq!(allocated, accepted);
    println!(
        "{}: exited {took:?} after SIGTERM; {accepted} accepted ({after_sigterm} answered \
         after it), {unanswered} dropped unread",
        db.backend()
    );
}
