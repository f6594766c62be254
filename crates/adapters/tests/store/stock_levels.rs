//! Stock levels on every backend: a crossing is stored with the product
//! and its message goes through the outbox like `line_allocated`, each
//! kind decoded back as it was written; and an outbox from before the
//! stock messages keeps its rows.

use domain::commands::{CancelOrder, ChangeSettings};
use domain::events::StockMessage;
use domain::{Sku, StockLevel};
use service_layer::Store;
use service_layer::ports::{Destination, Lines, Outbox, Outgoing, ReadModel, StockNews};
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{connect_before_migration, one_store, open};
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    each_crossing_is_stored_and_its_message_goes_through_the_outbox,
});

per_backend!(mod migrated on [sqlite, postgres] via on_database {
    messages_waiting_in_an_outbox_from_before_the_stock_messages_still_go_out,
});

/// The stock messages in the outbox about `sku`, oldest first.
async fn news<O: Outbox>(outbox: &O, sku: &Sku) -> Vec<StockNews> {
    let claimed = outbox
        .claim(10_000, std::time::Duration::ZERO, Destination::Messages)
        .await
        .expect("outbox readable");
    claimed
        .into_iter()
        .filter_map(|claimed| match claimed.message.message {
            Outgoing::Stock(news) if &news.sku == sku => Some(news),
            _ => None,
        })
        .collect()
}

async fn each_crossing_is_stored_and_its_message_goes_through_the_outbox<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let lamp = sku();
    bus.add_batch(&batchref("home"), &lamp, 6, None).await;
    let threshold = ChangeSettings {
        sku: lamp.clone(),
        backorder_limit: None,
        low_stock_threshold: Some(4),
    };
    bus.bus.handle(threshold).await.expect("changed");
    let (first, second) = (orderid("first"), orderid("second"));
    bus.allocate(&first, &lamp, 3).await;
    bus.allocate(&second, &lamp, 3).await;
    let level = load_product(&store, &lamp, Lines::None)
        .await
        .announced_level();
    assert_eq!(level, StockLevel::Out);

    let cancel = CancelOrder {
        orderid: second.clone(),
    };
    bus.bus.handle(cancel).await.expect("cancelled");
    let told: Vec<(StockMessage, u64, u64)> = news(&store, &lamp)
        .await
        .into_iter()
        .map(|n| (n.message, n.available, n.threshold))
        .collect();
    assert_eq!(
        told,
        [
            (StockMessage::Low, 3, 4),
            (StockMessage::Exhausted, 0, 4),
            (StockMessage::BackInStock, 3, 4)
        ]
    );
    let level = load_product(&store, &lamp, Lines::None)
        .await
        .announced_level();
    assert_eq!(level, StockLevel::Low);
}

async fn messages_waiting_in_an_outbox_from_before_the_stock_messages_still_go_out(
    db: TestDatabase,
) {
    let mut conn = connect_before_migration(&db, "stock levels").await;
    sqlx::raw_sql(
        "INSERT INTO outbox (message_id, orderid, sku, qty, batchref, created_at)
         VALUES ('0b5c1d00-0000-4000-8000-000000000001', 'old-order', 'OLD-LAMP', 3,
                 'old-batch', 1000)",
    )
    .execute(&mut conn)
    .await
    .expect("an unsent message");

    let store = open(db.url()).await;
    let claimed = store
        .claim(
            10,
            std::time::Duration::from_secs(60),
            Destination::Messages,
        )
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let event = claimed[0]
        .message
        .line_allocated()
        .expect("a line_allocated");
    assert_eq!(
        (
            event.orderid.as_str(),
            event.qty.get(),
            event.batchref.as_str()
        ),
        ("old-order", 3, "old-batch")
    );
    store
        .mark_sent(&[claimed[0].position])
        .await
        .expect("marked sent");
}
