//! A commit is all or nothing (book chapter 6), and refused when what it
//! read has changed since (chapter 7): rollbacks, version conflicts,
//! duplicate keys, rows not as loaded, and many commands at once.

use std::sync::Arc;

use domain::commands::CreateBatch;
use domain::events::Allocated;
use domain::{Allocation, DomainError, Event, OrderId, Product, Sku};
use service_layer::ports::{
    ChangeSet, Lines, Outbox, OutboxMessage, ProductChanges, ReadModel, ViewChange,
};
use service_layer::{Error, RetryPolicy, Store, StoreError, StoreTransaction, UnitOfWork};
use test_support::per_backend;
use uuid::Uuid;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    uncommitted_work_is_rolled_back_on_drop,
    a_failing_handler_writes_nothing,
    a_commit_from_a_stale_version_conflicts_and_writes_nothing,
    a_new_product_whose_sku_was_taken_meanwhile_conflicts,
    a_batch_reference_taken_by_another_product_conflicts,
    concurrent_allocations_never_over_allocate,
});

// SQLite serialises writers at BEGIN IMMEDIATE, so two units of work cannot
// be open at once there: see `specific::sqlite_write_transactions_queue_instead_of_conflicting`.
per_backend!(mod interleaving_backends on [memory, postgres] via one_store {
    interleaved_units_of_work_conflict_and_the_loser_writes_nothing,
});

// The SQL stores also guard against change sets that contradict the stored
// rows (with constraints and row counts, as a second line behind the
// version check); the memory store relies on the version check alone.
per_backend!(mod sql_backends on [sqlite, postgres] via one_store {
    a_commit_naming_a_batch_that_is_not_stored_writes_nothing,
});

async fn uncommitted_work_is_rolled_back_on_drop<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));

    // A new product, never committed.
    {
        let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
            .await
            .expect("start");
        let mut product = Product::new(sku.clone());
        product
            .add_batch(batch.clone(), qty(10), None)
            .expect("add batch");
        uow.products().add(product);
    }
    assert_eq!(load(&store, &sku, Lines::None).await, None);
    assert_eq!(batch_views(&store, &sku).await, vec![]);

    // A change to a stored product, never committed.
    bus.add_batch(&batch, &sku, 10, None).await;
    {
        let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
            .await
            .expect("start");
        allocate_in(&mut uow, &order, &sku, 4).await;
    }
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    // Version 2: the batch's creation and its first movement.
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 0));
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &order).await, vec![]);
}

/// A handler that changes a product and then fails: `?` returns before the
/// commit, and the unit of work is dropped.
async fn allocate_then_fail<T: StoreTransaction>(
    mut uow: UnitOfWork<T>,
    sku: &Sku,
    order: &OrderId,
) -> Result<(), &'static str> {
    let product = uow
        .products()
        .get_for_order(sku, order)
        .await
        .map_err(|_| "load failed")?
        .ok_or("no such product")?;
    product
        .allocate(line(order, sku, 3))
        .map_err(|_| "refused")?;
    a_later_step_that_fails()?;
    uow.commit().await.map_err(|_| "commit failed")
}

fn a_later_step_that_fails() -> Result<(), &'static str> {
    Err("something went wrong after the change")
}

async fn a_failing_handler_writes_nothing<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    assert!(allocate_then_fail(uow, &sku, &order).await.is_err());
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    // Version 2: the batch's creation and its first movement.
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 0));
    assert_eq!(loaded_lines(&loaded), vec![]);

    // Through the bus: a rejected command writes nothing either.
    let unknown = self::sku();
    assert!(matches!(
        bus.try_allocate(&order, &unknown, 1).await,
        Err(Error::InvalidSku(s)) if s == unknown
    ));
    assert_eq!(load(&store, &unknown, Lines::None).await, None);
    let refused = bus
        .bus
        .handle(CreateBatch {
            reference: batch.clone(),
            sku: sku.clone(),
            qty: qty(99),
            eta: None,
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(DomainError::BatchExists { .. }))
    ));
    let views = batch_views(&store, &sku).await;
    assert_eq!(
        views.iter().map(|b| b.purchased).collect::<Vec<_>>(),
        vec![10]
    );
}

