//! `EmailNotifications` against a real SMTP conversation: the SMTP sink of
//! `test_support::smtp`, which each test starts on a free loopback port and
//! which records each message's envelope and data. The out-of-stock email
//! goes through the service layer's own handler, so the test checks what
//! the service really sends.

use std::time::{Duration, Instant};

use adapters::email::{DEFAULT_RECIPIENT, DEFAULT_SENDER, EmailNotifications};
use domain::Sku;
use domain::events::OutOfStock;
use service_layer::handlers::send_out_of_stock_notification;
use service_layer::ports::{Notification, Notifications};
use test_support::process::free_port;
use test_support::smtp::{Behaviour, SmtpSink};

/// Far above what any of these exchanges needs on loopback, far below a hang.
const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn out_of_stock_is_emailed_to_the_default_recipient_from_the_default_sender() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let notifications = EmailNotifications::new(sink.url(), DEFAULT_RECIPIENT, DEFAULT_SENDER)
        .expect("valid settings");
    let event = OutOfStock {
        sku: Sku::parse("SMALL-TABLE").expect("a valid SKU"),
    };

    send_out_of_stock_notification(&event, &notifications)
        .await
        .expect("the sink accepts the email");

    let mail = sink.next().await;
    assert_eq!(mail.mail_from, "allocations@example.com");
    assert_eq!(mail.rcpt_to, ["stock@made.com"]);
    assert_eq!(mail.header("From"), Some("allocations@example.com"));
    assert_eq!(mail.header("To"), Some("stock@made.com"));
    assert_eq!(mail.header("Subject"), Some("Out of stock for SMALL-TABLE"));
    let body = mail.body();
    assert!(body.contains("Out of stock for SMALL-TABLE"), "{body:?}");
}

#[tokio::test]
async fn recipient_and_sender_are_configurable() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let notifications = EmailNotifications::new(
        sink.url(),
        "buyers@shop.test",
        "Stock robot <robot@shop.test>",
    )
    .expect("valid settings");

    notifications
        .send(&Notification {
            subject: "Restock".into(),
            // A line starting with a dot must survive SMTP's dot-stuffing.
            body: "first line\n.second line starts with a dot\n".into(),
        })
        .await
        .expect("the sink accepts the email");

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

#[tokio::test]
async fn an_unreachable_server_is_a_notification_error() {
    // A port that was free a moment ago: nothing listens there now.
    let port = free_port();
    let notifications = EmailNotifications::new(
        &format!("smtp://127.0.0.1:{port}"),
        DEFAULT_RECIPIENT,
        DEFAULT_SENDER,
    )
    .expect("valid settings");

    let started = Instant::now();
    let error = send_out_of_stock_notification(
        &OutOfStock {
            sku: Sku::parse("LAMP").expect("a valid SKU"),
        },
        &notifications,
    )
    .await
    .expect_err("nobody listens");

    assert!(started.elapsed() < BOUND);
    let message = error.to_string();
    assert!(
        message.starts_with("notification not sent: SMTP server 127.0.0.1:"),
        "{message}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_notification_error_after_the_timeout() {
    let sink = SmtpSink::start(Behaviour::Silent).await;
    let timeout = Duration::from_millis(300);
    let notifications = EmailNotifications::new(sink.url(), DEFAULT_RECIPIENT, DEFAULT_SENDER)
        .expect("valid settings")
        .with_timeout(timeout);

    let started = Instant::now();
    let error = notifications
        .send(&Notification {
            subject: "s".into(),
            body: "b".into(),
        })
        .await
        .expect_err("the server never greets");

    let elapsed = started.elapsed();
    assert!(elapsed >= timeout && elapsed < BOUND, "{elapsed:?}");
    assert!(
        error.to_string().contains("did not finish within 300ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_recipient_is_a_notification_error() {
    let sink = SmtpSink::start(Behaviour::RefusingRecipients).await;
    let notifications = EmailNotifications::new(sink.url(), DEFAULT_RECIPIENT, DEFAULT_SENDER)
        .expect("valid settings");

    let error = notifications
        .send(&Notification {
            subject: "s".into(),
            body: "b".into(),
        })
        .await
        .expect_err("the server refuses the recipient");

    let message = error.to_string();
    assert!(message.contains("refused or failed"), "{message}");
}
