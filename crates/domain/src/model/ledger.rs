//! The stock ledger (beyond the book): every change to a batch's quantity
//! is a [`Movement`] with its reason, recorded by the product in the same
//! change, so a batch's movements always sum to its quantity.
//!
//! Operators change stock by adjustments ([`Product::adjust_batch`]): by a
//! delta or to a counted figure, optionally only if the batch still has the
//! quantity they saw (compare-and-set, so that two stocktakers cannot
//! overwrite each other). Shrinking goes the way `change_batch_quantity`
//! does: holds give way, then the newest lines, which are reallocated.

#[cfg(test)]
mod tests;

use crate::events::{Event, StockMoved};
use crate::model::{DomainError, Product};
use crate::values::{BatchRef, Note, OrderId, Quantity};

/// Why a batch's quantity moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The batch was created with its quantity.
    Received,
    /// `change_batch_quantity` set it (from HTTP or Redis).
    Changed,
    /// An order's line left the warehouse.
    Shipment,
    /// An operator adjusted it.
    Adjusted(AdjustmentReason),
}

/// Why an operator adjusted a batch: the reasons an adjustment may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdjustmentReason {
    Correction,
    Damaged,
    Lost,
    Found,
    CycleCount,
    Returned,
}

impl AdjustmentReason {
    pub const ALL: [Self; 6] = [
        Self::Correction,
        Self::Damaged,
        Self::Lost,
        Self::Found,
        Self::CycleCount,
        Self::Returned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Correction => "correction",
            Self::Damaged => "damaged",
            Self::Lost => "lost",
            Self::Found => "found",
            Self::CycleCount => "cycle_count",
            Self::Returned => "returned",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == raw)
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Changed => "changed",
            Self::Shipment => "shipment",
            Self::Adjusted(reason) => reason.as_str(),
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "received" => Some(Self::Received),
            "changed" => Some(Self::Changed),
            "shipment" => Some(Self::Shipment),
            _ => AdjustmentReason::parse(raw).map(Self::Adjusted),
        }
    }
}

/// One entry of a batch's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// The product's version number once it moved: increasing along a
    /// batch's ledger, unique within it, and known before anything is
    /// stored (a ledger entry is identified by its batch and this number).
    pub number: u64,
    /// Units in (positive) or out (negative); zero for a count that found
    /// what the batch had.
    pub delta: i64,
    /// The batch's quantity after it.
    pub qty_after: u64,
    pub reason: Reason,
    pub note: Option<Note>,
    /// The order whose line left with a [`Reason::Shipment`].
    pub order: Option<OrderId>,
}

impl Movement {
    /// What the movement belongs to, as the ledger shows it: `order:<id>`
    /// for a shipment.
    pub fn source(&self) -> Option<String> {
        self.order
            .as_ref()
            .map(|orderid| format!("order:{orderid}"))
    }
}

/// An operator's change to a batch's quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub change: Change,
    pub reason: AdjustmentReason,
    pub note: Option<Note>,
    /// Refuse unless the batch has exactly this quantity now.
    pub expected_qty: Option<u64>,
}

/// How an adjustment changes the quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Units in or out (never zero: the edge refuses it).
    By(i64),
    /// What a count found.
    To(u64),
}

impl Product {
    /// Adjusts batch `reference`'s quantity as `adjustment` says and
    /// returns its ledger entry. Refused, changing nothing, for an unknown
    /// batch, a quantity that is not the expected one, or a result outside
    /// 0..=[`Quantity::MAX`]. Setting the quantity the batch has records a
    /// movement of zero: the count is part of its history. Needs the
    /// batch's lines and live holds loaded, as shrinking does.
    pub fn adjust_batch(
        &mut self,
        reference: &BatchRef,
        adjustment: Adjustment,
    ) -> Result<Movement, DomainError> {
        let index = self.batch_index(reference)?;
        let current = self.batches[index].purchased;
        if let Some(expected) = adjustment.expected_qty {
            if expected != current {
                return Err(DomainError::QuantityNotAsExpected {
                    reference: reference.clone(),
                    expected,
                    actual: current,
                });
            }
        }
        let target = match adjustment.change {
            Change::By(delta) => i128::from(current) + i128::from(delta),
            Change::To(qty) => i128::from(qty),
        };
        let qty = u64::try_from(target)
            .ok()
            .filter(|qty| *qty <= u64::from(Quantity::MAX))
            .ok_or_else(|| DomainError::AdjustmentOutOfRange {
                reference: reference.clone(),
                result: target,
            })?;
        let reason = Reason::Adjusted(adjustment.reason);
        self.resize_batch(index, qty, reason, adjustment.note)
    }

    /// Records a movement of batch `index`, whose quantity is already
    /// `qty_after`.
    pub(super) fn record_movement(
        &mut self,
        index: usize,
        delta: i64,
        reason: Reason,
        note: Option<Note>,
        order: Option<OrderId>,
    ) -> Movement {
        let movement = Movement {
            number: self.version + 1,
            delta,
            qty_after: self.batches[index].purchased,
            reason,
            note,
            order,
        };
        self.record(Event::StockMoved(StockMoved {
            sku: self.sku.clone(),
            reference: self.batches[index].reference.clone(),
            movement: movement.clone(),
        }));
        movement
    }
}
