//! Ports: what the service layer needs from the outside world, as traits the
//! adapters implement (dependency inversion, book chapter 13).
//!
//! The after-commit ports ([`Notifications`], [`Publisher`]) are stored as
//! trait objects because which one runs is chosen at start from the
//! configuration; the read side ([`ReadModel`]) is generic like [`crate::Store`].

use std::future::Future;

use async_trait::async_trait;
use chrono::NaiveDate;
use domain::events::Allocated;
use domain::{BatchRef, OrderId, Sku};

use crate::unit_of_work::StoreError;

/// A message for the people who look after stock, e.g. "Out of stock".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
#[error("notification not sent: {0}")]
pub struct NotificationError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Sends notifications (email in production, the log by default).
#[async_trait]
pub trait Notifications: Send + Sync + std::fmt::Debug {
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError>;
}

#[derive(Debug, thiserror::Error)]
#[error("event not published: {0}")]
pub struct PublishError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Tells other systems about allocations (channel `line_allocated`).
#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    async fn publish_allocated(&self, event: &Allocated) -> Result<(), PublishError>;
}

/// One row of `GET /allocations/<orderid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationView {
    pub sku: Sku,
    pub batchref: BatchRef,
}

/// One batch of a product, as the product query shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub reference: BatchRef,
    pub eta: Option<NaiveDate>,
    pub purchased: u64,
    pub allocated: u64,
}

impl BatchView {
    pub fn available(&self) -> u64 {
        self.purchased.saturating_sub(self.allocated)
    }
}

/// The query side (book chapter 12): reads straight from storage, never
/// loads an aggregate and never goes through the message bus.
pub trait ReadModel: Clone + Send + Sync + 'static {
    /// The allocations of an order, sorted by SKU; empty when it has none.
    fn allocations(
        &self,
        orderid: &OrderId,
    ) -> impl Future<Output = Result<Vec<AllocationView>, StoreError>> + Send;

    /// A product's batches in creation order; empty for an unknown SKU.
    fn batches(&self, sku: &Sku)
    -> impl Future<Output = Result<Vec<BatchView>, StoreError>> + Send;

    /// Whether the storage answers (readiness probe).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
