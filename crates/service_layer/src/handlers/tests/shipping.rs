//! Shipping and cancelling whole orders through the bus: what leaves, what
//! is refused before anything leaves, and what a cancellation frees once.

use domain::OrderLines;
use domain::commands::{AllocateOrder, CancelOrder, Deallocate, ShipOrder};

use super::*;
use crate::ports::LineStatus;

fn ship(order: &str, skus: &[&str]) -> ShipOrder {
    ShipOrder {
        orderid: orderid(order),
        skus: skus.iter().map(|s| sku(s)).collect(),
    }
}

fn cancel(order: &str) -> CancelOrder {
    CancelOrder {
        orderid: orderid(order),
    }
}

async fn statuses(app: &App, order: &str) -> Vec<(String, LineStatus)> {
    let lines = app.store.order(&orderid(order)).await.expect("query");
    lines
        .into_iter()
        .map(|line| (line.sku.to_string(), line.status))
        .collect()
}

async fn purchased(app: &App, product: &str) -> Vec<(u64, u64)> {
    let batches = app
        .store
        .batches(&sku(product), app.bus.now())
        .await
        .expect("query");
    batches.iter().map(|b| (b.purchased, b.allocated)).collect()
}

/// o1: 2 lamps and 3 chairs, both from the warehouse.
async fn shop() -> App {
    let app = app();
    app.add_batch("lamps", "LAMP", 10, None).await;
    app.add_batch("chairs", "CHAIR", 10, None).await;
    app.add_batch("chairs-due", "CHAIR", 10, Some(tomorrow()))
        .await;
    let order = AllocateOrder {
        orderid: orderid("o1"),
        lines: OrderLines::new(vec![(sku("LAMP"), qty(2)), (sku("CHAIR"), qty(3))]).expect("lines"),
        split: false,
        hold_id: None,
    };
    app.bus.handle(order).await.expect("allocated");
    app
}

#[tokio::test]
async fn shipping_an_order_takes_its_lines_out_of_stock() {
    let app = shop().await;
    app.bus.handle(ship("o1", &[])).await.expect("shipped");
    assert_eq!(purchased(&app, "LAMP").await, [(8, 0)]);
    assert_eq!(purchased(&app, "CHAIR").await, [(7, 0), (10, 0)]);
    assert_eq!(
        statuses(&app, "o1").await,
        [
            ("CHAIR".into(), LineStatus::Shipped),
            ("LAMP".into(), LineStatus::Shipped)
        ]
    );
    // Again: nothing changes.
    app.bus
        .handle(ship("o1", &[]))
        .await
        .expect("shipped again");
    assert_eq!(purchased(&app, "LAMP").await, [(8, 0)]);

    let refused = app
        .bus
        .handle(Deallocate {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(DomainError::AlreadyShipped { .. }))
        ),
        "{refused:?}"
    );
    // A shrinking batch never moves a shipped line.
    app.bus
        .handle(change_quantity("lamps", 1))
        .await
        .expect("changed");
    assert_eq!(statuses(&app, "o1").await[1].1, LineStatus::Shipped);
}

#[tokio::test]
async fn one_line_not_arrived_refuses_the_shipment_whole() {
    let app = shop().await;
    app.allocate("o2", "CHAIR", 7)
        .await
        .expect("the warehouse's rest");
    app.allocate("o2", "LAMP", 1).await.expect("a lamp");
    app.allocate("o3", "CHAIR", 4)
        .await
        .expect("from the shipment");
    app.allocate("o3", "LAMP", 1).await.expect("a lamp");

    let refused = app.bus.handle(ship("o3", &[])).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(DomainError::NotArrived { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(purchased(&app, "LAMP").await, [(10, 4)], "no lamp left");
    // Only the lamp, which has arrived.
    app.bus
        .handle(ship("o3", &["LAMP"]))
        .await
        .expect("shipped");
    assert_eq!(
        statuses(&app, "o3").await,
        [
            ("CHAIR".into(), LineStatus::Allocated),
            ("LAMP".into(), LineStatus::Shipped)
        ]
    );
    assert!(matches!(
        app.bus.handle(ship("nobody", &[])).await,
        Err(Error::UnknownOrder(_))
    ));
}

#[tokio::test]
async fn cancelling_frees_what_is_not_shipped_once_and_for_good() {
    let app = shop().await;
    app.bus
        .handle(ship("o1", &["LAMP"]))
        .await
        .expect("shipped");
    app.bus.handle(cancel("o1")).await.expect("cancelled");
    assert_eq!(
        statuses(&app, "o1").await,
        [
            ("CHAIR".into(), LineStatus::Cancelled),
            ("LAMP".into(), LineStatus::Shipped)
        ]
    );
    assert_eq!(purchased(&app, "CHAIR").await, [(10, 0), (10, 0)]);
    assert_eq!(purchased(&app, "LAMP").await, [(8, 0)]);
    assert!(app.view_of("o1").await.iter().all(|(s, _)| s == "LAMP"));

    app.bus.handle(cancel("o1")).await.expect("again");
    assert_eq!(purchased(&app, "CHAIR").await, [(10, 0), (10, 0)]);
    let again = app.bus.handle(allocate("o1", "CHAIR", 3)).await;
    assert!(
        matches!(
            again,
            Err(Error::Rejected(DomainError::LineCancelled { .. }))
        ),
        "{again:?}"
    );
    assert!(matches!(
        app.bus.handle(cancel("nobody")).await,
        Err(Error::UnknownOrder(_))
    ));
}
