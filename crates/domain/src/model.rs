//! The Product aggregate and its batches (book chapters 1 and 7).
//!
//! A product is every batch of one SKU: the consistency boundary. All changes
//! go through [`Product`], which keeps the invariants (a batch never has more
//! allocated and held than it has, an order line is allocated at most once), bumps
//! its version number and records an [`Event`] for each change.
//!
//! # Loading only what a command needs
//!
//! The book's model loads every allocated line of a product for every command,
//! so allocating gets slower as a SKU's history grows. Here each batch keeps
//! the *total* it has allocated, and only the order lines a command needs are
//! loaded: the lines of one order (to allocate or deallocate it), or the lines
//! of one batch (to shrink it). The repository's methods say which. Loaded
//! lines are a subset of the allocated ones; totals always cover all of them.

use chrono::NaiveDate;

use crate::events::{
    Allocated, AllocationCancelled, BatchCreated, BatchQuantityChanged, Deallocated, Event,
    HoldBroken, OutOfStock,
};
use crate::values::{BatchRef, Note, OrderId, Quantity, Sku};

mod backorders;
mod batch;
mod holds;
mod ledger;
mod orders;
mod shipping;
mod stock_levels;

pub use backorders::{Backorder, Settings};
pub use batch::{Batch, Closed};
pub use holds::HeldPart;
pub use ledger::{Adjustment, AdjustmentReason, Change, Movement, Reason};
pub use orders::{Part, Placement, Shortage};
pub use shipping::Shipment;
pub use stock_levels::StockLevel;

/// A customer's request for `qty` units of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub orderid: OrderId,
    pub sku: Sku,
    pub qty: Quantity,
}

/// What became of a line sent to be allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// On this batch (its first part's, for a line split before).
    Batch(BatchRef),
    /// Waiting for stock.
    Backordered,
    /// Refused: no batch could take it, and it may not wait.
    OutOfStock,
}

impl Allocation {
    /// The batch, if the line is allocated.
    pub fn batchref(self) -> Option<BatchRef> {
        match self {
            Self::Batch(batchref) => Some(batchref),
            Self::Backordered | Self::OutOfStock => None,
        }
    }
}

/// A command the model refuses: the request contradicts the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("Batch {reference} already exists with different data")]
    BatchExists { reference: BatchRef },
    #[error("Invalid batch ref {reference}")]
    UnknownBatch { reference: BatchRef },
    #[error(
        "Order {orderid} already has {allocated} of {sku} allocated; \
         deallocate it before allocating a different quantity"
    )]
    AlreadyAllocated {
        orderid: OrderId,
        sku: Sku,
        allocated: u64,
    },
    /// A line waits as a backorder with another quantity.
    #[error(
        "Order {orderid} already has {backordered} of {sku} backordered; \
         deallocate it before allocating a different quantity"
    )]
    AlreadyBackordered {
        orderid: OrderId,
        sku: Sku,
        backordered: u64,
    },
    #[error("Order {orderid} has no allocation of {sku}")]
    NotAllocated { orderid: OrderId, sku: Sku },
    /// Some lines of a whole order have no batch that can take them; the
    /// order is refused whole, and nothing is allocated.
    #[error("Not enough stock for order {orderid}: {}", shortages(short))]
    OrderShort {
        orderid: OrderId,
        short: Vec<Shortage>,
    },
    /// A placement taken after its product changed (see `orders`).
    #[error("No batch of {sku} can take {requested} units any more")]
    NoPlace { sku: Sku, requested: Quantity },
    /// Some lines of a checkout hold have no batch that can take them; the
    /// hold is refused whole, and nothing is set aside.
    #[error("Not enough stock for the hold: {}", shortages(short))]
    HoldShort { short: Vec<Shortage> },
    /// An order converting a live hold must ask for exactly its lines.
    #[error("Hold {hold_id} holds other lines than the order asks for ({sku})")]
    HoldMismatch {
        hold_id: crate::values::HoldId,
        sku: Sku,
    },
    /// Only what has arrived can leave: a line on a batch still at sea.
    #[error("Order {orderid}'s {sku} is on batch {batchref}, which has not arrived")]
    NotArrived {
        orderid: OrderId,
        sku: Sku,
        batchref: BatchRef,
    },
    /// A shipped line has left the warehouse: it cannot be deallocated.
    #[error("Order {orderid}'s {sku} has shipped")]
    AlreadyShipped { orderid: OrderId, sku: Sku },
    /// A cancelled order's line is not allocated again.
    #[error("Order {orderid}'s {sku} was cancelled")]
    LineCancelled { orderid: OrderId, sku: Sku },
    /// An adjustment made on a quantity the batch no longer has.
    #[error("Batch {reference} has {actual} units, not the {expected} expected")]
    QuantityNotAsExpected {
        reference: BatchRef,
        expected: u64,
        actual: u64,
    },
    /// An adjustment that would leave a batch fewer than none, or more
    /// than a batch may have.
    #[error(
        "Adjusting batch {reference} would leave {result} units; a batch has 0 to {}",
        Quantity::MAX
    )]
    AdjustmentOutOfRange { reference: BatchRef, result: i128 },
    /// The repository loaded fewer lines than the batch's total says it holds.
    #[error("Batch {reference} needs its order lines loaded to shrink")]
    LinesNotLoaded { reference: BatchRef },
}

