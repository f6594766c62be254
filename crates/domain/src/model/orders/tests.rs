//! Placements of order lines: whole, split, sent again, taken meanwhile.

use crate::model::Allocation;
use chrono::NaiveDate;

use super::*;
use crate::events::{Allocated, Event};
use crate::fixtures::{batchref, orderid, qty, sku};

fn line(order: &str, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid(order),
        sku: sku("SOFA"),
        qty: qty(units),
    }
}

/// SOFA with a shipment of 10 due, and 5 in the warehouse (created
/// after it), events cleared.
fn sofa() -> Product {
    let due = NaiveDate::from_ymd_opt(2026, 12, 24).expect("date");
    let mut product = Product::new(sku("SOFA"));
    product
        .add_batch(batchref("ship"), qty(10), Some(due))
        .expect("batch");
    product
        .add_batch(batchref("home"), qty(5), None)
        .expect("batch");
    product.take_events();
    product
}

#[test]
fn a_placement_follows_the_books_policy_and_changes_nothing() {
    let product = sofa();
    let before = product.clone();
    let placement = product
        .placement(&line("o1", 5), false, None)
        .expect("placed");
    assert_eq!(
        placement,
        Placement::Fits {
            line: line("o1", 5),
            parts: vec![Part {
                batchref: batchref("home"),
                qty: qty(5)
            }]
        }
    );
    assert_eq!(product, before);
}

#[test]
fn placing_allocates_the_line_where_it_was_placed() {
    let mut product = sofa();
    let placement = product
        .placement(&line("o1", 6), false, None)
        .expect("placed");
    let parts = product.place(placement).expect("taken");
    assert_eq!(
        parts,
        [Part {
            batchref: batchref("ship"),
            qty: qty(6)
        }]
    );
    assert_eq!(
        product.take_events(),
        [Event::Allocated(Allocated {
            orderid: orderid("o1"),
            sku: sku("SOFA"),
            qty: qty(6),
            batchref: batchref("ship"),
        })]
    );
    assert_eq!(
        product.version(),
        5,
        "two batches, each with its movement, then the line"
    );
}

#[test]
fn a_line_no_batch_can_take_whole_is_short_by_what_the_best_batch_has() {
    let mut product = sofa();
    let placement = product
        .placement(&line("o1", 11), false, None)
        .expect("answered");
    assert_eq!(
        placement.shortage(),
        Some(&Shortage {
            sku: sku("SOFA"),
            requested: qty(11),
            available: 10,
        })
    );
    // No out-of-stock event: a refused order tells its client only.
    assert!(product.pending_events().is_empty());
    assert_eq!(
        product.place(placement),
        Err(DomainError::NoPlace {
            sku: sku("SOFA"),
            requested: qty(11)
        })
    );
    assert!(product.pending_events().is_empty());
}

#[test]
fn a_line_sent_again_is_answered_with_its_allocation_and_changes_nothing() {
    let mut product = sofa();
    let first = product
        .placement(&line("o1", 2), false, None)
        .expect("placed");
    product.place(first).expect("taken");
    product.take_events();
    let version = product.version();

    let again = product
        .placement(&line("o1", 2), false, None)
        .expect("placed");
    assert_eq!(
        product.place(again),
        Ok(vec![Part {
            batchref: batchref("home"),
            qty: qty(2)
        }])
    );
    assert!(product.pending_events().is_empty());
    assert_eq!(product.version(), version);

    assert!(matches!(
        product.placement(&line("o1", 3), false, None),
        Err(DomainError::AlreadyAllocated { .. })
    ));
}

#[test]
fn a_place_taken_in_between_is_refused_and_changes_nothing() {
    let mut product = sofa();
    let placement = product
        .placement(&line("o1", 5), false, None)
        .expect("placed");
    product
        .allocate(line("o2", 1))
        .expect("allocated")
        .batchref()
        .expect("to a batch");
    let before = product.clone();
    assert!(matches!(
        product.place(placement),
        Err(DomainError::NoPlace { .. })
    ));
    assert_eq!(product, before);
}

mod split {
    use super::*;
    use crate::events::{AllocationCancelled, Deallocated};

    fn part(reference: &str, units: u32) -> Part {
        Part {
            batchref: batchref(reference),
            qty: qty(units),
        }
    }

    #[test]
    fn a_line_no_batch_can_take_whole_is_refused_without_split() {
        let product = sofa();
        let placement = product
            .placement(&line("o1", 12), false, None)
            .expect("answered");
        assert_eq!(placement.shortage().map(|s| s.available), Some(10));
    }

