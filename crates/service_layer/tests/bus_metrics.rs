//! The message bus's metrics, recorded into a recorder of the test's own
//! (`metrics::with_local_recorder`), so that parallel tests do not mix
//! their counts: what was handled and how, version-conflict retries, and
//! event-handler retries and give-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use domain::commands::{Allocate, CreateBatch};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{Allocation, BatchRef, Product, Sku};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use service_layer::memory::{MemoryStore, MemoryTransaction, RecordingNotifications};
use service_layer::ports::{ChangeSet, Lines, StoreError, StoreTransaction};
use service_layer::{MessageBus, RetryPolicy, Store};
use tokio::sync::Notify;

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

fn bus<S: Store>(store: S, notifications: RecordingNotifications) -> Arc<MessageBus<S>> {
    Arc::new(MessageBus::new(
        store,
        Arc::new(notifications),
        Arc::new(Notify::new()),
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
        // The out-of-stock notification fails on every attempt.
        let bus = bus(
            MemoryStore::new(),
            RecordingNotifications::failing(u32::MAX),
        );
        bus.handle(create_batch(1)).await.expect("created");
        let out_of_stock = bus.handle(allocate("o1", "LAMP", 5)).await;
        assert_eq!(out_of_stock.expect("handled"), Allocation::OutOfStock);
        assert!(bus.handle(allocate("o2", "NO-SUCH", 1)).await.is_err());
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
    assert_eq!(handled("event", "OutOfStock", "failed"), Some(1));
    let attempts = RetryPolicy::default().event_handler_attempts;
    let event = [("event", "OutOfStock")];
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
        bus(store.clone(), RecordingNotifications::new())
            .handle(create_batch(10))
            .await
            .expect("created");
        let conflicting = ConflictOnce {
            inner: store,
            conflicted: Arc::default(),
        };
        let bus = bus(conflicting, RecordingNotifications::new());
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

/// A store whose first commit fails with a version conflict, as if another
/// instance had changed the product in between.
#[derive(Debug, Clone)]
struct ConflictOnce {
    inner: MemoryStore,
    conflicted: Arc<AtomicBool>,
}

#[derive(Debug)]
struct ConflictOnceTransaction {
    inner: MemoryTransaction,
    conflicted: Arc<AtomicBool>,
}

impl Store for ConflictOnce {
    type Transaction = ConflictOnceTransaction;

    async fn begin(&self) -> Result<ConflictOnceTransaction, StoreError> {
        Ok(ConflictOnceTransaction {
            inner: self.inner.begin().await?,
            conflicted: self.conflicted.clone(),
        })
    }
}

impl StoreTransaction for ConflictOnceTransaction {
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

    async fn skus_of_order(&mut self, orderid: &domain::OrderId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_order(orderid).await
    }

    async fn skus_of_hold(&mut self, hold_id: &domain::HoldId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_hold(hold_id).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
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
        let bus = bus(MemoryStore::new(), RecordingNotifications::new());
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