/// How an [`DomainError::OrderShort`] lists its short lines.
fn shortages(short: &[Shortage]) -> String {
    let lines: Vec<String> = short
        .iter()
        .map(|s| {
            format!(
                "{} (requested {}, available {})",
                s.sku, s.requested, s.available
            )
        })
        .collect();
    lines.join(", ")
}

/// The aggregate root: every batch of one SKU, with a version number for
/// optimistic concurrency and the events recorded since it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    sku: Sku,
    version: u64,
    /// In creation order, which breaks ties between equally preferred batches.
    batches: Vec<Batch>,
    settings: Settings,
    /// Every waiting backorder, oldest first.
    backorders: Vec<Backorder>,
    /// The stock level other systems were last told of.
    announced: StockLevel,
    events: Vec<Event>,
}

impl Product {
    /// A product that has never been stored.
    pub fn new(sku: Sku) -> Self {
        Self::restore(sku, 0, Vec::new())
    }

    /// A stored product as a repository reads it, batches in creation order.
    pub fn restore(sku: Sku, version: u64, batches: Vec<Batch>) -> Self {
        Self {
            sku,
            version,
            batches,
            settings: Settings::default(),
            backorders: Vec::new(),
            announced: StockLevel::In,
            events: Vec::new(),
        }
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    /// Bumped by every change; the unit of work checks it at commit.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    pub fn batch(&self, reference: &BatchRef) -> Option<&Batch> {
        self.batches
            .iter()
            .find(|batch| &batch.reference == reference)
    }

    /// Adds stored order lines to batch `reference`, for a repository loading
    /// what a command needs. Lines it already holds are skipped, so loading
    /// the same lines twice in one unit of work is harmless.
    pub fn load_lines(&mut self, reference: &BatchRef, lines: impl IntoIterator<Item = OrderLine>) {
        if let Some(batch) = self.batches.iter_mut().find(|b| &b.reference == reference) {
            for line in lines {
                if batch.line_of(&line.orderid).is_none() {
                    batch.lines.push(line);
                }
            }
        }
    }

    /// Adds stored lines that left batch `reference` (shipped or cancelled),
    /// as [`Product::load_lines`] adds lines.
    pub fn load_closed(
        &mut self,
        reference: &BatchRef,
        lines: impl IntoIterator<Item = (OrderLine, Closed)>,
    ) {
        if let Some(batch) = self.batches.iter_mut().find(|b| &b.reference == reference) {
            for (line, closed) in lines {
                if !batch.closed.iter().any(|(l, _)| l.orderid == line.orderid) {
                    batch.closed.push((line, closed));
                }
            }
        }
    }

