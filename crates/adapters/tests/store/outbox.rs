//! The outbox as each backend stores it (docs/contract.md section 3: every
//! committed allocation is published at least once): what a commit writes
//! to it, and the relay's side of it (`claim`, `release`, `mark_sent`,
//! leases), one test per backend; the out-of-stock emails beside the
//! messages, each destination claimed on its own; then two relays over two
//! pools draining one outbox at once, which must publish every message
//! exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{BatchRef, OrderId, Sku};
use service_layer::memory::{RecordingNotifications, RecordingPublisher};
use service_layer::ports::{ClaimedMessage, Destination, Outbox, OutboxBacklog};
use service_layer::relay::{NotificationPublisher, OutboxRelay, RelaySettings};
use service_layer::{Store, UnitOfWork};
use test_support::{TestDatabase, on_database, per_backend};
use tokio::sync::Notify;

use crate::backends::{connect_before_migration, one_store, open, two_instances};
use crate::helpers::*;

per_backend!(mod outbox_on_every_backend on [memory, sqlite, postgres] via one_store {
    a_committed_allocation_leaves_one_message_describing_it,
    a_rolled_back_unit_of_work_leaves_no_message,
    claims_go_oldest_first_up_to_the_limit_and_exclude_each_other,
    released_messages_are_claimable_at_once,
    sent_messages_are_gone_for_good,
    an_expired_lease_makes_messages_claimable_again,
    the_backlog_counts_unsent_messages_and_ages_the_oldest,
    an_out_of_stock_allocation_leaves_exactly_one_email,
    each_destination_claims_only_its_own_messages,
    the_email_relay_sends_each_email_with_its_id_and_marks_it_sent,
});

per_backend!(mod migrated on [sqlite, postgres] via on_database {
    messages_waiting_in_an_outbox_from_before_destinations_still_go_out_to_redis,
});

per_backend!(mod relays_side_by_side on [memory, postgres] via two_instances {
    two_relays_publish_each_message_exactly_once,
});

/// A lease no test outlives: what is claimed with it stays claimed.
const LONG: Duration = Duration::from_secs(600);

async fn claim<O: Outbox>(outbox: &O, limit: u32, lease: Duration) -> Vec<ClaimedMessage> {
    outbox
        .claim(limit, lease, Destination::Messages)
        .await
        .expect("claim")
}

async fn claim_emails<O: Outbox>(outbox: &O, limit: u32, lease: Duration) -> Vec<ClaimedMessage> {
    outbox
        .claim(limit, lease, Destination::Notifications)
        .await
        .expect("claim")
}

fn orderids(claimed: &[ClaimedMessage]) -> Vec<OrderId> {
    claimed
        .iter()
        .filter_map(|c| c.message.line_allocated())
        .map(|event| event.orderid.clone())
        .collect()
}

fn positions(claimed: &[ClaimedMessage]) -> Vec<i64> {
    claimed.iter().map(|c| c.position).collect()
}

/// A product with plenty of stock and `count` orders allocated to it, one
/// commit each, oldest first.
async fn allocated_orders<S: Store>(store: &S, count: usize) -> (Sku, BatchRef, Vec<OrderId>) {
    let bus = bus(store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10_000, None).await;
    let mut orders = Vec::with_capacity(count);
    for n in 0..count {
        let order = orderid(&format!("o{n}"));
        assert_eq!(bus.allocate(&order, &sku, 1).await, Some(batch.clone()));
        orders.push(order);
    }
    (sku, batch, orders)
}

async fn a_committed_allocation_leaves_one_message_describing_it<S: Store + Outbox>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));
    bus.add_batch(&batch, &sku, 10, None).await;
    assert_eq!(
        claim(&store, 100, LONG).await,
        vec![],
        "creating a batch announces nothing"
    );

    assert_eq!(bus.allocate(&order, &sku, 3).await, Some(batch.clone()));

    let claimed = claim(&store, 100, LONG).await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let message = &claimed[0].message;
    assert!(!message.message_id.is_nil(), "{message:?}");
    let event = message.line_allocated().expect("a line_allocated");
    assert_eq!(
        (&event.orderid, &event.sku, event.qty, &event.batchref),
        (&order, &sku, qty(3), &batch)
    );

    // The same line sent again changes nothing, so announces nothing.
    assert_eq!(bus.allocate(&order, &sku, 3).await, Some(batch));
    assert_eq!(claim(&store, 100, Duration::ZERO).await, vec![]);
}

