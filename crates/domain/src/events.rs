//! Domain events: facts the Product aggregate records as it changes (book
//! chapters 8 and 11).
//!
//! Every change of state is recorded as an event, and nothing else changes
//! state. The unit of work relies on that: it persists a product by writing
//! what its events say happened, so a commit touches only what changed.

use chrono::NaiveDate;

use crate::values::{BatchRef, OrderId, Quantity, Sku};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchQuantityChanged {
    pub sku: Sku,
    pub reference: BatchRef,
    pub qty: Quantity,
}

/// No batch could take a line; nothing was allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfStock {
    pub sku: Sku,
}

/// Every event the domain records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    BatchCreated(BatchCreated),
    Allocated(Allocated),
    Deallocated(Deallocated),
    AllocationCancelled(AllocationCancelled),
    BatchQuantityChanged(BatchQuantityChanged),
    OutOfStock(OutOfStock),
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
            Self::OutOfStock(_) => "OutOfStock",
        }
    }
}
