//! The out-of-stock email end to end (docs/contract.md section 4): the built
//! binary sends it through SMTP to the configured recipient, here a sink of
//! the test's own (`test_support::smtp`); and a mail server that hangs
//! delays neither answers, nor Redis messages, nor shutdown (issue 13).

use std::time::{Duration, Instant};

use adapters::messages::ALLOCATE;
use serde_json::json;
use test_support::TestDatabase;
use test_support::redis::shared_redis;
use test_support::smtp::{Behaviour, SmtpSink};

use crate::helpers::{RunningApp, publish, unique};

/// An answer that did not wait for SMTP (whose timeout is 10 s): a bound
/// for a loaded CI machine, not an expectation.
const AT_ONCE: Duration = Duration::from_secs(2);

/// A shutdown that did not wait for SMTP: the email grace period is 2 s.
const PROMPT_EXIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_stock_allocation_emails_the_configured_recipient_once() {
    let db = TestDatabase::sqlite();
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let settings = [
        "--smtp-url",
        sink.url(),
        "--notify-email",
        "custom@example.com",
    ];
    let app = RunningApp::start_with(&db, &settings).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 5, None).await;

    let orderid = unique("order");
    let body = json!({ "orderid": orderid, "sku": sku, "qty": 6 });
    let (status, answer) = app.post("/allocate", &body).await;
    assert_eq!(
        (status, &answer["batchref"]),
        (202, &json!(null)),
        "{answer}"
    );

    let mail = sink.next().await;
    assert_eq!(mail.rcpt_to, ["custom@example.com"]);
    assert_eq!(mail.mail_from, "allocations@example.com");
    assert_eq!(mail.header("To"), Some("custom@example.com"));
    assert_eq!(mail.header("From"), Some("allocations@example.com"));
    let expected = format!("Out of stock for {sku}");
    assert!(mail.body().contains(&expected), "{:?}", mail.data);
    assert!(
        sink.next_within(Duration::from_millis(500)).await.is_none(),
        "one email"
    );
}

/// Issue 13: an SMTP server that accepts connections and then says nothing
/// used to hold every out-of-stock answer for the SMTP timeout (10 s, then
/// 503) and SIGTERM for a minute. The email now waits in a queue of its
/// own: the answer comes at once, and shutdown gives up on the email after
/// a short grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_smtp_server_delays_neither_the_answer_nor_shutdown() {
    let db = TestDatabase::sqlite();
    let sink = SmtpSink::start(Behaviour::Silent).await;
    let app = RunningApp::start_with(&db, &["--smtp-url", sink.url()]).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 5, None).await;

    for _ in 0..3 {
        let body = json!({ "orderid": unique("order"), "sku": sku, "qty": 6 });
        let started = Instant::now();
        let (status, answer) = app.post("/allocate", &body).await;
        let took = started.elapsed();
        assert_eq!(
            (status, &answer["batchref"]),
            (202, &json!(null)),
            "{answer}"
        );
        assert!(took < AT_ONCE, "an out-of-stock answer took {took:?}");
        println!("out-of-stock answer with SMTP hung: {took:?}");
    }
    // In stock, on the same product, right behind them: not held up either.
    let started = Instant::now();
    assert!(app.allocate(&unique("order"), &sku, 1).await.is_some());
    assert!(started.elapsed() < AT_ONCE);

    let log = app.log().clone();
    let (status, took) = app.process.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}; the log:\n{}", log.text());
    assert!(took < PROMPT_EXIT, "SIGTERM took {took:?}");
    log.wait_for("shut down cleanly", 1).await;
    assert_eq!(
        log.count("emails not sent within the grace period were dropped"),
        1
    );
    println!("exited {took:?} after SIGTERM with SMTP hung");
}

/// The same over Redis: an out-of-stock `allocate` message used to hold up
/// the messages behind it for 30 s (three attempts at a 10 s email).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_smtp_server_does_not_hold_up_the_redis_consumer() {
    let Some(redis) = shared_redis() else { return };
    let db = TestDatabase::sqlite();
    let sink = SmtpSink::start(Behaviour::Silent).await;
    let app = RunningApp::start_with(&db, &["--redis-url", &redis, "--smtp-url", sink.url()]).await;
    app.log().wait_for("subscribed to Redis", 1).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 5, None).await;

    let out_of_stock = json!({ "orderid": unique("order"), "sku": sku, "qty": 6 });
    let orderid = unique("order");
    let in_stock = json!({ "orderid": orderid, "sku": sku, "qty": 2 });
    let started = Instant::now();
    publish(&redis, ALLOCATE, &out_of_stock.to_string()).await;
    publish(&redis, ALLOCATE, &in_stock.to_string()).await;

    assert_eq!(
        app.wait_for_allocations(&orderid).await,
        json!([{ "sku": sku, "batchref": batch }])
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the second message waited {took:?}"
    );
    println!("the message behind an out-of-stock one was handled after {took:?}");

    let log = app.log().clone();
    let (status, took) = app.process.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}; the log:\n{}", log.text());
    assert!(took < PROMPT_EXIT, "SIGTERM took {took:?}");
}
