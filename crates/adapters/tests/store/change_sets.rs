//! What one commit may hold: several products, and several kinds of change
//! of one product, in the order they happened. The SQL stores write each
//! kind of change in runs of many rows (`adapters::sql::write`); these check
//! that the runs keep every product's order and stay all or nothing.

use domain::{Allocation, BatchRef, OrderId, Product};
use service_layer::ports::StoreError;
use service_layer::ports::{ChangeSet, Lines, Outbox, ProductChanges, ReadModel, ViewChange};
use service_layer::{Store, UnitOfWork};
use test_support::per_backend;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_group_of_allocations_commits_as_one,
    a_conflict_on_any_product_of_a_group_writes_nothing,
    a_large_group_keeps_each_products_order,
    a_batch_created_and_allocated_in_one_commit,
    a_line_deallocated_then_allocated_again_in_one_commit,
    a_shrink_commits_with_other_products_allocations,
    a_stale_product_among_several_kinds_of_change_writes_nothing,
});

// Rows that are not as loaded (which the version check should make
// impossible) are refused by the SQL stores, whose writers count or
// constrain what they write; the memory store relies on the version check.
per_backend!(mod sql_backends on [sqlite, postgres] via one_store {
    removing_a_line_that_is_not_stored_writes_nothing,
    changing_a_batch_that_is_not_stored_writes_nothing,
});

/// A group commit's change set: several allocations of one product (each
/// bumping its version), one of another product, and an out-of-stock that
/// writes nothing, all in one commit. A product's lines and messages keep
/// the order its allocations happened in.
async fn a_group_of_allocations_commits_as_one<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    bus.add_batch(&lamp_batch, &lamp, 10, None).await;
    bus.add_batch(&table_batch, &table, 1, None).await;
    let orders: Vec<OrderId> = (0..5).map(|n| orderid(&format!("o{n}"))).collect();

    let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    uow.products()
        .get_for_orders(&lamp, &orders[..3])
        .await
        .expect("load")
        .expect("stored");
    uow.products()
        .get_for_orders(&table, &orders[3..])
        .await
        .expect("load")
        .expect("stored");
    let group = [
        (&orders[0], &lamp, 2),
        (&orders[3], &table, 1),
        (&orders[1], &lamp, 3),
        (&orders[4], &table, 1),
        (&orders[2], &lamp, 4),
    ];
    let mut answers = Vec::new();
    for (order, product, units) in group {
        answers.push(allocate_in(&mut uow, order, product, units).await);
    }
    assert_eq!(
        answers,
        [
            Some(lamp_batch.clone()),
            Some(table_batch.clone()),
            Some(lamp_batch.clone()),
            None,
            Some(lamp_batch.clone())
        ]
    );
    uow.commit().await.expect("commit");

    let lamp_loaded = load(&store, &lamp, Lines::None).await.expect("stored");
    let table_loaded = load(&store, &table, Lines::None).await.expect("stored");
    assert_eq!(
        (lamp_loaded.version, lamp_loaded.batches[0].allocated),
        (5, 9)
    );
    assert_eq!(
        (table_loaded.version, table_loaded.batches[0].allocated),
        (3, 1)
    );
    assert_eq!(
        lines_of_batch(&store, &lamp, &lamp_batch).await,
        vec![
            line(&orders[0], &lamp, 2),
            line(&orders[1], &lamp, 3),
            line(&orders[2], &lamp, 4)
        ],
        "oldest first"
    );
    assert_eq!(
        allocations(&store, &orders[3]).await,
        vec![view(&table, &table_batch)]
    );
    assert_eq!(allocations(&store, &orders[4]).await, vec![]);
    // Messages of one product keep their order; those of products committed
    // together may interleave either way.
    let outbox = outbox_of(&store).await;
    let messages_of = |batch: &BatchRef| -> Vec<OrderId> {
        outbox
            .iter()
            .filter(|(_, b)| b == batch)
            .map(|(o, _)| o.clone())
            .collect()
    };
    assert_eq!(messages_of(&lamp_batch), orders[..3].to_vec());
    assert_eq!(messages_of(&table_batch), vec![orders[3].clone()]);
    assert_eq!(outbox.len(), 4);
}