    /// Adds stored hold parts to batch `reference`, as [`Product::load_lines`]
    /// adds lines: parts it holds already are skipped.
    pub fn load_holds(&mut self, reference: &BatchRef, parts: impl IntoIterator<Item = HeldPart>) {
        if let Some(batch) = self.batches.iter_mut().find(|b| &b.reference == reference) {
            for part in parts {
                if !batch.holds.iter().any(|h| h.hold_id == part.hold_id) {
                    batch.holds.push(part);
                }
            }
        }
    }

    /// Adds a batch, its quantity its first movement ([`Reason::Received`]).
    /// Sending the same batch again changes nothing; a batch with the same
    /// reference and different data is refused.
    pub fn add_batch(
        &mut self,
        reference: BatchRef,
        qty: Quantity,
        eta: Option<NaiveDate>,
    ) -> Result<(), DomainError> {
        if let Some(existing) = self.batch(&reference) {
            return if existing.purchased == u64::from(qty.get()) && existing.eta == eta {
                Ok(())
            } else {
                Err(DomainError::BatchExists { reference })
            };
        }
        self.batches
            .push(Batch::new(reference.clone(), self.sku.clone(), qty, eta));
        self.record(Event::BatchCreated(BatchCreated {
            sku: self.sku.clone(),
            reference,
            qty,
            eta,
        }));
        let index = self.batches.len() - 1;
        self.record_movement(index, qty.get().into(), Reason::Received, None, None);
        Ok(())
    }

    /// Allocates `line` to the preferred batch that can take all of it and
    /// returns that batch's reference. When no batch can, the line waits as
    /// a backorder if the SKU's limit allows, or is refused, recording
    /// [`OutOfStock`]. Needs the lines of `line.orderid` loaded: a line
    /// already allocated (or waiting) is answered with its (first) batch
    /// (or as waiting) and changes nothing.
    pub fn allocate(&mut self, line: OrderLine) -> Result<Allocation, DomainError> {
        if let Some(parts) = self.same_allocation_of(&line)? {
            let first = parts.into_iter().next().map(|part| part.batchref);
            return Ok(first.map_or(Allocation::OutOfStock, Allocation::Batch));
        }
        if self.waits_already(&line)? {
            return Ok(Allocation::Backordered);
        }
        Ok(self.allocate_to_preferred(line, true))
    }

    /// Puts back a line, or one part of a split line, that a shrinking
    /// batch gave up ([`Deallocated`]): whole, to the preferred batch that
    /// can take it, joining the line's part already there if there is one;
    /// or, as [`Product::allocate`], to the backorders or nowhere. Unlike
    /// it, it accepts a line of which other parts are allocated; such a
    /// part does not wait as a backorder (a line is allocated or waiting,
    /// not both). Needs the lines of `line.orderid` loaded.
    pub fn reallocate(&mut self, line: OrderLine) -> Allocation {
        let whole_line = self.parts_of(&line.orderid).is_empty();
        self.allocate_to_preferred(line, whole_line)
    }

    fn allocate_to_preferred(&mut self, line: OrderLine, may_wait: bool) -> Allocation {
        if let Some(index) = self.preferred_batch_for(&line) {
            return Allocation::Batch(self.allocate_to(index, line));
        }
        if may_wait && self.may_backorder(line.qty) {
            self.backorder(line);
            return Allocation::Backordered;
        }
        self.record(Event::OutOfStock(OutOfStock { sku: line.sku }));
        Allocation::OutOfStock
    }

    /// Allocates `line` to the batch at `index`, which can take it, and
    /// records [`Allocated`]; returns the batch's reference.
    fn allocate_to(&mut self, index: usize, line: OrderLine) -> BatchRef {
        let batch = &mut self.batches[index];
        let batchref = batch.reference.clone();
        let event = Allocated {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
            batchref: batchref.clone(),
        };
        batch.allocate(line);
        self.record(Event::Allocated(event));
        batchref
    }