    #[test]
    fn a_split_line_takes_each_batch_in_policy_order_until_covered() {
        let mut product = sofa();
        let placement = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        let parts = product.place(placement).expect("taken");
        // The warehouse gives all it has first, then the shipment.
        assert_eq!(parts, [part("home", 5), part("ship", 7)]);
        let allocated: Vec<_> = product
            .take_events()
            .into_iter()
            .map(|event| match event {
                Event::Allocated(Allocated { batchref, qty, .. }) => (batchref, qty),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            allocated,
            [(batchref("home"), qty(5)), (batchref("ship"), qty(7))]
        );
        assert_eq!(
            product
                .batch(&batchref("home"))
                .map(|b| b.available_quantity()),
            Some(0)
        );
        assert_eq!(
            product
                .batch(&batchref("ship"))
                .map(|b| b.available_quantity()),
            Some(3)
        );
    }

    #[test]
    fn a_line_that_fits_one_batch_is_not_split() {
        let product = sofa();
        let placement = product
            .placement(&line("o1", 8), true, None)
            .expect("placed");
        assert_eq!(
            placement,
            Placement::Fits {
                line: line("o1", 8),
                parts: vec![part("ship", 8)]
            }
        );
    }

    #[test]
    fn a_split_line_is_short_by_what_every_batch_has_together() {
        let product = sofa();
        let placement = product
            .placement(&line("o1", 16), true, None)
            .expect("answered");
        assert_eq!(
            placement.shortage(),
            Some(&Shortage {
                sku: sku("SOFA"),
                requested: qty(16),
                available: 15,
            })
        );
    }

    #[test]
    fn a_split_line_sent_again_is_answered_with_every_part() {
        let mut product = sofa();
        let first = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        product.place(first).expect("taken");
        product.take_events();
        let again = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        assert_eq!(
            again,
            Placement::Allocated {
                sku: sku("SOFA"),
                parts: vec![part("ship", 7), part("home", 5)]
            }
        );
        assert_eq!(
            product.placement(&line("o1", 11), true, None),
            Err(DomainError::AlreadyAllocated {
                orderid: orderid("o1"),
                sku: sku("SOFA"),
                allocated: 12,
            })
        );
        // The book's route answers with a batch of the line.
        assert_eq!(
            product.allocate(line("o1", 12)),
            Ok(Allocation::Batch(batchref("ship")))
        );
        assert!(product.pending_events().is_empty());
    }

    #[test]
    fn deallocating_a_split_line_frees_every_part() {
        let mut product = sofa();
        let placement = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        product.place(placement).expect("taken");
        product.take_events();
        let parts = product.deallocate(&orderid("o1")).expect("deallocated");
        assert_eq!(parts, [part("ship", 7), part("home", 5)]);
        let cancelled = |reference: &str, units: u32| {
            Event::AllocationCancelled(AllocationCancelled {
                orderid: orderid("o1"),
                sku: sku("SOFA"),
                qty: qty(units),
                batchref: batchref(reference),
            })
        };
        assert_eq!(
            product.take_events(),
            [cancelled("ship", 7), cancelled("home", 5)]
        );
        assert!(
            product
                .batches()
                .iter()
                .all(|b| b.allocated_quantity() == 0)
        );
    }

    #[test]
    fn a_part_given_up_by_a_shrinking_batch_is_reallocated_next_to_its_line() {
        let due = NaiveDate::from_ymd_opt(2026, 12, 31).expect("date");
        let mut product = sofa();
        product
            .add_batch(batchref("late"), qty(6), Some(due))
            .expect("batch");
        let placement = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        product.place(placement).expect("taken");
        product.take_events();

        // The warehouse loses its stock: the line's part there leaves it.
        product
            .change_batch_quantity(&batchref("home"), qty(1))
            .expect("changed");
        let bumped = product
            .take_events()
            .into_iter()
            .find_map(|event| match event {
                Event::Deallocated(deallocated) => Some(deallocated),
                _ => None,
            });
        assert_eq!(
            bumped,
            Some(Deallocated {
                orderid: orderid("o1"),
                sku: sku("SOFA"),
                qty: qty(5),
                batchref: batchref("home"),
            })
        );
        // `allocate` refuses it (the line has 7 of 12 elsewhere)...
        assert!(product.allocate(line("o1", 5)).is_err());
        // ...`reallocate` puts the part back: the shipment has 3 left,
        // so the part goes to the later one.
        assert_eq!(
            product.reallocate(line("o1", 5)),
            Allocation::Batch(batchref("late"))
        );
        assert_eq!(
            product.parts_of(&orderid("o1")),
            [part("ship", 7), part("late", 5)]
        );
    }

    #[test]
    fn a_part_reallocated_to_a_batch_holding_its_line_joins_it() {
        let mut product = sofa();
        let placement = product
            .placement(&line("o1", 12), true, None)
            .expect("placed");
        product.place(placement).expect("taken");
        product
            .change_batch_quantity(&batchref("home"), qty(1))
            .expect("changed");
        product
            .change_batch_quantity(&batchref("ship"), qty(20))
            .expect("changed");
        product.take_events();
        assert_eq!(
            product.reallocate(line("o1", 5)),
            Allocation::Batch(batchref("ship"))
        );
        assert_eq!(product.parts_of(&orderid("o1")), [part("ship", 12)]);
        assert_eq!(
            product
                .batch(&batchref("ship"))
                .map(|b| b.allocated_quantity()),
            Some(12)
        );
    }
}
