//! The Redis Streams adapter against the shared Redis (`REDIS_URL`; skipped
//! when unset, a failure under `CI=true`), each test on streams and a group
//! of random names: an entry goes to one consumer of a group and stays
//! pending until acknowledged; another consumer takes over what stayed
//! pending, with the delivery counted; a dead letter is moved and
//! acknowledged together; a group that disappeared is made again; and the
//! publisher adds each message to the stream of its channel.

use std::time::Duration;

use adapters::redis::{StreamConsumer, StreamSettings, dead_letter_stream};
use adapters::{RedisPublisher, messages};
use domain::events::Allocated;
use domain::{BatchRef, OrderId, Quantity, Sku};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use service_layer::ports::{OutboxMessage, Outgoing, Publisher};
use test_support::redis::shared_redis;
use test_support::unique;
use uuid::Uuid;

async fn connection(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection")
}

/// A consumer of `stream` in `group`, taking over entries pending for
/// `claim_idle`.
fn consumer(
    url: &str,
    stream: &str,
    group: &str,
    name: &str,
    claim_idle: Duration,
) -> StreamConsumer {
    let mut settings = StreamSettings::new(group, name);
    settings.claim_idle = claim_idle;
    settings.block = Duration::from_millis(100);
    StreamConsumer::connect(url, &[stream], settings).expect("a valid URL")
}

async fn add(redis: &mut MultiplexedConnection, stream: &str, payload: &str) -> String {
    redis
        .xadd(stream, "*", &[("payload", payload)])
        .await
        .expect("XADD")
}

async fn pending(redis: &mut MultiplexedConnection, stream: &str, group: &str) -> usize {
    let reply: redis::streams::StreamPendingReply =
        redis.xpending(stream, group).await.expect("XPENDING");
    reply.count()
}

#[tokio::test]
async fn an_entry_goes_to_one_consumer_and_another_takes_it_over_once_it_stayed_pending() {
    let Some(url) = shared_redis() else { return };
    let (stream, group) = (unique("stream"), unique("group"));
    let mut redis = connection(&url).await;
    let mut first = consumer(&url, &stream, &group, "first", Duration::ZERO);
    let mut second = consumer(&url, &stream, &group, "second", Duration::ZERO);
    first.ensure_groups().await.expect("group");
    second
        .ensure_groups()
        .await
        .expect("the group again: no error");
    let ids = [
        add(&mut redis, &stream, "one").await,
        add(&mut redis, &stream, "two").await,
    ];

    let read = first.read().await.expect("XREADGROUP");
    let payloads: Vec<_> = read.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, [Some(b"one".to_vec()), Some(b"two".to_vec())]);
    assert!(read.iter().all(|e| e.deliveries == 1 && e.stream == stream));
    assert!(
        second.read().await.expect("XREADGROUP").is_empty(),
        "each entry goes to one consumer"
    );
    assert_eq!(pending(&mut redis, &stream, &group).await, 2);

    // `first` died without acknowledging: `second` takes both over.
    let taken = second.reclaim().await.expect("XAUTOCLAIM");
    let taken_ids: Vec<_> = taken.iter().map(|e| e.id.clone()).collect();
    assert_eq!(taken_ids, ids);
    assert!(taken.iter().all(|e| e.deliveries == 2), "{taken:?}");
    second.ack(&stream, &taken_ids).await.expect("XACK");
    assert_eq!(pending(&mut redis, &stream, &group).await, 0);
    assert!(second.reclaim().await.expect("XAUTOCLAIM").is_empty());
}

#[tokio::test]
async fn entries_pending_for_less_than_the_idle_time_stay_with_their_consumer() {
    let Some(url) = shared_redis() else { return };
    let (stream, group) = (unique("stream"), unique("group"));
    let mut redis = connection(&url).await;
    let mut first = consumer(&url, &stream, &group, "first", Duration::from_secs(60));
    let mut second = consumer(&url, &stream, &group, "second", Duration::from_secs(60));
    first.ensure_groups().await.expect("group");
    add(&mut redis, &stream, "busy").await;
    assert_eq!(first.read().await.expect("XREADGROUP").len(), 1);
    assert!(second.reclaim().await.expect("XAUTOCLAIM").is_empty());
}

