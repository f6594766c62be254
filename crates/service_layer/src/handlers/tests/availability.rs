//! A product's availability, summed from its batches as the read side
//! answers it: exact after every kind of change, and as holds expire with
//! nothing swept.

use std::time::Duration;

use domain::commands::{PlaceHold, ShipOrder};
use domain::{HoldId, OrderLines};

use super::*;
use crate::ports::AvailabilityView;

async fn availability(app: &App) -> AvailabilityView {
    let batches = app
        .store
        .batches(&sku("LAMP"), app.bus.now())
        .await
        .expect("query");
    AvailabilityView::of(&batches, 0).expect("a known product")
}

/// `(on_hand, incoming, allocated, held, available)`.
fn figures(view: &AvailabilityView) -> (u64, u64, u64, u64, u64) {
    (
        view.on_hand,
        view.incoming,
        view.allocated,
        view.held,
        view.available,
    )
}

fn due(days: u64) -> Option<NaiveDate> {
    Some(tomorrow() + chrono::Days::new(days))
}

#[tokio::test]
async fn availability_follows_every_kind_of_change_and_the_clock() {
    let app = app();
    assert!(
        AvailabilityView::of(&[], 0).is_none(),
        "no batches: unknown"
    );
    app.add_batch("home", "LAMP", 10, None).await;
    app.add_batch("later", "LAMP", 5, due(9)).await;
    app.add_batch("sooner", "LAMP", 5, due(2)).await;
    let view = availability(&app).await;
    assert_eq!(figures(&view), (10, 10, 0, 0, 20));
    assert_eq!(view.next_eta, due(2));

    app.allocate("o1", "LAMP", 4).await;
    app.allocate("o2", "LAMP", 5).await;
    app.allocate("o3", "LAMP", 5).await; // home has 1 left: the sooner ship
    let view = availability(&app).await;
    assert_eq!(figures(&view), (10, 10, 14, 0, 6));
    assert_eq!(view.next_eta, due(9), "the sooner shipment is taken");

    let hold = PlaceHold {
        hold_id: HoldId::parse("h1").expect("hold id"),
        lines: OrderLines::new(vec![(sku("LAMP"), qty(5))]).expect("lines"),
        ttl: Duration::from_secs(60),
    };
    app.bus
        .handle(hold)
        .await
        .expect("held on the later shipment");
    let view = availability(&app).await;
    assert_eq!(figures(&view), (10, 10, 14, 5, 1));
    assert_eq!(view.next_eta, None, "nothing at sea is free");

    let ship = ShipOrder {
        orderid: orderid("o1"),
        skus: Vec::new(),
    };
    app.bus.handle(ship).await.expect("shipped");
    assert_eq!(figures(&availability(&app).await), (6, 10, 10, 5, 1));

    app.clock.advance(Duration::from_secs(61));
    let view = availability(&app).await;
    assert_eq!(
        figures(&view),
        (6, 10, 10, 0, 6),
        "the hold stopped counting when it expired"
    );
    assert_eq!(view.next_eta, due(9));

    app.bus
        .handle(change_quantity("later", 1))
        .await
        .expect("changed");
    let view = availability(&app).await;
    assert_eq!(figures(&view), (6, 6, 10, 0, 2));
    assert_eq!(view.next_eta, due(9));
}
