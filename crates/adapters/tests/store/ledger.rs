//! The stock ledger on every backend: every change to a batch's quantity
//! is a movement, movements sum to the quantity, an adjustment on a stale
//! quantity moves nothing, the check finds a counter changed behind the
//! ledger's back, and a database from before the ledger opens it.

use domain::commands::{AdjustBatch, ChangeBatchQuantity, ShipOrder};
use domain::{Adjustment, AdjustmentReason, BatchRef, Change, DomainError, Note, Reason};
use service_layer::ports::{MovementView, Outbox, ReadModel};
use service_layer::{Error, Store};
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{connect_before_migration, connect_directly, one_store, open};
use crate::helpers::*;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    every_change_of_quantity_is_a_movement_and_they_sum_to_it,
    an_adjustment_on_a_stale_quantity_moves_nothing,
    an_adjustment_below_the_allocated_deallocates_newest_first_and_reallocates,
});

per_backend!(mod checked on [sqlite, postgres] via on_database {
    the_check_finds_a_quantity_changed_behind_the_ledgers_back,
    a_database_from_before_the_ledger_opens_it_with_each_batchs_quantity,
});

fn adjust(reference: &BatchRef, change: Change, expected_qty: Option<u64>) -> AdjustBatch {
    AdjustBatch {
        reference: reference.clone(),
        adjustment: Adjustment {
            change,
            reason: AdjustmentReason::Damaged,
            note: Some(Note::parse("forklift", "note").expect("note")),
            expected_qty,
        },
    }
}

async fn ledger_of<S: ReadModel>(store: &S, reference: &BatchRef) -> Vec<MovementView> {
    store
        .movements(reference)
        .await
        .expect("query")
        .expect("a known batch")
}

/// `(delta, qty_after, reason)` of each movement, oldest first.
fn summary(ledger: &[MovementView]) -> Vec<(i64, u64, &'static str)> {
    ledger
        .iter()
        .map(|m| (m.delta, m.qty_after, m.reason.as_str()))
        .collect()
}

async fn every_change_of_quantity_is_a_movement_and_they_sum_to_it<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (lamp, batch, o) = (sku(), batchref("b"), orderid("o"));
    let started = chrono::Utc::now();
    bus.add_batch(&batch, &lamp, 10, None).await;
    let change = ChangeBatchQuantity {
        reference: batch.clone(),
        qty: qty(15),
    };
    bus.bus.handle(change).await.expect("changed");
    bus.allocate(&o, &lamp, 4).await;
    let ship = ShipOrder {
        orderid: o.clone(),
        skus: Vec::new(),
    };
    bus.bus.handle(ship).await.expect("shipped");
    let adjusted = bus
        .bus
        .handle(adjust(&batch, Change::By(-2), Some(11)))
        .await
        .expect("adjusted");
    assert_eq!(
        (adjusted.qty, adjusted.allocated, adjusted.available),
        (9, 0, 9)
    );
    let counted = AdjustBatch {
        adjustment: Adjustment {
            change: Change::To(9),
            reason: AdjustmentReason::CycleCount,
            note: None,
            expected_qty: None,
        },
        ..adjust(&batch, Change::To(9), None)
    };
    bus.bus.handle(counted).await.expect("counted");

    let ledger = ledger_of(&store, &batch).await;
    assert_eq!(
        summary(&ledger),
        [
            (10, 10, "received"),
            (5, 15, "changed"),
            (-4, 11, "shipment"),
            (-2, 9, "damaged"),
            (0, 9, "cycle_count"),
        ]
    );
    assert_eq!(ledger[2].source.as_deref(), Some(&*format!("order:{o}")));
    assert_eq!(ledger[3].note.as_deref(), Some("forklift"));
    assert_eq!(ledger[3], MovementView::of(&adjusted.movement, adjusted.at));
    assert!(ledger.windows(2).all(|w| w[0].number < w[1].number));
    assert!(
        ledger
            .iter()
            .all(|m| m.at >= started - chrono::TimeDelta::seconds(1))
    );
    let sum: i64 = ledger.iter().map(|m| m.delta).sum();
    let views = batch_views(&store, &lamp).await;
    assert_eq!(u64::try_from(sum).ok(), Some(views[0].purchased));

    let unknown = store.movements(&batchref("nowhere")).await.expect("query");
    assert_eq!(unknown, None);
}

async fn an_adjustment_on_a_stale_quantity_moves_nothing<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let (lamp, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &lamp, 10, None).await;
    // Two stocktakers counted 10; the first one's adjustment lands.
    bus.bus
        .handle(adjust(&batch, Change::To(8), Some(10)))
        .await
        .expect("first");
    let second = bus
        .bus
        .handle(adjust(&batch, Change::To(7), Some(10)))
        .await;
    assert!(
        matches!(
            second,
            Err(Error::Rejected(DomainError::QuantityNotAsExpected {
                expected: 10,
                actual: 8,
                ..
            }))
        ),
        "{second:?}"
    );
    let below_zero = bus.bus.handle(adjust(&batch, Change::By(-9), None)).await;
    assert!(
        matches!(
            below_zero,
            Err(Error::Rejected(DomainError::AdjustmentOutOfRange { .. }))
        ),
        "{below_zero:?}"
    );
    let ledger = ledger_of(&store, &batch).await;
    assert_eq!(summary(&ledger), [(10, 10, "received"), (-2, 8, "damaged")]);
    assert_eq!(batch_views(&store, &lamp).await[0].purchased, 8);
}

