//! A batch of stock (book chapter 1): its quantity, what is allocated and
//! held of it, and the lines and hold parts loaded for the current command
//! (shipped and cancelled lines too, when they are the order's). Only its
//! product changes it.

use chrono::NaiveDate;

use super::{HeldPart, OrderLine};
use crate::values::{BatchRef, HoldId, OrderId, Quantity, Sku};

/// Stock of one SKU: in the warehouse (`eta` is `None`) or due on a shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub(super) reference: BatchRef,
    sku: Sku,
    pub(super) eta: Option<NaiveDate>,
    /// What it has: what was bought, less what was shipped. Zero once
    /// everything has left.
    pub(super) purchased: u64,
    /// Units allocated over all of this batch's lines, loaded or not.
    pub(super) allocated: u64,
    /// Units set aside by live checkout holds, loaded or not.
    pub(super) held: u64,
    /// The lines loaded for the current command, oldest first.
    pub(super) lines: Vec<OrderLine>,
    /// The hold parts loaded for the current command, oldest first.
    pub(super) holds: Vec<HeldPart>,
    /// Lines of the loaded orders that left it, shipped or cancelled: no
    /// longer allocated, still the order's.
    pub(super) closed: Vec<(OrderLine, Closed)>,
}

/// How a line stopped being allocated, other than by deallocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Shipped,
    Cancelled,
}

impl Batch {
    /// A new batch with nothing allocated.
    pub fn new(reference: BatchRef, sku: Sku, qty: Quantity, eta: Option<NaiveDate>) -> Self {
        Self::restore(reference, sku, eta, qty.get().into(), 0, 0)
    }

    /// A stored batch as a repository reads it: its totals, no lines yet.
    /// `held` counts the holds live when it was read: the domain has no
    /// clock, the repository decides what has expired.
    pub fn restore(
        reference: BatchRef,
        sku: Sku,
        eta: Option<NaiveDate>,
        purchased: u64,
        allocated: u64,
        held: u64,
    ) -> Self {
        Self {
            reference,
            sku,
            eta,
            purchased,
            allocated,
            held,
            lines: Vec::new(),
            holds: Vec::new(),
            closed: Vec::new(),
        }
    }

    pub fn reference(&self) -> &BatchRef {
        &self.reference
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    pub fn eta(&self) -> Option<NaiveDate> {
        self.eta
    }

    /// What the batch has now: bought, less shipped.
    pub fn purchased_quantity(&self) -> u64 {
        self.purchased
    }

    pub fn allocated_quantity(&self) -> u64 {
        self.allocated
    }

    /// Units set aside by live holds.
    pub fn held_quantity(&self) -> u64 {
        self.held
    }

    /// What a new allocation or hold may take: neither allocated nor held.
    pub fn available_quantity(&self) -> u64 {
        self.purchased.saturating_sub(self.allocated + self.held)
    }

    /// The order lines loaded for the current command, oldest first.
    pub fn loaded_lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// The hold parts loaded for the current command, oldest first.
    pub fn loaded_holds(&self) -> &[HeldPart] {
        &self.holds
    }

    /// Whether the batch has room for `line`, joining the part of its line
    /// it may hold already (a part reallocated next to another).
    pub fn can_allocate(&self, line: &OrderLine) -> bool {
        let joined = match self.line_of(&line.orderid) {
            Some(part) => part.qty.checked_add(line.qty).is_some(),
            None => true,
        };
        self.sku == line.sku && self.available_quantity() >= u64::from(line.qty.get()) && joined
    }

    /// The line of `orderid` on this batch: all of it, or one part of it.
    pub(super) fn line_of(&self, orderid: &OrderId) -> Option<&OrderLine> {
        self.lines.iter().find(|line| &line.orderid == orderid)
    }

    /// Allocates `line`, which [`can_allocate`](Self::can_allocate) allowed.
    /// A batch holds one part per line: a part of a line it holds already
    /// joins it, keeping its place among the lines.
    pub(super) fn allocate(&mut self, line: OrderLine) {
        self.allocated += u64::from(line.qty.get());
        match self.lines.iter_mut().find(|l| l.orderid == line.orderid) {
            // `can_allocate` checked that the sum is a quantity.
            Some(part) => part.qty = part.qty.checked_add(line.qty).unwrap_or(part.qty),
            None => self.lines.push(line),
        }
    }

    pub(super) fn deallocate(&mut self, orderid: &OrderId) -> Option<OrderLine> {
        let position = self
            .lines
            .iter()
            .position(|line| &line.orderid == orderid)?;
        let line = self.lines.remove(position);
        self.allocated -= u64::from(line.qty.get());
        Some(line)
    }

    /// Sets units aside for a hold.
    pub(super) fn hold(&mut self, part: HeldPart) {
        if part.live {
            self.held += u64::from(part.qty.get());
        }
        self.holds.push(part);
    }

    /// Gives back the loaded part of hold `hold_id`, if any.
    pub(super) fn release_hold(&mut self, hold_id: &HoldId) -> Option<HeldPart> {
        let position = self.holds.iter().position(|h| &h.hold_id == hold_id)?;
        let part = self.holds.remove(position);
        if part.live {
            self.held -= u64::from(part.qty.get());
        }
        Some(part)
    }

    /// Gives back the most recent live hold: later holds give way first.
    pub(super) fn release_latest_hold(&mut self) -> Option<HeldPart> {
        let position = self.holds.iter().rposition(|h| h.live)?;
        let part = self.holds.remove(position);
        self.held -= u64::from(part.qty.get());
        Some(part)
    }

    /// Deallocates the most recent line: later orders give way to earlier ones.
    pub(super) fn deallocate_latest(&mut self) -> Option<OrderLine> {
        let line = self.lines.pop()?;
        self.allocated -= u64::from(line.qty.get());
        Some(line)
    }

    /// Warehouse stock first, then shipments by earliest arrival.
    pub(super) fn preference(&self) -> (bool, Option<NaiveDate>) {
        (self.eta.is_some(), self.eta)
    }
}
