//! The ledger: every change to a batch's quantity is a movement, and an
//! operator's adjustment refuses before it changes anything.

use super::*;
use crate::fixtures::{batchref, orderid, qty, sku};
use crate::model::{OrderLine, Product};

fn lamp_with(units: u32) -> Product {
    let mut p = Product::new(sku("LAMP"));
    p.add_batch(batchref("b1"), qty(units), None)
        .expect("new batch");
    p
}

fn allocate(p: &mut Product, order: &str, units: u32) {
    let line = OrderLine {
        orderid: orderid(order),
        sku: sku("LAMP"),
        qty: qty(units),
    };
    p.allocate(line).expect("allocates");
}

fn movements(events: &[Event]) -> Vec<&Movement> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::StockMoved(moved) => Some(&moved.movement),
            _ => None,
        })
        .collect()
}

fn adjustment(change: Change, expected_qty: Option<u64>) -> Adjustment {
    Adjustment {
        change,
        reason: AdjustmentReason::Damaged,
        note: Some(Note::parse("dropped", "note").expect("valid note")),
        expected_qty,
    }
}

fn quantity_of(p: &Product) -> u64 {
    p.batch(&batchref("b1"))
        .expect("batch exists")
        .purchased_quantity()
}

#[test]
fn a_new_batch_receives_its_quantity_as_its_first_movement() {
    let mut p = lamp_with(20);
    let events = p.take_events();
    let moved = movements(&events);
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].delta, moved[0].qty_after), (20, 20));
    assert_eq!(moved[0].reason, Reason::Received);
    assert_eq!(moved[0].number, p.version(), "numbered by the version");
}

#[test]
fn changing_the_quantity_moves_by_the_difference_and_the_same_quantity_not_at_all() {
    let mut p = lamp_with(20);
    p.take_events();
    p.change_batch_quantity(&batchref("b1"), qty(15))
        .expect("changes");
    p.change_batch_quantity(&batchref("b1"), qty(15))
        .expect("changes nothing");
    let events = p.take_events();
    let moved = movements(&events);
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].delta, moved[0].qty_after), (-5, 15));
    assert_eq!(moved[0].reason, Reason::Changed);
}

#[test]
fn an_adjustment_by_a_delta_moves_the_quantity_and_is_returned() {
    let mut p = lamp_with(20);
    p.take_events();
    let movement = p
        .adjust_batch(&batchref("b1"), adjustment(Change::By(-3), Some(20)))
        .expect("adjusts");
    assert_eq!((movement.delta, movement.qty_after), (-3, 17));
    assert_eq!(movement.reason, Reason::Adjusted(AdjustmentReason::Damaged));
    assert_eq!(movement.note.as_ref().map(Note::as_str), Some("dropped"));
    assert_eq!(quantity_of(&p), 17);
    let events = p.take_events();
    assert_eq!(movements(&events), [&movement]);
}

#[test]
fn a_count_that_finds_the_quantity_is_recorded_as_a_movement_of_zero() {
    let mut p = lamp_with(20);
    p.take_events();
    let movement = p
        .adjust_batch(&batchref("b1"), adjustment(Change::To(20), None))
        .expect("adjusts");
    assert_eq!((movement.delta, movement.qty_after), (0, 20));
    let names: Vec<_> = p.take_events().iter().map(Event::name).collect();
    assert_eq!(names, ["StockMoved"], "the quantity itself did not change");
}

#[test]
fn an_adjustment_on_a_quantity_no_longer_there_is_refused_and_changes_nothing() {
    let mut p = lamp_with(20);
    p.take_events();
    let version = p.version();
    let refused = p.adjust_batch(&batchref("b1"), adjustment(Change::To(5), Some(19)));
    assert_eq!(
        refused,
        Err(DomainError::QuantityNotAsExpected {
            reference: batchref("b1"),
            expected: 19,
            actual: 20,
        })
    );
    assert_eq!((quantity_of(&p), p.version()), (20, version));
    assert!(p.take_events().is_empty());
}

#[test]
fn an_adjustment_outside_the_batch_range_is_refused() {
    let mut p = lamp_with(20);
    p.take_events();
    for change in [Change::By(-21), Change::To(u64::from(Quantity::MAX) + 1)] {
        let refused = p.adjust_batch(&batchref("b1"), adjustment(change, None));
        assert!(
            matches!(refused, Err(DomainError::AdjustmentOutOfRange { .. })),
            "{change:?}: {refused:?}"
        );
    }
    assert_eq!(quantity_of(&p), 20);
    assert!(p.take_events().is_empty());
    let emptied = p.adjust_batch(&batchref("b1"), adjustment(Change::By(-20), None));
    assert_eq!(emptied.map(|m| m.qty_after), Ok(0), "down to none is fine");
}

#[test]
fn an_unknown_batch_is_refused() {
    let mut p = lamp_with(20);
    let refused = p.adjust_batch(&batchref("b2"), adjustment(Change::By(1), None));
    assert_eq!(
        refused,
        Err(DomainError::UnknownBatch {
            reference: batchref("b2")
        })
    );
}

#[test]
fn an_adjustment_below_what_is_allocated_deallocates_the_newest_lines_first() {
    let mut p = lamp_with(10);
    for (order, units) in [("o1", 4), ("o2", 3), ("o3", 3)] {
        allocate(&mut p, order, units);
    }
    p.take_events();
    p.adjust_batch(&batchref("b1"), adjustment(Change::By(-5), None))
        .expect("adjusts");
    let events = p.take_events();
    let names: Vec<_> = events.iter().map(Event::name).collect();
    assert_eq!(
        names,
        [
            "Deallocated",
            "Deallocated",
            "BatchQuantityChanged",
            "StockMoved"
        ]
    );
    let bumped: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::Deallocated(d) => Some(d.orderid.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bumped, ["o3", "o2"]);
    assert_eq!(quantity_of(&p), 5);
}

#[test]
fn shipping_moves_each_part_out_with_its_order() {
    let mut p = lamp_with(10);
    allocate(&mut p, "o1", 4);
    p.take_events();
    let shipment = p.shipment(&orderid("o1")).expect("ships");
    p.ship(shipment);
    let events = p.take_events();
    let moved = movements(&events);
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].delta, moved[0].qty_after), (-4, 6));
    assert_eq!(moved[0].reason, Reason::Shipment);
    assert_eq!(moved[0].order, Some(orderid("o1")));
}

#[test]
fn movements_sum_to_the_quantity_and_are_numbered_in_order() {
    let mut p = lamp_with(10);
    allocate(&mut p, "o1", 4);
    p.change_batch_quantity(&batchref("b1"), qty(12))
        .expect("changes");
    p.adjust_batch(&batchref("b1"), adjustment(Change::By(-1), None))
        .expect("adjusts");
    let shipment = p.shipment(&orderid("o1")).expect("ships");
    p.ship(shipment);
    let events = p.take_events();
    let moved = movements(&events);
    let sum: i64 = moved.iter().map(|m| m.delta).sum();
    assert_eq!(u64::try_from(sum), Ok(quantity_of(&p)));
    assert!(moved.windows(2).all(|w| w[0].number < w[1].number));
}

#[test]
fn reasons_read_back_as_written() {
    let all = [Reason::Received, Reason::Changed, Reason::Shipment]
        .into_iter()
        .chain(AdjustmentReason::ALL.map(Reason::Adjusted));
    for reason in all {
        assert_eq!(Reason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(
        AdjustmentReason::parse("received"),
        None,
        "not an operator's"
    );
    assert_eq!(Reason::parse("stolen"), None);
}
