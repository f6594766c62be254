//! Commands: requests to change the system, each handled by exactly one
//! handler (book chapter 10). One struct per command, gathered in an enum so
//! that dispatching is an exhaustive `match`.

use chrono::NaiveDate;

use crate::values::{BatchRef, OrderId, OrderLines, Quantity, Sku};

/// Add a batch of stock: in the warehouse (`eta: None`) or on a shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateBatch {
    pub reference: BatchRef,
    pub sku: Sku,
    pub qty: Quantity,
    pub eta: Option<NaiveDate>,
}

/// Allocate an order line to a batch of its SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
}

/// Allocate every line of an order, or none of them (beyond the book).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOrder {
    pub orderid: OrderId,
    pub lines: OrderLines,
}

/// Set a batch's purchased quantity, e.g. when part of a shipment is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatchQuantity {
    pub reference: BatchRef,
    pub qty: Quantity,
}

/// Cancel an order line's allocation and free its stock; no reallocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deallocate {
    pub orderid: OrderId,
    pub sku: Sku,
}

/// Every command the service understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateBatch(CreateBatch),
    Allocate(Allocate),
    AllocateOrder(AllocateOrder),
    ChangeBatchQuantity(ChangeBatchQuantity),
    Deallocate(Deallocate),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateBatch(_) => "CreateBatch",
            Self::Allocate(_) => "Allocate",
            Self::AllocateOrder(_) => "AllocateOrder",
            Self::ChangeBatchQuantity(_) => "ChangeBatchQuantity",
            Self::Deallocate(_) => "Deallocate",
        }
    }
}

macro_rules! into_command {
    ($($variant:ident),*) => {
        $(impl From<$variant> for Command {
            fn from(command: $variant) -> Self {
                Self::$variant(command)
            }
        })*
    };
}
into_command!(
    CreateBatch,
    Allocate,
    AllocateOrder,
    ChangeBatchQuantity,
    Deallocate
);
