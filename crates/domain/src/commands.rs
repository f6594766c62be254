//! Commands: requests to change the system, each handled by exactly one
//! handler (book chapter 10). One struct per command, gathered in an enum so
//! that dispatching is an exhaustive `match`.

use std::time::Duration;

use chrono::NaiveDate;

use crate::model::Adjustment;
use crate::values::{BatchRef, HoldId, OrderId, OrderLines, Quantity, Sku};

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
/// With `split`, a line that no single batch can take may be spread over
/// several. With `hold_id`, a live checkout hold of exactly these lines
/// becomes the order's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOrder {
    pub orderid: OrderId,
    pub lines: OrderLines,
    pub split: bool,
    pub hold_id: Option<HoldId>,
}

/// Ship the order's allocated lines of `skus` (every line if empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipOrder {
    pub orderid: OrderId,
    pub skus: Vec<Sku>,
}

/// Cancel an order: every line not shipped stops being allocated, for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    pub orderid: OrderId,
}

/// Set units aside for a checkout, all lines or none, for `ttl` from now.
/// The id is chosen by the caller, so that a retry places the same hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceHold {
    pub hold_id: HoldId,
    pub lines: OrderLines,
    pub ttl: Duration,
}

/// Keep a live hold for `ttl` from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendHold {
    pub hold_id: HoldId,
    pub ttl: Duration,
}

/// Give a hold's units back (the customer walked away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseHold {
    pub hold_id: HoldId,
}

/// Set a batch's purchased quantity, e.g. when part of a shipment is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatchQuantity {
    pub reference: BatchRef,
    pub qty: Quantity,
}

/// An operator's change to a batch's quantity, with its reason (the stock
/// ledger, beyond the book).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustBatch {
    pub reference: BatchRef,
    pub adjustment: Adjustment,
}

/// Change a SKU's settings (backorders and low-stock messages, beyond the
/// book); a setting left `None` keeps its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSettings {
    pub sku: Sku,
    pub backorder_limit: Option<u64>,
    pub low_stock_threshold: Option<u64>,
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
    ShipOrder(ShipOrder),
    CancelOrder(CancelOrder),
    PlaceHold(PlaceHold),
    ExtendHold(ExtendHold),
    ReleaseHold(ReleaseHold),
    ChangeBatchQuantity(ChangeBatchQuantity),
    AdjustBatch(AdjustBatch),
    ChangeSettings(ChangeSettings),
    Deallocate(Deallocate),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateBatch(_) => "CreateBatch",
            Self::Allocate(_) => "Allocate",
            Self::AllocateOrder(_) => "AllocateOrder",
            Self::ShipOrder(_) => "ShipOrder",
            Self::CancelOrder(_) => "CancelOrder",
            Self::PlaceHold(_) => "PlaceHold",
            Self::ExtendHold(_) => "ExtendHold",
            Self::ReleaseHold(_) => "ReleaseHold",
            Self::ChangeBatchQuantity(_) => "ChangeBatchQuantity",
            Self::AdjustBatch(_) => "AdjustBatch",
            Self::ChangeSettings(_) => "ChangeSettings",
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
    ShipOrder,
    CancelOrder,
    PlaceHold,
    ExtendHold,
    ReleaseHold,
    ChangeBatchQuantity,
    AdjustBatch,
    ChangeSettings,
    Deallocate
);
