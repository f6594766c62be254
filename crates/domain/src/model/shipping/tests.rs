//! Shipping and cancelling a line: what leaves, what stays refused.

use crate::model::Allocation;
use chrono::NaiveDate;

use super::*;
use crate::fixtures::{batchref, orderid, qty, sku};
use crate::model::OrderLine;

fn line(order: &str, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid(order),
        sku: sku("SOFA"),
        qty: qty(units),
    }
}

/// SOFA: 10 in the warehouse, 10 due; o1 has 4 in the warehouse.
fn sofa() -> Product {
    let due = NaiveDate::from_ymd_opt(2031, 1, 1).expect("date");
    let mut product = Product::new(sku("SOFA"));
    product
        .add_batch(batchref("home"), qty(10), None)
        .expect("batch");
    product
        .add_batch(batchref("ship"), qty(10), Some(due))
        .expect("batch");
    product.allocate(line("o1", 4)).expect("allocated");
    product.take_events();
    product
}

#[test]
fn shipping_takes_the_units_out_of_the_batch_and_its_allocation() {
    let mut product = sofa();
    let shipment = product.shipment(&orderid("o1")).expect("ships");
    let parts = product.ship(shipment);
    assert_eq!(
        parts,
        [Part {
            batchref: batchref("home"),
            qty: qty(4)
        }]
    );
    let home = product.batch(&batchref("home")).expect("batch");
    assert_eq!(
        (
            home.purchased_quantity(),
            home.allocated_quantity(),
            home.available_quantity()
        ),
        (6, 0, 6)
    );
    let events = product.take_events();
    assert_eq!(
        events[0],
        Event::Shipped(Shipped {
            orderid: orderid("o1"),
            sku: sku("SOFA"),
            batchref: batchref("home"),
            qty: qty(4),
        })
    );
    assert!(
        matches!(&events[1..], [Event::StockMoved(moved)] if moved.movement.delta == -4),
        "and its movement: {events:?}"
    );

    // Again: the same parts, nothing changes.
    let again = product.shipment(&orderid("o1")).expect("answered");
    assert_eq!(product.ship(again), parts);
    assert!(product.pending_events().is_empty());
    // Shipped: no deallocating it, and the line answers as allocated.
    assert_eq!(
        product.deallocate(&orderid("o1")),
        Err(DomainError::AlreadyShipped {
            orderid: orderid("o1"),
            sku: sku("SOFA")
        })
    );
    assert_eq!(
        product.allocate(line("o1", 4)),
        Ok(Allocation::Batch(batchref("home")))
    );
    assert!(product.pending_events().is_empty());
}

#[test]
fn what_has_not_arrived_cannot_ship() {
    let mut product = sofa();
    product.allocate(line("o2", 6)).expect("allocated");
    product.allocate(line("o3", 3)).expect("allocated");
    product.take_events();
    // o2 took the warehouse's last 6: o3 went to the shipment.
    let refused = product.shipment(&orderid("o3"));
    assert!(
        matches!(refused, Err(DomainError::NotArrived { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        product.shipment(&orderid("nobody")),
        Err(DomainError::NotAllocated { .. })
    ));
}

#[test]
fn cancelling_frees_the_stock_once_and_for_good() {
    let mut product = sofa();
    let parts = product.cancel(&orderid("o1"));
    assert_eq!(parts.len(), 1);
    assert_eq!(
        product
            .batch(&batchref("home"))
            .map(|b| b.available_quantity()),
        Some(10)
    );
    assert!(matches!(
        product.take_events().as_slice(),
        [Event::LineCancelled(_)]
    ));
    assert_eq!(product.cancel(&orderid("o1")), []);
    assert!(product.pending_events().is_empty());
    assert_eq!(
        product.allocate(line("o1", 4)),
        Err(DomainError::LineCancelled {
            orderid: orderid("o1"),
            sku: sku("SOFA")
        })
    );
}

#[test]
fn a_shipped_line_is_not_cancelled() {
    let mut product = sofa();
    let shipment = product.shipment(&orderid("o1")).expect("ships");
    product.ship(shipment);
    product.take_events();
    assert_eq!(product.cancel(&orderid("o1")), []);
    assert!(product.pending_events().is_empty());
}
