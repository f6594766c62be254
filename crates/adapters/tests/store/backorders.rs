//! Backorders on every backend: a SKU's settings stored, lines waiting and
//! loaded oldest first, filled by stock that appears (an expired hold
//! included), cancelled lines kept as cancelled, and settings changed twice in
//! one commit.

use std::sync::Arc;
use std::time::Duration;

use domain::commands::{CancelOrder, ChangeSettings, PlaceHold};
use domain::{Allocation, HoldId, OrderId, OrderLines, Settings, Sku};
use service_layer::Store;
use service_layer::memory::ManualClock;
use service_layer::ports::{LineStatus, Lines, Outbox, ReadModel, StoreTransaction};
use test_support::per_backend;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    lines_wait_within_the_limit_and_are_filled_oldest_first,
    a_cancelled_backorder_stays_cancelled_and_a_deallocated_one_goes,
    an_expired_hold_goes_to_the_backorders_at_the_next_load,
    settings_changed_twice_in_one_commit_keep_the_last,
});

async fn set_limit<S: Store>(bus: &Bus<S>, sku: &Sku, limit: u64) {
    let command = ChangeSettings {
        sku: sku.clone(),
        backorder_limit: Some(limit),
        low_stock_threshold: None,
    };
    bus.bus.handle(command).await.expect("settings changed");
}

async fn try_allocate<S: Store>(
    bus: &Bus<S>,
    order: &OrderId,
    sku: &Sku,
    units: u32,
) -> Allocation {
    let command = domain::commands::Allocate {
        orderid: order.clone(),
        sku: sku.clone(),
        qty: qty(units),
    };
    bus.bus.handle(command).await.expect("handled")
}

/// `(qty, status)` of each line of `order`.
async fn lines_of<S: ReadModel>(store: &S, order: &OrderId) -> Vec<(u64, LineStatus)> {
    let lines = store.order(order).await.expect("query");
    lines.into_iter().map(|l| (l.qty, l.status)).collect()
}

/// The waiting backorders a fresh load gives: `(orderid, qty)`, in order.
async fn waiting<S: Store>(store: &S, sku: &Sku) -> Vec<(OrderId, u32)> {
    let mut transaction = store.begin().await.expect("begin");
    let product = transaction
        .load(sku, Lines::None, chrono::Utc::now())
        .await
        .expect("load")
        .expect("stored");
    product
        .backorders()
        .iter()
        .map(|b| (b.orderid.clone(), b.qty.get()))
        .collect()
}

async fn lines_wait_within_the_limit_and_are_filled_oldest_first<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let lamp = sku();
    bus.add_batch(&batchref("home"), &lamp, 1, None).await;
    assert_eq!(
        store.settings(&lamp).await.expect("query"),
        Some(Settings::default())
    );
    set_limit(&bus, &lamp, 12).await;
    assert_eq!(
        store
            .settings(&lamp)
            .await
            .expect("query")
            .map(|s| s.backorder_limit),
        Some(12)
    );
    let (big, small, later, refused) = (
        orderid("big"),
        orderid("small"),
        orderid("later"),
        orderid("refused"),
    );
    bus.allocate(&orderid("first"), &lamp, 1).await;
    for (order, units) in [(&big, 7), (&small, 3), (&later, 2)] {
        assert_eq!(
            try_allocate(&bus, order, &lamp, units).await,
            Allocation::Backordered
        );
    }
    assert_eq!(
        try_allocate(&bus, &refused, &lamp, 1).await,
        Allocation::OutOfStock
    );
    assert_eq!(
        waiting(&store, &lamp).await,
        [(big.clone(), 7), (small.clone(), 3), (later.clone(), 2)]
    );
    assert_eq!(store.backordered(&lamp).await.expect("query"), 12);
    assert_eq!(
        lines_of(&store, &small).await,
        [(3, LineStatus::Backordered)]
    );
    assert_eq!(lines_of(&store, &refused).await, []);

    let ship = batchref("ship");
    bus.add_batch(&ship, &lamp, 6, None).await;
    let published: Vec<OrderId> = outbox_of(&store)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(published[1..], [small.clone(), later.clone()]);
    assert_eq!(lines_of(&store, &small).await, [(3, LineStatus::Allocated)]);
    assert_eq!(allocations(&store, &later).await, [view(&lamp, &ship)]);
    assert_eq!(waiting(&store, &lamp).await, [(big.clone(), 7)]);
    assert_eq!(store.backordered(&lamp).await.expect("query"), 7);
}

