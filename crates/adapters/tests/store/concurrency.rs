//! Concurrency across instances (book chapter 7; docs/contract.md sections
//! 1 and 5: the rules hold across instances, and a write that lost a race
//! is detected and run again), through the message bus as the service runs
//! commands: a version conflict between two instances, forced at a chosen
//! moment, then retried by the bus; and a hot product's retry, which locks
//! it so that it cannot lose twice. Both watch the commits through
//! [`Watched`]. (Two instances under heavy load: `under_load`.)

use std::sync::Arc;

use service_layer::ports::{Lines, Outbox, ReadModel};
use service_layer::{RetryPolicy, Store};
use test_support::{TestDatabase, on_database, per_backend};

use crate::backends::{open, two_instances};
use crate::helpers::*;
use crate::watched::{Commit, Outcome, Watched, bounded};

// ---------------------------------------------------------------------------
// A conflict between two instances, retried by the bus
// ---------------------------------------------------------------------------

// Not on SQLite: there a write transaction takes the database's write lock
// when it begins (BEGIN IMMEDIATE), so writers are serialised and the
// conflict this test forces cannot arise (see
// `specific::sqlite_write_transactions_queue_instead_of_conflicting`); and
// holding instance 1 before its commit would deadlock, since instance 2
// could not even begin until instance 1 has finished.
per_backend!(mod conflict_between_instances on [memory, postgres] via two_instances {
    a_conflict_with_another_instance_is_retried_by_the_bus,
});

/// The book's concurrency test (chapter 7), made deterministic and run
/// through the bus: instance 1 allocates an order and, just before it
/// commits, instance 2 allocates another order of the same SKU and commits.
/// Instance 1's commit then conflicts, and the bus runs its command again on
/// what is stored now, which makes it choose another batch.
async fn a_conflict_with_another_instance_is_retried_by_the_bus<S: Store + ReadModel + Outbox>(
    one: S,
    two: S,
) {
    let (sku, warehouse, shipment) = (sku(), batchref("warehouse"), batchref("shipment"));
    let setup = bus(&one);
    setup.add_batch(&warehouse, &sku, 10, None).await;
    setup
        .add_batch(&shipment, &sku, 10, Some(date(2031, 1, 1)))
        .await;
    let store = one.clone();

    let (one, two) = (Watched::new(one), Watched::new(two));
    let (bus_one, bus_two) = (Arc::new(bus(&one)), bus(&two));
    let (first, second) = (orderid("first"), orderid("second"));
    let (reached, release) = one.hold_next_commit();
    let allocating = tokio::spawn({
        let (bus, first, sku) = (bus_one.clone(), first.clone(), sku.clone());
        async move { bus.allocate(&first, &sku, 5).await }
    });
    bounded("instance 1 reaches its commit", reached)
        .await
        .expect("instance 1 commits");
    // Instance 1 has read 10 free in the warehouse and allocated 5 there.
    assert_eq!(
        bounded("instance 2", bus_two.allocate(&second, &sku, 8)).await,
        Some(warehouse.clone()),
        "instance 2 runs to completion meanwhile"
    );
    release.send(()).expect("instance 1 is waiting");
    let reply = bounded("instance 1", allocating)
        .await
        .expect("the task ran");
    assert_eq!(
        reply,
        Some(shipment.clone()),
        "run again, it saw instance 2's allocation: 5 no longer fit in the warehouse's 2"
    );

    // Exactly one conflict: instance 1's first commit, from version 4 (two
    // batches, each created with its first movement).
    let commits = |store: &Watched<S>| -> Vec<_> {
        let commits = store.commits();
        commits
            .into_iter()
            .map(|c| (c.outcome, c.products))
            .collect()
    };
    let change = |from, to| vec![(sku.clone(), Some(from), to)];
    assert_eq!(
        commits(&one),
        vec![
            (Outcome::Conflict, change(4, 5)),
            (Outcome::Committed, change(5, 6)),
        ]
    );
    assert_eq!(commits(&two), vec![(Outcome::Committed, change(4, 5))]);

    let loaded = load(&store, &sku, Lines::None).await.expect("stored");
    assert_eq!(
        loaded.version, 6,
        "two batches and two allocations: none lost, none counted twice"
    );
    assert_eq!(
        allocated_totals(&batch_views(&store, &sku).await),
        vec![8, 5]
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &warehouse).await,
        vec![line(&second, &sku, 8)]
    );
    assert_eq!(
        lines_of_batch(&store, &sku, &shipment).await,
        vec![line(&first, &sku, 5)]
    );
    assert_eq!(
        allocations(&store, &first).await,
        vec![view(&sku, &shipment)]
    );
    assert_eq!(
        allocations(&store, &second).await,
        vec![view(&sku, &warehouse)]
    );
    // What the refused attempt decided never reached the outbox.
    assert_eq!(
        outbox_of(&store).await,
        vec![(second, warehouse), (first, shipment)]
    );
    assert!(emails_of(&store).await.is_empty());
}

// ---------------------------------------------------------------------------
// Two instances under load
// ---------------------------------------------------------------------------

per_backend!(mod hot_product_across_instances on [sqlite, postgres] via on_database {
    a_retry_locks_the_product_so_it_cannot_lose_twice,
});

/// A flash sale across two instances: clients of both allocate on one
/// product at once, with the bus allowed only two attempts per command. The
/// first attempt is optimistic and may lose a race with the other instance;
/// the second locks the product as it reads it, so it cannot lose: every
/// command must succeed. (With two optimistic attempts, some lose twice and
/// end in `Contention`.)
async fn a_retry_locks_the_product_so_it_cannot_lose_twice(db: TestDatabase) {
    let stores = [open(db.url()).await, open(db.url()).await];
    let instances = [
        Watched::new(stores[0].clone()),
        Watched::new(stores[1].clone()),
    ];
    let two_attempts = RetryPolicy {
        command_attempts: 2,
        ..RetryPolicy::default()
    };
    let buses = [
        Arc::new(bus_with(&instances[0], two_attempts)),
        Arc::new(bus_with(&instances[1], two_attempts)),
    ];
    let (sku, batch) = (sku(), batchref("flash"));
    buses[0].add_batch(&batch, &sku, 10_000, None).await;

    const HOT_CLIENTS: usize = 8;
    const ALLOCATIONS_PER_CLIENT: usize = 25;
    let clients: Vec<_> = (0..HOT_CLIENTS)
        .map(|i| {
            let (bus, sku) = (buses[i % 2].clone(), sku.clone());
            tokio::spawn(async move {
                for _ in 0..ALLOCATIONS_PER_CLIENT {
                    let order = orderid("flash");
                    match bus.try_allocate(&order, &sku, 1).await {
                        Ok(Some(_)) => {}
                        other => return Err(format!("{order}: {other:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        bounded("a client", client)
            .await
            .expect("the client ran")
            .unwrap_or_else(|failure| panic!("an allocation failed: {failure}"));
    }

    let commits: Vec<Commit> = instances.iter().flat_map(Watched::commits).collect();
    let conflicts = commits
        .iter()
        .filter(|c| c.outcome == Outcome::Conflict)
        .count();
    println!(
        "{}: {} allocations on one product from two instances, {conflicts} conflicts, none lost twice",
        db.backend(),
        HOT_CLIENTS * ALLOCATIONS_PER_CLIENT
    );
    let views = batch_views(&stores[0], &sku).await;
    assert_eq!(
        allocated_totals(&views),
        vec![(HOT_CLIENTS * ALLOCATIONS_PER_CLIENT) as u64]
    );
}