#[tokio::test]
async fn a_dead_letter_is_moved_with_its_reason_and_acknowledged() {
    let Some(url) = shared_redis() else { return };
    let (stream, group) = (unique("stream"), unique("group"));
    let mut redis = connection(&url).await;
    let mut consumer = consumer(&url, &stream, &group, "only", Duration::ZERO);
    consumer.ensure_groups().await.expect("group");
    let id = add(&mut redis, &stream, "{not json").await;
    let entry = consumer.read().await.expect("XREADGROUP").remove(0);

    consumer
        .dead_letter(&entry, "not valid JSON")
        .await
        .expect("dead-lettered");

    assert_eq!(pending(&mut redis, &stream, &group).await, 0);
    let dead: redis::streams::StreamRangeReply = redis
        .xrange_all(dead_letter_stream(&stream))
        .await
        .expect("XRANGE");
    assert_eq!(dead.ids.len(), 1);
    let field = |name: &str| dead.ids[0].get::<String>(name);
    assert_eq!(field("stream").as_deref(), Some(stream.as_str()));
    assert_eq!(field("id"), Some(id));
    assert_eq!(field("payload").as_deref(), Some("{not json"));
    assert_eq!(field("reason").as_deref(), Some("not valid JSON"));
    assert_eq!(field("deliveries").as_deref(), Some("1"));
}

#[tokio::test]
async fn a_group_that_disappeared_is_made_again_and_reads_go_on() {
    let Some(url) = shared_redis() else { return };
    let (stream, group) = (unique("stream"), unique("group"));
    let mut redis = connection(&url).await;
    let mut consumer = consumer(&url, &stream, &group, "only", Duration::ZERO);
    consumer.ensure_groups().await.expect("group");
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut redis)
        .await
        .expect("XGROUP DESTROY");

    assert!(
        consumer
            .read()
            .await
            .expect("no error: made again")
            .is_empty()
    );
    add(&mut redis, &stream, "after").await;
    let read = consumer.read().await.expect("XREADGROUP");
    assert_eq!(read.len(), 1);
}

/// A round goes out in one pipeline; each message lands on the stream of
/// its channel, in the round's order.
#[tokio::test]
async fn the_publisher_adds_each_message_of_a_round_to_its_stream_in_order() {
    let Some(url) = shared_redis() else { return };
    let mut redis = connection(&url).await;
    let sku = Sku::parse(&unique("sku")).expect("sku");
    let round: Vec<OutboxMessage> = (0..3)
        .map(|n| OutboxMessage {
            message_id: Uuid::new_v4(),
            message: Outgoing::LineAllocated(Allocated {
                orderid: OrderId::parse(&unique(&format!("order{n}"))).expect("id"),
                sku: sku.clone(),
                qty: Quantity::parse(3, "qty").expect("qty"),
                batchref: BatchRef::parse("b1").expect("ref"),
            }),
        })
        .collect();
    RedisPublisher::connect(&url, true)
        .expect("a valid URL")
        .publish(&round)
        .await
        .expect("published");

    let newest: redis::streams::StreamRangeReply = redis
        .xrevrange_count(messages::LINE_ALLOCATED, "+", "-", 1000)
        .await
        .expect("XREVRANGE");
    let mut ours: Vec<String> = newest
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("payload"))
        .filter(|payload| payload.contains(sku.as_str()))
        .collect();
    ours.reverse();
    let expected: Vec<String> = round
        .iter()
        .map(|message| messages::encode(message).1)
        .collect();
    assert_eq!(ours, expected, "every message of the round, in order");
}

#[tokio::test]
async fn holding_an_entry_keeps_it_from_others_without_counting_a_delivery() {
    let Some(url) = shared_redis() else { return };
    let (stream, group) = (unique("stream"), unique("group"));
    let mut redis = connection(&url).await;
    let mut first = consumer(&url, &stream, &group, "first", Duration::from_millis(300));
    let mut second = consumer(&url, &stream, &group, "second", Duration::from_millis(300));
    first.ensure_groups().await.expect("group");
    add(&mut redis, &stream, "retried").await;
    let held = first.read().await.expect("XREADGROUP");
    assert_eq!(held.len(), 1);

    // Past the idle time, but held again just before: not taken over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.hold(&held).await.expect("XCLAIM JUSTID");
    assert!(second.reclaim().await.expect("XAUTOCLAIM").is_empty());

    // A restart under the same name takes its own entry back at once: a
    // second delivery (a poison entry that kills its consumer is counted
    // so); holding it counted none.
    let mut restarted = consumer(&url, &stream, &group, "first", Duration::from_secs(60));
    let own = restarted.own_pending().await.expect("XREADGROUP 0");
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].id, held[0].id);
    assert_eq!(own[0].deliveries, 2, "the first and the restart's");
}
