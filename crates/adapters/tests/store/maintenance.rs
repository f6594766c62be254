//! The maintenance of a live database, on SQLite and PostgreSQL: the
//! consistency check reports exactly the damage done to the tables with
//! plain SQL, the rebuild repairs the read model's share of it, and a
//! rebuild while commands run leaves everything consistent. On PostgreSQL,
//! the rebuild of a product waits for a commit in progress on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adapters::SqlStore;
use adapters::sql::maintenance::{
    BatchTotal, ConsistencyReport, DuplicateLine, Findings, ForeignBatchLine, OverAllocated,
    RebuildReport, ViewRow, WrongBatch,
};
use domain::{BatchRef, OrderId, Sku};
use sqlx::{AnyConnection, Row};
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{connect_directly, open};
use crate::helpers::*;

mod parts;

per_backend!(mod on_every_sql_backend on [sqlite, postgres] via on_database {
    a_fresh_database_is_consistent,
    check_reports_exactly_the_damage_and_rebuild_repairs_the_read_model,
    broken_rules_of_the_write_model_are_reported,
    a_rebuild_during_concurrent_commands_leaves_everything_consistent,
});

per_backend!(mod on_postgres on [postgres] via on_database {
    a_rebuild_waits_for_a_commit_in_progress_on_its_product,
});