/// Two units of work load the product at the same version; the first to
/// commit wins, the other is refused and writes nothing. (Each load runs in
/// its own transaction so that this also runs on SQLite, whose write
/// transactions cannot overlap.)
async fn a_commit_from_a_stale_version_conflicts_and_writes_nothing<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut product_1 = load_product(&store, &sku, Lines::OfOrder(&first)).await;
    let mut product_2 = load_product(&store, &sku, Lines::OfOrder(&second)).await;
    assert_eq!(product_1.version(), product_2.version());
    let stored_version = Some(product_1.version());

    assert_eq!(
        product_1.allocate(line(&first, &sku, 6)),
        Ok(Allocation::Batch(batch.clone()))
    );
    let changes = changes_of(&mut product_1, stored_version);
    let transaction = store.begin().await.expect("begin");
    transaction
        .commit(changes)
        .await
        .expect("the first commit wins");

    assert_eq!(
        product_2.allocate(line(&second, &sku, 6)),
        Ok(Allocation::Batch(batch.clone()))
    );
    assert_conflict(&store, changes_of(&mut product_2, stored_version), &sku).await;

    let loaded = load(&store, &sku, Lines::OfOrder(&second))
        .await
        .expect("stored");
    assert_eq!(
        (loaded.version, loaded.batches[0].allocated),
        (3, 6),
        "over-allocation refused"
    );
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
    assert_eq!(allocations(&store, &first).await, vec![view(&sku, &batch)]);
    assert_eq!(outbox_of(&store).await, vec![(first, batch)]);
}

async fn interleaved_units_of_work_conflict_and_the_loser_writes_nothing<S: Store + ReadModel>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut uow_1 = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    let mut uow_2 = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    for (uow, order) in [(&mut uow_1, &first), (&mut uow_2, &second)] {
        allocate_in(uow, order, &sku, 6).await;
    }
    uow_1.commit().await.expect("the first commit wins");
    let result = uow_2.commit().await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == sku),
        "{result:?}"
    );

    let loaded = load(&store, &sku, Lines::OfOrder(&second))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (3, 6));
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
}

async fn a_new_product_whose_sku_was_taken_meanwhile_conflicts<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, stored, late) = (sku(), batchref("stored"), batchref("late"));
    bus.add_batch(&stored, &sku, 10, None).await;

    // Built as if the product did not exist yet when it was read.
    let mut product = Product::new(sku.clone());
    product
        .add_batch(late.clone(), qty(5), None)
        .expect("add batch");
    let transaction = store.begin().await.expect("begin");
    let result = transaction.commit(changes_of(&mut product, None)).await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == sku),
        "{result:?}"
    );

    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(transaction.sku_of_batch(&late).await.expect("read"), None);
    // On SQLite an open transaction holds the write lock: end it first.
    drop(transaction);
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!((loaded.version, loaded.batches.len()), (2, 1));
}

async fn a_batch_reference_taken_by_another_product_conflicts<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (owner, other, reference) = (sku(), sku(), batchref("shared"));
    bus.add_batch(&reference, &owner, 10, None).await;

    // Past the handler's own check, as a concurrent command would be.
    let mut uow = UnitOfWork::begin(&store, chrono::Utc::now())
        .await
        .expect("start");
    let mut product = Product::new(other.clone());
    product
        .add_batch(reference.clone(), qty(5), None)
        .expect("add batch");
    uow.products().add(product);
    let result = uow.commit().await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { sku: s }) if *s == other),
        "{result:?}"
    );

    assert_eq!(
        load(&store, &other, Lines::None).await,
        None,
        "nothing written"
    );
    assert_eq!(batch_views(&store, &other).await, vec![]);
    let mut transaction = store.begin().await.expect("begin");
    assert_eq!(
        transaction.sku_of_batch(&reference).await.expect("read"),
        Some(owner.clone())
    );
    drop(transaction);

    // Through the bus, the handler refuses it outright.
    let refused = bus
        .bus
        .handle(CreateBatch {
            reference: reference.clone(),
            sku: other.clone(),
            qty: qty(5),
            eta: None,
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(DomainError::BatchExists { .. }))
    ));
}

