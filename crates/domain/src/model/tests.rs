//! The book's batch and product tests (chapters 1 and 7), plus the rules this
//! service adds: idempotent allocation, explicit deallocation, shrinking.

use crate::model::Allocation;
use chrono::NaiveDate;

use super::*;
use crate::fixtures::{batchref, orderid, qty, sku};

fn line(order: &str, product: &str, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid(order),
        sku: sku(product),
        qty: qty(units),
    }
}
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 25).expect("valid date")
}
fn days_later(days: u64) -> NaiveDate {
    today() + chrono::Days::new(days)
}

/// A product with the given batches, as `(ref, qty, eta)`, events cleared.
fn product_with(product: &str, batches: &[(&str, u32, Option<NaiveDate>)]) -> Product {
    let mut p = Product::new(sku(product));
    for (reference, units, eta) in batches {
        p.add_batch(batchref(reference), qty(*units), *eta)
            .expect("new batch");
    }
    p.take_events();
    p
}

/// Product LAMP as a repository reads it: one batch `b1` with its totals
/// and no lines loaded.
fn stored_lamp(version: u64, purchased: u32, allocated: u64) -> Product {
    let batch = Batch::restore(
        batchref("b1"),
        sku("LAMP"),
        None,
        purchased.into(),
        allocated,
        0,
    );
    Product::restore(sku("LAMP"), version, vec![batch])
}

fn allocated_to(p: &Product, reference: &str) -> u64 {
    p.batch(&batchref(reference))
        .expect("batch exists")
        .allocated_quantity()
}

mod batches {
    use super::*;

    fn batch(available: u32, product: &str) -> Batch {
        Batch::new(
            batchref("batch-001"),
            sku(product),
            qty(available),
            Some(today()),
        )
    }

    #[test]
    fn allocating_to_a_batch_reduces_the_available_quantity() {
        let mut b = batch(20, "SMALL-TABLE");
        b.allocate(line("order-ref", "SMALL-TABLE", 2));
        assert_eq!(b.available_quantity(), 18);
    }

    #[test]
    fn can_allocate_if_available_greater_than_required() {
        assert!(batch(20, "ELEGANT-LAMP").can_allocate(&line("o", "ELEGANT-LAMP", 2)));
    }

    #[test]
    fn cannot_allocate_if_available_smaller_than_required() {
        assert!(!batch(2, "ELEGANT-LAMP").can_allocate(&line("o", "ELEGANT-LAMP", 20)));
    }

    #[test]
    fn can_allocate_if_available_equal_to_required() {
        assert!(batch(2, "ELEGANT-LAMP").can_allocate(&line("o", "ELEGANT-LAMP", 2)));
    }

    #[test]
    fn cannot_allocate_if_skus_do_not_match() {
        assert!(!batch(100, "UNCOMFORTABLE-CHAIR").can_allocate(&line(
            "o",
            "EXPENSIVE-TOASTER",
            10
        )));
    }

    #[test]
    fn can_only_deallocate_allocated_lines() {
        let mut b = batch(20, "DECORATIVE-TRINKET");
        assert_eq!(b.deallocate(&orderid("unallocated")), None);
        assert_eq!(b.available_quantity(), 20);
    }

    #[test]
    fn restored_batches_count_lines_that_were_not_loaded() {
        let b = Batch::restore(batchref("b"), sku("LAMP"), None, 100, 60, 0);
        assert_eq!(b.available_quantity(), 40);
        assert!(b.loaded_lines().is_empty());
        assert!(!b.can_allocate(&line("o", "LAMP", 41)));
    }
}

mod allocate {
    use super::*;

    #[test]
    fn prefers_warehouse_batches_to_shipments() {
        let mut p = product_with(
            "RETRO-CLOCK",
            &[
                ("in-stock", 100, None),
                ("shipment", 100, Some(days_later(1))),
            ],
        );
        let chosen = p.allocate(line("oref", "RETRO-CLOCK", 10));
        assert_eq!(chosen, Ok(Allocation::Batch(batchref("in-stock"))));
        assert_eq!(allocated_to(&p, "in-stock"), 10);
        assert_eq!(allocated_to(&p, "shipment"), 0);
    }

    #[test]
    fn prefers_earlier_batches() {
        let mut p = product_with(
            "MINIMALIST-SPOON",
            &[
                ("later", 100, Some(days_later(10))),
                ("speedy", 100, Some(today())),
                ("normal", 100, Some(days_later(1))),
            ],
        );
        assert_eq!(
            p.allocate(line("order1", "MINIMALIST-SPOON", 10)),
            Ok(Allocation::Batch(batchref("speedy")))
        );
    }

