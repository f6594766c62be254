//! The check and the rebuild on what orders and holds add: lines split
//! over batches (a read-model row per part), and live holds counted
//! towards what a batch has committed.

use super::*;

per_backend!(mod on_every_sql_backend on [sqlite, postgres] via on_database {
    split_lines_are_checked_and_rebuilt_part_by_part,
    live_holds_count_towards_over_commitment_and_expired_ones_do_not,
});

/// A line split over two batches has a row per part: both must show, and
/// the rebuild puts back the one that went missing or went wrong.
async fn split_lines_are_checked_and_rebuilt_part_by_part(db: TestDatabase) {
    let store = open(db.url()).await;
    let s = stock(&store).await;
    let big = orderid("big");
    let split = domain::commands::AllocateOrder {
        orderid: big.clone(),
        lines: domain::OrderLines::new(vec![(s.chairs.clone(), qty(150))]).expect("lines"),
        split: true,
        hold_id: None,
    };
    bus(&store).bus.handle(split).await.expect("allocated");
    let report = check(&store).await;
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(report.totals.allocations, 6);

    let mut conn = connect_directly(db.url()).await;
    let forget_the_shipment = format!(
        "DELETE FROM allocations_view WHERE orderid = '{big}' AND batchref = '{}'",
        s.shipment
    );
    damage(&mut conn, &forget_the_shipment).await;
    let report = check(&store).await;
    assert_eq!(
        report.missing_rows,
        found(vec![view_row(&big, &s.chairs, &s.shipment)])
    );
    assert_eq!(report.read_model_differences(), 1, "{report:#?}");

    let show_a_ghost =
        format!("UPDATE allocations_view SET batchref = 'ghost' WHERE orderid = '{big}'");
    damage(&mut conn, &show_a_ghost).await;
    let report = check(&store).await;
    assert_eq!(
        report.wrong_batch,
        found(vec![WrongBatch {
            orderid: big.to_string(),
            sku: s.chairs.to_string(),
            shown: "ghost".to_owned(),
            allocated: s.warehouse.to_string(),
        }])
    );
    assert_eq!(report.read_model_differences(), 1, "{report:#?}");

    let rebuilt = rebuild(&store).await;
    assert_eq!(
        (rebuilt.added, rebuilt.changed, rebuilt.removed),
        (1, 1, 0),
        "{rebuilt:?}"
    );
    // The read model lists an order's rows by SKU, then batch.
    let mut both = vec![view(&s.chairs, &s.warehouse), view(&s.chairs, &s.shipment)];
    both.sort_by(|a, b| a.batchref.cmp(&b.batchref));
    assert_eq!(allocations(&store, &big).await, both);
    assert!(check(&store).await.is_consistent());
}

/// A batch whose quantity a hand edit cut below what is allocated and held:
/// the check names it while the hold lives, with what it holds, and not at
/// a time after the hold has expired.
async fn live_holds_count_towards_over_commitment_and_expired_ones_do_not(db: TestDatabase) {
    let store = open(db.url()).await;
    let s = stock(&store).await;
    let hold = domain::commands::PlaceHold {
        hold_id: domain::HoldId::parse(&unique("hold")).expect("hold id"),
        lines: domain::OrderLines::new(vec![(s.lamps.clone(), qty(90))]).expect("lines"),
        ttl: Duration::from_secs(900),
    };
    let placed = bus(&store).bus.handle(hold).await.expect("held");
    assert!(check(&store).await.is_consistent());

    let mut conn = connect_directly(db.url()).await;
    let cut = format!(
        "UPDATE batches SET quantity_in = 50 WHERE reference = '{}'",
        s.lamp_batch
    );
    damage(&mut conn, &cut).await;
    let report = check(&store).await;
    assert_eq!(
        report.over_allocated,
        found(vec![OverAllocated {
            batchref: s.lamp_batch.to_string(),
            sku: s.lamps.to_string(),
            allocated_quantity: 5,
            held_quantity: 90,
            quantity: 50,
        }])
    );
    let after_expiry = store
        .check_consistency(placed.expires_at)
        .await
        .expect("check");
    // Only the cut itself is left: made behind the ledger's back.
    assert_eq!(after_expiry.over_allocated.count, 0, "{after_expiry:#?}");
    assert_eq!(after_expiry.write_model_violations(), 1);
    assert_eq!(after_expiry.ledger_drift.count, 1);
}
