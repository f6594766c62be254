//! What a stored product loads as: its batches in creation order, and the
//! lines a command asks for (of one order, of several, of one batch), after
//! the commands that change them.

use domain::commands::ChangeBatchQuantity;
use domain::{BatchRef, DomainError, OrderId, OrderLine, Product};
use service_layer::ports::{Lines, Outbox, ReadModel};
use service_layer::{Error, Store, StoreTransaction, UnitOfWork};
use test_support::per_backend;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_created_product_reloads_with_its_batches_in_creation_order,
    ties_between_batches_go_to_the_oldest,
    allocations_persist_and_one_order_loads_only_its_line,
    a_batch_loads_its_lines_oldest_first,
    several_orders_load_with_their_lines_in_one_go,
    deallocation_removes_the_line_and_frees_stock,
    a_change_of_quantity_persists_and_bumped_lines_are_reallocated,
});

async fn a_created_product_reloads_with_its_batches_in_creation_order<S: Store + ReadModel>(
    store: S,
) {
    let sku = sku();
    let (later, warehouse, sooner) = (batchref("later"), batchref("warehouse"), batchref("sooner"));

    let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    let mut product = Product::new(sku.clone());
    product
        .add_batch(later.clone(), qty(10), Some(date(2030, 1, 2)))
        .expect("add batch");
    product
        .add_batch(warehouse.clone(), qty(20), None)
        .expect("add batch");
    product
        .add_batch(sooner.clone(), qty(30), Some(date(2030, 1, 1)))
        .expect("add batch");
    uow.products().add(product);
    uow.commit().await.expect("commit");

    let batch = |reference: &BatchRef, eta, units: u32| LoadedBatch {
        reference: reference.clone(),
        eta,
        purchased: units.into(),
        allocated: 0,
        lines: Vec::new(),
    };
    assert_eq!(
        load(&store, &sku, Lines::None).await,
        Some(Loaded {
            // Each batch's creation and first movement.
            version: 6,
            batches: vec![
                batch(&later, Some(date(2030, 1, 2)), 10),
                batch(&warehouse, None, 20),
                batch(&sooner, Some(date(2030, 1, 1)), 30),
            ],
        })
    );
    assert_eq!(
        load(&store, &self::sku(), Lines::None).await,
        None,
        "an unknown SKU loads nothing"
    );

    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(
        transaction.sku_of_batch(&sooner).await.expect("read"),
        Some(sku.clone())
    );
    assert_eq!(
        transaction
            .sku_of_batch(&batchref("unknown"))
            .await
            .expect("read"),
        None
    );
}

async fn ties_between_batches_go_to_the_oldest<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let sku = sku();
    // Named so that alphabetical order is the opposite of creation order.
    let (first, second) = (batchref("z-first"), batchref("a-second"));
    bus.add_batch(&first, &sku, 10, Some(date(2031, 3, 3)))
        .await;
    bus.add_batch(&second, &sku, 10, Some(date(2031, 3, 3)))
        .await;

    assert_eq!(bus.allocate(&orderid("o"), &sku, 1).await, Some(first));
}

async fn allocations_persist_and_one_order_loads_only_its_line<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 100, None).await;
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch.clone()));
    assert_eq!(bus.allocate(&second, &sku, 20).await, Some(batch.clone()));

    let loaded = load(&store, &sku, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(
        loaded.version, 4,
        "the batch's two changes, then a line's each"
    );
    assert_eq!(
        loaded.batches[0].allocated, 30,
        "the total covers every line"
    );
    assert_eq!(loaded_lines(&loaded), vec![line(&first, &sku, 10)]);

    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![], "no lines unless asked for");
    let loaded = load(&store, &sku, Lines::OfOrder(&orderid("none")))
        .await
        .expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![]);

    // Sending the same allocation again answers with its batch and writes nothing.
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch));
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (4, 30));
}