    #[test]
    fn breaks_ties_by_creation_order() {
        let mut p = product_with(
            "TWIN-LAMP",
            &[("first", 10, Some(today())), ("second", 10, Some(today()))],
        );
        assert_eq!(
            p.allocate(line("o1", "TWIN-LAMP", 10)),
            Ok(Allocation::Batch(batchref("first")))
        );
        assert_eq!(
            p.allocate(line("o2", "TWIN-LAMP", 10)),
            Ok(Allocation::Batch(batchref("second")))
        );
    }

    #[test]
    fn skips_batches_that_cannot_take_the_whole_line() {
        let mut p = product_with(
            "BIG-SOFA",
            &[
                ("small-stock", 5, None),
                ("big-shipment", 50, Some(today())),
            ],
        );
        assert_eq!(
            p.allocate(line("o1", "BIG-SOFA", 10)),
            Ok(Allocation::Batch(batchref("big-shipment")))
        );
    }

    #[test]
    fn outputs_allocated_event_and_increments_version() {
        let mut p = product_with("RED-CHAIR", &[("b1", 100, None)]);
        let before = p.version();
        p.allocate(line("o1", "RED-CHAIR", 10)).expect("allocates");
        assert_eq!(p.version(), before + 1);
        assert_eq!(
            p.take_events(),
            vec![Event::Allocated(Allocated {
                orderid: orderid("o1"),
                sku: sku("RED-CHAIR"),
                qty: qty(10),
                batchref: batchref("b1"),
            })]
        );
    }

    #[test]
    fn records_out_of_stock_event_if_cannot_allocate() {
        let mut p = product_with("SMALL-FORK", &[("b1", 10, Some(today()))]);
        p.allocate(line("o1", "SMALL-FORK", 10)).expect("allocates");
        p.take_events();
        let version = p.version();

        assert_eq!(
            p.allocate(line("o2", "SMALL-FORK", 1)),
            Ok(Allocation::OutOfStock)
        );
        assert_eq!(
            p.take_events(),
            vec![Event::OutOfStock(OutOfStock {
                sku: sku("SMALL-FORK")
            })]
        );
        assert_eq!(p.version(), version, "nothing changed");
    }

    #[test]
    fn allocating_the_same_line_again_returns_its_batch_and_changes_nothing() {
        let mut p = product_with("LAMP", &[("b1", 10, None), ("b2", 10, None)]);
        p.allocate(line("o1", "LAMP", 4)).expect("allocates");
        p.take_events();
        let version = p.version();

        assert_eq!(
            p.allocate(line("o1", "LAMP", 4)),
            Ok(Allocation::Batch(batchref("b1")))
        );
        assert_eq!(allocated_to(&p, "b1"), 4);
        assert_eq!(p.version(), version);
        assert!(p.take_events().is_empty());
    }

    #[test]
    fn refuses_the_same_order_with_a_different_quantity() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        p.allocate(line("o1", "LAMP", 4)).expect("allocates");
        let refused = p.allocate(line("o1", "LAMP", 5));
        assert!(
            matches!(refused, Err(DomainError::AlreadyAllocated { .. })),
            "{refused:?}"
        );
        assert_eq!(allocated_to(&p, "b1"), 4);
    }

    #[test]
    fn recognises_an_allocation_loaded_from_storage() {
        let mut p = stored_lamp(7, 10, 4);
        p.load_lines(&batchref("b1"), [line("o1", "LAMP", 4)]);
        assert_eq!(
            p.allocate(line("o1", "LAMP", 4)),
            Ok(Allocation::Batch(batchref("b1")))
        );
        assert_eq!(allocated_to(&p, "b1"), 4);
        assert_eq!(p.version(), 7);
    }

    #[test]
    fn loading_the_same_lines_twice_keeps_one_copy() {
        let mut p = stored_lamp(1, 10, 4);
        p.load_lines(&batchref("b1"), [line("o1", "LAMP", 4)]);
        p.load_lines(&batchref("b1"), [line("o1", "LAMP", 4)]);
        assert_eq!(p.batches()[0].loaded_lines().len(), 1);
    }
}

mod deallocate {
    use super::*;

    #[test]
    fn frees_the_stock_and_records_a_cancellation() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        p.allocate(line("o1", "LAMP", 4)).expect("allocates");
        p.take_events();

        assert_eq!(
            p.deallocate(&orderid("o1")),
            Ok(vec![Part {
                batchref: batchref("b1"),
                qty: qty(4)
            }])
        );
        assert_eq!(allocated_to(&p, "b1"), 0);
        assert_eq!(
            p.take_events(),
            vec![Event::AllocationCancelled(AllocationCancelled {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
                qty: qty(4),
                batchref: batchref("b1"),
            })]
        );
    }

    #[test]
    fn refuses_an_order_that_is_not_allocated() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        assert_eq!(
            p.deallocate(&orderid("nope")),
            Err(DomainError::NotAllocated {
                orderid: orderid("nope"),
                sku: sku("LAMP"),
            })
        );
        assert!(p.take_events().is_empty());
    }
}

