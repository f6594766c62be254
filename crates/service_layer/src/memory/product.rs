//! A product as the memory store keeps it: its batches' totals and every
//! line, indexed by order, written from the events of each commit.

use chrono::{DateTime, NaiveDate, Utc};
use domain::events::{AllocationCancelled, Deallocated, LineCancelled, Shipped};
use domain::{
    Backorder, Batch, BatchRef, Closed, Event, OrderId, OrderLine, Product, Quantity, Settings,
    Sku, StockLevel,
};
use smallvec::SmallVec;

use super::GrowingMap;
use super::holds::HoldTable;
use crate::ports::{Lines, MovementView};

#[derive(Debug, Default)]
pub(super) struct StoredProduct {
    pub(super) version: u64,
    pub(super) batches: Vec<StoredBatch>,
    /// Indexed by order, like the SQL tables, so loading one order's line
    /// costs the same however many lines the product has. A line has one
    /// part per batch it is on: nearly always one, kept inline.
    pub(super) lines: GrowingMap<OrderId, SmallVec<[StoredLine; 1]>>,
    pub(super) next_line_seq: u64,
    pub(super) settings: Settings,
    /// The stock level last announced (in stock, for a new product).
    pub(super) announced: StockLevel,
    /// Every backorder placed and not filled or withdrawn since, oldest
    /// first: waiting, or cancelled with its order.
    pub(super) backorders: Vec<StoredBackorder>,
}

#[derive(Debug)]
pub(super) struct StoredBackorder {
    pub(super) backorder: Backorder,
    pub(super) cancelled: bool,
}

#[derive(Debug)]
pub(super) struct StoredBatch {
    pub(super) reference: BatchRef,
    pub(super) eta: Option<NaiveDate>,
    /// What it has now: bought, less shipped.
    pub(super) purchased: u64,
    pub(super) allocated: u64,
    /// Its stock ledger, oldest first.
    pub(super) movements: Vec<MovementView>,
}

#[derive(Debug)]
pub(super) struct StoredLine {
    pub(super) batch: usize,
    pub(super) qty: Quantity,
    /// Allocation order, so a batch's lines load oldest first.
    pub(super) seq: u64,
    /// How it left its batch, if it did.
    pub(super) closed: Option<Closed>,
}

impl StoredProduct {
    pub(super) fn to_product(
        &self,
        sku: &Sku,
        lines: Lines<'_>,
        holds: &HoldTable,
        now: DateTime<Utc>,
    ) -> Product {
        let batches = self
            .batches
            .iter()
            .enumerate()
            .map(|(index, b)| {
                Batch::restore(
                    b.reference.clone(),
                    sku.clone(),
                    b.eta,
                    b.purchased,
                    b.allocated,
                    holds.held(sku, index, now),
                )
            })
            .collect();
        let mut product = Product::restore(sku.clone(), self.version, batches)
            .with_settings(self.settings)
            .with_announced_level(self.announced);
        product.load_backorders(self.waiting_backorders().cloned());
        let line = |orderid: &OrderId, stored: &StoredLine| OrderLine {
            orderid: orderid.clone(),
            sku: sku.clone(),
            qty: stored.qty,
        };
        match lines {
            Lines::None => {}
            Lines::OfOrder(orderid) => self.load_order_lines(&mut product, [orderid]),
            Lines::OfOrders(orderids) => self.load_order_lines(&mut product, orderids),
            Lines::OfBatch(reference) => {
                if let Some(index) = self.batch_index(reference) {
                    // The batch's lines, each with its parts on other batches.
                    let mut parts: Vec<_> = self
                        .lines
                        .iter()
                        .filter(|(_, parts)| {
                            parts.iter().any(|p| p.batch == index && p.closed.is_none())
                        })
                        .flat_map(|(orderid, parts)| parts.iter().map(move |part| (orderid, part)))
                        .filter(|(_, part)| part.closed.is_none())
                        .collect();
                    parts.sort_by_key(|(_, l)| l.seq);
                    for (orderid, part) in parts {
                        let on = &self.batches[part.batch].reference;
                        product.load_lines(on, [line(orderid, part)]);
                    }
                    product.load_holds(reference, holds.live_of_batch(sku, index, now));
                }
            }
            Lines::OfHold(hold_id) => {
                for (index, part) in holds.parts_of(hold_id, sku, now) {
                    product.load_holds(&self.batches[index].reference, [part]);
                }
            }
        }
        product
    }

