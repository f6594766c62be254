//! What every backend must do, each scenario a generic `async fn` over
//! `S: Store + ReadModel`, turned into one test per backend by
//! `per_backend!`. The memory store is the reference the SQL ones must match.

use std::sync::Arc;

use domain::commands::{ChangeBatchQuantity, CreateBatch};
use domain::events::Allocated;
use domain::{BatchRef, DomainError, Event, OrderId, OrderLine, Product, Sku};
use service_layer::ports::{BatchView, Outbox, OutboxMessage, ReadModel};
use service_layer::ports::{ChangeSet, Lines, ProductChanges, ViewChange};
use service_layer::{Error, RetryPolicy, Store, StoreError, StoreTransaction, UnitOfWork};
use test_support::per_backend;
use uuid::Uuid;

use crate::backends::one_store;
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    a_created_product_reloads_with_its_batches_in_creation_order,
    ties_between_batches_go_to_the_oldest,
    allocations_persist_and_one_order_loads_only_its_line,
    a_batch_loads_its_lines_oldest_first,
    deallocation_removes_the_line_and_frees_stock,
    a_change_of_quantity_persists_and_bumped_lines_are_reallocated,
    uncommitted_work_is_rolled_back_on_drop,
    a_failing_handler_writes_nothing,
    a_commit_from_a_stale_version_conflicts_and_writes_nothing,
    a_new_product_whose_sku_was_taken_meanwhile_conflicts,
    a_batch_reference_taken_by_another_product_conflicts,
    the_read_model_is_written_with_the_commit_and_removed_on_deallocation,
    batches_report_purchased_and_allocated_quantities,
    concurrent_allocations_never_over_allocate,
    several_orders_load_with_their_lines_in_one_go,
    a_group_of_allocations_commits_as_one,
    a_conflict_on_any_product_of_a_group_writes_nothing,
});

// SQLite serialises writers at BEGIN IMMEDIATE, so two units of work cannot
// be open at once there: see `specific::sqlite_write_transactions_queue_instead_of_conflicting`.
per_backend!(mod interleaving_backends on [memory, postgres] via one_store {
    interleaved_units_of_work_conflict_and_the_loser_writes_nothing,
});

// The memory store returns an order's allocations in the order they were
// made; the SQL stores sort them by SKU as `ReadModel::allocations` says.
// The SQL stores also guard against change sets that contradict the stored
// rows (with constraints, as a second line behind the version check); the
// memory store relies on the version check alone.
per_backend!(mod sql_backends on [sqlite, postgres] via one_store {
    an_orders_allocations_come_back_by_sku,
    a_commit_naming_a_batch_that_is_not_stored_writes_nothing,
});