async fn a_batch_loads_its_lines_oldest_first<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    bus.add_batch(&warehouse, &sku, 15, None).await;
    bus.add_batch(&shipment, &sku, 100, Some(date(2030, 6, 1)))
        .await;
    // Named so that alphabetical order differs from allocation order.
    let orders = [orderid("c"), orderid("a"), orderid("b")];
    for order in &orders {
        assert_eq!(bus.allocate(order, &sku, 5).await, Some(warehouse.clone()));
    }
    let overflow = orderid("d");
    assert_eq!(
        bus.allocate(&overflow, &sku, 5).await,
        Some(shipment.clone())
    );

    let expected: Vec<_> = orders.iter().map(|o| line(o, &sku, 5)).collect();
    assert_eq!(lines_of_batch(&store, &sku, &warehouse).await, expected);
    let loaded = load(&store, &sku, Lines::OfBatch(&warehouse))
        .await
        .expect("stored");
    assert_eq!(loaded.batches[1].lines, vec![], "only the batch asked for");
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&overflow, &sku, 5)]
    );
}

/// What a group of allocations loads: one product with the lines of several
/// orders, whichever batches hold them (several in one batch included), and
/// nothing for an order without a line.
async fn several_orders_load_with_their_lines_in_one_go<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, warehouse, ship) = (sku(), batchref("warehouse"), batchref("ship"));
    let orders: Vec<OrderId> = (0..4).map(|n| orderid(&format!("o{n}"))).collect();
    bus.add_batch(&warehouse, &sku, 5, None).await;
    bus.add_batch(&ship, &sku, 10, Some(date(2031, 1, 1))).await;
    // o0 and o1 fill the warehouse batch; o2 goes to the ship; o3 is not allocated.
    for (order, units) in orders.iter().zip([2, 3, 4]) {
        bus.allocate(order, &sku, units).await;
    }

    let loaded = load(&store, &sku, Lines::OfOrders(&orders))
        .await
        .expect("stored");
    let lines_by_batch: Vec<Vec<OrderLine>> =
        loaded.batches.iter().map(|b| b.lines.clone()).collect();
    assert_eq!(
        lines_by_batch,
        vec![
            vec![line(&orders[0], &sku, 2), line(&orders[1], &sku, 3)],
            vec![line(&orders[2], &sku, 4)],
        ]
    );
    assert_eq!(
        (loaded.batches.len(), loaded.batches[0].allocated),
        (2, 5),
        "each batch once, with its total"
    );
}

async fn deallocation_removes_the_line_and_frees_stock<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;
    assert_eq!(bus.allocate(&first, &sku, 10).await, Some(batch.clone()));
    assert_eq!(bus.allocate(&second, &sku, 1).await, None, "out of stock");

    assert_eq!(
        bus.deallocate(&first, &sku).await.expect("deallocate"),
        batch
    );

    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), vec![0]);
    let loaded = load(&store, &sku, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(lines_of_batch(&store, &sku, &batch).await, vec![]);
    assert_eq!(allocations(&store, &first).await, vec![]);
    assert!(
        matches!(
            bus.deallocate(&first, &sku).await,
            Err(Error::Rejected(DomainError::NotAllocated { .. }))
        ),
        "deallocating twice is refused"
    );
    assert_eq!(
        bus.allocate(&second, &sku, 1).await,
        Some(batch),
        "the stock is free again"
    );
    assert_eq!(emails_of(&store).await.len(), 1);
}

async fn a_change_of_quantity_persists_and_bumped_lines_are_reallocated<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    bus.add_batch(&warehouse, &sku, 30, None).await;
    bus.add_batch(&shipment, &sku, 30, Some(date(2030, 2, 1)))
        .await;
    let orders = [orderid("o1"), orderid("o2"), orderid("o3")];
    for order in &orders {
        assert_eq!(bus.allocate(order, &sku, 10).await, Some(warehouse.clone()));
    }

    bus.bus
        .handle(ChangeBatchQuantity {
            reference: warehouse.clone(),
            qty: qty(25),
        })
        .await
        .expect("change quantity");

    let views = batch_views(&store, &sku).await;
    let quantities: Vec<_> = views.iter().map(|b| (b.purchased, b.allocated)).collect();
    assert_eq!(quantities, vec![(25, 20), (30, 10)]);
    assert_eq!(
        lines_of_batch(&store, &sku, &warehouse).await,
        vec![line(&orders[0], &sku, 10), line(&orders[1], &sku, 10)],
        "the latest line gave way"
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&orders[2], &sku, 10)]
    );
    assert_eq!(
        allocations(&store, &orders[2]).await,
        vec![view(&sku, &shipment)]
    );
    let announced = outbox_of(&store).await;
    assert_eq!(announced.len(), 4, "three allocations and one reallocation");
    assert_eq!(announced[3], (orders[2].clone(), shipment.clone()));
}
