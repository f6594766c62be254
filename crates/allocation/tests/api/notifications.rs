//! The out-of-stock email end to end (CONTRACT.md section 4): the built
//! binary sends it through SMTP to the configured recipient, here a sink of
//! the test's own (`test_support::smtp`).

use std::time::Duration;

use serde_json::json;
use test_support::TestDatabase;
use test_support::smtp::{Behaviour, SmtpSink};

use crate::helpers::{RunningApp, unique};

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