/// A commit whose events name a batch that is not stored (which the version
/// check should make impossible) fails as a whole: the version bump, the
/// read-model rows and the messages are not written either. Alone, and after
/// an allocation to a real batch (which PostgreSQL writes in one statement
/// with it).
async fn a_commit_naming_a_batch_that_is_not_stored_writes_nothing<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch, ghost) = (sku(), batchref("b"), batchref("ghost"));
    bus.add_batch(&batch, &sku, 10, None).await;
    let stored = load(&store, &sku, Lines::None).await.expect("stored");

    for batches in [vec![&ghost], vec![&batch, &ghost]] {
        let allocations_made: Vec<Allocated> = batches
            .iter()
            .map(|&reference| Allocated {
                orderid: orderid("o"),
                sku: sku.clone(),
                qty: qty(2),
                batchref: reference.clone(),
            })
            .collect();
        let changes = ChangeSet {
            at: chrono::Utc::now(),
            products: vec![ProductChanges {
                sku: sku.clone(),
                stored_version: Some(stored.version),
                new_version: stored.version + allocations_made.len() as u64,
                events: allocations_made
                    .iter()
                    .cloned()
                    .map(Event::Allocated)
                    .collect(),
            }],
            views: allocations_made
                .iter()
                .map(|a| ViewChange::Allocated {
                    orderid: a.orderid.clone(),
                    sku: sku.clone(),
                    batchref: a.batchref.clone(),
                })
                .collect(),
            outbox: allocations_made
                .iter()
                .map(|a| OutboxMessage {
                    message_id: Uuid::new_v4(),
                    message: service_layer::ports::Outgoing::LineAllocated(a.clone()),
                })
                .collect(),
            deliveries: Vec::new(),
        };
        let transaction = store.begin().await.expect("begin");
        assert!(
            transaction.commit(changes).await.is_err(),
            "a commit naming a missing batch must fail"
        );

        let orders: Vec<OrderId> = allocations_made.iter().map(|a| a.orderid.clone()).collect();
        let loaded = load(&store, &sku, Lines::OfOrders(&orders))
            .await
            .expect("stored");
        assert_eq!(
            (loaded.version, loaded.batches[0].allocated),
            (stored.version, 0)
        );
        assert_eq!(loaded_lines(&loaded), vec![]);
        for order in &orders {
            assert_eq!(allocations(&store, order).await, vec![]);
        }
        assert_eq!(outbox_of(&store).await, vec![]);
    }
}

/// Many requests for one SKU at once: none fails (on SQLite: no
/// SQLITE_BUSY), and the batch is never over-allocated.
async fn concurrent_allocations_never_over_allocate<S: Store + ReadModel + Outbox>(store: S) {
    let retry = RetryPolicy {
        command_attempts: 200,
        ..RetryPolicy::default()
    };
    let bus = Arc::new(bus_with(&store, retry));
    let (sku, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (bus, sku) = (bus.clone(), sku.clone());
            tokio::spawn(async move { bus.try_allocate(&orderid(&format!("o{i}")), &sku, 1).await })
        })
        .collect();
    let mut allocated = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(Some(reference)) => {
                assert_eq!(reference, batch);
                allocated += 1;
            }
            Ok(None) => {}
            Err(error) => panic!("a concurrent allocation failed: {error}"),
        }
    }

    assert_eq!(allocated, 10, "exactly the stock there was");
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), vec![10]);
    assert_eq!(lines_of_batch(&store, &sku, &batch).await.len(), 10);
    assert_eq!(
        emails_of(&store).await.len(),
        10,
        "one out-of-stock notice per refusal"
    );
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    // The batch's creation and first movement, one per allocation, and
    // the stock running out (its level announced once).
    assert_eq!(loaded.version, 13, "one version per allocation, none lost");
}
