//! `allocation allocate-from-csv <folder>`: the book's appendix CLI. Every
//! line of `orders.csv` is an `Allocate` command on the message bus, as from
//! HTTP or Redis, over a store backed by the folder's CSV files
//! (`adapters::csv_files`); `allocations.csv` is written once they have
//! all run, or not at all.

use std::path::Path;
use std::sync::Arc;

use adapters::csv_files::{CsvError, CsvStore, ORDERS};
use adapters::log::LogNotifications;
use anyhow::Context;
use domain::commands::Allocate;
use service_layer::ports::Destination;
use service_layer::relay::{NotificationPublisher, OutboxRelay, RelaySettings, Wakeups};
use service_layer::{MessageBus, RetryPolicy};
use tracing::info;

/// Allocates every order line of `folder`'s `orders.csv`, in its order,
/// and writes `allocations.csv`. A malformed file, or a line the service
/// refuses (an unknown SKU, an order line sent again with another
/// quantity), stops the run before anything is written.
pub async fn allocate_from_csv(folder: &Path) -> anyhow::Result<()> {
    let store = CsvStore::open(folder).await?;
    let orders = store.orders()?;
    let wakeups = Wakeups::new();
    let bus = Arc::new(MessageBus::new(
        store.clone(),
        wakeups.clone(),
        RetryPolicy::default(),
    ));
    let mut allocated = 0;
    for order in &orders {
        let command = Allocate {
            orderid: order.orderid.clone(),
            sku: order.sku.clone(),
            qty: order.qty,
        };
        let allocation = bus
            .handle(command)
            .await
            .map_err(|refused| CsvError::Malformed {
                file: ORDERS,
                line: order.line,
                field: None,
                reason: refused.to_string(),
            })?;
        allocated += usize::from(allocation.batchref().is_some());
    }
    store
        .save()
        .await
        .with_context(|| format!("writing the allocations in {}", folder.display()))?;
    // Out-of-stock emails are logged, as with no SMTP server; messages for
    // other systems have nowhere to go from a CSV run.
    let emails = OutboxRelay::new(
        store.outbox(),
        Destination::Notifications,
        Arc::new(NotificationPublisher::new(Arc::new(LogNotifications))),
        wakeups.of(Destination::Notifications),
        RelaySettings::default(),
    );
    emails
        .relay_pending()
        .await
        .context("logging the out-of-stock notifications")?;
    info!(
        lines = orders.len(),
        allocated,
        out_of_stock = orders.len() - allocated,
        folder = %folder.display(),
        "allocations.csv written"
    );
    Ok(())
}