async fn a_created_product_reloads_with_its_batches_in_creation_order<S: Store + ReadModel>(
    store: S,
) {
    let sku = sku();
    let (later, warehouse, sooner) = (batchref("later"), batchref("warehouse"), batchref("sooner"));

    let mut uow = UnitOfWork::begin(&store).await.expect("start");
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

    let batch = |reference: &BatchRef, eta, units| LoadedBatch {
        reference: reference.clone(),
        eta,
        purchased: qty(units),
        allocated: 0,
        lines: Vec::new(),
    };
    assert_eq!(
        load(&store, &sku, Lines::None).await,
        Some(Loaded {
            version: 3,
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
    assert_eq!(loaded.version, 3);
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
    assert_eq!((loaded.version, loaded.batches[0].allocated), (3, 30));
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

async fn deallocation_removes_the_line_and_frees_stock<S: Store + ReadModel>(store: S) {
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
    assert_eq!(bus.notifications.sent().len(), 1);
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

async fn uncommitted_work_is_rolled_back_on_drop<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (sku, batch, order) = (sku(), batchref("b"), orderid("o"));

    // A new product, never committed.
    {
        let mut uow = UnitOfWork::begin(&store).await.expect("start");
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
        let mut uow = UnitOfWork::begin(&store).await.expect("start");
        allocate_in(&mut uow, &order, &sku, 4).await;
    }
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (1, 0));
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

    let uow = UnitOfWork::begin(&store).await.expect("start");
    assert!(allocate_then_fail(uow, &sku, &order).await.is_err());
    let loaded = load(&store, &sku, Lines::OfOrder(&order))
        .await
        .expect("stored");
    assert_eq!((loaded.version, loaded.batches[0].allocated), (1, 0));
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

/// What a unit of work would write for `product` at commit: its events and,
/// as the transactional handlers do, a read-model row and an outbox message
/// per allocation. That is the shape the SQL stores write as allocations.
fn changes_of(product: &mut Product, stored_version: Option<u64>) -> ChangeSet {
    let events = product.take_events();
    let allocations = events.iter().filter_map(|event| match event {
        Event::Allocated(allocated) => Some(allocated),
        _ => None,
    });
    let views = allocations
        .clone()
        .map(|allocated| ViewChange::Allocated {
            orderid: allocated.orderid.clone(),
            sku: allocated.sku.clone(),
            batchref: allocated.batchref.clone(),
        })
        .collect();
    let outbox = allocations
        .map(|allocated| OutboxMessage {
            message_id: Uuid::new_v4(),
            event: allocated.clone(),
        })
        .collect();
    ChangeSet {
        products: vec![ProductChanges {
            sku: product.sku().clone(),
            stored_version,
            new_version: product.version(),
            events,
        }],
        views,
        outbox,
    }
}

/// Loads `sku` with `order`'s line in a transaction of its own (then rolled
/// back), as a unit of work would before changing it.
async fn load_product<S: Store>(store: &S, sku: &Sku, order: &OrderId) -> Product {
    let mut transaction = store.begin().await.expect("begin");
    transaction
        .load(sku, Lines::OfOrder(order))
        .await
        .expect("load")
        .expect("stored")
}

/// Commits `changes` and expects them refused as a conflict on `sku`.
async fn assert_conflict<S: Store>(store: &S, changes: ChangeSet, sku: &Sku) {
    let transaction = store.begin().await.expect("begin");
    match transaction.commit(changes).await {
        Err(StoreError::Conflict { sku: conflicted }) => assert_eq!(&conflicted, sku),
        other => panic!("expected a conflict, got {other:?}"),
    }
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

    let mut product_1 = load_product(&store, &sku, &first).await;
    let mut product_2 = load_product(&store, &sku, &second).await;
    assert_eq!(product_1.version(), product_2.version());
    let stored_version = Some(product_1.version());

    assert_eq!(
        product_1.allocate(line(&first, &sku, 6)),
        Ok(Some(batch.clone()))
    );
    let changes = changes_of(&mut product_1, stored_version);
    let transaction = store.begin().await.expect("begin");
    transaction
        .commit(changes)
        .await
        .expect("the first commit wins");

    assert_eq!(
        product_2.allocate(line(&second, &sku, 6)),
        Ok(Some(batch.clone()))
    );
    assert_conflict(&store, changes_of(&mut product_2, stored_version), &sku).await;

    let loaded = load(&store, &sku, Lines::OfOrder(&second))
        .await
        .expect("stored");
    assert_eq!(
        (loaded.version, loaded.batches[0].allocated),
        (2, 6),
        "over-allocation refused"
    );
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
    assert_eq!(allocations(&store, &first).await, vec![view(&sku, &batch)]);
    assert_eq!(outbox_of(&store).await, vec![(first, batch)]);
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
                    event: a.clone(),
                })
                .collect(),
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
    assert_eq!((loaded.version, loaded.batches.len()), (1, 1));
}

async fn a_batch_reference_taken_by_another_product_conflicts<S: Store + ReadModel>(store: S) {
    let bus = bus(&store);
    let (owner, other, reference) = (sku(), sku(), batchref("shared"));
    bus.add_batch(&reference, &owner, 10, None).await;

    // Past the handler's own check, as a concurrent command would be.
    let mut uow = UnitOfWork::begin(&store).await.expect("start");
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
    let mut uow = UnitOfWork::begin(&store).await.expect("start");
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
            },
            BatchView {
                reference: warehouse,
                eta: None,
                purchased: 10,
                allocated: 4,
            },
        ]
    );
    assert_eq!(views[1].available(), 6);
}

/// Many requests for one SKU at once: none fails (on SQLite: no
/// SQLITE_BUSY), and the batch is never over-allocated.
async fn concurrent_allocations_never_over_allocate<S: Store + ReadModel>(store: S) {
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
        bus.notifications.sent().len(),
        10,
        "one out-of-stock notice per refusal"
    );
    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(loaded.version, 11, "one version per allocation, none lost");
}

async fn interleaved_units_of_work_conflict_and_the_loser_writes_nothing<S: Store + ReadModel>(
    store: S,
) {
    let bus = bus(&store);
    let (sku, batch) = (sku(), batchref("b"));
    let (first, second) = (orderid("first"), orderid("second"));
    bus.add_batch(&batch, &sku, 10, None).await;

    let mut uow_1 = UnitOfWork::begin(&store).await.expect("start");
    let mut uow_2 = UnitOfWork::begin(&store).await.expect("start");
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
    assert_eq!((loaded.version, loaded.batches[0].allocated), (2, 6));
    assert_eq!(loaded_lines(&loaded), vec![]);
    assert_eq!(allocations(&store, &second).await, vec![]);
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

    let mut uow = UnitOfWork::begin(&store).await.expect("start");
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
        (4, 9)
    );
    assert_eq!(
        (table_loaded.version, table_loaded.batches[0].allocated),
        (2, 1)
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
    let mut lamp_product = load_product(&store, &lamp, &first).await;
    let mut table_product = load_product(&store, &table, &second).await;
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
    let mut changes = changes_of(&mut lamp_product, Some(1));
    let table_changes = changes_of(&mut table_product, Some(1));
    changes.products.extend(table_changes.products);
    changes.views.extend(table_changes.views);
    changes.outbox.extend(table_changes.outbox);
    assert_conflict(&store, changes, &table).await;

    let lamp_loaded = load(&store, &lamp, Lines::OfOrder(&first))
        .await
        .expect("stored");
    assert_eq!(
        (lamp_loaded.version, lamp_loaded.batches[0].allocated),
        (1, 0),
        "the lamp's allocation went with the table's conflict"
    );
    assert_eq!(loaded_lines(&lamp_loaded), vec![]);
    assert_eq!(allocations(&store, &first).await, vec![]);
    assert_eq!(allocations(&store, &third).await, vec![]);
    assert_eq!(outbox_of(&store).await, vec![(meanwhile, table_batch)]);
}
