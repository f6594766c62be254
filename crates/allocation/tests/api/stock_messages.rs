//! Stock-level messages end to end (docs/contract.md section 7.3): two
//! instances of the built binary on one database and one Redis race for
//! a product's last unit and give it back, round after round; each time
//! the stock runs out is one `stock_exhausted` and each time it comes back
//! one `back_in_stock`, whichever instance made the change; and a fall
//! below the low-stock threshold is one `low_stock` with its figures.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use serde_json::{Value, json};
use test_support::{TestDatabase, per_backend};
use tokio::sync::mpsc;

use crate::helpers::{BOUND, RunningApp, unique, with_redis};

per_backend!(mod over_redis on [sqlite, postgres] via with_redis {
    each_crossing_is_told_once_whichever_instance_made_it,
});

/// `(channel, payload)` of the stock messages about `sku`, as they arrive.
struct StockMessages {
    received: mpsc::UnboundedReceiver<(String, Value)>,
}

impl StockMessages {
    async fn subscribe(url: &str, sku: &str) -> Self {
        let channels = [
            adapters::messages::STOCK_EXHAUSTED,
            adapters::messages::BACK_IN_STOCK,
            adapters::messages::LOW_STOCK,
        ];
        let mut subscription = adapters::subscribe(url, &channels)
            .await
            .expect("subscribed");
        let (sender, received) = mpsc::unbounded_channel();
        let sku = sku.to_owned();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let payload: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                if payload["sku"] == sku.as_str()
                    && sender.send((message.channel, payload)).is_err()
                {
                    break;
                }
            }
        });
        Self { received }
    }

    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(BOUND, self.received.recv())
            .await
            .ok()
            .flatten()
            .expect("a stock message within the bound")
    }

    /// Nothing more arrives within a moment: the relays are idle by then.
    async fn none_within(&mut self, wait: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn each_crossing_is_told_once_whichever_instance_made_it(db: TestDatabase, redis: String) {
    let one = Arc::new(RunningApp::start_with(&db, &["--redis-url", &redis]).await);
    let two = Arc::new(RunningApp::start_with(&db, &["--redis-url", &redis]).await);
    let sku = unique("lamp");
    let mut messages = StockMessages::subscribe(&redis, &sku).await;
    one.add_batch(&unique("home"), &sku, 3, None).await;
    let threshold = json!({ "low_stock_threshold": 3 });
    let (status, _) = one
        .put(&format!("/products/{sku}/settings"), &threshold)
        .await;
    assert_eq!(status, 200);
    assert!(one.allocate(&unique("first"), &sku, 2).await.is_some());
    let (channel, low) = messages.next().await;
    assert_eq!(channel, "low_stock");
    assert_eq!(
        (&low["available"], &low["threshold"]),
        (&json!(1), &json!(3))
    );
    assert!(low["message_id"].is_string(), "{low}");

    let mut seen_ids = std::collections::HashSet::new();
    for round in 0..5 {
        // Both instances race for the last unit: one wins.
        let racers = [&one, &two].map(|app| {
            let app = Arc::clone(app);
            let orderid = unique(&format!("race{round}"));
            let sku = sku.clone();
            async move { (app.allocate(&orderid, &sku, 1).await, orderid) }
        });
        let outcomes = join_all(racers).await;
        let winners: Vec<&String> = outcomes
            .iter()
            .filter(|(batch, _)| batch.is_some())
            .map(|(_, orderid)| orderid)
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let (channel, exhausted) = messages.next().await;
        assert_eq!(channel, "stock_exhausted", "{exhausted}");
        assert!(seen_ids.insert(exhausted["message_id"].clone()));

        // The other instance gives it back.
        let giver = if round % 2 == 0 { &two } else { &one };
        let (status, _) = giver
            .post(&format!("/orders/{}/cancel", winners[0]), &json!({}))
            .await;
        assert_eq!(status, 200);
        let (channel, back) = messages.next().await;
        assert_eq!(channel, "back_in_stock", "{back}");
        assert!(seen_ids.insert(back["message_id"].clone()));
    }
    assert_eq!(
        messages.none_within(Duration::from_millis(500)).await,
        None,
        "one message per crossing, none twice"
    );
}
