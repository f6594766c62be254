//! Checkout holds on every backend: written part by part, counted only
//! while live (the clock moved by the test, nothing swept), extended,
//! released, converted and given up by a shrinking batch; and holds and
//! orders racing on two instances never over-commit a batch.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::commands::{AllocateOrder, ChangeBatchQuantity, ExtendHold, PlaceHold, ReleaseHold};
use domain::{DomainError, HoldId, OrderLines, Sku};
use futures::future::join_all;
use service_layer::handlers::PlacedHold;
use service_layer::memory::ManualClock;
use service_layer::ports::{Clock, HoldState, Outbox, ReadModel};
use service_layer::{Error, Store};
use test_support::per_backend;

use crate::backends::{one_store, two_instances};
use crate::helpers::*;
use crate::watched::bounded;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_hold_is_stored_part_by_part_and_stops_counting_at_its_expiry,
    extending_releasing_and_converting_write_what_they_say,
    a_shrinking_batch_releases_its_newest_live_hold,
});

per_backend!(mod across_instances on [memory, postgres] via two_instances {
    holds_and_orders_racing_on_two_instances_never_over_commit,
});

const TTL: Duration = Duration::from_secs(900);

fn hold_id() -> HoldId {
    HoldId::parse(&unique("hold")).expect("hold id")
}

fn lines(lines: &[(&Sku, u32)]) -> OrderLines {
    let lines = lines
        .iter()
        .map(|(sku, units)| ((*sku).clone(), qty(*units)));
    OrderLines::new(lines.collect()).expect("valid lines")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        DateTime::from_timestamp(1_796_000_000, 0).expect("a time"),
    ))
}

async fn hold<S: Store>(
    bus: &Bus<S>,
    hold_id: &HoldId,
    held: &[(&Sku, u32)],
) -> Result<PlacedHold, Error> {
    bus.bus
        .handle(PlaceHold {
            hold_id: hold_id.clone(),
            lines: lines(held),
            ttl: TTL,
        })
        .await
}

async fn held_at<S: ReadModel>(store: &S, sku: &Sku, now: DateTime<Utc>) -> Vec<u64> {
    let views = store.batches(sku, now).await.expect("read batches");
    views.iter().map(|b| b.held).collect()
}

async fn state_of<S: ReadModel>(store: &S, hold_id: &HoldId) -> HoldState {
    let hold = store.hold(hold_id).await.expect("query");
    hold.expect("the hold is stored").state
}

async fn a_hold_is_stored_part_by_part_and_stops_counting_at_its_expiry<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let clock = clock();
    let bus = bus_with_clock(&store, clock.clone());
    let (lamp, sofa) = (sku(), sku());
    let (lamps, sofas) = (batchref("lamps"), batchref("sofas"));
    bus.add_batch(&lamps, &lamp, 10, None).await;
    bus.add_batch(&sofas, &sofa, 2, None).await;
    let h = hold_id();

    let placed = hold(&bus, &h, &[(&sofa, 2), (&lamp, 8)])
        .await
        .expect("held");
    let expires_at = clock.now() + TTL;
    assert_eq!(placed.expires_at, expires_at);
    let stored = store.hold(&h).await.expect("query").expect("stored");
    assert_eq!(stored.expires_at, expires_at, "to the millisecond");
    assert_eq!(stored.state, HoldState::Active);
    let skus: Vec<(&Sku, u64)> = stored.lines.iter().map(|l| (&l.sku, l.qty)).collect();
    let mut expected = vec![(&lamp, 8), (&sofa, 2)];
    expected.sort();
    assert_eq!(skus, expected, "by SKU");
    assert_eq!(stored.lines[0].parts.len(), 1);
    assert_eq!(store.hold(&hold_id()).await.expect("query"), None);
    assert!(
        outbox_of(&store).await.is_empty(),
        "a hold announces nothing"
    );

    let now = clock.now();
    assert_eq!(held_at(&store, &lamp, now).await, [8]);
    assert_eq!(bus.allocate(&orderid("o"), &lamp, 3).await, None, "held");
    // At its expiry it no longer counts, on every read path.
    assert_eq!(held_at(&store, &lamp, expires_at).await, [0]);
    clock.advance(TTL);
    assert_eq!(bus.allocate(&orderid("o"), &lamp, 3).await, Some(lamps));
    assert_eq!(
        state_of(&store, &h).await,
        HoldState::Active,
        "expired, unswept"
    );
}