/// A group's commit is all or nothing across its products: when one of them
/// moved on since it was read, the others' allocations are not written
/// either. (Each load runs in a transaction of its own, so that this also
/// runs on SQLite, whose write transactions cannot overlap.)
async fn a_conflict_on_any_product_of_a_group_writes_nothing<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    bus.add_batch(&lamp_batch, &lamp, 10, None).await;
    bus.add_batch(&table_batch, &table, 10, None).await;
    let (first, second, meanwhile) = (orderid("first"), orderid("second"), orderid("meanwhile"));
    let mut lamp_product = load_product(&store, &lamp, Lines::OfOrder(&first)).await;
    let mut table_product = load_product(&store, &table, Lines::OfOrder(&second)).await;
    let (lamp_stored, table_stored) = (lamp_product.version(), table_product.version());
    // Another writer changes the table after the group read it.
    bus.allocate(&meanwhile, &table, 1).await;

    lamp_product
        .allocate(line(&first, &lamp, 2))
        .expect("allocates");
    // Two on the table, so that PostgreSQL writes them in one statement.
    let third = orderid("third");
    table_product
        .allocate(line(&second, &table, 2))
        .expect("allocates");
    table_product
        .allocate(line(&third, &table, 1))
        .expect("allocates");
    // One unit of work's change set for both products.
    let mut changes = changes_of(&mut lamp_product, Some(lamp_stored));
    let table_changes = changes_of(&mut table_product, Some(table_stored));
    changes.products.extend(table_changes.products);
    changes.views.extend(table_changes.views);
    changes.outbox.extend(table_changes.outbox);
    assert_conflict(&store, changes, &table).await;

    let lamp_loaded = load(&store, &lamp, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(
        (lamp_loaded.version, lamp_loaded.batches[0].allocated),
        (lamp_stored, 0),
        "the lamp's allocation went with the table's conflict"
    );
    assert_eq!(loaded_lines(&lamp_loaded), vec![]);
    assert_eq!(allocations(&store, &first).await, vec![]);
    assert_eq!(allocations(&store, &third).await, vec![]);
    assert_eq!(outbox_of(&store).await, vec![(meanwhile, table_batch)]);
}

/// A group of more allocations than the SQL stores bind one by one (they
/// then send the rows as one JSON array): every line written, in the
/// order the allocations were made.
async fn a_large_group_keeps_each_products_order<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    bus.add_batch(&lamp_batch, &lamp, 1000, None).await;
    bus.add_batch(&table_batch, &table, 1000, None).await;
    let orders: Vec<OrderId> = (0..50).map(|n| orderid(&format!("o{n}"))).collect();
    let (lamp_orders, table_orders) = orders.split_at(40);

    let mut lamp_product = load_product(&store, &lamp, Lines::OfOrders(lamp_orders)).await;
    let mut table_product = load_product(&store, &table, Lines::OfOrders(table_orders)).await;
    let (lamp_stored, table_stored) = (lamp_product.version(), table_product.version());
    for (n, order) in lamp_orders.iter().enumerate() {
        let units = u32::try_from(n % 3 + 1).expect("small");
        lamp_product
            .allocate(line(order, &lamp, units))
            .expect("allocates");
    }
    for order in table_orders {
        table_product
            .allocate(line(order, &table, 2))
            .expect("allocates");
    }
    commit(
        &store,
        together([
            changes_of(&mut lamp_product, Some(lamp_stored)),
            changes_of(&mut table_product, Some(table_stored)),
        ]),
    )
    .await
    .expect("commit");

    let expected_lines: Vec<_> = lamp_orders
        .iter()
        .enumerate()
        .map(|(n, order)| line(order, &lamp, u32::try_from(n % 3 + 1).expect("small")))
        .collect();
    assert_eq!(
        lines_of_batch(&store, &lamp, &lamp_batch).await,
        expected_lines,
        "oldest first"
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &lamp).await),
        vec![79]
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &table).await),
        vec![20]
    );
    let lamp_loaded = load(&store, &lamp, Lines::None).await.expect("stored");
    assert_eq!(lamp_loaded.version, lamp_stored + 40);
    assert_eq!(
        allocations(&store, &orders[39]).await,
        vec![view(&lamp, &lamp_batch)]
    );
    let outbox = outbox_of(&store).await;
    let lamp_messages: Vec<OrderId> = outbox
        .iter()
        .filter(|(_, batch)| *batch == lamp_batch)
        .map(|(order, _)| order.clone())
        .collect();
    assert_eq!(lamp_messages, lamp_orders.to_vec());
    assert_eq!(outbox.len(), 50);
}

