//! The email adapter against a real SMTP exchange: a sink of the test's own
//! (`test_support::smtp`) that accepts, refuses, asks to try again later,
//! or accepts and then says nothing (a hung server). The out-of-stock
//! email is built by the service layer's own function, so the tests check
//! what the service really sends; `send` is one attempt, bounded in time,
//! whose error tells the notifications relay to try again.

use std::time::{Duration, Instant};

use adapters::email::{
    DEFAULT_RECIPIENT, DEFAULT_SENDER, EmailNotifications, EmailSettings, message_id,
};
use domain::Sku;
use domain::events::OutOfStock;
use service_layer::handlers::out_of_stock_notification;
use service_layer::ports::{Notification, Notifications};
use test_support::smtp::{Behaviour, SmtpSink};
use uuid::Uuid;

/// Far above what any of these exchanges needs on loopback, far below a hang.
const BOUND: Duration = Duration::from_secs(10);

fn start(url: &str, settings: EmailSettings) -> EmailNotifications {
    EmailNotifications::new(url, DEFAULT_RECIPIENT, DEFAULT_SENDER, settings)
        .expect("valid settings")
}

fn notification(subject: &str) -> Notification {
    Notification {
        id: Uuid::new_v4(),
        subject: subject.into(),
        body: "b".into(),
    }
}

#[tokio::test]
async fn out_of_stock_is_emailed_to_the_default_recipient_with_its_message_id() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let notifications = start(sink.url(), EmailSettings::default());
    let id = Uuid::from_u128(0x0b5c_1d00_0000_4000_8000_0000_0000_0042);
    let event = OutOfStock {
        sku: Sku::parse("SMALL-TABLE").expect("a valid SKU"),
    };

    notifications
        .send(&out_of_stock_notification(id, &event))
        .await
        .expect("sent");

    let mail = sink.next().await;
    assert_eq!(mail.mail_from, "allocations@example.com");
    assert_eq!(mail.rcpt_to, ["stock@made.com"]);
    assert_eq!(mail.header("From"), Some("allocations@example.com"));
    assert_eq!(mail.header("To"), Some("stock@made.com"));
    assert_eq!(mail.header("Subject"), Some("Out of stock for SMALL-TABLE"));
    assert_eq!(
        mail.header("Message-ID"),
        Some("<0b5c1d00-0000-4000-8000-000000000042@allocation>")
    );
    assert_eq!(
        message_id(id),
        "<0b5c1d00-0000-4000-8000-000000000042@allocation>"
    );
    let body = mail.body();
    assert!(body.contains("Out of stock for SMALL-TABLE"), "{body:?}");
}

/// A re-send (after a crash between the server's acceptance and the
/// relay's mark) carries the same Message-ID: what lets a mail system drop
/// it.
#[tokio::test]
async fn the_same_notification_sent_twice_has_the_same_message_id() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let notifications = start(sink.url(), EmailSettings::default());
    let twice = notification("again");
    let other = notification("other");

    for sent in [&twice, &twice, &other] {
        notifications.send(sent).await.expect("sent");
    }

    let ids: Vec<String> = [sink.next().await, sink.next().await, sink.next().await]
        .iter()
        .map(|mail| mail.header("Message-ID").expect("a Message-ID").to_owned())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
}

#[tokio::test]
async fn recipient_and_sender_are_configurable() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let notifications = EmailNotifications::new(
        sink.url(),
        "buyers@shop.test",
        "Stock robot <robot@shop.test>",
        EmailSettings::default(),
    )
    .expect("valid settings");

    notifications
        .send(&Notification {
            id: Uuid::new_v4(),
            subject: "Restock".into(),
            // A line starting with a dot must survive SMTP's dot-stuffing.
            body: "first line\n.second line starts with a dot\n".into(),
        })
        .await
        .expect("sent");

    let mail = sink.next().await;
    assert_eq!(mail.mail_from, "robot@shop.test");
    assert_eq!(mail.rcpt_to, ["buyers@shop.test"]);
    assert_eq!(
        mail.header("From"),
        Some("\"Stock robot\" <robot@shop.test>")
    );
    assert!(
        mail.data.contains("\n.second line starts with a dot\n"),
        "{:?}",
        mail.data
    );
}

/// A server that accepts and then hangs costs one attempt its timeout, no
/// more, and the attempt is an error: the relay keeps the email.
#[tokio::test]
async fn a_hung_server_fails_the_attempt_within_its_timeout() {
    let sink = SmtpSink::start(Behaviour::Silent).await;
    let timeout = Duration::from_millis(200);
    let notifications = start(sink.url(), EmailSettings { timeout });

    let started = Instant::now();
    let sent = notifications.send(&notification("hung")).await;
    let took = started.elapsed();
    let error = sent.expect_err("a timeout is an error, to try again");
    assert!(error.to_string().contains("did not finish"), "{error}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
}

/// No server at all (SMTP down): an error at once, to try again later.
#[tokio::test]
async fn no_server_is_an_error_to_try_again() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!("smtp://{}", listener.local_addr().expect("an address"));
    drop(listener);
    let notifications = start(&url, EmailSettings { timeout: BOUND });

    let sent = tokio::time::timeout(BOUND, notifications.send(&notification("nobody")))
        .await
        .expect("within its timeout");
    assert!(sent.is_err(), "a refused connection is an error");
}

/// "Try again later" (4xx) is an error: the relay tries again with its
/// backoff, and the email arrives once the server takes it.
#[tokio::test]
async fn try_again_later_is_an_error_and_the_next_attempt_arrives() {
    let mut sink = SmtpSink::start(Behaviour::BusyFirst(1)).await;
    let notifications = start(sink.url(), EmailSettings { timeout: BOUND });
    let email = notification("second time lucky");

    assert!(notifications.send(&email).await.is_err(), "busy: try again");
    notifications.send(&email).await.expect("accepted");

    let mail = sink.next().await;
    assert_eq!(mail.header("Subject"), Some("second time lucky"));
    assert_eq!(sink.sessions(), 2, "one session per attempt");
}

/// A permanent refusal (5xx) would be refused on every attempt: it is
/// dropped (logged and counted) and reported done, so that the relay marks
/// it sent instead of retrying it forever ahead of the emails behind it.
#[tokio::test]
async fn a_permanent_refusal_is_dropped_not_retried() {
    let mut sink = SmtpSink::start(Behaviour::RefusingRecipients).await;
    let notifications = start(sink.url(), EmailSettings { timeout: BOUND });

    notifications
        .send(&notification("nobody here"))
        .await
        .expect("dropped, not an error");

    assert_eq!(sink.sessions(), 1, "one attempt");
    assert!(sink.next_within(Duration::from_millis(100)).await.is_none());
}
