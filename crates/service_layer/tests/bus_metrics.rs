//! The message bus's metrics, recorded into a recorder of the test's own
//! (`metrics::with_local_recorder`), so that parallel tests do not mix
//! their counts: what was handled and how, version-conflict retries, and
//! event-handler retries and give-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, PlaceHold};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{Allocation, BatchRef, HoldId, OrderLines, Product, Sku};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use service_layer::memory::{MemoryStore, MemoryTransaction};
use service_layer::ports::{ChangeSet, Lines, StoreError, StoreTransaction};
use service_layer::relay::Wakeups;
use service_layer::{MessageBus, RetryPolicy, Store};

/// Runs `test` on one thread with paused time (retry backoffs pass at
/// once), every metric going to a fresh recorder; returns the counters.
fn counted<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Vec<(CompositeKey, DebugValue)> {
    let recorder = DebuggingRecorder::new();
    let snapshotter: Snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(test());
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

fn bus<S: Store>(store: S) -> Arc<MessageBus<S>> {
    Arc::new(MessageBus::new(
        store,
        Wakeups::new(),
        RetryPolicy::default(),
    ))
}

fn create_batch(units: u32) -> CreateBatch {
    CreateBatch {
        reference: batchref("b1"),
        sku: sku("LAMP"),
        qty: qty(units),
        eta: None,
    }
}

fn allocate(order: &str, product: &str, units: u32) -> Allocate {
    Allocate {
        orderid: orderid(order),
        sku: sku(product),
        qty: qty(units),
    }
}

/// The value of the counter `name` with exactly these `labels`.
fn counter(
    snapshot: &[(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<u64> {
    let mut wanted = labels.to_vec();
    wanted.sort_unstable();
    snapshot.iter().find_map(|(key, value)| {
        let key = key.key();
        let mut found: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        found.sort_unstable();
        match value {
            DebugValue::Counter(count) if key.name() == name && found == wanted => Some(*count),
            _ => None,
        }
    })
}

#[test]
fn handled_messages_and_event_handler_retries_and_give_ups_are_counted() {
    let snapshot = counted(|| async {
        let store = MemoryStore::new();
        let working = bus(store.clone());
        working.handle(create_batch(2)).await.expect("created");
        let out_of_stock = working.handle(allocate("o1", "LAMP", 5)).await;
        assert_eq!(out_of_stock.expect("handled"), Allocation::OutOfStock);
        assert!(working.handle(allocate("o2", "NO-SUCH", 1)).await.is_err());
        let hold = PlaceHold {
            hold_id: HoldId::parse("h1").expect("hold id"),
            lines: OrderLines::new(vec![(sku("LAMP"), qty(2))]).expect("lines"),
            ttl: Duration::from_secs(600),
        };
        working.handle(hold).await.expect("held");
        // The shrink commits and breaks the hold; the follow-up that
        // releases it (an after-commit handler) fails on every attempt.
        let failing = bus(Scripted {
            inner: store,
            conflicted: Arc::new(AtomicBool::new(true)),
            commits_left: Arc::new(AtomicU32::new(1)),
        });
        let shrink = ChangeBatchQuantity {
            reference: batchref("b1"),
            qty: qty(1),
        };
        failing.handle(shrink).await.expect("shrunk");
    });
    let handled = |kind, name, outcome| {
        counter(
            &snapshot,
            "allocation_messages_handled_total",
            &[("kind", kind), ("name", name), ("outcome", outcome)],
        )
    };
    assert_eq!(handled("command", "CreateBatch", "ok"), Some(1));
    assert_eq!(handled("event", "BatchCreated", "ok"), Some(1));
    assert_eq!(handled("command", "Allocate", "ok"), Some(1));
    assert_eq!(handled("command", "Allocate", "rejected"), Some(1));
    // The email is in the outbox: nothing after the commit can fail.
    assert_eq!(handled("event", "OutOfStock", "ok"), Some(1));
    assert_eq!(handled("event", "HoldBroken", "failed"), Some(1));
    let attempts = RetryPolicy::default().event_handler_attempts;
    let event = [("event", "HoldBroken")];
    assert_eq!(
        counter(&snapshot, "allocation_event_handler_retries_total", &event),
        Some(u64::from(attempts - 1))
    );
    assert_eq!(
        counter(&snapshot, "allocation_event_handler_give_ups_total", &event),
        Some(1)
    );
}

#[test]
fn a_version_conflict_retry_is_counted() {
    let snapshot = counted(|| async {
        let store = MemoryStore::new();
        bus(store.clone())
            .handle(create_batch(10))
            .await
            .expect("created");
        let conflicting = Scripted {
            inner: store,
            conflicted: Arc::default(),
            commits_left: Arc::new(AtomicU32::new(u32::MAX)),
        };
        let bus = bus(conflicting);
        let allocated = bus.handle(allocate("o1", "LAMP", 1)).await;
        assert_eq!(
            allocated.expect("handled"),
            Allocation::Batch(batchref("b1"))
        );
    });
    let retries = counter(
        &snapshot,
        "allocation_version_conflict_retries_total",
        &[("command", "Allocate")],
    );
    assert_eq!(retries, Some(1));
}

/// A store whose first commit fails with a version conflict (unless
/// `conflicted` already), as if another instance had changed the product in
/// between; and whose commits fail for good once `commits_left` are spent,
/// as a database gone away.
#[derive(Debug, Clone)]
struct Scripted {
    inner: MemoryStore,
    conflicted: Arc<AtomicBool>,
    commits_left: Arc<AtomicU32>,
}

#[derive(Debug)]
struct ScriptedTransaction {
    inner: MemoryTransaction,
    conflicted: Arc<AtomicBool>,
    commits_left: Arc<AtomicU32>,
}

#[derive(Debug, thiserror::Error)]
#[error("the database went away")]
struct Gone;

impl Store for Scripted {
    type Transaction = ScriptedTransaction;

    async fn begin(&self) -> Result<ScriptedTransaction, StoreError> {
        Ok(ScriptedTransaction {
            inner: self.inner.begin().await?,
            conflicted: self.conflicted.clone(),
            commits_left: self.commits_left.clone(),
        })
    }
}

impl StoreTransaction for ScriptedTransaction {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Product>, StoreError> {
        self.inner.load(sku, lines, now).await
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        self.inner.sku_of_batch(reference).await
    }

    async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        self.inner.was_delivered(delivery).await
    }

    async fn skus_of_order(&mut self, orderid: &domain::OrderId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_order(orderid).await
    }

    async fn skus_of_hold(&mut self, hold_id: &domain::HoldId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_hold(hold_id).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        let spent = self
            .commits_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err();
        if spent {
            return Err(StoreError::backend(Gone));
        }
        if self.conflicted.swap(true, Ordering::SeqCst) {
            self.inner.commit(changes).await
        } else {
            Err(StoreError::Conflict { sku: sku("LAMP") })
        }
    }
}

#[test]
fn each_group_commit_records_its_size() {
    let snapshot = counted(|| async {
        let bus = bus(MemoryStore::new());
        bus.handle(create_batch(10)).await.expect("created");
        for order in ["o1", "o2", "o3"] {
            bus.handle(allocate(order, "LAMP", 1))
                .await
                .expect("handled");
        }
    });
    let sizes: Vec<f64> = snapshot
        .iter()
        .filter(|(key, _)| key.key().name() == "allocation_group_commit_size")
        .flat_map(|(_, value)| match value {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        sizes,
        [1.0, 1.0, 1.0, 1.0],
        "one group of one per command run alone, the batch's included"
    );
}