/// A new product's batch, and an allocation to it, in one commit; then the
/// same for a second batch of the stored product. (PostgreSQL cannot update
/// a batch in the statement that inserts it: two statements.)
async fn a_batch_created_and_allocated_in_one_commit<S: Store + ReadModel + Outbox>(store: S) {
    let (sku, first, second) = (sku(), batchref("first"), batchref("second"));
    let (order, other_order) = (orderid("o"), orderid("other"));
    let mut product = Product::new(sku.clone());
    product
        .add_batch(first.clone(), qty(10), Some(date(2031, 1, 2)))
        .expect("add batch");
    assert_eq!(
        product.allocate(line(&order, &sku, 3)),
        Ok(Allocation::Batch(first.clone()))
    );
    commit(&store, changes_of(&mut product, None))
        .await
        .expect("commit");

    let mut product = load_product(&store, &sku, Lines::OfOrder(&other_order)).await;
    let stored = product.version();
    product
        .add_batch(second.clone(), qty(5), None)
        .expect("add batch");
    assert_eq!(
        product.allocate(line(&other_order, &sku, 4)),
        Ok(Allocation::Batch(second.clone())),
        "the warehouse batch comes first"
    );
    commit(&store, changes_of(&mut product, Some(stored)))
        .await
        .expect("commit");

    let loaded = load(
        &store,
        &sku,
        Lines::OfOrders(&[order.clone(), other_order.clone()]),
    )
    .await
    .expect("stored");
    assert_eq!(loaded.version, product.version());
    assert_eq!(
        loaded.batches,
        vec![
            LoadedBatch {
                reference: first.clone(),
                eta: Some(date(2031, 1, 2)),
                purchased: 10,
                allocated: 3,
                lines: vec![line(&order, &sku, 3)],
            },
            LoadedBatch {
                reference: second.clone(),
                eta: None,
                purchased: 5,
                allocated: 4,
                lines: vec![line(&other_order, &sku, 4)],
            },
        ]
    );
    assert_eq!(allocations(&store, &order).await, vec![view(&sku, &first)]);
    assert_eq!(
        allocations(&store, &other_order).await,
        vec![view(&sku, &second)]
    );
    assert_eq!(
        outbox_of(&store).await,
        vec![(order, first), (other_order, second)]
    );
}

/// A line leaves its batch and is allocated again, to another batch, in
/// one commit: the removal is written first, or the line would be stored
/// twice (or not at all), and the read model ends on the new batch.
async fn a_line_deallocated_then_allocated_again_in_one_commit<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, shipment, warehouse, order) = (
        sku(),
        batchref("shipment"),
        batchref("warehouse"),
        orderid("o"),
    );
    bus.add_batch(&shipment, &sku, 10, Some(date(2031, 5, 6)))
        .await;
    assert_eq!(bus.allocate(&order, &sku, 4).await, Some(shipment.clone()));
    bus.add_batch(&warehouse, &sku, 10, None).await;

    let mut product = load_product(&store, &sku, Lines::OfOrder(&order)).await;
    let stored = product.version();
    assert_eq!(
        product
            .deallocate(&order)
            .map(|parts| parts[0].batchref.clone()),
        Ok(shipment.clone())
    );
    assert_eq!(
        product.allocate(line(&order, &sku, 4)),
        Ok(Allocation::Batch(warehouse.clone()))
    );
    commit(&store, changes_of(&mut product, Some(stored)))
        .await
        .expect("commit");

    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    assert_eq!(loaded.version, stored + 2);
    let totals: Vec<(BatchRef, u64)> = loaded
        .batches
        .iter()
        .map(|b| (b.reference.clone(), b.allocated))
        .collect();
    assert_eq!(totals, vec![(shipment.clone(), 0), (warehouse.clone(), 4)]);
    assert_eq!(loaded_lines(&loaded), vec![line(&order, &sku, 4)]);
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&sku, &warehouse)]
    );
    assert_eq!(
        outbox_of(&store).await,
        vec![(order.clone(), shipment), (order, warehouse)]
    );
}

