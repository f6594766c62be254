//! The out-of-stock email end to end (docs/contract.md section 4): the built
//! binary sends it through SMTP to the configured recipient, here a sink of
//! the test's own (`test_support::smtp`), from the outbox: one email per
//! out-of-stock event, however many instances run, none lost while SMTP is
//! down or when the process dies after the commit; and a mail server that
//! hangs delays neither answers, nor Redis messages, nor shutdown (issue
//! 13).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use adapters::messages::ALLOCATE;
use serde_json::json;
use test_support::TestDatabase;
use test_support::redis::shared_redis;
use test_support::smtp::{Behaviour, Delivered, SmtpSink};

use crate::helpers::{RunningApp, publish, unique};

/// Long enough for the relay's backoff (at most 10 s between attempts)
/// and its lease (30 s) to let a waiting email go out.
const RELAY_BOUND: Duration = Duration::from_secs(45);

/// The Message-ID of an email the service sent: its outbox message's id.
fn message_id(mail: &Delivered) -> String {
    let id = mail.header("Message-ID").expect("a Message-ID");
    let uuid = id
        .strip_prefix('<')
        .and_then(|id| id.strip_suffix("@allocation>"))
        .unwrap_or_else(|| panic!("not <uuid@allocation>: {id}"));
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id}");
    id.to_owned()
}

/// An instance whose SMTP server is not up yet (its address is free, for
/// the test to start the sink on later), with a SKU of 5 units.
struct SmtpDown {
    app: RunningApp,
    address: String,
    url: String,
    sku: String,
}

impl SmtpDown {
    async fn start(db: &TestDatabase) -> Self {
        let address = SmtpSink::free_address();
        let url = format!("smtp://{address}");
        let app = RunningApp::start_with(db, &["--smtp-url", &url]).await;
        let sku = unique("sku");
        app.add_batch(&unique("b"), &sku, 5, None).await;
        Self {
            app,
            address,
            url,
            sku,
        }
    }
}

/// `count` out-of-stock allocations of `sku` (5 in stock), each its own
/// event.
async fn run_out(app: &RunningApp, sku: &str, count: usize) {
    for _ in 0..count {
        let body = json!({ "orderid": unique("order"), "sku": sku, "qty": 6 });
        let (status, answer) = app.post("/allocate", &body).await;
        assert_eq!(
            (status, &answer["batchref"]),
            (202, &json!(null)),
            "{answer}"
        );
    }
}

/// The `count` emails the sink must receive (each within the relay's
/// bound), and any more that come before it is `quiet` for that long.
async fn all_emails(sink: &mut SmtpSink, count: usize, quiet: Duration) -> Vec<Delivered> {
    let mut mails = Vec::new();
    while mails.len() < count {
        match sink.next_within(RELAY_BOUND).await {
            Some(mail) => mails.push(mail),
            None => panic!("{} of {count} emails within {RELAY_BOUND:?}", mails.len()),
        }
    }
    while let Some(mail) = sink.next_within(quiet).await {
        mails.push(mail);
    }
    mails
}

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
    assert_eq!(mail.header("Subject"), Some(expected.as_str()));
    assert!(mail.body().contains(&expected), "{:?}", mail.data);
    message_id(&mail);
    assert!(
        sink.next_within(Duration::from_millis(500)).await.is_none(),
        "one email"
    );
}

/// SMTP down for a while: the emails wait in the outbox while the relay
/// fails and backs off, and once the server is up every one arrives, once
/// per out-of-stock event (told apart by Message-ID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_wait_while_smtp_is_down_and_each_arrives_once_it_is_up() {
    let db = TestDatabase::sqlite();
    let SmtpDown {
        app, address, sku, ..
    } = SmtpDown::start(&db).await;

    run_out(&app, &sku, 3).await;
    app.log().wait_for("outbox relay failed", 2).await;
    let mut sink = SmtpSink::start_at(&address, Behaviour::Accepting).await;

    let mails = all_emails(&mut sink, 3, Duration::from_secs(1)).await;
    let ids: HashSet<String> = mails.iter().map(message_id).collect();
    assert_eq!((mails.len(), ids.len()), (3, 3), "one email per event");
    let expected = format!("Out of stock for {sku}");
    assert!(mails.iter().all(|m| m.body().contains(&expected)));
}

/// The email is committed with the allocation: a process killed right
/// after (SMTP down, so it never sent it) leaves it in the outbox, and the
/// next start sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_committed_before_a_crash_is_sent_after_the_restart() {
    let db = TestDatabase::sqlite();
    let SmtpDown {
        app,
        address,
        url,
        sku,
    } = SmtpDown::start(&db).await;
    run_out(&app, &sku, 1).await;
    app.log().wait_for("outbox relay failed", 1).await;
    app.kill().await;

    let mut sink = SmtpSink::start_at(&address, Behaviour::Accepting).await;
    let restarted = RunningApp::start_with(&db, &["--smtp-url", &url]).await;

    let mails = all_emails(&mut sink, 1, Duration::from_secs(1)).await;
    assert_eq!(mails.len(), 1, "sent once");
    assert!(mails[0].body().contains(&format!("Out of stock for {sku}")));
    drop(restarted);
}

/// Two instances sharing a PostgreSQL database, both relaying: each
/// out-of-stock event is emailed once, not once per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_send_each_email_once() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let settings = ["--smtp-url", sink.url()];
    let one = RunningApp::start_with(&db, &settings).await;
    let two = RunningApp::start_with(&db, &settings).await;
    let sku = unique("sku");
    one.add_batch(&unique("b"), &sku, 5, None).await;

    run_out(&one, &sku, 3).await;
    run_out(&two, &sku, 3).await;

    let mails = all_emails(&mut sink, 6, Duration::from_secs(2)).await;
    let ids: HashSet<String> = mails.iter().map(message_id).collect();
    assert_eq!((mails.len(), ids.len()), (6, 6), "one email per event");
}

/// Issue 13: an SMTP server that accepts connections and then says nothing
/// used to hold every out-of-stock answer for the SMTP timeout (10 s, then
/// 503) and SIGTERM for a minute. The email now waits in the outbox: the
/// answer comes at once, and shutdown gives up on the hung attempt after
/// the relay's grace period, leaving the email there for the next start.
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
    assert!(
        log.count("unsent messages stay in the outbox") >= 1,
        "{}",
        log.text()
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
