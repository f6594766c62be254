//! The read model (book chapter 12): written in the same commit as the
//! allocations, and read without loading a product.

use domain::Sku;
use service_layer::ports::{BatchView, ReadModel};
use service_layer::{Store, UnitOfWork};
use test_support::per_backend;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    the_read_model_is_written_with_the_commit_and_removed_on_deallocation,
    batches_report_purchased_and_allocated_quantities,
});

// The memory store returns an order's allocations in the order they were
// made; the SQL stores sort them by SKU as `ReadModel::allocations` says.
per_backend!(mod sql_backends on [sqlite, postgres] via one_store {
    an_orders_allocations_come_back_by_sku,
});

async fn the_read_model_is_written_with_the_commit_and_removed_on_deallocation<
    S: Store + ReadModel,
>(
    store: S,
) {
    let bus = bus(&store);
    // Named so that SKU order is known: allocations come back by SKU.
    let (sku_a, sku_b) = (
        Sku::parse(&unique("a-sku")).expect("sku"),
        Sku::parse(&unique("b-sku")).expect("sku"),
    );
    let (batch_a, batch_b, order) = (batchref("a"), batchref("b"), orderid("o"));
    bus.add_batch(&batch_a, &sku_a, 10, None).await;
    bus.add_batch(&batch_b, &sku_b, 10, None).await;

    // The view changes only when the unit of work commits.
    let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    allocate_in(&mut uow, &order, &sku_b, 2).await;
    assert_eq!(
        allocations(&store, &order).await,
        vec![],
        "not before the commit"
    );
    uow.commit().await.expect("commit");
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&sku_b, &batch_b)]
    );

    assert_eq!(bus.allocate(&order, &sku_a, 1).await, Some(batch_a.clone()));
    let mut both = allocations(&store, &order).await;
    both.sort_by(|x, y| x.sku.cmp(&y.sku));
    assert_eq!(both, vec![view(&sku_a, &batch_a), view(&sku_b, &batch_b)]);
    assert_eq!(allocations(&store, &orderid("other")).await, vec![]);

    bus.deallocate(&order, &sku_b).await.expect("deallocate");
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&sku_a, &batch_a)]
    );
    bus.deallocate(&order, &sku_a).await.expect("deallocate");
    assert_eq!(allocations(&store, &order).await, vec![]);
    store.ping().await.expect("ping");
}

async fn batches_report_purchased_and_allocated_quantities<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    assert_eq!(batch_views(&store, &sku).await, vec![], "unknown SKU");
    bus.add_batch(&shipment, &sku, 20, Some(date(2030, 5, 1)))
        .await;
    bus.add_batch(&warehouse, &sku, 10, None).await;
    assert_eq!(
        bus.allocate(&orderid("o"), &sku, 4).await,
        Some(warehouse.clone())
    );

    let views = batch_views(&store, &sku).await;
    assert_eq!(
        views,
        vec![
            BatchView {
                reference: shipment,
                eta: Some(date(2030, 5, 1)),
                purchased: 20,
                allocated: 0,
                held: 0,
            },
            BatchView {
                reference: warehouse,
                eta: None,
                purchased: 10,
                allocated: 4,
                held: 0,
            },
        ]
    );
    assert_eq!(views[1].available(), 6);
}

async fn an_orders_allocations_come_back_by_sku<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let order = orderid("o");
    // Allocated in an order that is neither SKU order nor its reverse.
    let skus: Vec<Sku> = ["m", "z", "a", "q"]
        .iter()
        .map(|prefix| Sku::parse(&unique(prefix)).expect("sku"))
        .collect();
    let mut expected = Vec::new();
    for sku in &skus {
        let batch = batchref("b");
        bus.add_batch(&batch, sku, 5, None).await;
        assert_eq!(bus.allocate(&order, sku, 1).await, Some(batch.clone()));
        expected.push(view(sku, &batch));
    }
    expected.sort_by(|x, y| x.sku.cmp(&y.sku));
    assert_eq!(allocations(&store, &order).await, expected);
}