/// A batch that shrinks deallocates its latest line (which must leave the
/// batch before the new quantity is written), in the same commit as
/// allocations of another product.
async fn a_shrink_commits_with_other_products_allocations<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    let (kept, bumped, table_order) = (orderid("kept"), orderid("bumped"), orderid("table"));
    bus.add_batch(&lamp_batch, &lamp, 10, None).await;
    bus.add_batch(&table_batch, &table, 10, None).await;
    bus.allocate(&kept, &lamp, 4).await;
    bus.allocate(&bumped, &lamp, 4).await;

    let mut lamp_product = load_product(&store, &lamp, Lines::OfBatch(&lamp_batch)).await;
    let mut table_product = load_product(&store, &table, Lines::OfOrder(&table_order)).await;
    let (lamp_stored, table_stored) = (lamp_product.version(), table_product.version());
    lamp_product
        .change_batch_quantity(&lamp_batch, qty(5))
        .expect("shrinks");
    table_product
        .allocate(line(&table_order, &table, 2))
        .expect("allocates");
    commit(
        &store,
        together([
            changes_of(&mut lamp_product, Some(lamp_stored)),
            changes_of(&mut table_product, Some(table_stored)),
        ]),
    )
    .await
    .expect("commit");

    let lamp_views = batch_views(&store, &lamp).await;
    assert_eq!(
        (lamp_views[0].purchased, lamp_views[0].allocated),
        (5, 4),
        "the latest line left, then the batch shrank"
    );
    assert_eq!(
        lines_of_batch(&store, &lamp, &lamp_batch).await,
        vec![line(&kept, &lamp, 4)]
    );
    assert_eq!(allocations(&store, &bumped).await, vec![]);
    assert_eq!(
        allocations(&store, &kept).await,
        vec![view(&lamp, &lamp_batch)]
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &table).await),
        vec![2]
    );
    assert_eq!(
        allocations(&store, &table_order).await,
        vec![view(&table, &table_batch)]
    );
    let lamp_loaded = load(&store, &lamp, Lines::None).await.expect("stored");
    let table_loaded = load(&store, &table, Lines::None).await.expect("stored");
    assert_eq!(
        (lamp_loaded.version, table_loaded.version),
        (lamp_product.version(), table_product.version())
    );
}

/// As [`a_shrink_commits_with_other_products_allocations`], but the lamp
/// moved on after it was read: the commit is refused as a conflict on the
/// lamp, and the table's allocation is not written either.
async fn a_stale_product_among_several_kinds_of_change_writes_nothing<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (lamp, table) = (sku(), sku());
    let (lamp_batch, table_batch) = (batchref("lamp"), batchref("table"));
    let (kept, bumped, meanwhile, table_order) = (
        orderid("kept"),
        orderid("bumped"),
        orderid("meanwhile"),
        orderid("table"),
    );
    bus.add_batch(&lamp_batch, &lamp, 10, None).await;
    bus.add_batch(&table_batch, &table, 10, None).await;
    bus.allocate(&kept, &lamp, 4).await;
    bus.allocate(&bumped, &lamp, 4).await;
    let mut lamp_product = load_product(&store, &lamp, Lines::OfBatch(&lamp_batch)).await;
    let mut table_product = load_product(&store, &table, Lines::OfOrder(&table_order)).await;
    let (lamp_stored, table_stored) = (lamp_product.version(), table_product.version());
    // Another writer changes the lamp after this commit read it.
    bus.allocate(&meanwhile, &lamp, 1).await;

    lamp_product
        .change_batch_quantity(&lamp_batch, qty(5))
        .expect("shrinks");
    table_product
        .allocate(line(&table_order, &table, 2))
        .expect("allocates");
    let changes = together([
        changes_of(&mut lamp_product, Some(lamp_stored)),
        changes_of(&mut table_product, Some(table_stored)),
    ]);
    assert_conflict(&store, changes, &lamp).await;

    let lamp_views = batch_views(&store, &lamp).await;
    assert_eq!((lamp_views[0].purchased, lamp_views[0].allocated), (10, 9));
    assert_eq!(
        lines_of_batch(&store, &lamp, &lamp_batch).await.len(),
        3,
        "no line left the lamp's batch"
    );
    assert_eq!(
        allocations(&store, &bumped).await,
        vec![view(&lamp, &lamp_batch)]
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &table).await),
        vec![0]
    );
    assert_eq!(allocations(&store, &table_order).await, vec![]);
    let table_loaded = load(&store, &table, Lines::None).await.expect("stored");
    assert_eq!(table_loaded.version, table_stored);
}