async fn a_cancelled_backorder_stays_cancelled_and_a_deallocated_one_goes<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let lamp = sku();
    bus.add_batch(&batchref("home"), &lamp, 1, None).await;
    set_limit(&bus, &lamp, 10).await;
    let (cancelled, withdrawn) = (orderid("cancelled"), orderid("withdrawn"));
    for order in [&cancelled, &withdrawn] {
        assert_eq!(
            try_allocate(&bus, order, &lamp, 2).await,
            Allocation::Backordered
        );
    }
    let cancel = CancelOrder {
        orderid: cancelled.clone(),
    };
    bus.bus.handle(cancel.clone()).await.expect("cancelled");
    bus.bus.handle(cancel).await.expect("cancelled again");
    assert_eq!(
        lines_of(&store, &cancelled).await,
        [(2, LineStatus::Cancelled)]
    );
    let deallocated = bus
        .bus
        .handle(domain::commands::Deallocate {
            orderid: withdrawn.clone(),
            sku: lamp.clone(),
        })
        .await
        .expect("withdrawn");
    assert_eq!(deallocated, []);
    assert_eq!(lines_of(&store, &withdrawn).await, []);
    assert_eq!(waiting(&store, &lamp).await, []);
    assert_eq!(store.backordered(&lamp).await.expect("query"), 0);

    // The cancelled line placed again waits anew.
    assert_eq!(
        try_allocate(&bus, &cancelled, &lamp, 3).await,
        Allocation::Backordered
    );
    assert_eq!(
        lines_of(&store, &cancelled).await,
        [(3, LineStatus::Backordered)]
    );
}

async fn an_expired_hold_goes_to_the_backorders_at_the_next_load<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let bus = bus_with_clock(&store, clock.clone());
    let lamp = sku();
    let home = batchref("home");
    bus.add_batch(&home, &lamp, 4, None).await;
    set_limit(&bus, &lamp, 10).await;
    let hold = PlaceHold {
        hold_id: HoldId::parse(&format!("hold-{}", lamp)).expect("hold id"),
        lines: OrderLines::new(vec![(lamp.clone(), qty(4))]).expect("lines"),
        ttl: Duration::from_secs(60),
    };
    bus.bus.handle(hold).await.expect("held");
    let waiting_line = orderid("waiting");
    assert_eq!(
        try_allocate(&bus, &waiting_line, &lamp, 3).await,
        Allocation::Backordered
    );

    clock.advance(Duration::from_secs(61));
    assert_eq!(
        try_allocate(&bus, &orderid("newcomer"), &lamp, 2).await,
        Allocation::Backordered,
        "the waiting line had the freed units first: 1 is left"
    );
    assert_eq!(
        allocations(&store, &waiting_line).await,
        [view(&lamp, &home)]
    );
    let published: Vec<OrderId> = outbox_of(&store)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(published, [waiting_line]);
}

async fn settings_changed_twice_in_one_commit_keep_the_last<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let lamp = sku();
    bus.add_batch(&batchref("home"), &lamp, 1, None).await;
    let mut product = load_product(&store, &lamp, Lines::None).await;
    let stored = product.version();
    let (first, last) = (
        Settings {
            backorder_limit: 3,
            low_stock_threshold: 30,
        },
        Settings {
            backorder_limit: 2,
            low_stock_threshold: 20,
        },
    );
    product.change_settings(first);
    product.change_settings(last);
    commit(&store, changes_of(&mut product, Some(stored)))
        .await
        .expect("committed");
    assert_eq!(store.settings(&lamp).await.expect("query"), Some(last));
    let loaded = load_product(&store, &lamp, Lines::None).await;
    assert_eq!(loaded.settings(), last);
    assert_eq!(loaded.version(), stored + 2);
}
