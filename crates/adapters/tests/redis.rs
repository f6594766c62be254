//! The Redis adapter against real Redis servers, no mocks:
//!
//! - on the shared Redis that `REDIS_URL` names (skipped when it is unset,
//!   a failure under `CI=true`, the rule the PostgreSQL tests follow):
//!   messages published by `RedisPublisher` reach `subscribe` and
//!   `subscribe_forever`, byte for byte, and decode with `messages::decode`;
//! - on a `redis-server` of the test's own, on a free port: the publisher
//!   and the reconnecting subscription both start while Redis is down, and
//!   both work again after Redis is killed and restarted on the same port;
//!   and a subscription to a Redis that stops answering (frozen with
//!   SIGSTOP, connections left open) notices by its health check and
//!   reconnects once Redis resumes;
//! - a subscription nobody reads holds at most its buffer's worth of
//!   messages and drops the rest, then takes new ones once read again.
//!
//! Channel names are random, so runs in parallel (or a service listening on
//! the shared Redis) never see each other's messages. Waits are bounded
//! polls, never fixed sleeps.

use std::time::{Duration, Instant};

use adapters::messages::{self, ALLOCATE};
use adapters::redis::BUFFER_CAPACITY;
use adapters::{Incoming, RedisPublisher, Subscription, subscribe, subscribe_forever};
use futures::StreamExt;
use test_support::process::free_port;
use test_support::redis::{RedisServer, redis_server_program, shared_redis};
use test_support::unique;
use tokio::sync::{mpsc, watch};

/// Far above what any step needs on loopback; a bound, not an expectation.
const BOUND: Duration = Duration::from_secs(20);

fn unique_channel(prefix: &str) -> String {
    unique(&format!("{prefix}-test"))
}

/// Takes the messages of `subscription` as they come, in a task of its
/// own, onto the returned channel, which the test reads at its own pace.
fn drive(mut subscription: Subscription) -> mpsc::UnboundedReceiver<Incoming> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    receiver
}

async fn next_message(receiver: &mut mpsc::UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(BOUND, receiver.recv())
        .await
        .expect("a message arrives in time")
        .expect("the subscription is still running")
}

async fn wait_connected(state: &mut watch::Receiver<bool>, connected: bool) {
    tokio::time::timeout(BOUND, state.wait_for(|now| *now == connected))
        .await
        .unwrap_or_else(|_| panic!("the subscription's connected state became {connected} in time"))
        .expect("the subscription is still running");
}

#[tokio::test]
async fn published_messages_reach_a_subscriber_byte_for_byte() {
    let Some(url) = shared_redis() else { return };
    let allocate = unique_channel("allocate");
    let other = unique_channel("other");
    let mut subscription = subscribe(&url, &[allocate.as_str(), other.as_str()])
        .await
        .expect("subscribed");
    assert!(*subscription.connected().borrow());
    let publisher = RedisPublisher::connect(&url, false).expect("a valid URL");

    // A real allocate payload, with non-ASCII text and an extra field.
    let payload = r#"{"orderid": "order-ü", "sku": "RED-CHAIR", "qty": 3, "x": 1}"#;
    publisher
        .publish_raw(&allocate, payload)
        .await
        .expect("published");
    publisher
        .publish_raw(&other, "second")
        .await
        .expect("published");

    let first = next_from(&mut subscription).await;
    assert_eq!(first.channel, allocate);
    assert_eq!(first.payload, payload.as_bytes());
    // What the consumer will do with it: decode under the channel's role.
    let command = messages::decode(ALLOCATE, &first.payload).expect("a valid allocate message");
    assert_eq!(command.name(), "Allocate");

    let second = next_from(&mut subscription).await;
    assert_eq!(
        (second.channel.as_str(), second.payload.as_slice()),
        (other.as_str(), &b"second"[..])
    );
}

