//! Ports: every trait the adapters implement, and the types that cross them
//! (dependency inversion, book chapter 13). Storage ([`Store`] and its
//! [`StoreTransaction`], [`ReadModel`], [`Outbox`]), and the outside world
//! ([`Notifications`], [`Publisher`]).
//!
//! [`Notifications`] and [`Publisher`] are stored as trait objects because
//! which one runs is chosen at start from the configuration; the storage
//! ports are generic, so the bus's hot path makes no dynamic calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use domain::events::{Allocated, OutOfStock, StockMessage};
use domain::{BatchRef, Event, HoldId, Movement, OrderId, Product, Reason, Settings, Sku};
use uuid::Uuid;

/// What time it is. A port, so that tests can move time on: checkout holds
/// expire, and a unit of work reads the clock once, when it begins.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A message for the people who look after stock, e.g. "Out of stock".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The outbox message it comes from: the same on every re-send, so
    /// that mail systems can drop the duplicate an at-least-once relay may
    /// send (the email's Message-ID).
    pub id: Uuid,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
#[error("notification not sent: {0}")]
pub struct NotificationError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Sends notifications (email in production, the log by default). The
/// notifications relay calls it for each notification in the outbox; an
/// error leaves the notification there, to be tried again.
#[async_trait]
pub trait Notifications: Send + Sync + std::fmt::Debug {
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError>;
}

/// A round that did not all go out: the first `sent` messages did (the
/// relay marks them sent), the rest did not (it keeps them).
#[derive(Debug, thiserror::Error)]
#[error("message not published ({sent} of the round went out before): {cause}")]
pub struct PublishError {
    pub sent: usize,
    #[source]
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

impl PublishError {
    /// A failure before the round's message number `sent` (from 0).
    pub fn after(sent: usize, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            sent,
            cause: Box::new(cause),
        }
    }
}

/// A message for other systems or for people. It is written to the outbox
/// in the same transaction as the change it announces, and published by
/// the relay of its [`Destination`] afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique per message and the same on every re-send: delivery is at
    /// least once, so consumers drop duplicates by it.
    pub message_id: Uuid,
    pub message: Outgoing,
}

impl OutboxMessage {
    /// The allocation it announces, if it is a `line_allocated`.
    pub fn line_allocated(&self) -> Option<&Allocated> {
        match &self.message {
            Outgoing::LineAllocated(allocated) => Some(allocated),
            Outgoing::Stock(_) | Outgoing::OutOfStock(_) => None,
        }
    }
}

/// What a message tells, each kind on a channel of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// `line_allocated`: a line (or a part of one) was allocated.
    LineAllocated(Allocated),
    /// `stock_exhausted`, `back_in_stock` or `low_stock`.
    Stock(StockNews),
    /// The out-of-stock email to the people who buy stock: a line found no
    /// stock.
    OutOfStock(OutOfStock),
}

impl Outgoing {
    pub fn sku(&self) -> &Sku {
        match self {
            Self::LineAllocated(allocated) => &allocated.sku,
            Self::Stock(news) => &news.sku,
            Self::OutOfStock(event) => &event.sku,
        }
    }

    /// Who it is for, hence which relay sends it.
    pub fn destination(&self) -> Destination {
        match self {
            Self::LineAllocated(_) | Self::Stock(_) => Destination::Messages,
            Self::OutOfStock(_) => Destination::Notifications,
        }
    }
}

/// Where outbox messages go: each destination has a relay of its own, so
/// that one being down (SMTP, say) never holds up the other's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Other systems, through the [`Publisher`] (Redis).
    Messages,
    /// People, through [`Notifications`] (email).
    Notifications,
}

impl Destination {
    pub const ALL: [Self; 2] = [Self::Messages, Self::Notifications];

    /// Its name in the outbox table, the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Notifications => "notifications",
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A product's stock crossed a level (contract 7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockNews {
    pub message: StockMessage,
    pub sku: Sku,
    /// What allocations could take after the crossing.
    pub available: u64,
    /// The SKU's low-stock threshold then.
    pub threshold: u64,
}

/// A message a relay has claimed: where it sits in the outbox, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    pub position: i64,
    pub message: OutboxMessage,
}