/// The command that found no stock changed no product, yet its email is
/// committed: one row, for the notifications relay, and no message for
/// Redis.
async fn an_out_of_stock_allocation_leaves_exactly_one_email<S: Store + Outbox>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10, None).await;
    let messages_before = claim(&store, 100, Duration::ZERO).await;

    let refused = bus.try_allocate(&orderid("big"), &sku, 11).await;
    assert_eq!(refused.expect("handled"), None, "out of stock");

    let emails = emails_of(&store).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].subject, format!("Out of stock for {sku}"));
    assert!(emails[0].body.contains(&format!("Out of stock for {sku}")));
    let claimed = claim_emails(&store, 100, Duration::ZERO).await;
    assert_eq!(emails[0].id, claimed[0].message.message_id);
    assert_eq!(
        claim(&store, 100, Duration::ZERO).await,
        messages_before,
        "nothing for Redis"
    );
}

/// Emails and messages interleaved: each destination's claim takes its
/// own, oldest first, and leaves the other's unclaimed.
async fn each_destination_claims_only_its_own_messages<S: Store + Outbox>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 3, None).await;
    for n in 0..3 {
        let order = orderid(&format!("o{n}"));
        assert_eq!(bus.allocate(&order, &sku, 1).await, Some(batch.clone()));
        let refused = bus.try_allocate(&orderid(&format!("x{n}")), &sku, 50).await;
        assert_eq!(refused.expect("handled"), None);
    }

    let emails = claim_emails(&store, 100, LONG).await;
    assert_eq!(emails.len(), 3, "{emails:?}");
    assert!(
        emails
            .iter()
            .all(|c| c.message.message.destination() == Destination::Notifications)
    );
    let email_positions = positions(&emails);
    let mut sorted = email_positions.clone();
    sorted.sort_unstable();
    assert_eq!(email_positions, sorted, "oldest first");
    // The emails are leased now; the messages are not.
    let messages = claim(&store, 100, LONG).await;
    assert_eq!(orderids(&messages).len(), 3, "{messages:?}");
    assert!(
        messages
            .iter()
            .all(|c| c.message.message.destination() == Destination::Messages)
    );
    assert!(claim_emails(&store, 100, LONG).await.is_empty(), "leased");
}

/// The notifications relay over each backend: every email goes out once,
/// with its outbox message's id, and leaves the outbox.
async fn the_email_relay_sends_each_email_with_its_id_and_marks_it_sent<S: Store + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 1, None).await;
    for n in 0..3 {
        let refused = bus.try_allocate(&orderid(&format!("x{n}")), &sku, 5).await;
        assert_eq!(refused.expect("handled"), None);
    }
    let waiting: Vec<_> = emails_of(&store).await.iter().map(|e| e.id).collect();
    let notifications = Arc::new(RecordingNotifications::new());
    let relay = OutboxRelay::new(
        store.clone(),
        Destination::Notifications,
        Arc::new(NotificationPublisher::new(notifications.clone())),
        Arc::new(Notify::new()),
        RelaySettings::default(),
    );

    assert_eq!(relay.relay_pending().await.expect("sent"), 3);

    let sent: Vec<_> = notifications.sent().iter().map(|n| n.id).collect();
    assert_eq!(sent, waiting, "each once, oldest first");
    assert!(emails_of(&store).await.is_empty(), "marked sent");
    assert_eq!(relay.relay_pending().await.expect("nothing left"), 0);
}

async fn a_rolled_back_unit_of_work_leaves_no_message<S: Store + Outbox>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10, None).await;

    {
        let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
            .await
            .expect("start");
        let allocated = allocate_in(&mut uow, &orderid("dropped"), &sku, 4).await;
        assert_eq!(allocated, Some(batch.clone()));
        // Dropped without commit: rolled back, outbox message and all.
    }
    assert_eq!(claim(&store, 100, LONG).await, vec![]);

    // The same allocation, committed this time, is announced.
    let order = orderid("committed");
    let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    allocate_in(&mut uow, &order, &sku, 4).await;
    uow.commit().await.expect("commit");
    assert_eq!(orderids(&claim(&store, 100, LONG).await), vec![order]);
}

