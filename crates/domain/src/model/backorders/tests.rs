use super::*;
use crate::events::{Allocated, OutOfStock};
use crate::fixtures::{batchref, orderid, qty, sku};
use crate::model::{Allocation, Placement, Shortage};

fn line(order: &str, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid(order),
        sku: sku("LAMP"),
        qty: qty(units),
    }
}

/// LAMP with `units` in the warehouse (no batch for none) and room for
/// `limit` backordered units, events cleared.
fn lamps(units: u32, limit: u64) -> Product {
    let mut product = Product::new(sku("LAMP"));
    if units > 0 {
        product
            .add_batch(batchref("home"), qty(units), None)
            .expect("batch");
    }
    product.change_settings(Settings {
        backorder_limit: limit,
        low_stock_threshold: 0,
    });
    product.take_events();
    product
}

#[test]
fn a_line_no_batch_can_take_waits_within_the_limit() {
    let mut product = lamps(2, 10);
    assert_eq!(product.allocate(line("o1", 5)), Ok(Allocation::Backordered));
    let events = product.take_events();
    assert!(
        matches!(&events[..], [Event::Backordered(b)] if b.qty == qty(5) && b.orderid == orderid("o1")),
        "{events:?}"
    );
    assert_eq!(product.backordered(), 5);
    assert_eq!(
        product.allocate(line("o1", 5)),
        Ok(Allocation::Backordered),
        "sent again: answered the same, nothing changes"
    );
    assert!(product.pending_events().is_empty());
    assert_eq!(
        product.allocate(line("o1", 4)),
        Err(DomainError::AlreadyBackordered {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
            backordered: 5
        })
    );
}

#[test]
fn beyond_the_limit_a_line_is_out_of_stock_as_before() {
    let mut product = lamps(0, 6);
    assert_eq!(product.allocate(line("o1", 5)), Ok(Allocation::Backordered));
    product.take_events();
    assert_eq!(product.allocate(line("o2", 2)), Ok(Allocation::OutOfStock));
    assert_eq!(
        product.take_events(),
        [Event::OutOfStock(OutOfStock { sku: sku("LAMP") })]
    );
    assert_eq!(product.allocate(line("o3", 1)), Ok(Allocation::Backordered));
    assert_eq!(product.backordered(), 6);
}

#[test]
fn without_a_limit_nothing_waits() {
    let mut product = lamps(0, 0);
    assert_eq!(product.allocate(line("o1", 1)), Ok(Allocation::OutOfStock));
    assert!(product.backorders().is_empty());
}

#[test]
fn stock_goes_to_waiting_backorders_oldest_first_skipping_those_it_cannot_fit() {
    let mut product = lamps(0, 100);
    for (order, units) in [("big", 8), ("small", 3), ("later", 2)] {
        assert_eq!(
            product.allocate(line(order, units)),
            Ok(Allocation::Backordered)
        );
    }
    product
        .add_batch(batchref("ship"), qty(6), None)
        .expect("batch");
    product.take_events();

    assert_eq!(product.fill_backorders(), 2);
    let allocated: Vec<_> = product
        .take_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::Allocated(Allocated { orderid, qty, .. }) => Some((orderid, qty)),
            _ => None,
        })
        .collect();
    assert_eq!(
        allocated,
        [(orderid("small"), qty(3)), (orderid("later"), qty(2))],
        "the 8 did not fit the 6, so the next ones had them"
    );
    assert_eq!(
        product.backorders(),
        [Backorder {
            orderid: orderid("big"),
            qty: qty(8),
            number: 2, // after the settings
        }]
    );
    assert_eq!(
        product.fill_backorders(),
        0,
        "nothing fits: nothing changes"
    );
    assert!(product.pending_events().is_empty());
}

#[test]
fn a_filled_backorder_is_recorded_before_its_allocation() {
    let mut product = lamps(0, 10);
    product.allocate(line("o1", 4)).expect("backordered");
    product
        .add_batch(batchref("ship"), qty(4), None)
        .expect("batch");
    product.take_events();
    product.fill_backorders();
    assert_eq!(
        product.take_events(),
        [
            Event::BackorderFilled(BackorderFilled {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
                qty: qty(4),
            }),
            Event::Allocated(Allocated {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
                qty: qty(4),
                batchref: batchref("ship"),
            })
        ]
    );
    assert_eq!(
        product.allocate(line("o1", 4)),
        Ok(Allocation::Batch(batchref("ship"))),
        "sent again, the line is answered with its batch"
    );
}

#[test]
fn deallocating_or_cancelling_a_waiting_line_withdraws_it() {
    let mut product = lamps(0, 10);
    product.allocate(line("o1", 4)).expect("backordered");
    product.allocate(line("o2", 3)).expect("backordered");
    product.take_events();

    assert_eq!(product.deallocate(&orderid("o1")), Ok(Vec::new()));
    assert_eq!(product.cancel(&orderid("o2")), Vec::new());
    assert_eq!(
        product.take_events(),
        [
            Event::BackorderWithdrawn(BackorderWithdrawn {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
                qty: qty(4),
                cancelled: false,
            }),
            Event::BackorderWithdrawn(BackorderWithdrawn {
                orderid: orderid("o2"),
                sku: sku("LAMP"),
                qty: qty(3),
                cancelled: true,
            })
        ]
    );
    assert_eq!(product.backordered(), 0);
    assert!(matches!(
        product.deallocate(&orderid("o1")),
        Err(DomainError::NotAllocated { .. })
    ));
}

#[test]
fn an_order_line_short_of_stock_is_placed_as_a_backorder() {
    let mut product = lamps(2, 10);
    let placement = product.placement(&line("o1", 5), false, None);
    assert_eq!(
        placement,
        Ok(Placement::Backorder {
            line: line("o1", 5),
            waiting: false
        })
    );
    let placement = placement.expect("placed");
    assert_eq!(product.place(placement), Ok(Vec::new()));
    assert_eq!(product.backordered(), 5);
    assert_eq!(
        product.placement(&line("o1", 5), false, None),
        Ok(Placement::Backorder {
            line: line("o1", 5),
            waiting: true
        }),
        "the same order again"
    );
    assert_eq!(
        product.placement(&line("o2", 6), false, None),
        Ok(Placement::Short(Shortage {
            sku: sku("LAMP"),
            requested: qty(6),
            available: 2
        })),
        "5 + 6 is beyond the limit of 10"
    );
}

#[test]
fn settings_change_once() {
    let mut product = lamps(1, 0);
    let settings = Settings {
        backorder_limit: 5,
        low_stock_threshold: 2,
    };
    product.change_settings(settings);
    product.change_settings(settings);
    assert_eq!(
        product.take_events(),
        [Event::SettingsChanged(SettingsChanged {
            sku: sku("LAMP"),
            settings
        })]
    );
    assert_eq!(product.settings(), settings);
}

#[test]
fn loaded_backorders_are_kept_oldest_first() {
    let mut product = lamps(0, 10);
    let waiting = |order: &str, number| Backorder {
        orderid: orderid(order),
        qty: qty(1),
        number,
    };
    product.load_backorders([waiting("b", 9), waiting("a", 4)]);
    product.load_backorders([waiting("a", 4)]);
    assert_eq!(product.backorders(), [waiting("a", 4), waiting("b", 9)]);
}