/// Sends outbox messages of one destination on: to other systems (Redis in
/// production), or as notifications to people (see
/// `relay::NotificationPublisher`).
///
/// The relay hands over each round it claims whole, so that an adapter can
/// send it at once (Redis: one pipelined round trip for the round); a lone
/// message is a round of one.
#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Sends `messages` in their order. An error says how many of the
    /// first ones went out for certain; a message it cannot vouch for
    /// counts as not sent, and goes out again (delivery is at least once).
    async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError>;
}

/// The outbox as the relay sees it: committed messages waiting to go out.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// Claims up to `limit` unsent messages for `destination`, oldest
    /// first, for `lease`: other relays skip them until it ends, so that in
    /// normal operation each message is published once even with several
    /// relays running. Messages for other destinations are not looked at:
    /// one destination's backlog never delays another's.
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
        destination: Destination,
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

/// The answers to requests sent with an `Idempotency-Key`, so that a
/// repeat gets the first answer instead of a second run. Kept by the
/// storage, so that every instance sharing it answers alike.
pub trait IdempotencyKeys: Clone + Send + Sync + 'static {
    /// Claims `key` for a request whose route and body `fingerprint`
    /// names, at `now`; or says who holds it. A claim left running since
    /// before `stale_before` is taken over (its process died); so is an
    /// answer older than `expired_before`.
    fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        expired_before: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records the answer to the request that claimed `key`.
    fn complete(
        &self,
        key: &str,
        status: u16,
        body: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives `key` back unanswered, for a request whose answer is not
    /// final (a 503: try again).
    fn abandon(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: run it, then complete or abandon.
    Claimed,
    /// A request with the key is still running.
    Running { fingerprint: String },
    /// A request with the key was answered.
    Answered {
        fingerprint: String,
        status: u16,
        body: String,
    },
}

/// One row of `GET /allocations/<orderid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationView {
    pub sku: Sku,
    pub batchref: BatchRef,
}

/// One line of `GET /orders/<orderid>`: a SKU of the order, how many units,
/// where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineView {
    pub sku: Sku,
    pub qty: u64,
    pub status: LineStatus,
    pub parts: Vec<PartView>,
}

/// Where a line of an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStatus {
    Allocated,
    /// Waiting for stock, with no parts yet.
    Backordered,
    Shipped,
    Cancelled,
}

/// Units of an order line on one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartView {
    pub batchref: BatchRef,
    pub qty: u64,
}

/// A checkout hold as `GET /holds/<hold_id>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub hold_id: HoldId,
    pub expires_at: DateTime<Utc>,
    /// As stored: whether an active hold has expired depends on the time
    /// of the question, which the caller knows.
    pub state: HoldState,
    /// By SKU.
    pub lines: Vec<HoldLineView>,
}

/// How a hold ended, if it did. An active hold past its expiry has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Active,
    Released,
    Converted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldLineView {
    pub sku: Sku,
    pub qty: u64,
    pub parts: Vec<PartView>,
}

/// One batch of a product, as the product query shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub reference: BatchRef,
    pub eta: Option<NaiveDate>,
    pub purchased: u64,
    pub allocated: u64,
    /// Set aside by holds live at the time of the question.
    pub held: u64,
}

impl BatchView {
    /// Neither allocated nor held.
    pub fn available(&self) -> u64 {
        self.purchased.saturating_sub(self.allocated + self.held)
    }
}

/// What a product has and can sell, summed over its batches: the answer
/// to "how many can I sell?" in one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailabilityView {
    /// Units in batches in the warehouse.
    pub on_hand: u64,
    /// Units in batches still at sea.
    pub incoming: u64,
    pub allocated: u64,
    /// Set aside by holds live at the time of the question.
    pub held: u64,
    /// Waiting as backorders.
    pub backordered: u64,
    /// What allocations could take now: neither allocated nor held.
    pub available: u64,
    /// The earliest arrival of a batch at sea with units available.
    pub next_eta: Option<NaiveDate>,
}