/// Runs `statements` on a connection of its own, as someone poking at the
/// database by hand would.
async fn damage(conn: &mut AnyConnection, statements: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

async fn check(store: &SqlStore) -> ConsistencyReport {
    store
        .check_consistency(chrono::Utc::now())
        .await
        .expect("check")
}

async fn rebuild(store: &SqlStore) -> RebuildReport {
    store.rebuild_read_model().await.expect("rebuild")
}

fn found<T>(examples: Vec<T>) -> Findings<T> {
    Findings {
        count: examples.len() as u64,
        examples,
    }
}

fn view_row(orderid: &OrderId, sku: &Sku, batchref: &BatchRef) -> ViewRow {
    ViewRow {
        orderid: orderid.to_string(),
        sku: sku.to_string(),
        batchref: batchref.to_string(),
    }
}

/// Two products, three batches, four orders: `(sku, batches, orders)`.
struct Stocked {
    chairs: Sku,
    lamps: Sku,
    warehouse: BatchRef,
    shipment: BatchRef,
    lamp_batch: BatchRef,
    orders: Vec<OrderId>,
}

async fn stock(store: &SqlStore) -> Stocked {
    let bus = bus(store);
    let (chairs, lamps) = (sku(), sku());
    let (warehouse, shipment, lamp_batch) = (batchref("wh"), batchref("ship"), batchref("lamp"));
    bus.add_batch(&warehouse, &chairs, 100, None).await;
    bus.add_batch(&shipment, &chairs, 100, Some(date(2031, 1, 1)))
        .await;
    bus.add_batch(&lamp_batch, &lamps, 100, None).await;
    let orders: Vec<OrderId> = (0..4).map(|n| orderid(&format!("o{n}"))).collect();
    for order in &orders[..3] {
        assert_eq!(
            bus.allocate(order, &chairs, 2).await,
            Some(warehouse.clone())
        );
    }
    assert_eq!(
        bus.allocate(&orders[3], &lamps, 5).await,
        Some(lamp_batch.clone())
    );
    Stocked {
        chairs,
        lamps,
        warehouse,
        shipment,
        lamp_batch,
        orders,
    }
}

async fn a_fresh_database_is_consistent(db: TestDatabase) {
    let store = open(db.url()).await;
    let empty = check(&store).await;
    assert!(empty.is_consistent(), "{empty:#?}");
    assert_eq!(rebuild(&store).await, RebuildReport::default());

    stock(&store).await;
    let report = check(&store).await;
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(
        (report.totals.products, report.totals.batches),
        (2, 3),
        "{report:#?}"
    );
    assert_eq!((report.totals.allocations, report.totals.view_rows), (4, 4));
    // Each allocation left a message for the relay, which does not run here.
    assert_eq!(report.outbox.messages, 4);
    assert!(report.outbox.oldest_age().is_some());

    let rebuilt = rebuild(&store).await;
    assert_eq!((rebuilt.products, rebuilt.changes()), (2, 0), "{rebuilt:?}");
}

async fn check_reports_exactly_the_damage_and_rebuild_repairs_the_read_model(db: TestDatabase) {
    let store = open(db.url()).await;
    let s = stock(&store).await;
    let [lost, moved, kept, lamp_order] = [0, 1, 2, 3].map(|n| s.orders[n].clone());
    let ghost = orderid("ghost");
    let mut conn = connect_directly(db.url()).await;
    damage(
        &mut conn,
        &format!(
            "DELETE FROM allocations_view WHERE orderid = '{lost}'; \
             INSERT INTO allocations_view (orderid, sku, batchref) \
             VALUES ('{ghost}', '{chairs}', '{warehouse}'); \
             UPDATE allocations_view SET batchref = '{shipment}' WHERE orderid = '{moved}'; \
             UPDATE batches SET allocated_quantity = allocated_quantity + 1 \
             WHERE reference = '{lamp_batch}';",
            chairs = s.chairs,
            warehouse = s.warehouse,
            shipment = s.shipment,
            lamp_batch = s.lamp_batch,
        ),
    )
    .await;

    let report = check(&store).await;
    assert_eq!(
        report.missing_rows,
        found(vec![view_row(&lost, &s.chairs, &s.warehouse)])
    );
    assert_eq!(
        report.extra_rows,
        found(vec![view_row(&ghost, &s.chairs, &s.warehouse)])
    );
    assert_eq!(
        report.wrong_batch,
        found(vec![WrongBatch {
            orderid: moved.to_string(),
            sku: s.chairs.to_string(),
            shown: s.shipment.to_string(),
            allocated: s.warehouse.to_string(),
        }])
    );
    assert_eq!(
        report.allocated_totals,
        found(vec![BatchTotal {
            batchref: s.lamp_batch.to_string(),
            sku: s.lamps.to_string(),
            allocated_quantity: 6,
            lines_total: 5,
        }])
    );
    assert_eq!(
        (
            report.over_allocated.count,
            report.duplicate_lines.count,
            report.lines_on_foreign_batches.count
        ),
        (0, 0, 0),
        "{report:#?}"
    );
    assert_eq!(
        (
            report.read_model_differences(),
            report.write_model_violations()
        ),
        (3, 1)
    );

    let rebuilt = rebuild(&store).await;
    assert_eq!(
        rebuilt,
        RebuildReport {
            products: 2,
            added: 1,
            changed: 1,
            removed: 1,
        }
    );
    for order in [&lost, &moved, &kept] {
        assert_eq!(
            allocations(&store, order).await,
            vec![view(&s.chairs, &s.warehouse)]
        );
    }
    assert_eq!(
        allocations(&store, &lamp_order).await,
        vec![view(&s.lamps, &s.lamp_batch)]
    );
    assert_eq!(allocations(&store, &ghost).await, vec![]);

    // What only a person can repair is still reported; nothing else is.
    let report = check(&store).await;
    assert_eq!(report.read_model_differences(), 0, "{report:#?}");
    assert_eq!(report.allocated_totals.count, 1, "{report:#?}");
    assert_eq!(rebuild(&store).await.changes(), 0);
}

async fn broken_rules_of_the_write_model_are_reported(db: TestDatabase) {
    let store = open(db.url()).await;
    let s = stock(&store).await;
    let mut conn = connect_directly(db.url()).await;
    // The schema refuses these; a damaged or hand-edited database may not.
    match db.backend() {
        "sqlite" => damage(&mut conn, "PRAGMA ignore_check_constraints = ON;").await,
        _ => {
            damage(
                &mut conn,
                "ALTER TABLE batches DROP CONSTRAINT batches_check;",
            )
            .await
        }
    }
    let [over, foreign] = [0, 3].map(|n| s.orders[n].clone());
    // The warehouse batch holds 6 of its 100: shrink it below that. Move
    // the lamp order onto a chair batch, quantities and all.
    damage(
        &mut conn,
        &format!(
            "UPDATE batches SET quantity_in = 5 WHERE reference = '{warehouse}'; \
             UPDATE allocations SET batch_id = (SELECT id FROM batches WHERE reference = '{shipment}') \
             WHERE orderid = '{foreign}'; \
             UPDATE batches SET allocated_quantity = 5 WHERE reference = '{shipment}'; \
             UPDATE batches SET allocated_quantity = 0 WHERE reference = '{lamp_batch}';",
            warehouse = s.warehouse,
            shipment = s.shipment,
            lamp_batch = s.lamp_batch,
        ),
    )
    .await;
    let mut duplicates = vec![];
    if db.backend() == "postgres" {
        // SQLite cannot drop a table's UNIQUE constraint short of
        // rebuilding the table; PostgreSQL can.
        damage(
            &mut conn,
            &format!(
                "ALTER TABLE allocations DROP CONSTRAINT allocations_orderid_sku_batch_id_key; \
                 INSERT INTO allocations (orderid, sku, batch_id, qty) \
                 SELECT orderid, sku, batch_id, qty FROM allocations WHERE orderid = '{over}'; \
                 UPDATE batches SET allocated_quantity = 8 WHERE reference = '{warehouse}';",
                warehouse = s.warehouse,
            ),
        )
        .await;
        duplicates.push(DuplicateLine {
            orderid: over.to_string(),
            sku: s.chairs.to_string(),
            lines: 2,
        });
    }

    let report = check(&store).await;
    let allocated = if duplicates.is_empty() { 6 } else { 8 };
    assert_eq!(
        report.over_allocated,
        found(vec![OverAllocated {
            batchref: s.warehouse.to_string(),
            sku: s.chairs.to_string(),
            allocated_quantity: allocated,
            held_quantity: 0,
            quantity: 5,
        }])
    );
    assert_eq!(report.duplicate_lines, found(duplicates));
    assert_eq!(
        report.lines_on_foreign_batches,
        found(vec![ForeignBatchLine {
            orderid: foreign.to_string(),
            sku: s.lamps.to_string(),
            batchref: s.shipment.to_string(),
            batch_sku: s.chairs.to_string(),
        }])
    );
    // The totals were kept in step with the lines, and the read model
    // disagrees only about the line that moved.
    assert_eq!(report.allocated_totals, found(vec![]));
    assert_eq!(
        report.wrong_batch,
        found(vec![WrongBatch {
            orderid: foreign.to_string(),
            sku: s.lamps.to_string(),
            shown: s.lamp_batch.to_string(),
            allocated: s.shipment.to_string(),
        }])
    );
    assert_eq!((report.missing_rows.count, report.extra_rows.count), (0, 0));
    assert!(!report.is_consistent());
}

/// Orders allocated concurrently with rebuilds, some deallocated again:
/// afterwards every line still allocated shows on its batch, nothing else
/// shows, and the check finds nothing. On PostgreSQL the rebuild's version
/// bumps make concurrent commits conflict, which the bus retries.
async fn a_rebuild_during_concurrent_commands_leaves_everything_consistent(db: TestDatabase) {
    let (commands, maintenance) = (open(db.url()).await, open(db.url()).await);
    let bus = Arc::new(bus(&commands));
    let skus = [sku(), sku()];
    for sku in &skus {
        bus.add_batch(&batchref("wh"), sku, 1_000, None).await;
    }
    // Damage to repair while the load runs: a row lost for each product.
    let s = stock(&commands).await;
    let mut conn = connect_directly(db.url()).await;
    damage(
        &mut conn,
        &format!(
            "DELETE FROM allocations_view WHERE orderid IN ('{}', '{}');",
            s.orders[0], s.orders[3]
        ),
    )
    .await;

    let load_done = Arc::new(AtomicBool::new(false));
    let workers = (0..4).map(|worker| {
        let (bus, skus) = (bus.clone(), skus.clone());
        tokio::spawn(async move {
            let mut kept = HashMap::new();
            for n in 0..25 {
                let sku = &skus[n % skus.len()];
                let order = orderid(&format!("w{worker}-{n}"));
                let batch = bus.allocate(&order, sku, 1).await.expect("in stock");
                if n % 5 == 4 {
                    assert_eq!(
                        bus.deallocate(&order, sku).await.expect("deallocate"),
                        batch
                    );
                } else {
                    kept.insert(order, (sku.clone(), batch));
                }
            }
            kept
        })
    });
    let workers: Vec<_> = workers.collect();
    let rebuilder = {
        let (maintenance, load_done) = (maintenance.clone(), load_done.clone());
        tokio::spawn(async move {
            let mut rounds = vec![rebuild(&maintenance).await];
            while !load_done.load(Ordering::Acquire) {
                rounds.push(rebuild(&maintenance).await);
            }
            rounds
        })
    };
    let mut kept = HashMap::new();
    for worker in workers {
        kept.extend(worker.await.expect("worker"));
    }
    load_done.store(true, Ordering::Release);
    let rounds = rebuilder.await.expect("rebuilder");

    // The first round repaired the damage: nothing else was ever wrong.
    assert_eq!(
        rounds.iter().map(RebuildReport::changes).sum::<u64>(),
        2,
        "{rounds:?}"
    );
    let report = check(&maintenance).await;
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(report.totals.allocations, report.totals.view_rows);
    for (order, (sku, batch)) in &kept {
        assert_eq!(
            allocations(&maintenance, order).await,
            vec![view(sku, batch)]
        );
    }
    println!(
        "{}: {} rebuilds during the load, {} lines kept",
        db.backend(),
        rounds.len(),
        kept.len()
    );
}

/// What makes the rebuild safe on PostgreSQL, shown directly: a command
/// in the middle of its commit holds its product's row, and the rebuild of
/// that product waits for it rather than reading around its uncommitted
/// rows. Here the "command" is an allocation written by hand and left
/// uncommitted, as `SqlTransaction::commit` writes it.
async fn a_rebuild_waits_for_a_commit_in_progress_on_its_product(db: TestDatabase) {
    let store = open(db.url()).await;
    let s = stock(&store).await;
    let order = orderid("mid-commit");
    let mut command = connect_directly(db.url()).await;
    damage(
        &mut command,
        &format!(
            "BEGIN; \
             UPDATE products SET version_number = version_number + 1 WHERE sku = '{chairs}'; \
             UPDATE batches SET allocated_quantity = allocated_quantity + 1 \
             WHERE reference = '{warehouse}'; \
             INSERT INTO allocations (orderid, sku, batch_id, qty) \
             SELECT '{order}', '{chairs}', id, 1 FROM batches WHERE reference = '{warehouse}'; \
             INSERT INTO allocations_view (orderid, sku, batchref) \
             VALUES ('{order}', '{chairs}', '{warehouse}');",
            chairs = s.chairs,
            warehouse = s.warehouse,
        ),
    )
    .await;

    let rebuilding = tokio::spawn({
        let store = store.clone();
        async move { store.rebuild_read_model().await }
    });
    let mut observer = connect_directly(db.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query(
            "SELECT COUNT(*) AS waiting FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("pg_stat_activity")
        .get("waiting");
        if waiting > 0 {
            break;
        }
        assert!(
            !rebuilding.is_finished() && Instant::now() < deadline,
            "the rebuild did not wait for the commit in progress on its product"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!rebuilding.is_finished());

    damage(&mut command, "COMMIT;").await;
    let rebuilt = rebuilding.await.expect("rebuild task").expect("rebuild");
    assert_eq!(rebuilt.changes(), 0, "{rebuilt:?}");
    let report = check(&store).await;
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(
        allocations(&store, &order).await,
        vec![view(&s.chairs, &s.warehouse)]
    );
}
