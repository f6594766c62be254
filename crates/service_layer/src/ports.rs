//! Ports: what the service layer needs from the outside world, as traits the
//! adapters implement (dependency inversion, book chapter 13).
//!
//! [`Notifications`] and [`Publisher`] are stored as trait objects because
//! which one runs is chosen at start from the configuration; the storage
//! ports ([`ReadModel`], [`Outbox`]) are generic like [`crate::Store`].

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use domain::events::Allocated;
use domain::{BatchRef, OrderId, Sku};
use uuid::Uuid;

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
#[error("message not published: {0}")]
pub struct PublishError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A message for other systems (channel `line_allocated`). It is written to
/// the outbox in the same transaction as the allocation it announces, and
/// published by the relay afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique per message and the same on every re-send: delivery is at
    /// least once, so consumers drop duplicates by it.
    pub message_id: Uuid,
    pub event: Allocated,
}

/// A message a relay has claimed: where it sits in the outbox, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    pub position: i64,
    pub message: OutboxMessage,
}

/// Publishes outbox messages to other systems (Redis in production).
#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError>;
}

/// The outbox as the relay sees it: committed messages waiting to go out.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// Claims up to `limit` unsent messages, oldest first, for `lease`:
    /// other relays skip them until it ends, so that in normal operation
    /// each message is published once even with several relays running.
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<ClaimedMessage>, StoreError>> + Send;

    /// Records that these messages went out; they are never claimed again.
    fn mark_sent(&self, positions: &[i64]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives claimed messages back before their lease ends.
    fn release(&self, positions: &[i64]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How far publishing lags behind: for the metrics.
    fn backlog(&self) -> impl Future<Output = Result<OutboxBacklog, StoreError>> + Send;
}

/// The messages committed and not yet sent (claimed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub messages: u64,
    /// How long the oldest of them has waited; `None` when there are none.
    pub oldest_age: Option<Duration>,
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
