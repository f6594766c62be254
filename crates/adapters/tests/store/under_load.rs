//! Two instances under load (docs/contract.md sections 1 and 5): eight
//! clients' commands through two buses, then the tables checked with plain
//! SQL, and each product's committed versions checked for a lost update.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use domain::commands::ChangeBatchQuantity;
use domain::{BatchRef, DomainError, Event, OrderId, Sku};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use service_layer::{Error, Store};
use sqlx::Row;
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{connect_directly, open};
use crate::helpers::*;
use crate::watched::{Commit, Outcome, Watched, bounded, lock};

per_backend!(mod two_instances_under_load on [sqlite, postgres] via on_database {
    many_commands_through_two_instances_keep_every_invariant,
});

const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 50;

/// What the clients' commands came to.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    allocated: u32,
    out_of_stock: u32,
    resent: u32,
    deallocated: u32,
    not_allocated: u32,
    changed: u32,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.allocated += other.allocated;
        self.out_of_stock += other.out_of_stock;
        self.resent += other.resent;
        self.deallocated += other.deallocated;
        self.not_allocated += other.not_allocated;
        self.changed += other.changed;
    }
}

/// Two instances (two stores, each with its own pool, and a bus each) and
/// eight clients sending 50 commands each, at once, to three SKUs with
/// little stock: mostly new orders, some sent again, some cancelled, and
/// some batch quantity changes (which bump lines, reallocated by the bus).
/// Every command must end in a domain outcome, never in an error (not even
/// Contention: the bus's retries must absorb ordinary contention), and
/// nothing the bus does after a command may log a warning about these SKUs.
/// Then, with plain SQL: no batch is over-allocated and each batch's total
/// is the sum of its lines; no order line is stored twice; the read model
/// equals the write model row for row; and each product's committed
/// versions form one unbroken chain (two commits from the same version
/// would be a lost update) ending at the stored version.
async fn many_commands_through_two_instances_keep_every_invariant(db: TestDatabase) {
    let warnings = logged_warnings();
    let instances = [
        Watched::new(open(db.url()).await),
        Watched::new(open(db.url()).await),
    ];
    let buses = [Arc::new(bus(&instances[0])), Arc::new(bus(&instances[1]))];
    let skus: Vec<Sku> = (0..3).map(|_| sku()).collect();
    let mut batches = Vec::new();
    for sku in &skus {
        for (i, eta) in [None, Some(date(2030, 1, 1)), Some(date(2030, 6, 1))]
            .into_iter()
            .enumerate()
        {
            let batch = batchref("b");
            buses[i % 2].add_batch(&batch, sku, 25, eta).await;
            batches.push(batch);
        }
    }

    let seed = test_support::random_u64();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let bus = buses[i % 2].clone();
            let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            tokio::spawn(client(bus, skus.clone(), batches.clone(), rng))
        })
        .collect();
    let mut tally = Tally::default();
    for client in clients {
        tally += bounded("a client", client)
            .await
            .unwrap_or_else(|e| panic!("a client failed (seed {seed}): {e}"));
    }
    let elapsed = started.elapsed();

    let commits: Vec<Commit> = instances.iter().flat_map(Watched::commits).collect();
    let failed: Vec<_> = commits
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
        .collect();
    assert!(failed.is_empty(), "commits failed: {failed:?}");
    let conflicts = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Conflict)
        .count();
    let committed: Vec<&Commit> = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Committed)
        .collect();
    let bumped = committed
        .iter()
        .flat_map(|c| &c.events)
        .filter(|e| matches!(e, Event::Deallocated(_)))
        .count();
    println!(
        "{}: {} commands from {CLIENTS} clients in {elapsed:?} (seed {seed}): {tally:?}; \
         {} commits, {conflicts} conflicts, {bumped} lines bumped by a quantity change",
        db.backend(),
        CLIENTS * COMMANDS_PER_CLIENT,
        commits.len(),
    );
    let logged = String::from_utf8_lossy(&lock(warnings)).into_owned();
    for sku in &skus {
        let about_it: Vec<&str> = logged
            .lines()
            .filter(|l| l.contains(sku.as_str()))
            .collect();
        assert!(
            about_it.is_empty(),
            "warnings after commands: {about_it:#?}"
        );
    }
    // Otherwise the test did not exercise what it claims to.
    assert!(
        tally.allocated > 0
            && tally.out_of_stock > 0
            && tally.deallocated > 0
            && tally.changed > 0
            && bumped > 0,
        "every kind of outcome happened (seed {seed}): {tally:?}, {bumped} bumped"
    );
    if db.backend() == "sqlite" {
        assert_eq!(conflicts, 0, "SQLite serialises writers: nothing to retry");
    }

    let stored_versions = check_tables(db.url()).await;
    check_version_chains(&committed, &stored_versions);
    assert_eq!(
        stored_versions.len(),
        skus.len(),
        "only this test's products"
    );
}