async fn claims_go_oldest_first_up_to_the_limit_and_exclude_each_other<S: Store + Outbox>(
    store: S,
) {
    let (_, _, orders) = allocated_orders(&store, 5).await;

    let first = claim(&store, 3, LONG).await;
    assert_eq!(orderids(&first), orders[..3], "the oldest three");
    let at = positions(&first);
    assert!(at.windows(2).all(|w| w[0] < w[1]), "ascending: {at:?}");

    let second = claim(&store, 100, LONG).await;
    assert_eq!(orderids(&second), orders[3..], "only what is not claimed");
    assert!(positions(&second)[0] > at[2]);

    assert_eq!(
        claim(&store, 100, LONG).await,
        vec![],
        "all claimed, for the lease"
    );
}

async fn released_messages_are_claimable_at_once<S: Store + Outbox>(store: S) {
    let (_, _, orders) = allocated_orders(&store, 4).await;
    let claimed = claim(&store, 100, LONG).await;
    assert_eq!(orderids(&claimed), orders);

    // Give back the second and the fourth, as a relay whose publish failed.
    let given_back = [claimed[1].position, claimed[3].position];
    store.release(&given_back).await.expect("release");

    let again = claim(&store, 100, LONG).await;
    assert_eq!(positions(&again), given_back, "at once, oldest first");
    assert_eq!(
        again.iter().map(|c| c.message.clone()).collect::<Vec<_>>(),
        vec![claimed[1].message.clone(), claimed[3].message.clone()],
        "the same messages, message_id and all"
    );
    assert_eq!(claim(&store, 100, LONG).await, vec![]);
}

async fn sent_messages_are_gone_for_good<S: Store + Outbox>(store: S) {
    let (_, _, orders) = allocated_orders(&store, 3).await;
    let claimed = claim(&store, 100, LONG).await;
    let sent = [claimed[0].position, claimed[2].position];

    store.mark_sent(&sent).await.expect("mark sent");
    // Released or not, with leases that end at once: never again.
    store.release(&positions(&claimed)).await.expect("release");
    for _ in 0..2 {
        let left = claim(&store, 100, Duration::ZERO).await;
        assert_eq!(orderids(&left), [orders[1].clone()]);
    }

    store
        .mark_sent(&[claimed[1].position])
        .await
        .expect("mark sent");
    store
        .mark_sent(&sent)
        .await
        .expect("marking twice is harmless");
    assert_eq!(claim(&store, 100, Duration::ZERO).await, vec![]);
}