    /// Cancels the allocation of `orderid`'s line and frees its stock, without
    /// reallocating it; returns its parts, one per batch it was on. A line
    /// waiting as a backorder stops waiting, and has no parts. Needs the
    /// lines of `orderid` loaded.
    pub fn deallocate(&mut self, orderid: &OrderId) -> Result<Vec<Part>, DomainError> {
        if self.withdraw_backorder(orderid, false) {
            return Ok(Vec::new());
        }
        if self.parts_of(orderid).is_empty()
            && !self.closed_parts_of(orderid, Closed::Shipped).is_empty()
        {
            return Err(DomainError::AlreadyShipped {
                orderid: orderid.clone(),
                sku: self.sku.clone(),
            });
        }
        let mut cancelled = Vec::new();
        for batch in &mut self.batches {
            if let Some(line) = batch.deallocate(orderid) {
                cancelled.push((batch.reference.clone(), line));
            }
        }
        if cancelled.is_empty() {
            return Err(DomainError::NotAllocated {
                orderid: orderid.clone(),
                sku: self.sku.clone(),
            });
        }
        let mut parts = Vec::with_capacity(cancelled.len());
        for (batchref, line) in cancelled {
            parts.push(Part {
                batchref: batchref.clone(),
                qty: line.qty,
            });
            self.record(Event::AllocationCancelled(AllocationCancelled {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                batchref,
            }));
        }
        Ok(parts)
    }

    /// Sets a batch's quantity ([`Reason::Changed`]). If that leaves it
    /// over-committed, live holds on it give way first, then its most
    /// recent lines (see [`Product::resize_batch`]). Setting the quantity
    /// it already has changes nothing, so a repeated message is harmless.
    /// Needs the batch's lines and live holds loaded.
    pub fn change_batch_quantity(
        &mut self,
        reference: &BatchRef,
        qty: Quantity,
    ) -> Result<(), DomainError> {
        let index = self.batch_index(reference)?;
        let qty = u64::from(qty.get());
        if self.batches[index].purchased == qty {
            return Ok(());
        }
        self.resize_batch(index, qty, Reason::Changed, None)?;
        Ok(())
    }

    /// The position of batch `reference`, or the refusal of a command
    /// naming a batch the product does not have.
    fn batch_index(&self, reference: &BatchRef) -> Result<usize, DomainError> {
        self.batches
            .iter()
            .position(|b| &b.reference == reference)
            .ok_or_else(|| DomainError::UnknownBatch {
                reference: reference.clone(),
            })
    }

    /// Sets batch `index`'s quantity to `qty` and records its movement. If
    /// that leaves it over-committed, live holds on it give way first,
    /// newest first, each recorded as [`HoldBroken`] (so that the rest of
    /// the hold is released); then its most recent lines are deallocated
    /// until it fits, each recorded as [`Deallocated`] so that it can be
    /// reallocated. Refused, before anything changes like every refusal of
    /// the model, when what must give way is not all loaded.
    fn resize_batch(
        &mut self,
        index: usize,
        qty: u64,
        reason: Reason,
        note: Option<Note>,
    ) -> Result<Movement, DomainError> {
        let batch = &self.batches[index];
        let loaded_lines: u64 = batch
            .lines
            .iter()
            .map(|line| u64::from(line.qty.get()))
            .sum();
        let loaded_holds: u64 = batch
            .holds
            .iter()
            .filter(|part| part.live)
            .map(|part| u64::from(part.qty.get()))
            .sum();
        let unloaded =
            batch.allocated.saturating_sub(loaded_lines) + batch.held.saturating_sub(loaded_holds);
        if unloaded > qty {
            return Err(DomainError::LinesNotLoaded {
                reference: batch.reference.clone(),
            });
        }
        let batch = &mut self.batches[index];
        let reference = batch.reference.clone();
        let before = batch.purchased;
        let mut released = Vec::new();
        while batch.allocated + batch.held > qty {
            let Some(part) = batch.release_latest_hold() else {
                break; // no live hold left: lines give way next
            };
            released.push(part);
        }
        let mut bumped = Vec::new();
        while batch.allocated > qty {
            let Some(line) = batch.deallocate_latest() else {
                break; // unreachable: the loaded lines cover the excess
            };
            bumped.push(line);
        }
        batch.purchased = qty;
        // Releases and deallocations are recorded before the new quantity so
        // that, applied in order, no intermediate state has a batch
        // over-committed.
        for part in released {
            self.record(Event::HoldBroken(HoldBroken {
                hold_id: part.hold_id,
                sku: self.sku.clone(),
                batchref: reference.clone(),
                qty: part.qty,
            }));
        }
        for line in bumped {
            self.record(Event::Deallocated(Deallocated {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                batchref: reference.clone(),
            }));
        }
        if qty != before {
            self.record(Event::BatchQuantityChanged(BatchQuantityChanged {
                sku: self.sku.clone(),
                reference,
                qty,
            }));
        }
        // Both at most a billion (`Quantity::MAX`): the difference fits.
        let delta = i64::try_from(i128::from(qty) - i128::from(before)).unwrap_or(i64::MAX);
        Ok(self.record_movement(index, delta, reason, note, None))
    }

