//! Backorders through the bus: placed within the SKU's limit, filled oldest
//! first by every kind of stock that appears (a new batch, a bigger one,
//! a cancelled or deallocated line, a released or expired hold), each
//! filled line published and shown like any allocation.

use std::time::Duration;

use domain::commands::{
    AdjustBatch, AllocateOrder, CancelOrder, ChangeSettings, PlaceHold, ReleaseHold,
};
use domain::{Adjustment, AdjustmentReason, Change, HoldId, OrderLines, Settings};

use super::*;
use crate::handlers::AllocatedLine;
use crate::ports::{AvailabilityView, LineStatus};

/// An app whose LAMP has `units` in batch `home` and may backorder `limit`
/// units.
async fn lamps(units: u32, limit: u64) -> App {
    let app = app();
    app.add_batch("home", "LAMP", units, None).await;
    app.set_limit("LAMP", limit).await;
    app
}

impl App {
    async fn set_limit(&self, product: &str, limit: u64) -> Settings {
        let command = ChangeSettings {
            sku: sku(product),
            backorder_limit: Some(limit),
            low_stock_threshold: None,
        };
        self.bus.handle(command).await.expect("settings changed")
    }

    async fn allocation(&self, order: &str, units: u32) -> Allocation {
        let command = allocate(order, "LAMP", units);
        self.bus.handle(command).await.expect("line handled")
    }

    async fn status_of(&self, order: &str) -> Vec<(String, u64, LineStatus)> {
        let lines = self.store.order(&orderid(order)).await.expect("query");
        lines
            .into_iter()
            .map(|line| (line.sku.to_string(), line.qty, line.status))
            .collect()
    }

    async fn backordered(&self) -> u64 {
        let batches = self
            .store
            .batches(&sku("LAMP"), self.bus.now())
            .await
            .expect("query");
        let waiting = self.store.backordered(&sku("LAMP")).await.expect("query");
        AvailabilityView::of(&batches, waiting)
            .expect("known")
            .backordered
    }
}

#[tokio::test]
async fn settings_change_one_at_a_time_and_only_for_known_products() {
    let app = lamps(1, 0).await;
    let both = ChangeSettings {
        sku: sku("LAMP"),
        backorder_limit: Some(5),
        low_stock_threshold: Some(2),
    };
    app.bus.handle(both).await.expect("changed");
    let threshold_only = ChangeSettings {
        sku: sku("LAMP"),
        backorder_limit: None,
        low_stock_threshold: Some(3),
    };
    let settings = app.bus.handle(threshold_only).await.expect("changed");
    assert_eq!(
        settings,
        Settings {
            backorder_limit: 5,
            low_stock_threshold: 3
        }
    );
    assert_eq!(
        app.store.settings(&sku("LAMP")).await.expect("query"),
        Some(settings)
    );
    let unknown = ChangeSettings {
        sku: sku("NOPE"),
        backorder_limit: Some(1),
        low_stock_threshold: None,
    };
    assert!(matches!(
        app.bus.handle(unknown).await,
        Err(Error::UnknownProduct(_))
    ));
    assert_eq!(app.store.settings(&sku("NOPE")).await.expect("query"), None);
}

#[tokio::test]
async fn a_backordered_line_sends_no_out_of_stock_email_and_a_new_batch_fills_it() {
    let app = lamps(2, 10).await;
    assert_eq!(app.allocation("o1", 5).await, Allocation::Backordered);
    assert!(app.emails().is_empty(), "not out of stock");
    assert_eq!(outbox_of(&app.store), []);
    assert_eq!(
        app.status_of("o1").await,
        [("LAMP".to_owned(), 5, LineStatus::Backordered)]
    );
    assert_eq!(app.backordered().await, 5);

    app.add_batch("ship", "LAMP", 5, None).await;
    assert_eq!(
        outbox_of(&app.store),
        [("o1".to_owned(), "ship".to_owned())],
        "line_allocated for the filled backorder"
    );
    assert_eq!(
        app.status_of("o1").await,
        [("LAMP".to_owned(), 5, LineStatus::Allocated)]
    );
    assert_eq!(app.view_of("o1").await, [("LAMP".into(), "ship".into())]);
    assert_eq!(app.backordered().await, 0);
    assert_eq!(
        app.allocation("o1", 5).await,
        Allocation::Batch(batchref("ship")),
        "sent again, the line is answered with its batch"
    );
}

#[tokio::test]
async fn beyond_the_limit_a_line_is_out_of_stock_with_its_email() {
    let app = lamps(1, 4).await;
    assert_eq!(app.allocation("o1", 3).await, Allocation::Backordered);
    assert_eq!(app.allocation("o2", 2).await, Allocation::OutOfStock);
    assert_eq!(app.emails().len(), 1);
    assert_eq!(
        app.allocation("o3", 1).await,
        Allocation::Batch(batchref("home"))
    );
    assert_eq!(app.backordered().await, 3);
}