/// A stored product whose change set says a line left its batch when no
/// such line is stored: refused, and the version bump and the read-model
/// change go with it.
async fn removing_a_line_that_is_not_stored_writes_nothing<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch, order, ghost) = (sku(), batchref("b"), orderid("o"), orderid("ghost"));
    bus.add_batch(&batch, &sku, 10, None).await;
    bus.allocate(&order, &sku, 3).await;
    let mut product = load_product(&store, &sku, Lines::OfOrder(&order)).await;
    let stored = product.version();
    // A real deallocation, then one of a line the store never had.
    product.deallocate(&order).expect("deallocates");
    let mut changes = changes_of(&mut product, Some(stored));
    changes.products[0]
        .events
        .push(domain::Event::Deallocated(domain::events::Deallocated {
            orderid: ghost.clone(),
            sku: sku.clone(),
            qty: qty(1),
            batchref: batch.clone(),
        }));
    changes.products[0].new_version += 1;
    changes.views.push(ViewChange::Deallocated {
        orderid: ghost.clone(),
        sku: sku.clone(),
        batchref: batch.clone(),
    });

    let refused = commit(&store, changes).await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_unchanged(&store, &sku, &batch, &order, stored, 3).await;
}

/// A change set that sets the quantity of a batch that is not stored:
/// refused, and nothing else of the commit is written.
async fn changing_a_batch_that_is_not_stored_writes_nothing<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch, order, ghost) = (sku(), batchref("b"), orderid("o"), batchref("ghost"));
    bus.add_batch(&batch, &sku, 10, None).await;
    bus.allocate(&order, &sku, 3).await;
    let stored = load(&store, &sku, Lines::None)
        .await
        .expect("stored")
        .version;
    let changes = ChangeSet {
        at: chrono::Utc::now(),
        products: vec![ProductChanges {
            sku: sku.clone(),
            stored_version: Some(stored),
            new_version: stored + 2,
            events: vec![
                domain::Event::BatchQuantityChanged(domain::events::BatchQuantityChanged {
                    sku: sku.clone(),
                    reference: batch.clone(),
                    qty: 20,
                }),
                domain::Event::BatchQuantityChanged(domain::events::BatchQuantityChanged {
                    sku: sku.clone(),
                    reference: ghost,
                    qty: 20,
                }),
            ],
        }],
        views: Vec::new(),
        outbox: Vec::new(),
        deliveries: Vec::new(),
    };

    let refused = commit(&store, changes).await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert_unchanged(&store, &sku, &batch, &order, stored, 3).await;
}

/// `sku` is still at `version`, with `order`'s line of `units` on `batch`
/// (of 10), in the write tables and in the read model.
async fn assert_unchanged<S: Store + ReadModel>(
    store: &S,
    sku: &domain::Sku,
    batch: &BatchRef,
    order: &OrderId,
    version: u64,
    units: u32,
) {
    let loaded = load(store, sku, Lines::OfOrder(order))
        .await
        .expect("stored");
    assert_eq!(loaded.version, version);
    assert_eq!(loaded_lines(&loaded), vec![line(order, sku, units)]);
    let views = batch_views(store, sku).await;
    assert_eq!(
        (views[0].purchased, views[0].allocated),
        (10, u64::from(units))
    );
    assert_eq!(allocations(store, order).await, vec![view(sku, batch)]);
}