    /// Hands out the events recorded since the last call (book: `events`).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The events recorded and not yet taken.
    pub fn pending_events(&self) -> &[Event] {
        &self.events
    }

    /// The parts of `orderid`'s line, in batch order: one, or several if
    /// the line was split; none if it is not allocated (or not loaded).
    fn parts_of(&self, orderid: &OrderId) -> Vec<Part> {
        self.batches
            .iter()
            .filter_map(|batch| {
                let line = batch.line_of(orderid)?;
                Some(Part {
                    batchref: batch.reference.clone(),
                    qty: line.qty,
                })
            })
            .collect()
    }

    /// The allocation of `line`'s order, if it has one of the same
    /// quantity: sending a line again is answered with it. One of another
    /// quantity is refused.
    fn same_allocation_of(&self, line: &OrderLine) -> Result<Option<Vec<Part>>, DomainError> {
        let mut parts = self.parts_of(&line.orderid);
        if parts.is_empty() {
            if !self
                .closed_parts_of(&line.orderid, Closed::Cancelled)
                .is_empty()
            {
                return Err(DomainError::LineCancelled {
                    orderid: line.orderid.clone(),
                    sku: line.sku.clone(),
                });
            }
            // A shipped line is answered as allocated: it was.
            parts = self.closed_parts_of(&line.orderid, Closed::Shipped);
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let allocated: u64 = parts.iter().map(|part| u64::from(part.qty.get())).sum();
        if allocated != u64::from(line.qty.get()) {
            return Err(DomainError::AlreadyAllocated {
                orderid: line.orderid.clone(),
                sku: line.sku.clone(),
                allocated,
            });
        }
        Ok(Some(parts))
    }

    /// The parts of `orderid`'s line that left their batches as `how`.
    fn closed_parts_of(&self, orderid: &OrderId, how: Closed) -> Vec<Part> {
        self.batches
            .iter()
            .flat_map(|batch| {
                batch
                    .closed
                    .iter()
                    .filter(move |(line, closed)| &line.orderid == orderid && *closed == how)
                    .map(|(line, _)| Part {
                        batchref: batch.reference.clone(),
                        qty: line.qty,
                    })
            })
            .collect()
    }

    /// The allocation policy: of the batches that can take all of `line`,
    /// warehouse stock first, then the earliest shipment, then the oldest.
    fn preferred_batch_for(&self, line: &OrderLine) -> Option<usize> {
        self.batches
            .iter()
            .enumerate()
            .filter(|(_, batch)| batch.can_allocate(line))
            .min_by_key(|(_, batch)| batch.preference())
            .map(|(index, _)| index)
    }

    /// Every change goes through here, so the version moves with the events.
    fn record(&mut self, event: Event) {
        if !matches!(event, Event::OutOfStock(_)) {
            self.version += 1;
        }
        self.events.push(event);
    }
}

#[cfg(test)]
mod tests;