/// One client: `COMMANDS_PER_CLIENT` commands, chosen at random, each
/// awaited before the next, as one HTTP client would send them.
async fn client<S: Store>(
    bus: Arc<Bus<S>>,
    skus: Vec<Sku>,
    batches: Vec<BatchRef>,
    mut rng: StdRng,
) -> Tally {
    let mut tally = Tally::default();
    let mut orders: Vec<(OrderId, Sku, u32)> = Vec::new();
    for _ in 0..COMMANDS_PER_CLIENT {
        match rng.random_range(0..100) {
            0..70 => {
                let sku = skus[rng.random_range(0..skus.len())].clone();
                let (order, units) = (orderid("o"), rng.random_range(1..=5));
                match bus.try_allocate(&order, &sku, units).await {
                    Ok(Some(_)) => tally.allocated += 1,
                    Ok(None) => tally.out_of_stock += 1,
                    Err(error) => panic!("allocating {order} {sku} x{units}: {error}"),
                }
                orders.push((order, sku, units));
            }
            // The same line again, as a client that lost the answer would:
            // its batch (it may have moved), or a new try if it was bumped.
            70..78 if !orders.is_empty() => {
                let (order, sku, units) = &orders[rng.random_range(0..orders.len())];
                match bus.try_allocate(order, sku, *units).await {
                    Ok(_) => tally.resent += 1,
                    Err(error) => panic!("allocating {order} {sku} x{units} again: {error}"),
                }
            }
            78..90 if !orders.is_empty() => {
                let (order, sku, _) = &orders[rng.random_range(0..orders.len())];
                match bus.deallocate(order, sku).await {
                    Ok(_) => tally.deallocated += 1,
                    Err(Error::Rejected(DomainError::NotAllocated { .. })) => {
                        tally.not_allocated += 1;
                    }
                    Err(error) => panic!("deallocating {order} {sku}: {error}"),
                }
            }
            _ => {
                let reference = batches[rng.random_range(0..batches.len())].clone();
                let units = rng.random_range(10..=40);
                let command = ChangeBatchQuantity {
                    reference: reference.clone(),
                    qty: qty(units),
                };
                match bus.bus.handle(command).await {
                    Ok(()) => tally.changed += 1,
                    Err(error) => panic!("changing {reference} to {units}: {error}"),
                }
            }
        }
    }
    tally
}

/// Checks the tables with plain SQL, and returns each product's stored
/// version.
async fn check_tables(url: &str) -> HashMap<String, u64> {
    let mut conn = connect_directly(url).await;
    let batches = sqlx::query(
        "SELECT b.reference, b.quantity_in - b.quantity_out AS quantity, b.allocated_quantity, \
                CAST(COALESCE(SUM(a.qty), 0) AS BIGINT) AS of_lines \
         FROM batches b LEFT JOIN allocations a ON a.batch_id = b.id \
         GROUP BY b.id, b.reference, b.quantity_in, b.quantity_out, b.allocated_quantity \
         ORDER BY b.id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read batches");
    for batch in &batches {
        let reference: String = batch.get("reference");
        let purchased: i64 = batch.get("quantity");
        let allocated: i64 = batch.get("allocated_quantity");
        let of_lines: i64 = batch.get("of_lines");
        assert!(
            allocated <= purchased,
            "{reference} over-allocated: {allocated} of {purchased}"
        );
        assert_eq!(
            allocated, of_lines,
            "{reference}: its total is not the sum of its lines"
        );
    }

    let scalar = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let twice = scalar(
        "SELECT COUNT(*) FROM (SELECT orderid, sku FROM allocations \
         GROUP BY orderid, sku HAVING COUNT(*) > 1) AS doubled",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count doubled lines");
    assert_eq!(twice, 0, "an order line stored twice");
    let astray = scalar(
        "SELECT COUNT(*) FROM allocations a JOIN batches b ON b.id = a.batch_id \
         WHERE a.sku <> b.sku",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count lines in another SKU's batch");
    assert_eq!(astray, 0, "a line in a batch of another SKU");

    let rows = |sql: &'static str| sqlx::query_as::<_, (String, String, String)>(sql);
    let mut written = rows(
        "SELECT a.orderid, a.sku, b.reference FROM allocations a \
         JOIN batches b ON b.id = a.batch_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the write model");
    let mut viewed = rows("SELECT orderid, sku, batchref FROM allocations_view")
        .fetch_all(&mut conn)
        .await
        .expect("read the read model");
    written.sort();
    viewed.sort();
    assert!(!written.is_empty(), "some lines stayed allocated");
    assert_eq!(
        viewed, written,
        "the read model differs from the write model"
    );

    let products = sqlx::query("SELECT sku, version_number FROM products")
        .fetch_all(&mut conn)
        .await
        .expect("read products");
    products
        .iter()
        .map(|row| {
            let version: i64 = row.get("version_number");
            (row.get("sku"), u64::try_from(version).expect("positive"))
        })
        .collect()
}

/// Each product's committed changes, sorted by the version they were loaded
/// at, must go 0 -> a -> b -> ... -> the stored version, with no gap and no
/// version moved on from twice. A commit may also keep a product at the
/// version it was loaded at: an out-of-stock allocation, which changed
/// nothing but wrote its email, checked against that version.
fn check_version_chains(committed: &[&Commit], stored: &HashMap<String, u64>) {
    let mut chains: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for (sku, from, to) in committed.iter().flat_map(|c| &c.products) {
        chains
            .entry(sku.to_string())
            .or_default()
            .push((from.unwrap_or(0), *to));
    }
    assert_eq!(
        chains.len(),
        stored.len(),
        "every stored product was committed here"
    );
    for (sku, mut chain) in chains {
        chain.sort_unstable();
        let mut at = 0;
        for &(from, to) in &chain {
            assert_eq!(
                from, at,
                "{sku}: a commit from version {from} where {at} was stored: {chain:?}"
            );
            assert!(to >= from, "{sku}: a commit that moved the version back");
            at = to;
        }
        assert_eq!(stored.get(&sku), Some(&at), "{sku}: stored version");
    }
}
