//! The message bus's metrics, recorded into a recorder of the test's own
//! (`metrics::with_local_recorder`), so that parallel tests do not mix
//! their counts: what was handled and how, and event-handler retries and
//! give-ups.

use std::sync::Arc;

use domain::commands::{Allocate, CreateBatch};
use domain::fixtures::{batchref, orderid, qty, sku};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use service_layer::memory::{MemoryStore, RecordingNotifications};
use service_layer::{MessageBus, RetryPolicy};
use tokio::sync::Notify;

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
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        // One thread, so every metric lands in this recorder; paused time,
        // so the retries' backoff passes at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let bus = MessageBus::new(
                MemoryStore::new(),
                Arc::new(RecordingNotifications::failing(u32::MAX)),
                Arc::new(Notify::new()),
                RetryPolicy::default(),
            );
            let batch = CreateBatch {
                reference: batchref("b1"),
                sku: sku("LAMP"),
                qty: qty(1),
                eta: None,
            };
            bus.handle(batch).await.expect("created");
            // Out of stock: the notification fails on every attempt.
            let line = Allocate {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
                qty: qty(5),
            };
            assert_eq!(bus.handle(line).await.expect("handled"), None);
            let unknown = Allocate {
                orderid: orderid("o2"),
                sku: sku("NO-SUCH"),
                qty: qty(1),
            };
            assert!(bus.handle(unknown).await.is_err());
        });
    });

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
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
