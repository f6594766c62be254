//! Allocation cost against a SKU's history: allocating one more line after
//! N = 0, 1 000, 10 000 and 100 000 earlier commands on the same SKU (a
//! quarter each: lines allocated, lines allocated and shipped, checkout
//! holds released, checkout holds left to expire), each followed by a
//! stocktaker's adjustment of the batch (a unit lost, then found again),
//! so that the batch's ledger holds N + N/4 movements, on
//! the in-memory store, on SQLite, and on PostgreSQL when `DATABASE_URL` is a
//! `postgres://` URL (a fresh database, dropped afterwards; skipped with a
//! notice otherwise). The book's model loads every line on
//! every allocate; ours loads only the line's own order, so the cost stays
//! flat (target: the 100 000 case within 1.2x of the 0 case).
//!
//! Each measured iteration allocates a new order line through the message
//! bus; the line is deallocated again outside the measured time, so the
//! history stays at exactly N while criterion repeats the measurement.
//!
//! Run: `cargo bench -p allocation --bench allocation_history`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adapters::sql::{PoolSettings, SqlStore};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use domain::commands::{
    AdjustBatch, Allocate, CreateBatch, Deallocate, PlaceHold, ReleaseHold, ShipOrder,
};
use domain::{
    Adjustment, AdjustmentReason, BatchRef, Change, HoldId, OrderId, OrderLines, Quantity, Sku,
};
use service_layer::memory::MemoryStore;
use service_layer::ports::{Destination, Outbox};
use service_layer::relay::Wakeups;
use service_layer::{MessageBus, RetryPolicy, Store};
use sqlx::Connection;
use test_support::TestDatabase;
use tokio::runtime::Runtime;

const HISTORY: [u64; 4] = [0, 1_000, 10_000, 100_000];

fn bus<S: Store>(store: S) -> Arc<MessageBus<S>> {
    Arc::new(MessageBus::new(
        store,
        // No relay runs: messages accumulate in the outbox, as they would
        // while Redis is down; the relay's cost is not the allocation's.
        Wakeups::new(),
        RetryPolicy::default(),
    ))
}

fn order(n: u64) -> OrderId {
    OrderId::parse(&format!("order-{n}")).expect("valid orderid")
}

fn allocate(sku: &Sku, n: u64) -> Allocate {
    Allocate {
        orderid: order(n),
        sku: sku.clone(),
        qty: Quantity::parse(1, "qty").expect("valid qty"),
    }
}

/// Earlier command number `n` on `sku`: what a shop's history holds, in
/// equal shares, then an adjustment of `batch`. Holds left to expire live
/// one second.
async fn make_history<S: Store>(bus: &Arc<MessageBus<S>>, sku: &Sku, batch: &BatchRef, n: u64) {
    let hold_id = HoldId::parse(&format!("hold-{n}")).expect("valid hold id");
    let one = Quantity::parse(1, "qty").expect("valid qty");
    let hold = PlaceHold {
        hold_id: hold_id.clone(),
        lines: OrderLines::new(vec![(sku.clone(), one)]).expect("one line"),
        ttl: Duration::from_secs(1),
    };
    match n % 4 {
        0 => drop(bus.handle(allocate(sku, n)).await.expect("allocated")),
        1 => {
            bus.handle(allocate(sku, n)).await.expect("allocated");
            let ship = ShipOrder {
                orderid: order(n),
                skus: vec![sku.clone()],
            };
            bus.handle(ship).await.expect("shipped");
        }
        2 => {
            bus.handle(hold).await.expect("held");
            bus.handle(ReleaseHold { hold_id }).await.expect("released");
        }
        _ => drop(bus.handle(hold).await.expect("held")),
    }
    // Lost then found: the batch keeps its quantity, its ledger grows.
    let (delta, reason) = match n % 2 {
        0 => (-1, AdjustmentReason::Lost),
        _ => (1, AdjustmentReason::Found),
    };
    let adjust = AdjustBatch {
        reference: batch.clone(),
        adjustment: Adjustment {
            change: Change::By(delta),
            reason,
            note: None,
            expected_qty: None,
        },
    };
    bus.handle(adjust).await.expect("adjusted");
}

