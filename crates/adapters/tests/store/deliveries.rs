//! Incoming messages' keys on every backend: recorded with the commit of
//! the command they carried, read back by a later unit of work, and a
//! second commit of one key refused as a conflict (another instance ran
//! the same message) with nothing of it written.

use domain::Sku;
use service_layer::Store;
use service_layer::ports::{Lines, ReadModel, StoreError, StoreTransaction};
use test_support::per_backend;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_delivery_is_recorded_with_its_commit_and_only_once,
});

async fn was_delivered<S: Store>(store: &S, delivery: &str) -> bool {
    let mut transaction = store.begin().await.expect("begin");
    transaction.was_delivered(delivery).await.expect("a query")
}

async fn a_delivery_is_recorded_with_its_commit_and_only_once<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10, None).await;
    let delivery = format!("allocate/{}", test_support::unique("1"));
    assert!(!was_delivered(&store, &delivery).await);

    let mut changes = allocation_changes(&store, &sku, "first").await;
    changes.deliveries.push(delivery.clone());
    commit(&store, changes).await.expect("committed");
    assert!(was_delivered(&store, &delivery).await);

    // The same message run again elsewhere: its commit is refused whole.
    let mut again = allocation_changes(&store, &sku, "second").await;
    again.deliveries.push(delivery.clone());
    let refused = commit(&store, again).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &sku).await),
        [1],
        "the second allocation was not written"
    );
}

/// The changes of allocating one unit to a new order, as a unit of work
/// would commit them.
async fn allocation_changes<S: Store>(
    store: &S,
    sku: &Sku,
    order: &str,
) -> service_layer::ports::ChangeSet {
    let o = orderid(order);
    let mut product = load_product(store, sku, Lines::OfOrder(&o)).await;
    let stored = product.version();
    product.allocate(line(&o, sku, 1)).expect("allocated");
    changes_of(&mut product, Some(stored))
}