async fn an_expired_lease_makes_messages_claimable_again<S: Store + Outbox>(store: S) {
    let (_, _, orders) = allocated_orders(&store, 2).await;
    let lease = Duration::from_millis(300);

    let started = Instant::now();
    let claimed = claim(&store, 100, lease).await;
    assert_eq!(orderids(&claimed), orders);
    assert_eq!(
        claim(&store, 100, lease).await,
        vec![],
        "not while the lease lasts"
    );

    // As when the relay that claimed them died: they come back on their own.
    let deadline = started + Duration::from_secs(10);
    let again = loop {
        let again = claim(&store, 100, lease).await;
        if !again.is_empty() {
            break again;
        }
        assert!(Instant::now() < deadline, "still claimed after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Leases are kept to the millisecond.
    let waited = started.elapsed();
    assert!(waited + Duration::from_millis(2) >= lease, "{waited:?}");
    assert_eq!(again, claimed, "the same messages, in order");
}

/// Two relays (two instances: on PostgreSQL, two pools) drain 200
/// committed messages at once, in small batches so that their claims
/// interleave; each message must go out once in all, none twice, none lost.
async fn two_relays_publish_each_message_exactly_once<S: Store + Outbox>(one: S, two: S) {
    const MESSAGES: usize = 200;
    let (_, _, orders) = allocated_orders(&one, MESSAGES).await;
    let settings = RelaySettings {
        batch_size: 7,
        lease: Duration::from_secs(60),
        ..RelaySettings::default()
    };
    let relay = |store: S| {
        let publisher = Arc::new(RecordingPublisher::new());
        let relay = OutboxRelay::new(
            store,
            Destination::Messages,
            publisher.clone(),
            Arc::new(Notify::new()),
            settings,
        );
        let running = tokio::spawn(async move { relay.relay_pending().await });
        (publisher, running)
    };
    let (first, first_running) = relay(one.clone());
    let (second, second_running) = relay(two);

    let bound = Duration::from_secs(60);
    let counts = [first_running, second_running].map(|running| async move {
        tokio::time::timeout(bound, running)
            .await
            .expect("the relay finished in time")
            .expect("the relay task ran")
            .expect("the relay published")
    });
    let [a, b] = counts;
    let (a, b) = tokio::join!(a, b);
    let (by_first, by_second) = (first.published(), second.published());
    println!(
        "relay 1 published {}, relay 2 published {}",
        by_first.len(),
        by_second.len()
    );
    assert_eq!((a, b), (by_first.len(), by_second.len()));

    let all: Vec<_> = by_first.iter().chain(&by_second).collect();
    let ids: HashSet<_> = all.iter().map(|m| m.message_id).collect();
    assert_eq!(ids.len(), all.len(), "a message was published twice");
    let published: HashSet<&OrderId> = all
        .iter()
        .filter_map(|m| m.line_allocated())
        .map(|event| &event.orderid)
        .collect();
    let committed: HashSet<&OrderId> = orders.iter().collect();
    assert_eq!(published, committed, "every committed message, none other");
    assert_eq!(all.len(), MESSAGES);
    assert_eq!(claim(&one, 1000, Duration::ZERO).await, vec![], "drained");
}

async fn the_backlog_counts_unsent_messages_and_ages_the_oldest<S: Store + Outbox>(store: S) {
    let backlog = || async { store.backlog().await.expect("backlog") };
    assert_eq!(backlog().await, OutboxBacklog::default());

    let before = Instant::now();
    allocated_orders(&store, 3).await;
    let waiting = backlog().await;
    assert_eq!(waiting.messages, 3);
    let age = waiting.oldest_age.expect("the oldest message's age");
    // Written after `before`; SQL stores milliseconds, so allow one more.
    assert!(
        age <= before.elapsed() + Duration::from_millis(1),
        "{age:?}"
    );

    let claimed = claim(&store, 2, LONG).await;
    assert_eq!(backlog().await.messages, 3, "claimed is not sent");
    store
        .mark_sent(&positions(&claimed))
        .await
        .expect("mark sent");
    assert_eq!(backlog().await.messages, 1);
    let rest = claim(&store, 100, LONG).await;
    store.mark_sent(&positions(&rest)).await.expect("mark sent");
    assert_eq!(backlog().await, OutboxBacklog::default());
}

/// Rows written before migration 0010 named no destination: they are
/// messages for other systems, claimed and published by the messages relay
/// (to Redis), never taken for emails.
async fn messages_waiting_in_an_outbox_from_before_destinations_still_go_out_to_redis(
    db: TestDatabase,
) {
    let mut conn = connect_before_migration(&db, "outbox destinations").await;
    sqlx::raw_sql(
        "INSERT INTO outbox (message_id, channel, orderid, sku, qty, batchref, created_at)
         VALUES ('0b5c1d00-0000-4000-8000-000000000001', 'line_allocated', 'old-order',
                 'OLD-LAMP', 3, 'old-batch', 1000);
         INSERT INTO outbox (message_id, channel, sku, available, threshold, created_at)
         VALUES ('0b5c1d00-0000-4000-8000-000000000002', 'stock_exhausted', 'OLD-LAMP',
                 0, 0, 1001)",
    )
    .execute(&mut conn)
    .await
    .expect("unsent messages");

    let store = open(db.url()).await;
    assert!(
        claim_emails(&store, 10, Duration::ZERO).await.is_empty(),
        "no email among them"
    );
    let publisher = Arc::new(RecordingPublisher::new());
    let relay = OutboxRelay::new(
        store.clone(),
        Destination::Messages,
        publisher.clone(),
        Arc::new(Notify::new()),
        RelaySettings::default(),
    );
    assert_eq!(relay.relay_pending().await.expect("published"), 2);
    let published = publisher.published();
    let ids: Vec<String> = published.iter().map(|m| m.message_id.to_string()).collect();
    assert_eq!(
        ids,
        [
            "0b5c1d00-0000-4000-8000-000000000001",
            "0b5c1d00-0000-4000-8000-000000000002"
        ]
    );
    let event = published[0].line_allocated().expect("a line_allocated");
    assert_eq!(
        (
            event.orderid.as_str(),
            event.qty.get(),
            event.batchref.as_str()
        ),
        ("old-order", 3, "old-batch")
    );
    assert!(claim(&store, 10, Duration::ZERO).await.is_empty(), "sent");
}