impl AvailabilityView {
    /// The product of `batches` (`ReadModel::batches`) with `backordered`
    /// units waiting; `None` for a product with no batch, which is unknown.
    pub fn of(batches: &[BatchView], backordered: u64) -> Option<Self> {
        if batches.is_empty() {
            return None;
        }
        let units = |at_sea: bool| {
            let of = batches.iter().filter(move |b| b.eta.is_some() == at_sea);
            of.map(|b| b.purchased).sum()
        };
        Some(Self {
            on_hand: units(false),
            incoming: units(true),
            allocated: batches.iter().map(|b| b.allocated).sum(),
            held: batches.iter().map(|b| b.held).sum(),
            backordered,
            available: batches.iter().map(BatchView::available).sum(),
            next_eta: batches
                .iter()
                .filter(|b| b.available() > 0)
                .filter_map(|b| b.eta)
                .min(),
        })
    }
}

/// One entry of a batch's stock ledger, as `GET /batches/<ref>/movements`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovementView {
    /// Increasing along the batch's ledger (the product's version then).
    pub number: u64,
    pub at: DateTime<Utc>,
    pub delta: i64,
    pub qty_after: u64,
    pub reason: Reason,
    pub note: Option<String>,
    /// What it belongs to: `order:<orderid>` for a shipment, `migration`
    /// for the opening balance of a batch that predates the ledger.
    pub source: Option<String>,
}

