//! Domain events: facts the Product aggregate records as it changes (book
//! chapters 8 and 11).
//!
//! Every change of state is recorded as an event, and nothing else changes
//! state. The unit of work relies on that: it persists a product by writing
//! what its events say happened, so a commit touches only what changed.

use chrono::{DateTime, NaiveDate, Utc};

use crate::model::{Movement, Settings, StockLevel};
use crate::values::{BatchRef, HoldId, OrderId, Quantity, Sku};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCreated {
    pub sku: Sku,
    pub reference: BatchRef,
    pub qty: Quantity,
    pub eta: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
    pub batchref: BatchRef,
}

/// A line was taken off a batch whose quantity shrank; it must be reallocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deallocated {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
    pub batchref: BatchRef,
}

/// A line's allocation was cancelled on request; its stock is free again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationCancelled {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
    pub batchref: BatchRef,
}

/// A batch has a new quantity (zero once an adjustment took everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchQuantityChanged {
    pub sku: Sku,
    pub reference: BatchRef,
    pub qty: u64,
}

/// A batch's quantity moved: its ledger's new entry. Recorded with every
/// event that changes a batch's quantity, after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockMoved {
    pub sku: Sku,
    pub reference: BatchRef,
    pub movement: Movement,
}

/// An allocated line (part) left the warehouse: its batch has that much
/// less, and so much less allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    pub orderid: OrderId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// An order was cancelled: its line (part) is no longer allocated, its
/// stock free again, and the line stays cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineCancelled {
    pub orderid: OrderId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// No batch could take a line; nothing was allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfStock {
    pub sku: Sku,
}

/// Units of a batch set aside for a checkout hold until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub hold_id: HoldId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
    pub expires_at: DateTime<Utc>,
}

/// A hold's units of this product are set aside until a new time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldExtended {
    pub hold_id: HoldId,
    pub sku: Sku,
    pub expires_at: DateTime<Utc>,
}

/// A hold gave its units of a batch back: released by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldReleased {
    pub hold_id: HoldId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// A shrinking batch took back a hold's units: the hold can no longer be
/// converted whole, and the rest of it must be released too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldBroken {
    pub hold_id: HoldId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// A hold's units of a batch became an order's allocation (an
/// [`Allocated`] follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldConverted {
    pub hold_id: HoldId,
    pub sku: Sku,
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// No batch could take a line, and it waits for stock as a backorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backordered {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
    /// The product's version with it: its place in the queue.
    pub number: u64,
}

/// A waiting backorder found stock: an [`Allocated`] follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackorderFilled {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
}

/// A waiting backorder stopped waiting: its line was deallocated or, with
/// `cancelled`, its order cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackorderWithdrawn {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
    pub cancelled: bool,
}

/// A SKU's settings changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsChanged {
    pub sku: Sku,
    pub settings: Settings,
}

/// A product's stock crossed into another level (see
/// `model::stock_levels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevelChanged {
    pub sku: Sku,
    pub from: StockLevel,
    pub to: StockLevel,
    /// What allocations could take after the change.
    pub available: u64,
    /// The SKU's low-stock threshold then.
    pub threshold: u64,
}

/// What other systems are told of a crossing (contract 7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockMessage {
    /// Nothing available any more.
    Exhausted,
    /// Available again after none.
    BackInStock,
    /// Fell below the low-stock threshold, and not to none.
    Low,
}

impl StockLevelChanged {
    /// The message the crossing is told as, if any: none for one rising
    /// back over its threshold.
    pub fn message(&self) -> Option<StockMessage> {
        match (self.from, self.to) {
            (StockLevel::Low | StockLevel::In, StockLevel::Out) => Some(StockMessage::Exhausted),
            (StockLevel::Out, StockLevel::Low | StockLevel::In) => Some(StockMessage::BackInStock),
            (StockLevel::In, StockLevel::Low) => Some(StockMessage::Low),
            _ => None,
        }
    }
}

/// Every event the domain records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    BatchCreated(BatchCreated),
    Allocated(Allocated),
    Deallocated(Deallocated),
    AllocationCancelled(AllocationCancelled),
    BatchQuantityChanged(BatchQuantityChanged),
    StockMoved(StockMoved),
    Shipped(Shipped),
    LineCancelled(LineCancelled),
    OutOfStock(OutOfStock),
    Held(Held),
    HoldExtended(HoldExtended),
    HoldReleased(HoldReleased),
    HoldBroken(HoldBroken),
    HoldConverted(HoldConverted),
    Backordered(Backordered),
    BackorderFilled(BackorderFilled),
    BackorderWithdrawn(BackorderWithdrawn),
    SettingsChanged(SettingsChanged),
    StockLevelChanged(StockLevelChanged),
}

impl Event {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BatchCreated(_) => "BatchCreated",
            Self::Allocated(_) => "Allocated",
            Self::Deallocated(_) => "Deallocated",
            Self::AllocationCancelled(_) => "AllocationCancelled",
            Self::BatchQuantityChanged(_) => "BatchQuantityChanged",
            Self::StockMoved(_) => "StockMoved",
            Self::Shipped(_) => "Shipped",
            Self::LineCancelled(_) => "LineCancelled",
            Self::OutOfStock(_) => "OutOfStock",
            Self::Held(_) => "Held",
            Self::HoldExtended(_) => "HoldExtended",
            Self::HoldReleased(_) => "HoldReleased",
            Self::HoldBroken(_) => "HoldBroken",
            Self::HoldConverted(_) => "HoldConverted",
            Self::Backordered(_) => "Backordered",
            Self::BackorderFilled(_) => "BackorderFilled",
            Self::BackorderWithdrawn(_) => "BackorderWithdrawn",
            Self::SettingsChanged(_) => "SettingsChanged",
            Self::StockLevelChanged(_) => "StockLevelChanged",
        }
    }
}