async fn an_adjustment_below_the_allocated_deallocates_newest_first_and_reallocates<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let (lamp, home, ship) = (sku(), batchref("home"), batchref("ship"));
    bus.add_batch(&home, &lamp, 10, None).await;
    bus.add_batch(&ship, &lamp, 10, Some(date(2027, 1, 4)))
        .await;
    let (older, newer) = (orderid("older"), orderid("newer"));
    assert_eq!(bus.allocate(&older, &lamp, 4).await, Some(home.clone()));
    assert_eq!(bus.allocate(&newer, &lamp, 3).await, Some(home.clone()));

    bus.bus
        .handle(adjust(&home, Change::By(-5), None))
        .await
        .expect("adjusted");
    assert_eq!(allocated_batch(&store, &older).await, home, "older stays");
    assert_eq!(allocated_batch(&store, &newer).await, ship, "newer moves");
    bus.bus
        .handle(adjust(&home, Change::To(0), Some(5)))
        .await
        .expect("emptied");
    assert_eq!(allocated_batch(&store, &older).await, ship);
    let views = batch_views(&store, &lamp).await;
    let figures: Vec<_> = views.iter().map(|b| (b.purchased, b.allocated)).collect();
    assert_eq!(figures, [(0, 0), (10, 7)]);
    let ledger = ledger_of(&store, &home).await;
    let reasons: Vec<Reason> = ledger.iter().map(|m| m.reason).collect();
    let damaged = Reason::Adjusted(AdjustmentReason::Damaged);
    assert_eq!(reasons, [Reason::Received, damaged, damaged]);
}

/// The one batch an order's line is allocated on, from the read model.
async fn allocated_batch<S: ReadModel>(store: &S, o: &domain::OrderId) -> BatchRef {
    let rows = allocations(store, o).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].batchref.clone()
}

async fn the_check_finds_a_quantity_changed_behind_the_ledgers_back(db: TestDatabase) {
    let store = open(db.url()).await;
    let bus = bus(&store);
    let (lamp, batch) = (sku(), batchref("b"));
    bus.add_batch(&batch, &lamp, 10, None).await;
    bus.bus
        .handle(adjust(&batch, Change::By(-3), None))
        .await
        .expect("adjusted");
    let report = store
        .check_consistency(chrono::Utc::now())
        .await
        .expect("check");
    assert!(report.is_consistent(), "{report:#?}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE batches SET quantity_in = quantity_in + 1 WHERE reference = '{batch}'"
    )))
    .execute(&mut connect_directly(db.url()).await)
    .await
    .expect("tampered");
    let report = store
        .check_consistency(chrono::Utc::now())
        .await
        .expect("check");
    assert_eq!(report.ledger_drift.count, 1, "{report:#?}");
    let drift = &report.ledger_drift.examples[0];
    assert_eq!((drift.quantity, drift.ledger_total), (8, 7));
    assert_eq!(drift.batchref, batch.as_str());
    assert!(!report.is_consistent());
}

/// Migrates a fresh database up to the last migration before the ledger,
/// stores a product the way that schema did (a batch that shipped part of
/// itself), then lets the store migrate the rest.
async fn a_database_from_before_the_ledger_opens_it_with_each_batchs_quantity(db: TestDatabase) {
    let mut conn = connect_before_migration(&db, "stock ledger").await;
    sqlx::raw_sql(
        "INSERT INTO products (sku, version_number) VALUES ('OLD-LAMP', 7);
         INSERT INTO batches (reference, sku, purchased_quantity, shipped_quantity, eta)
         VALUES ('old-batch', 'OLD-LAMP', 10, 3, NULL)",
    )
    .execute(&mut conn)
    .await
    .expect("an old product");

    let store = open(db.url()).await;
    let old = BatchRef::parse("old-batch").expect("reference");
    let ledger = ledger_of(&store, &old).await;
    assert_eq!(summary(&ledger), [(7, 7, "received")]);
    assert_eq!(ledger[0].number, 7, "numbered by the product's version");
    assert_eq!(ledger[0].source.as_deref(), Some("migration"));
    let report = store
        .check_consistency(chrono::Utc::now())
        .await
        .expect("check");
    assert!(report.is_consistent(), "{report:#?}");

    let bus = bus(&store);
    let change = ChangeBatchQuantity {
        reference: old.clone(),
        qty: qty(5),
    };
    bus.bus.handle(change).await.expect("changed");
    let ledger = ledger_of(&store, &old).await;
    assert_eq!(summary(&ledger), [(7, 7, "received"), (-2, 5, "changed")]);
    assert!(ledger[1].number > ledger[0].number);
}
