//! Checkout holds through the bus: placed all or nothing, blocking
//! everyone else until they expire (the clock moved by the test, nothing
//! swept), extended, released, converted by an order, and given up by a
//! shrinking batch.

use std::time::Duration;

use domain::commands::{AllocateOrder, ExtendHold, PlaceHold, ReleaseHold};
use domain::{HoldId, OrderLines, Part};

use super::*;
use crate::handlers::PlacedHold;
use crate::ports::HoldState;

const FIFTEEN_MINUTES: Duration = Duration::from_secs(900);

fn hold_id(name: &str) -> HoldId {
    HoldId::parse(name).expect("hold id")
}

fn lines(lines: &[(&str, u32)]) -> OrderLines {
    OrderLines::new(
        lines
            .iter()
            .map(|(product, units)| (sku(product), qty(*units)))
            .collect(),
    )
    .expect("valid lines")
}

impl App {
    async fn hold(&self, name: &str, held: &[(&str, u32)]) -> Result<PlacedHold, Error> {
        self.bus
            .handle(PlaceHold {
                hold_id: hold_id(name),
                lines: lines(held),
                ttl: FIFTEEN_MINUTES,
            })
            .await
    }

    async fn available(&self, product: &str, reference: &str) -> u64 {
        let batches = self
            .store
            .batches(&sku(product), self.bus.now())
            .await
            .expect("query");
        batches
            .iter()
            .find(|b| b.reference == batchref(reference))
            .map(|b| b.available())
            .expect("batch exists")
    }

    async fn state_of(&self, name: &str) -> HoldState {
        let hold = self.store.hold(&hold_id(name)).await.expect("query");
        hold.expect("the hold is known").state
    }
}

/// Lamps (10 in the warehouse) and sofas (2).
async fn shop() -> App {
    let app = app();
    app.add_batch("lamps", "LAMP", 10, None).await;
    app.add_batch("sofas", "SOFA", 2, None).await;
    app
}

#[tokio::test]
async fn a_hold_blocks_allocations_until_it_expires_with_nothing_swept() {
    let app = shop().await;
    let placed = app
        .hold("h1", &[("LAMP", 8), ("SOFA", 2)])
        .await
        .expect("held");
    assert_eq!(placed.expires_at, app.bus.now() + FIFTEEN_MINUTES);
    assert_eq!(
        placed.lines[0].parts,
        [Part {
            batchref: batchref("lamps"),
            qty: qty(8)
        }]
    );
    assert_eq!(app.available("LAMP", "lamps").await, 2);

    assert_eq!(app.allocate("o1", "LAMP", 3).await, None, "held units");
    assert!(
        matches!(
            app.hold("h2", &[("LAMP", 3)]).await,
            Err(Error::Rejected(DomainError::HoldShort { .. }))
        ),
        "nor for another hold"
    );

    // A second after it expires, its units are anyone's.
    app.clock.advance(FIFTEEN_MINUTES + Duration::from_secs(1));
    assert_eq!(app.available("LAMP", "lamps").await, 10);
    assert_eq!(app.allocate("o1", "LAMP", 3).await, Some(batchref("lamps")));
    assert_eq!(
        app.state_of("h1").await,
        HoldState::Active,
        "expired, not ended"
    );
}

#[tokio::test]
async fn a_hold_short_on_one_line_holds_nothing() {
    let app = shop().await;
    let refused = app.hold("h1", &[("LAMP", 1), ("SOFA", 3)]).await;
    let Err(Error::Rejected(DomainError::HoldShort { short })) = refused else {
        panic!("refused whole: {refused:?}");
    };
    assert_eq!((&short[0].sku, short[0].available), (&sku("SOFA"), 2));
    assert_eq!(app.available("LAMP", "lamps").await, 10);
    assert!(matches!(app.store.hold(&hold_id("h1")).await, Ok(None)));
}

#[tokio::test]
async fn extending_keeps_a_live_hold_and_refuses_an_expired_one() {
    let app = shop().await;
    app.hold("h1", &[("LAMP", 4)]).await.expect("held");
    app.clock.advance(Duration::from_secs(600));
    let extend = |ttl| ExtendHold {
        hold_id: hold_id("h1"),
        ttl,
    };
    let expires_at = app
        .bus
        .handle(extend(FIFTEEN_MINUTES))
        .await
        .expect("extended");
    assert_eq!(expires_at, app.bus.now() + FIFTEEN_MINUTES);

    // Past the first expiry, within the new one: still held.
    app.clock.advance(Duration::from_secs(600));
    assert_eq!(app.available("LAMP", "lamps").await, 6);

    app.clock.advance(Duration::from_secs(301));
    assert!(matches!(
        app.bus.handle(extend(FIFTEEN_MINUTES)).await,
        Err(Error::HoldGone(_))
    ));
    let unknown = ExtendHold {
        hold_id: hold_id("nope"),
        ttl: FIFTEEN_MINUTES,
    };
    assert!(matches!(
        app.bus.handle(unknown).await,
        Err(Error::UnknownHold(_))
    ));
}