#[tokio::test]
async fn stock_goes_to_the_oldest_backorder_it_fits() {
    let app = lamps(1, 100).await;
    app.allocate("o0", "LAMP", 1).await; // home is full
    for (order, units) in [("big", 8), ("small", 3), ("later", 2)] {
        assert_eq!(app.allocation(order, units).await, Allocation::Backordered);
    }
    app.add_batch("ship", "LAMP", 6, None).await;
    assert_eq!(
        outbox_of(&app.store),
        [
            ("o0".to_owned(), "home".to_owned()),
            ("small".to_owned(), "ship".to_owned()),
            ("later".to_owned(), "ship".to_owned())
        ]
    );
    assert_eq!(app.backordered().await, 8);
}

#[tokio::test]
async fn cancelling_deallocating_and_growing_a_batch_fill_backorders() {
    let app = lamps(4, 100).await;
    app.allocate("a", "LAMP", 2).await;
    app.allocate("b", "LAMP", 2).await;
    for order in ["w1", "w2", "w3"] {
        assert_eq!(app.allocation(order, 2).await, Allocation::Backordered);
    }

    let cancel = CancelOrder {
        orderid: orderid("a"),
    };
    app.bus.handle(cancel).await.expect("cancelled");
    assert_eq!(app.status_of("w1").await[0].2, LineStatus::Allocated);

    let deallocate = Deallocate {
        orderid: orderid("b"),
        sku: sku("LAMP"),
    };
    app.bus.handle(deallocate).await.expect("deallocated");
    assert_eq!(app.status_of("w2").await[0].2, LineStatus::Allocated);

    let adjust = AdjustBatch {
        reference: batchref("home"),
        adjustment: Adjustment {
            change: Change::By(2),
            reason: AdjustmentReason::Found,
            note: None,
            expected_qty: None,
        },
    };
    app.bus.handle(adjust).await.expect("adjusted");
    assert_eq!(app.status_of("w3").await[0].2, LineStatus::Allocated);
    assert_eq!(app.allocated_to("LAMP", "home").await, 6);
    assert_eq!(app.backordered().await, 0);
}

#[tokio::test]
async fn a_released_hold_and_an_expired_one_fill_backorders_before_anyone_else() {
    let app = lamps(6, 100).await;
    for (hold, units) in [("h1", 3), ("h2", 3)] {
        let command = PlaceHold {
            hold_id: HoldId::parse(hold).expect("hold id"),
            lines: OrderLines::new(vec![(sku("LAMP"), qty(units))]).expect("lines"),
            ttl: Duration::from_secs(60),
        };
        app.bus.handle(command).await.expect("held");
    }
    assert_eq!(app.allocation("w1", 3).await, Allocation::Backordered);
    assert_eq!(app.allocation("w2", 3).await, Allocation::Backordered);

    let release = ReleaseHold {
        hold_id: HoldId::parse("h1").expect("hold id"),
    };
    app.bus.handle(release).await.expect("released");
    assert_eq!(app.status_of("w1").await[0].2, LineStatus::Allocated);

    // h2 expires with no command to say so: the next one to load the
    // product finds w2 served first, and gets nothing.
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(app.allocation("late", 3).await, Allocation::Backordered);
    assert_eq!(app.status_of("w2").await[0].2, LineStatus::Allocated);
    assert_eq!(
        outbox_of(&app.store),
        [
            ("w1".to_owned(), "home".to_owned()),
            ("w2".to_owned(), "home".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_order_backorders_its_short_lines_and_cancelling_withdraws_them() {
    let app = lamps(2, 10).await;
    app.add_batch("chairs", "CHAIR", 5, None).await;
    let order = AllocateOrder {
        orderid: orderid("o1"),
        lines: OrderLines::new(vec![(sku("CHAIR"), qty(1)), (sku("LAMP"), qty(4))]).expect("lines"),
        split: false,
        hold_id: None,
    };
    let lines = app.bus.handle(order.clone()).await.expect("placed");
    let backordered: Vec<bool> = lines.iter().map(AllocatedLine::is_backordered).collect();
    assert_eq!(backordered, [false, true]);
    assert_eq!(
        app.bus.handle(order).await.expect("sent again"),
        lines,
        "sent again: the same answer"
    );
    assert_eq!(
        app.status_of("o1").await,
        [
            ("CHAIR".to_owned(), 1, LineStatus::Allocated),
            ("LAMP".to_owned(), 4, LineStatus::Backordered)
        ]
    );

    let cancel = CancelOrder {
        orderid: orderid("o1"),
    };
    app.bus.handle(cancel).await.expect("cancelled");
    assert_eq!(
        app.status_of("o1").await,
        [
            ("CHAIR".to_owned(), 1, LineStatus::Cancelled),
            ("LAMP".to_owned(), 4, LineStatus::Cancelled)
        ]
    );
    assert_eq!(app.backordered().await, 0);
    app.add_batch("more", "LAMP", 10, None).await;
    assert_eq!(app.allocated_to("LAMP", "more").await, 0, "nothing waits");
}