impl MovementView {
    /// A movement the domain recorded, stored at `at`: to the
    /// millisecond, as every backend keeps it.
    pub fn of(movement: &Movement, at: DateTime<Utc>) -> Self {
        Self {
            number: movement.number,
            at: at.trunc_subsecs(3),
            delta: movement.delta,
            qty_after: movement.qty_after,
            reason: movement.reason,
            note: movement.note.as_ref().map(|note| note.as_str().to_owned()),
            source: movement.source(),
        }
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

    /// The lines of an order, allocated through any route, sorted by SKU;
    /// empty when it has none.
    fn order(
        &self,
        orderid: &OrderId,
    ) -> impl Future<Output = Result<Vec<OrderLineView>, StoreError>> + Send;

    /// A checkout hold, or `None` if none was ever placed with this id.
    fn hold(
        &self,
        hold_id: &HoldId,
    ) -> impl Future<Output = Result<Option<HoldView>, StoreError>> + Send;

    /// A product's batches in creation order, with what holds live at
    /// `now` hold of each; empty for an unknown SKU.
    fn batches(
        &self,
        sku: &Sku,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<BatchView>, StoreError>> + Send;

    /// A product's settings; `None` for an unknown SKU.
    fn settings(
        &self,
        sku: &Sku,
    ) -> impl Future<Output = Result<Option<Settings>, StoreError>> + Send;

    /// The units of a product's waiting backorders.
    fn backordered(&self, sku: &Sku) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A batch's stock ledger, oldest first; `None` for an unknown batch.
    fn movements(
        &self,
        reference: &BatchRef,
    ) -> impl Future<Output = Result<Option<Vec<MovementView>>, StoreError>> + Send;

    /// Whether the storage answers (readiness probe).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The storage failed, or refused a commit that raced with another one.
/// Cheap to clone, so that one failed group commit can answer each of its
/// commands with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another transaction changed what this one read: retry from scratch.
    #[error("product {sku} was changed by a concurrent transaction")]
    Conflict { sku: Sku },
    #[error("storage failed: {0}")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Arc::new(error))
    }
}

/// Which order lines to load with a product. A product's history may hold
/// millions of lines; a command needs those of one order or of one batch.
#[derive(Debug, Clone, Copy)]
pub enum Lines<'a> {
    None,
    OfOrder(&'a OrderId),
    /// The lines of several orders: what a group of allocations needs.
    OfOrders(&'a [OrderId]),
    /// The lines and live hold parts of a batch, each line with its parts
    /// on other batches: what shrinking it, and reallocating the parts it
    /// takes off, need.
    OfBatch(&'a BatchRef),
    /// The parts of one hold, live or expired: what extending, releasing
    /// or converting it needs.
    OfHold(&'a HoldId),
}

/// A storage backend: starts transactions.
pub trait Store: Clone + Send + Sync + 'static {
    type Transaction: StoreTransaction;

    /// Starts a transaction. Its reads need not hold locks: the commit checks
    /// every product's version, so a product changed since it was read fails
    /// the commit with [`StoreError::Conflict`] (optimistic concurrency).
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// Starts a transaction that locks each product as it loads it, until
    /// it ends: other writers to those products wait instead of racing it.
    /// For a command that already lost a race (a version conflict), so that
    /// its next attempt does not lose again however hot the product. A
    /// backend whose transactions already exclude each other keeps this
    /// default.
    fn begin_locking(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send {
        self.begin()
    }

    /// How many groups of each kind of command the bus commits side by side (see
    /// `runner`): one for a database that takes one writer at a time
    /// anyway, more for one whose writers to different products run in
    /// parallel. Fewer lanes make bigger groups, hence fewer commits.
    fn write_lanes(&self) -> usize {
        1
    }

    /// Whether a write could commit now (the readiness probe): a locking
    /// transaction begins and commits, writing nothing. Reads can succeed
    /// while writes cannot: SQLite's write lock held by a stuck writer, or a
    /// pool whose every connection is stuck inside a transaction.
    fn check_writable(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async {
            let transaction = self.begin_locking().await?;
            transaction.commit(ChangeSet::default()).await
        }
    }
}

/// One open transaction of a backend. Dropping it rolls back.
pub trait StoreTransaction: Send {
    /// The product with every batch (in creation order) and the given lines.
    /// Each batch's held total counts the holds live at `now`, and each
    /// hold part loaded says whether it is.
    fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Product>, StoreError>> + Send;

    /// The SKUs of an order's lines, whatever became of them, in SKU order.
    fn skus_of_order(
        &mut self,
        orderid: &OrderId,
    ) -> impl Future<Output = Result<Vec<Sku>, StoreError>> + Send;

    /// The SKUs a hold was placed on, whatever became of it; empty for a
    /// hold never placed.
    fn skus_of_hold(
        &mut self,
        hold_id: &HoldId,
    ) -> impl Future<Output = Result<Vec<Sku>, StoreError>> + Send;

    /// The SKU of the product that holds batch `reference`, if any.
    fn sku_of_batch(
        &mut self,
        reference: &BatchRef,
    ) -> impl Future<Output = Result<Option<Sku>, StoreError>> + Send;

    /// Whether a commit recorded `delivery` (an incoming message's key,
    /// see [`ChangeSet::deliveries`]) as handled.
    fn was_delivered(
        &mut self,
        delivery: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Writes `changes` and commits, or fails with [`StoreError::Conflict`]
    /// (and writes nothing) if a product's stored version is no longer the
    /// one it was loaded at, or a batch reference or order line is taken.
    fn commit(self, changes: ChangeSet) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Everything a unit of work writes at commit.
#[derive(Debug, Default)]
pub struct ChangeSet {
    /// When it happens (the unit of work's time): what the stock ledger
    /// stamps its movements with.
    pub at: DateTime<Utc>,
    pub products: Vec<ProductChanges>,
    pub views: Vec<ViewChange>,
    /// Messages for other systems, published by the relay after commit.
    pub outbox: Vec<OutboxMessage>,
    /// The keys of the incoming messages whose commands this commit holds
    /// (a Redis stream entry's), so that a message delivered again (its
    /// consumer died between this commit and its acknowledgement) is not
    /// run twice. Another commit holding one of them is a conflict.
    pub deliveries: Vec<String>,
}

impl ChangeSet {
    /// Whether there is nothing to write (a command that changed nothing,
    /// such as allocating a line that is already allocated).
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.views.is_empty() && self.outbox.is_empty()
    }
}

/// What happened to one product: its events, in order, say what to write.
#[derive(Debug)]
pub struct ProductChanges {
    pub sku: Sku,
    /// `None` for a product that is not stored yet.
    pub stored_version: Option<u64>,
    pub new_version: u64,
    pub events: Vec<Event>,
}

/// A change to the read model (book chapter 12), written in the same
/// transaction as the products so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    Allocated {
        orderid: OrderId,
        sku: Sku,
        batchref: BatchRef,
    },
    Deallocated {
        orderid: OrderId,
        sku: Sku,
        batchref: BatchRef,
    },
}