#[tokio::test]
async fn releasing_frees_the_units_once() {
    let app = shop().await;
    app.hold("h1", &[("LAMP", 4), ("SOFA", 1)])
        .await
        .expect("held");
    let release = || ReleaseHold {
        hold_id: hold_id("h1"),
    };
    app.bus.handle(release()).await.expect("released");
    assert_eq!(app.available("LAMP", "lamps").await, 10);
    assert_eq!(app.available("SOFA", "sofas").await, 2);
    assert_eq!(app.state_of("h1").await, HoldState::Released);

    app.bus
        .handle(release())
        .await
        .expect("again: nothing to do");
    assert_eq!(app.available("LAMP", "lamps").await, 10);
    assert!(matches!(
        app.bus
            .handle(ExtendHold {
                hold_id: hold_id("h1"),
                ttl: FIFTEEN_MINUTES
            })
            .await,
        Err(Error::HoldGone(_))
    ));
    assert!(matches!(
        app.bus
            .handle(ReleaseHold {
                hold_id: hold_id("nope")
            })
            .await,
        Err(Error::UnknownHold(_))
    ));
}

fn converting(order: &str, ordered: &[(&str, u32)], hold: &str) -> AllocateOrder {
    AllocateOrder {
        orderid: orderid(order),
        lines: lines(ordered),
        split: false,
        hold_id: Some(hold_id(hold)),
    }
}

#[tokio::test]
async fn an_order_converts_exactly_the_held_units() {
    let app = shop().await;
    app.add_batch("more-lamps", "LAMP", 10, None).await;
    app.hold("h1", &[("LAMP", 8), ("SOFA", 2)])
        .await
        .expect("held");

    let allocated = app
        .bus
        .handle(converting("o1", &[("SOFA", 2), ("LAMP", 8)], "h1"))
        .await
        .expect("converted");
    assert_eq!(allocated[1].parts[0].batchref, batchref("lamps"));
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 8);
    assert_eq!(app.allocated_to("SOFA", "sofas").await, 2);
    assert_eq!(
        app.available("LAMP", "lamps").await,
        2,
        "nothing held twice"
    );
    assert_eq!(app.state_of("h1").await, HoldState::Converted);

    // Sent again: the same answer, the hold being converted already.
    let again = app
        .bus
        .handle(converting("o1", &[("SOFA", 2), ("LAMP", 8)], "h1"))
        .await
        .expect("the same answer");
    assert_eq!(again, allocated);
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 8);
}

#[tokio::test]
async fn converting_other_lines_than_the_hold_is_refused_and_changes_nothing() {
    let app = shop().await;
    app.hold("h1", &[("LAMP", 8), ("SOFA", 2)])
        .await
        .expect("held");
    for ordered in [&[("LAMP", 8)][..], &[("LAMP", 7), ("SOFA", 2)][..]] {
        let refused = app.bus.handle(converting("o1", ordered, "h1")).await;
        assert!(
            matches!(
                refused,
                Err(Error::Rejected(DomainError::HoldMismatch { .. }))
            ),
            "{ordered:?}: {refused:?}"
        );
    }
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 0);
    assert_eq!(app.state_of("h1").await, HoldState::Active);
    assert!(matches!(
        app.bus
            .handle(converting("o1", &[("LAMP", 8)], "nope"))
            .await,
        Err(Error::UnknownHold(_))
    ));
}

#[tokio::test]
async fn an_order_with_an_expired_hold_is_placed_as_if_it_had_none() {
    let app = shop().await;
    app.hold("h1", &[("LAMP", 8)]).await.expect("held");
    app.clock.advance(FIFTEEN_MINUTES);
    app.allocate("o0", "LAMP", 5)
        .await
        .expect("the hold's units");

    let refused = app.bus.handle(converting("o1", &[("LAMP", 8)], "h1")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(DomainError::OrderShort { .. }))
        ),
        "{refused:?}"
    );
    let placed = app.bus.handle(converting("o2", &[("LAMP", 5)], "h1")).await;
    assert!(placed.is_ok(), "{placed:?}");
}

#[tokio::test]
async fn a_shrinking_batch_takes_held_units_before_allocated_ones() {
    let app = shop().await;
    app.allocate("o1", "LAMP", 4).await.expect("allocated");
    app.hold("h1", &[("LAMP", 5)]).await.expect("held");
    app.bus
        .handle(change_quantity("lamps", 6))
        .await
        .expect("changed");
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 4, "the order kept");
    assert_eq!(app.available("LAMP", "lamps").await, 2);
    assert_eq!(app.state_of("h1").await, HoldState::Released);
    // A hold missing a part no longer converts: the order stands alone.
    let refused = app.bus.handle(converting("o2", &[("LAMP", 5)], "h1")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(DomainError::OrderShort { .. }))
        ),
        "{refused:?}"
    );
}