#[tokio::test]
async fn subscribe_forever_delivers_on_the_shared_redis() {
    let Some(url) = shared_redis() else { return };
    let channel = unique_channel("change_batch_quantity");
    let subscription = subscribe_forever(&url, &[channel.as_str()]).expect("a valid URL");
    let mut connected = subscription.connected();
    let mut received = drive(subscription);
    wait_connected(&mut connected, true).await;

    let publisher = RedisPublisher::connect(&url, false).expect("a valid URL");
    publisher
        .publish_raw(&channel, r#"{"batchref": "b1", "qty": 7}"#)
        .await
        .expect("published");

    let message = next_message(&mut received).await;
    assert_eq!(message.channel, channel);
    assert_eq!(message.payload, br#"{"batchref": "b1", "qty": 7}"#);
}

#[tokio::test]
async fn publisher_and_subscription_survive_redis_being_down_and_restarted() {
    let Some(program) = redis_server_program() else {
        return;
    };
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let channel = unique_channel("line_allocated");

    // Both start while Redis is down: neither fails, nor does the service.
    let publisher = RedisPublisher::connect(&url, false).expect("a valid URL");
    let started = Instant::now();
    publisher
        .publish_raw(&channel, "lost")
        .await
        .expect_err("no Redis yet");
    assert!(
        started.elapsed() < BOUND,
        "a failed publish returns promptly"
    );
    let subscription = subscribe_forever(&url, &[channel.as_str()]).expect("a valid URL");
    let mut connected = subscription.connected();
    let mut received = drive(subscription);

    let server = RedisServer::start(&program, port).await;
    wait_connected(&mut connected, true).await;
    publisher
        .publish_raw(&channel, "before the restart")
        .await
        .expect("Redis is up now");
    assert_eq!(
        next_message(&mut received).await.payload,
        b"before the restart"
    );

    server.kill();
    wait_connected(&mut connected, false).await;
    let started = Instant::now();
    publisher
        .publish_raw(&channel, "lost")
        .await
        .expect_err("Redis is down");
    assert!(
        started.elapsed() < BOUND,
        "a failed publish returns promptly"
    );

    let _server = RedisServer::start(&program, port).await;
    wait_connected(&mut connected, true).await;
    // The first publish after the restart succeeds: the publisher retries
    // once on the connection its manager re-established.
    publisher
        .publish_raw(&channel, "after the restart")
        .await
        .expect("Redis is back");
    let message = next_message(&mut received).await;
    assert_eq!(message.channel, channel);
    assert_eq!(
        message.payload, b"after the restart",
        "nothing published while Redis was down arrives later"
    );
}

#[tokio::test]
async fn a_subscription_to_a_redis_that_stopped_answering_reconnects() {
    let Some(program) = redis_server_program() else {
        return;
    };
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let channel = unique_channel("allocate");
    let server = RedisServer::start(&program, port).await;
    let subscription = subscribe_forever(&url, &[channel.as_str()]).expect("a valid URL");
    let mut connected = subscription.connected();
    let mut received = drive(subscription);
    wait_connected(&mut connected, true).await;

    // A frozen Redis keeps its connections open but answers nothing, like
    // a host that vanished from the network: only the subscription's own
    // health check (a PING every few seconds) can notice.
    server.signal("STOP");
    wait_connected(&mut connected, false).await;
    server.signal("CONT");
    wait_connected(&mut connected, true).await;

    let publisher = RedisPublisher::connect(&url, false).expect("a valid URL");
    publisher
        .publish_raw(&channel, "still listening")
        .await
        .expect("Redis answers again");
    assert_eq!(
        next_message(&mut received).await.payload,
        b"still listening"
    );
}

/// redis-rs reads whatever Redis sends into a queue without a bound; the
/// subscription's buffer bounds what waits for a consumer that is behind.
#[tokio::test]
async fn a_subscription_nobody_reads_keeps_its_buffer_full_and_drops_the_rest() {
    let Some(url) = shared_redis() else { return };
    let channel = unique_channel("allocate");
    let mut subscription = subscribe(&url, &[channel.as_str()])
        .await
        .expect("subscribed");
    let publisher = RedisPublisher::connect(&url, false).expect("a valid URL");

    let sent = 3 * BUFFER_CAPACITY;
    for n in 0..sent {
        publisher
            .publish_raw(&channel, &n.to_string())
            .await
            .expect("published");
    }

    // The first ones waited in the buffer, in order; most of the rest were
    // dropped on arrival.
    let mut received = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        received.push(String::from_utf8(message.payload).expect("text"));
    }
    let first: Vec<String> = (0..BUFFER_CAPACITY).map(|n| n.to_string()).collect();
    assert!(
        received.len() >= BUFFER_CAPACITY && received[..BUFFER_CAPACITY] == first[..],
        "{} received",
        received.len()
    );
    assert!(received.len() < sent, "all {sent} were kept");

    // Read again, it takes new messages.
    publisher
        .publish_raw(&channel, "after")
        .await
        .expect("published");
    let message = next_from(&mut subscription).await;
    assert_eq!(message.payload, b"after");
}

#[test]
fn invalid_urls_are_refused_without_showing_the_password() {
    let error =
        subscribe_forever("redis://:s3cret@[not-a-host/", &["allocate"]).expect_err("not a URL");
    let message = error.to_string();
    assert!(message.starts_with("invalid Redis URL"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    assert!(matches!(
        subscribe_forever("http://127.0.0.1:6379", &["allocate"]),
        Err(adapters::RedisError::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn the_publisher_is_lazy_and_never_shows_the_password() {
    // Port 1 on loopback: nothing listens there, yet creating the
    // publisher succeeds; only publishing fails, promptly.
    let publisher =
        RedisPublisher::connect("redis://:s3cret@127.0.0.1:1/0", false).expect("a valid URL");
    assert!(!format!("{publisher:?}").contains("s3cret"));
    let started = std::time::Instant::now();
    let error = publisher
        .publish_raw("line_allocated", "{}")
        .await
        .expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = error.to_string();
    assert!(message.contains("redis://:***@127.0.0.1:1/0"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// The subscription's next message, within [`BOUND`].
async fn next_from(subscription: &mut Subscription) -> Incoming {
    tokio::time::timeout(BOUND, subscription.next())
        .await
        .expect("in time")
        .expect("still subscribed")
}