async fn extending_releasing_and_converting_write_what_they_say<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let clock = clock();
    let bus = bus_with_clock(&store, clock.clone());
    let lamp = sku();
    let lamps = batchref("lamps");
    bus.add_batch(&lamps, &lamp, 10, None).await;
    let (kept, released) = (hold_id(), hold_id());
    hold(&bus, &kept, &[(&lamp, 3)]).await.expect("held");
    hold(&bus, &released, &[(&lamp, 4)]).await.expect("held");

    clock.advance(Duration::from_secs(600));
    let extended = bus
        .bus
        .handle(ExtendHold {
            hold_id: kept.clone(),
            ttl: TTL,
        })
        .await
        .expect("extended");
    let stored = store.hold(&kept).await.expect("query").expect("stored");
    assert_eq!(stored.expires_at, extended);
    bus.bus
        .handle(ReleaseHold {
            hold_id: released.clone(),
        })
        .await
        .expect("released");
    assert_eq!(state_of(&store, &released).await, HoldState::Released);
    // Past the first expiry: only the extended hold still counts.
    clock.advance(Duration::from_secs(600));
    assert_eq!(held_at(&store, &lamp, clock.now()).await, [3]);

    let o = orderid("o");
    let convert = AllocateOrder {
        orderid: o.clone(),
        lines: lines(&[(&lamp, 3)]),
        split: false,
        hold_id: Some(kept.clone()),
    };
    bus.bus.handle(convert).await.expect("converted");
    assert_eq!(state_of(&store, &kept).await, HoldState::Converted);
    assert_eq!(held_at(&store, &lamp, clock.now()).await, [0]);
    assert_eq!(allocated_totals(&batch_views(&store, &lamp).await), [3]);
    assert_eq!(allocations(&store, &o).await, [view(&lamp, &lamps)]);
    assert_eq!(
        outbox_of(&store).await,
        [(o, lamps)],
        "announced as allocated"
    );
}

async fn a_shrinking_batch_releases_its_newest_live_hold<S: Store + ReadModel + Outbox>(store: S) {
    let clock = clock();
    let bus = bus_with_clock(&store, clock.clone());
    let lamp = sku();
    let lamps = batchref("lamps");
    bus.add_batch(&lamps, &lamp, 10, None).await;
    assert!(bus.allocate(&orderid("o"), &lamp, 4).await.is_some());
    let (older, newer) = (hold_id(), hold_id());
    hold(&bus, &older, &[(&lamp, 2)]).await.expect("held");
    hold(&bus, &newer, &[(&lamp, 3)]).await.expect("held");

    bus.bus
        .handle(ChangeBatchQuantity {
            reference: lamps.clone(),
            qty: qty(7),
        })
        .await
        .expect("changed");
    assert_eq!(state_of(&store, &newer).await, HoldState::Released);
    assert_eq!(state_of(&store, &older).await, HoldState::Active);
    assert_eq!(held_at(&store, &lamp, clock.now()).await, [2]);
    assert_eq!(allocated_totals(&batch_views(&store, &lamp).await), [4]);
}

/// Two instances place holds, convert some of them, and send orders of
/// their own, all for the same three SKUs and more units than there are.
/// Afterwards no batch has more allocated and held than it has, every
/// order is whole or absent, and every hold is whole or refused.
async fn holds_and_orders_racing_on_two_instances_never_over_commit<
    S: Store + ReadModel + Outbox,
>(
    one: S,
    two: S,
) {
    let clock = clock();
    let (bus_one, bus_two) = (
        bus_with_clock(&one, clock.clone()),
        bus_with_clock(&two, clock.clone()),
    );
    let skus = three_skus();
    for sku in &skus {
        bus_one.add_batch(&batchref("stock"), sku, 12, None).await;
    }
    let [a, b, c] = &skus;
    let shapes: [&[(&Sku, u32)]; 3] = [&[(a, 1), (b, 1)], &[(c, 2), (a, 1)], &[(b, 1), (c, 1)]];
    let attempts = (0..30).map(|i| {
        let bus = if i % 2 == 0 { &bus_one } else { &bus_two };
        let shape = shapes[i % shapes.len()];
        async move {
            let h = hold_id();
            let held = hold(bus, &h, shape).await;
            let o = orderid("race");
            let order = AllocateOrder {
                orderid: o.clone(),
                lines: lines(shape),
                split: false,
                // Every third converts its hold; the rest order on their own.
                hold_id: (i % 3 == 0).then(|| h.clone()),
            };
            let ordered = bus.bus.handle(order).await;
            (h, held, o, ordered)
        }
    });
    let outcomes = bounded("racing holds and orders", join_all(attempts)).await;

    let now = clock.now();
    for (h, held, o, ordered) in &outcomes {
        let stored = one.hold(h).await.expect("query");
        match held {
            Ok(placed) => {
                let stored = stored.expect("a placed hold is stored");
                assert_eq!(stored.lines.len(), placed.lines.len(), "{h} whole");
            }
            Err(Error::Rejected(DomainError::HoldShort { .. })) => {
                assert_eq!(stored, None, "{h} refused, so nothing held");
            }
            Err(other) => panic!("{h}: {other:?}"),
        }
        let order = one.order(o).await.expect("query");
        match ordered {
            Ok(lines) => assert_eq!(order.len(), lines.len(), "{o} whole"),
            Err(Error::Rejected(DomainError::OrderShort { .. }) | Error::UnknownHold(_)) => {
                assert_eq!(order, [], "{o} refused, so nothing allocated");
            }
            Err(other) => panic!("{o}: {other:?}"),
        }
    }
    for sku in &skus {
        let views = one.batches(sku, now).await.expect("read batches");
        for view in views {
            assert!(
                view.allocated + view.held <= view.purchased,
                "{sku}: {view:?} over-committed"
            );
        }
    }
}