/// Plays the relay, outside the measured time: in production it keeps the
/// outbox short, and an outbox growing with every iteration would be
/// measured as history.
async fn drain_outbox<O: Outbox>(outbox: &O) {
    for destination in Destination::ALL {
        loop {
            let claimed = outbox
                .claim(1_000, Duration::from_secs(60), destination)
                .await
                .expect("outbox claimed");
            if claimed.is_empty() {
                break;
            }
            let positions: Vec<_> = claimed.iter().map(|message| message.position).collect();
            outbox.mark_sent(&positions).await.expect("outbox drained");
        }
    }
}

/// On PostgreSQL, what autovacuum and the checkpointer do sooner or later
/// after seeding (up to 90 000 commands at once, with their WAL): done
/// before measuring, so that neither starts in the middle of one level's
/// measurement and counts against it.
async fn settle(postgres_url: Option<&str>) {
    let Some(url) = postgres_url else { return };
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .expect("the benchmark database opens");
    // One statement each: VACUUM cannot share a multi-statement string.
    for statement in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
        sqlx::raw_sql(statement)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Measures one backend at every history length, growing one SKU's history
/// from one level to the next.
fn history_benchmark<S: Store + Outbox>(
    c: &mut Criterion,
    runtime: &Runtime,
    backend: &str,
    store: S,
    postgres_url: Option<&str>,
) {
    let bus = bus(store.clone());
    let sku = Sku::parse("HISTORIC-LAMP").expect("valid sku");
    let batch = BatchRef::parse("big-batch").expect("valid ref");
    runtime.block_on(async {
        bus.handle(CreateBatch {
            reference: batch.clone(),
            sku: sku.clone(),
            qty: Quantity::parse(Quantity::MAX.into(), "qty").expect("valid qty"),
            eta: None,
        })
        .await
        .expect("batch created");
    });

    let mut group = c.benchmark_group("allocate_after_history");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut seeded = 0;
    let measured = AtomicU64::new(u64::MAX / 2);
    for history in HISTORY {
        runtime.block_on(async {
            while seeded < history {
                make_history(&bus, &sku, &batch, seeded).await;
                seeded += 1;
            }
            // The last holds expire: history, not stock.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            drain_outbox(&store).await;
            settle(postgres_url).await;
        });
        group.bench_with_input(BenchmarkId::new(backend, history), &history, |b, _| {
            b.to_async(runtime).iter_custom(|iterations| {
                let (bus, sku, measured, store) = (&bus, &sku, &measured, &store);
                async move {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        let n = measured.fetch_add(1, Ordering::Relaxed);
                        let started = Instant::now();
                        let batch = bus.handle(allocate(sku, n)).await.expect("allocated");
                        spent += started.elapsed();
                        assert!(batch.batchref().is_some());
                        let undo = Deallocate {
                            orderid: order(n),
                            sku: sku.clone(),
                        };
                        bus.handle(undo).await.expect("deallocated");
                        drain_outbox(store).await;
                    }
                    spent
                }
            });
        });
    }
    group.finish();
}

fn benchmarks(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    history_benchmark(c, &runtime, "memory", MemoryStore::new(), None);

    sql_history_benchmark(c, &runtime, TestDatabase::sqlite());
    if let Some(database) =
        runtime.block_on(TestDatabase::postgres_for_benchmark("allocation_history"))
    {
        sql_history_benchmark(c, &runtime, database);
    }
}

/// The benchmark on a fresh SQL database, dropped afterwards.
fn sql_history_benchmark(c: &mut Criterion, runtime: &Runtime, database: TestDatabase) {
    let store = runtime
        .block_on(SqlStore::connect(database.url(), PoolSettings::default()))
        .expect("the database opens");
    let postgres_url = (database.backend() == "postgres").then(|| database.url());
    history_benchmark(c, runtime, database.backend(), store, postgres_url);
}

criterion_group!(history, benchmarks);
criterion_main!(history);
