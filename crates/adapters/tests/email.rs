//! `EmailNotifications` against a real SMTP conversation: the SMTP sink of
//! `test_support::smtp`, which each test starts on a free loopback port and
//! which records each message's envelope and data, or a plain TCP listener
//! that accepts and then says nothing (a hung server). The out-of-stock
//! email goes through the service layer's own handler, so the tests check
//! what the service really sends; and that `send` only queues, so that no
//! server, however slow, can delay it.

use std::time::{Duration, Instant};

use adapters::email::{
    DEFAULT_RECIPIENT, DEFAULT_SENDER, EmailNotifications, EmailSender, EmailSettings,
};
use domain::Sku;
use domain::events::OutOfStock;
use service_layer::handlers::send_out_of_stock_notification;
use service_layer::ports::{Notification, Notifications};
use test_support::smtp::{Behaviour, SmtpSink};
use tokio::net::TcpListener;

/// Far above what any of these exchanges needs on loopback, far below a hang.
const BOUND: Duration = Duration::from_secs(10);

/// What "at once" means for queueing an email: nothing is sent meanwhile,
/// so this is a bound for a loaded CI machine, far below any SMTP timeout.
const AT_ONCE: Duration = Duration::from_millis(500);

/// Short waits, so that retries happen within a test's time.
fn quick(timeout: Duration) -> EmailSettings {
    EmailSettings {
        timeout,
        attempts: 3,
        backoff: Duration::from_millis(20),
        queue_capacity: 10,
    }
}

fn start(url: &str, settings: EmailSettings) -> (EmailNotifications, EmailSender) {
    EmailNotifications::start(url, DEFAULT_RECIPIENT, DEFAULT_SENDER, settings)
        .expect("valid settings")
}

fn notification(subject: &str) -> Notification {
    Notification {
        subject: subject.into(),
        body: "b".into(),
    }
}

/// A server that accepts connections and never says a word, and how many
/// it accepted so far.
async fn hung_server() -> (String, tokio::sync::watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("smtp://{}", listener.local_addr().expect("a bound address"));
    let (count, accepted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            // Kept open and silent, until the test ends.
            open.push(stream);
            count.send_replace(open.len());
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn out_of_stock_is_emailed_to_the_default_recipient_from_the_default_sender() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let (notifications, _sender) = start(sink.url(), EmailSettings::default());
    let event = OutOfStock {
        sku: Sku::parse("SMALL-TABLE").expect("a valid SKU"),
    };

    send_out_of_stock_notification(&event, &notifications)
        .await
        .expect("queued");

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
    let (notifications, _sender) = EmailNotifications::start(
        sink.url(),
        "buyers@shop.test",
        "Stock robot <robot@shop.test>",
        EmailSettings::default(),
    )
    .expect("valid settings");

    notifications
        .send(&Notification {
            subject: "Restock".into(),
            // A line starting with a dot must survive SMTP's dot-stuffing.
            body: "first line\n.second line starts with a dot\n".into(),
        })
        .await
        .expect("queued");

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

/// The heart of it: a server that accepts and then hangs delays nobody.
/// Sending returns at once (the default timeout is 10 s); the sender keeps
/// trying in the background, each attempt cut off by its timeout; and at
/// shutdown it gives up after its grace period.
#[tokio::test]
async fn a_hung_server_delays_neither_sending_nor_shutdown() {
    let (url, mut accepted) = hung_server().await;
    let (notifications, sender) = start(&url, quick(Duration::from_millis(200)));

    let took = send_emails(&notifications, "email", 3).await;
    assert!(took < AT_ONCE, "three sends took {took:?}");

    // The first email's attempts: each one timed out, then one more came.
    let retried = accepted.wait_for(|count| *count >= 2);
    assert!(
        tokio::time::timeout(BOUND, retried).await.is_ok(),
        "the sender did not try again after its attempt timed out"
    );

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    tokio::time::timeout(BOUND, sender.finish(grace))
        .await
        .expect("finish returns");
    let took = started.elapsed();
    assert!(took < grace + AT_ONCE, "shutdown took {took:?}");
    // The queue is closed now: sending still returns at once, and drops.
    let started = Instant::now();
    notifications
        .send(&notification("after shutdown"))
        .await
        .expect("dropped, not an error");
    assert!(started.elapsed() < AT_ONCE);
}

#[tokio::test]
async fn a_full_queue_drops_new_emails_rather_than_wait() {
    let (url, _accepted) = hung_server().await;
    let settings = EmailSettings {
        queue_capacity: 1,
        ..EmailSettings::default()
    };
    let (notifications, sender) = start(&url, settings);

    let took = send_emails(&notifications, "email", 50).await;
    assert!(took < AT_ONCE, "50 sends to a full queue took {took:?}");
    sender.finish(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_email_the_server_asks_to_try_again_later_is_retried_and_arrives() {
    let mut sink = SmtpSink::start(Behaviour::BusyFirst(2)).await;
    let (notifications, _sender) = start(sink.url(), quick(BOUND));

    notifications
        .send(&notification("third time lucky"))
        .await
        .expect("queued");

    let mail = sink.next().await;
    assert_eq!(mail.header("Subject"), Some("third time lucky"));
    assert_eq!(sink.sessions(), 3, "refused twice, then accepted");
}

#[tokio::test]
async fn a_permanent_refusal_is_not_retried() {
    let mut sink = SmtpSink::start(Behaviour::RefusingRecipients).await;
    let (notifications, sender) = start(sink.url(), quick(BOUND));

    notifications
        .send(&notification("nobody here"))
        .await
        .expect("queued");
    // Finishing waits for the queue to empty: the one attempt is over.
    sender.finish(BOUND).await;

    assert_eq!(sink.sessions(), 1, "a 5xx refusal is final");
    assert!(sink.next_within(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn shutdown_sends_what_is_queued_within_its_grace_period() {
    let mut sink = SmtpSink::start(Behaviour::Accepting).await;
    let (notifications, sender) = start(sink.url(), quick(BOUND));
    send_emails(&notifications, "queued", 3).await;

    sender.finish(BOUND).await;

    for n in 0..3 {
        let mail = sink.next().await;
        assert_eq!(mail.header("Subject"), Some(format!("queued {n}").as_str()));
    }
}

/// Sends `count` notifications, subjects `<prefix> 0`, `<prefix> 1`...;
/// how long that took. Each is queued or dropped, never an error.
async fn send_emails(notifications: &EmailNotifications, prefix: &str, count: usize) -> Duration {
    let started = Instant::now();
    for n in 0..count {
        notifications
            .send(&notification(&format!("{prefix} {n}")))
            .await
            .expect("queued or dropped, never an error");
    }
    started.elapsed()
}
