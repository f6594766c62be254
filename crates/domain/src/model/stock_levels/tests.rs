use super::*;
use crate::events::StockMessage;
use crate::fixtures::{batchref, orderid, qty, sku};
use crate::model::{OrderLine, Settings};

fn line(order: &str, units: u32) -> OrderLine {
    OrderLine {
        orderid: orderid(order),
        sku: sku("LAMP"),
        qty: qty(units),
    }
}

/// The messages of the crossings announced since the last call.
fn announced(product: &mut Product) -> Vec<Option<StockMessage>> {
    product.announce_stock_level();
    product
        .take_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::StockLevelChanged(change) => Some(change.message()),
            _ => None,
        })
        .collect()
}

/// LAMP with 10 in the warehouse, low below 3.
fn lamps() -> Product {
    let mut product = Product::new(sku("LAMP"));
    product
        .add_batch(batchref("home"), qty(10), None)
        .expect("batch");
    product.change_settings(Settings {
        backorder_limit: 0,
        low_stock_threshold: 3,
    });
    assert_eq!(announced(&mut product), [], "in stock, as a new product is");
    product
}

#[test]
fn each_crossing_is_announced_once() {
    let mut product = lamps();
    product.allocate(line("o1", 5)).expect("allocated");
    assert_eq!(announced(&mut product), [], "still in stock");
    product.allocate(line("o2", 3)).expect("allocated");
    assert_eq!(announced(&mut product), [Some(StockMessage::Low)]);
    assert_eq!(announced(&mut product), [], "once");
    product.allocate(line("o3", 2)).expect("allocated");
    assert_eq!(announced(&mut product), [Some(StockMessage::Exhausted)]);
    product.deallocate(&orderid("o1")).expect("deallocated");
    assert_eq!(announced(&mut product), [Some(StockMessage::BackInStock)]);
    product.allocate(line("o4", 4)).expect("allocated");
    assert_eq!(
        announced(&mut product),
        [Some(StockMessage::Low)],
        "back to 1: low again"
    );
}

#[test]
fn changes_that_cross_and_come_back_before_announcing_are_no_news() {
    let mut product = lamps();
    product.allocate(line("o1", 10)).expect("allocated");
    product.deallocate(&orderid("o1")).expect("deallocated");
    assert_eq!(announced(&mut product), []);
}

#[test]
fn rising_over_the_threshold_is_recorded_but_not_told() {
    let mut product = lamps();
    product.allocate(line("o1", 8)).expect("allocated");
    assert_eq!(announced(&mut product), [Some(StockMessage::Low)]);
    product.deallocate(&orderid("o1")).expect("deallocated");
    assert_eq!(announced(&mut product), [None]);
    assert_eq!(product.announced_level(), StockLevel::In);
}

#[test]
fn raising_the_threshold_over_what_is_available_is_low_stock() {
    let mut product = lamps();
    product.change_settings(Settings {
        backorder_limit: 0,
        low_stock_threshold: 20,
    });
    assert_eq!(announced(&mut product), [Some(StockMessage::Low)]);
}

#[test]
fn without_a_threshold_there_is_no_low_level() {
    let mut product = Product::new(sku("LAMP"));
    product
        .add_batch(batchref("home"), qty(2), None)
        .expect("batch");
    announced(&mut product);
    product.allocate(line("o1", 1)).expect("allocated");
    assert_eq!(product.stock_level(), StockLevel::In);
    assert_eq!(announced(&mut product), []);
}