mod change_batch_quantity {
    use super::*;

    #[test]
    fn deallocates_the_latest_lines_until_the_batch_fits() {
        let mut p = product_with("INDIFFERENT-TABLE", &[("b1", 50, None)]);
        for (order, units) in [("o1", 20), ("o2", 20), ("o3", 10)] {
            p.allocate(line(order, "INDIFFERENT-TABLE", units))
                .expect("allocates");
        }
        p.take_events();

        p.change_batch_quantity(&batchref("b1"), qty(25))
            .expect("changes");

        assert_eq!(allocated_to(&p, "b1"), 20);
        let deallocated: Vec<_> = p
            .take_events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Deallocated(d) => Some(d.orderid.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(deallocated, ["o3", "o2"], "latest orders give way first");
    }

    #[test]
    fn records_deallocations_before_the_new_quantity() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        p.allocate(line("o1", "LAMP", 10)).expect("allocates");
        p.take_events();

        p.change_batch_quantity(&batchref("b1"), qty(5))
            .expect("changes");
        let names: Vec<_> = p.take_events().iter().map(Event::name).collect();
        assert_eq!(names, ["Deallocated", "BatchQuantityChanged", "StockMoved"]);
    }

    #[test]
    fn growing_a_batch_deallocates_nothing() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        p.allocate(line("o1", "LAMP", 10)).expect("allocates");
        p.take_events();

        p.change_batch_quantity(&batchref("b1"), qty(30))
            .expect("changes");
        assert_eq!(
            p.batch(&batchref("b1")).map(Batch::available_quantity),
            Some(20)
        );
        let names: Vec<_> = p.take_events().iter().map(Event::name).collect();
        assert_eq!(names, ["BatchQuantityChanged", "StockMoved"]);
    }

    #[test]
    fn setting_the_same_quantity_again_changes_nothing() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        let version = p.version();
        p.change_batch_quantity(&batchref("b1"), qty(10))
            .expect("accepted");
        assert_eq!(p.version(), version);
        assert!(p.take_events().is_empty());
    }

    #[test]
    fn refuses_an_unknown_batch() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        assert_eq!(
            p.change_batch_quantity(&batchref("b9"), qty(5)),
            Err(DomainError::UnknownBatch {
                reference: batchref("b9")
            })
        );
    }

    #[test]
    fn refuses_to_shrink_a_batch_whose_lines_were_not_loaded_and_changes_nothing() {
        let mut p = stored_lamp(3, 10, 10);
        // One line of the ten units is loaded: not enough to free five.
        p.load_lines(&batchref("b1"), [line("o1", "LAMP", 2)]);
        let before = p.clone();
        assert_eq!(
            p.change_batch_quantity(&batchref("b1"), qty(5)),
            Err(DomainError::LinesNotLoaded {
                reference: batchref("b1")
            })
        );
        assert_eq!(p, before, "refused before anything changed");
    }
}

mod add_batch {
    use super::*;

    #[test]
    fn records_the_new_batch_and_its_first_movement() {
        let mut p = Product::new(sku("LAMP"));
        p.add_batch(batchref("b1"), qty(10), Some(today()))
            .expect("adds");
        assert_eq!(p.version(), 2);
        let events = p.take_events();
        assert_eq!(
            events[0],
            Event::BatchCreated(BatchCreated {
                sku: sku("LAMP"),
                reference: batchref("b1"),
                qty: qty(10),
                eta: Some(today()),
            })
        );
        let names: Vec<_> = events.iter().map(Event::name).collect();
        assert_eq!(names, ["BatchCreated", "StockMoved"]);
    }

    #[test]
    fn the_same_batch_again_changes_nothing() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        assert_eq!(p.add_batch(batchref("b1"), qty(10), None), Ok(()));
        assert_eq!(p.batches().len(), 1);
        assert!(p.take_events().is_empty());
    }

    #[test]
    fn the_same_reference_with_different_data_is_refused() {
        let mut p = product_with("LAMP", &[("b1", 10, None)]);
        assert_eq!(
            p.add_batch(batchref("b1"), qty(11), None),
            Err(DomainError::BatchExists {
                reference: batchref("b1")
            })
        );
        assert_eq!(
            p.add_batch(batchref("b1"), qty(10), Some(today())),
            Err(DomainError::BatchExists {
                reference: batchref("b1")
            })
        );
    }
}
