//! Stock-level messages through the bus: each crossing of a SKU's stock
//! (to none, back from none, below its low-stock threshold) is one message
//! in the outbox, written with the change; changes that cross nothing, or
//! cross and come back in one unit of work, write none.

use std::time::Duration;

use domain::commands::{CancelOrder, ChangeSettings, PlaceHold};
use domain::events::StockMessage;
use domain::{HoldId, OrderLines};

use super::*;
use crate::ports::{Outgoing, StockNews};

/// `(message, available)` of each stock message waiting in the outbox.
fn news_of(store: &MemoryStore) -> Vec<(StockMessage, u64)> {
    let messages = store.unsent_messages();
    messages
        .into_iter()
        .filter_map(|message| match message.message {
            Outgoing::Stock(StockNews {
                message, available, ..
            }) => Some((message, available)),
            Outgoing::LineAllocated(_) | Outgoing::OutOfStock(_) => None,
        })
        .collect()
}

async fn set_threshold(app: &App, threshold: u64) {
    let command = ChangeSettings {
        sku: sku("LAMP"),
        backorder_limit: None,
        low_stock_threshold: Some(threshold),
    };
    app.bus.handle(command).await.expect("settings changed");
}

#[tokio::test]
async fn each_crossing_is_one_message_written_with_its_change() {
    let app = app();
    app.add_batch("home", "LAMP", 10, None).await;
    set_threshold(&app, 4).await;
    app.allocate("o1", "LAMP", 5).await;
    assert_eq!(news_of(&app.store), [], "5 left: in stock");
    app.allocate("o2", "LAMP", 2).await;
    assert_eq!(news_of(&app.store), [(StockMessage::Low, 3)]);
    app.allocate("o3", "LAMP", 3).await;
    assert_eq!(
        news_of(&app.store),
        [(StockMessage::Low, 3), (StockMessage::Exhausted, 0)]
    );
    assert_eq!(app.allocate("o4", "LAMP", 1).await, None);
    assert_eq!(news_of(&app.store).len(), 2, "out of stock again: no news");

    let cancel = CancelOrder {
        orderid: orderid("o1"),
    };
    app.bus.handle(cancel).await.expect("cancelled");
    assert_eq!(
        news_of(&app.store)[2..],
        [(StockMessage::BackInStock, 5)],
        "back with 5: in stock, not low"
    );
}

#[tokio::test]
async fn a_crossing_undone_in_the_same_unit_of_work_is_no_news() {
    let app = app();
    app.add_batch("home", "LAMP", 2, None).await;
    app.allocate("o1", "LAMP", 2).await;
    assert_eq!(news_of(&app.store), [(StockMessage::Exhausted, 0)]);
    // One command frees the units and hands them to a waiting line: the
    // stock is never available in between, as far as anyone can see.
    let limit = ChangeSettings {
        sku: sku("LAMP"),
        backorder_limit: Some(10),
        low_stock_threshold: None,
    };
    app.bus.handle(limit).await.expect("changed");
    app.allocate("waiting", "LAMP", 2).await;
    let cancel = CancelOrder {
        orderid: orderid("o1"),
    };
    app.bus.handle(cancel).await.expect("cancelled");
    assert_eq!(news_of(&app.store), [(StockMessage::Exhausted, 0)]);
}

#[tokio::test]
async fn an_expired_hold_is_back_in_stock_at_the_next_command() {
    let app = app();
    app.add_batch("home", "LAMP", 3, None).await;
    let hold = PlaceHold {
        hold_id: HoldId::parse("h1").expect("hold id"),
        lines: OrderLines::new(vec![(sku("LAMP"), qty(3))]).expect("lines"),
        ttl: Duration::from_secs(60),
    };
    app.bus.handle(hold).await.expect("held");
    assert_eq!(news_of(&app.store), [(StockMessage::Exhausted, 0)]);
    app.clock.advance(Duration::from_secs(61));
    app.add_batch("chairs", "CHAIR", 1, None).await;
    assert_eq!(news_of(&app.store).len(), 1, "nothing touched the lamps");
    set_threshold(&app, 0).await; // touches them, changing nothing
    assert_eq!(
        news_of(&app.store),
        [(StockMessage::Exhausted, 0), (StockMessage::BackInStock, 3)]
    );
}