    /// Loads every part of the line of each order that has one.
    fn load_order_lines<'a>(
        &self,
        product: &mut Product,
        orderids: impl IntoIterator<Item = &'a OrderId>,
    ) {
        for orderid in orderids {
            for stored in self.lines.get(orderid).into_iter().flatten() {
                let line = OrderLine {
                    orderid: orderid.clone(),
                    sku: product.sku().clone(),
                    qty: stored.qty,
                };
                let reference = &self.batches[stored.batch].reference;
                match stored.closed {
                    None => product.load_lines(reference, [line]),
                    Some(closed) => product.load_closed(reference, [(line, closed)]),
                }
            }
        }
    }

    pub(super) fn waiting_backorders(&self) -> impl Iterator<Item = &Backorder> {
        let waiting = self.backorders.iter().filter(|stored| !stored.cancelled);
        waiting.map(|stored| &stored.backorder)
    }

    /// The backorder of `orderid`, waiting or cancelled.
    pub(super) fn backorder_of(&self, orderid: &OrderId) -> Option<&StoredBackorder> {
        let mut backorders = self.backorders.iter();
        backorders.find(|stored| &stored.backorder.orderid == orderid)
    }

    pub(super) fn batch_index(&self, reference: &BatchRef) -> Option<usize> {
        self.batches.iter().position(|b| &b.reference == reference)
    }

    /// Writes what one event says happened, at `at`, as the SQL stores do.
    pub(super) fn apply(&mut self, event: Event, at: DateTime<Utc>) {
        match event {
            Event::BatchCreated(e) => self.batches.push(StoredBatch {
                reference: e.reference,
                eta: e.eta,
                purchased: e.qty.get().into(),
                allocated: 0,
                movements: Vec::new(),
            }),
            Event::Allocated(e) => {
                if let Some(index) = self.batch_index(&e.batchref) {
                    self.batches[index].allocated += u64::from(e.qty.get());
                    let parts = self.lines.entry(e.orderid).or_default();
                    // A part joining its line's part on the same batch.
                    let joined = parts
                        .iter_mut()
                        .find(|part| part.batch == index && part.closed.is_none());
                    if let Some(part) = joined {
                        part.qty = part.qty.checked_add(e.qty).unwrap_or(part.qty);
                    } else {
                        parts.push(StoredLine {
                            batch: index,
                            qty: e.qty,
                            seq: self.next_line_seq,
                            closed: None,
                        });
                        self.next_line_seq += 1;
                    }
                }
            }
            Event::Deallocated(Deallocated {
                orderid, batchref, ..
            })
            | Event::AllocationCancelled(AllocationCancelled {
                orderid, batchref, ..
            }) => {
                let index = self.batch_index(&batchref);
                if let Some(parts) = self.lines.get_mut(&orderid) {
                    let allocated =
                        |part: &StoredLine| Some(part.batch) == index && part.closed.is_none();
                    if let Some(at) = parts.iter().position(allocated) {
                        let part = parts.remove(at);
                        self.batches[part.batch].allocated -= u64::from(part.qty.get());
                    }
                    if parts.is_empty() {
                        self.lines.swap_remove(&orderid);
                    }
                }
            }
            Event::BatchQuantityChanged(e) => {
                if let Some(index) = self.batch_index(&e.reference) {
                    self.batches[index].purchased = e.qty;
                }
            }
            Event::StockMoved(e) => {
                if let Some(index) = self.batch_index(&e.reference) {
                    let movement = MovementView::of(&e.movement, at);
                    self.batches[index].movements.push(movement);
                }
            }
            Event::Shipped(Shipped {
                orderid, batchref, ..
            }) => self.close(&orderid, &batchref, Closed::Shipped),
            Event::LineCancelled(LineCancelled {
                orderid, batchref, ..
            }) => self.close(&orderid, &batchref, Closed::Cancelled),
            Event::Backordered(e) => {
                // A cancelled order's line placed again waits anew.
                self.backorders.retain(|b| b.backorder.orderid != e.orderid);
                self.backorders.push(StoredBackorder {
                    backorder: Backorder {
                        orderid: e.orderid,
                        qty: e.qty,
                        number: e.number,
                    },
                    cancelled: false,
                });
            }
            Event::BackorderFilled(e) => {
                self.backorders.retain(|b| b.backorder.orderid != e.orderid);
            }
            Event::BackorderWithdrawn(e) if e.cancelled => {
                let waiting = self
                    .backorders
                    .iter_mut()
                    .find(|b| b.backorder.orderid == e.orderid);
                if let Some(stored) = waiting {
                    stored.cancelled = true;
                }
            }
            Event::BackorderWithdrawn(e) => {
                self.backorders.retain(|b| b.backorder.orderid != e.orderid);
            }
            Event::SettingsChanged(e) => self.settings = e.settings,
            Event::StockLevelChanged(e) => self.announced = e.to,
            // The hold table keeps holds (`Tables::apply`).
            Event::OutOfStock(_)
            | Event::Held(_)
            | Event::HoldExtended(_)
            | Event::HoldReleased(_)
            | Event::HoldBroken(_)
            | Event::HoldConverted(_) => {}
        }
    }

    /// The allocated part of `orderid` on batch `batchref` leaves it: the
    /// batch allocates it no more, and has it no more if it shipped.
    fn close(&mut self, orderid: &OrderId, batchref: &BatchRef, how: Closed) {
        let Some(index) = self.batch_index(batchref) else {
            return;
        };
        let mut parts = self.lines.get_mut(orderid).into_iter().flatten();
        if let Some(part) = parts.find(|part| part.batch == index && part.closed.is_none()) {
            part.closed = Some(how);
            let batch = &mut self.batches[index];
            batch.allocated -= u64::from(part.qty.get());
            if how == Closed::Shipped {
                batch.purchased -= u64::from(part.qty.get());
            }
        }
    }
}
