//! Shipping and cancelling (beyond the book): an allocated line leaves the
//! warehouse, or its order is cancelled. Either way it stops being
//! allocated and stays the order's, as shipped or cancelled.
//!
//! Shipping an order spans products, so each decides in two steps, as an
//! order's placement does: what would ship, refusing before anything
//! changes ([`Product::shipment`]), then shipping it ([`Product::ship`]).

#[cfg(test)]
mod tests;

use crate::events::{Event, LineCancelled, Shipped};
use crate::model::{Closed, DomainError, Part, Product, Reason};
use crate::values::OrderId;

/// What shipping a line would do, found without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a shipment changes nothing until it is shipped"]
pub enum Shipment {
    /// These parts leave their batches.
    Leaves { orderid: OrderId, parts: Vec<Part> },
    /// The line shipped already: shipping again changes nothing.
    Shipped { parts: Vec<Part> },
}

impl Product {
    /// What shipping `orderid`'s line would do. Refused when the line is
    /// not allocated (cancelled, or never), or when a part of it is on a
    /// batch that has not arrived. Needs the order's lines loaded.
    pub fn shipment(&self, orderid: &OrderId) -> Result<Shipment, DomainError> {
        let parts = self.parts_of(orderid);
        if parts.is_empty() {
            let shipped = self.closed_parts_of(orderid, Closed::Shipped);
            if shipped.is_empty() {
                return Err(DomainError::NotAllocated {
                    orderid: orderid.clone(),
                    sku: self.sku.clone(),
                });
            }
            return Ok(Shipment::Shipped { parts: shipped });
        }
        for part in &parts {
            if self.batch(&part.batchref).is_some_and(|b| b.eta.is_some()) {
                return Err(DomainError::NotArrived {
                    orderid: orderid.clone(),
                    sku: self.sku.clone(),
                    batchref: part.batchref.clone(),
                });
            }
        }
        Ok(Shipment::Leaves {
            orderid: orderid.clone(),
            parts,
        })
    }

    /// Ships what [`Product::shipment`] found, recording [`Shipped`] and
    /// its movement ([`Reason::Shipment`]) for each part: each batch has the
    /// line's units less, and allocates them no more. Returns the line's
    /// parts.
    pub fn ship(&mut self, shipment: Shipment) -> Vec<Part> {
        let (orderid, parts) = match shipment {
            Shipment::Shipped { parts } => return parts,
            Shipment::Leaves { orderid, parts } => (orderid, parts),
        };
        let mut shipped = Vec::new();
        for (index, batch) in self.batches.iter_mut().enumerate() {
            if let Some(line) = batch.deallocate(&orderid) {
                batch.purchased = batch.purchased.saturating_sub(u64::from(line.qty.get()));
                let event = Shipped {
                    orderid: orderid.clone(),
                    sku: line.sku.clone(),
                    batchref: batch.reference.clone(),
                    qty: line.qty,
                };
                shipped.push((index, event));
                batch.closed.push((line, Closed::Shipped));
            }
        }
        for (index, event) in shipped {
            let delta = -i64::from(event.qty.get());
            self.record(Event::Shipped(event));
            self.record_movement(index, delta, Reason::Shipment, None, Some(orderid.clone()));
        }
        parts
    }

    /// Cancels `orderid`'s line if it is allocated, recording
    /// [`LineCancelled`] for each part: its stock is free again, and it is
    /// not reallocated. A line waiting as a backorder is withdrawn. A
    /// shipped line stays shipped; cancelling again changes nothing.
    /// Returns the parts cancelled now. Needs the order's lines loaded.
    pub fn cancel(&mut self, orderid: &OrderId) -> Vec<Part> {
        self.withdraw_backorder(orderid, true);
        let mut cancelled = Vec::new();
        for batch in &mut self.batches {
            if let Some(line) = batch.deallocate(orderid) {
                cancelled.push(LineCancelled {
                    orderid: orderid.clone(),
                    sku: line.sku.clone(),
                    batchref: batch.reference.clone(),
                    qty: line.qty,
                });
                batch.closed.push((line, Closed::Cancelled));
            }
        }
        let parts = cancelled
            .iter()
            .map(|e| Part {
                batchref: e.batchref.clone(),
                qty: e.qty,
            })
            .collect();
        for event in cancelled {
            self.record(Event::LineCancelled(event));
        }
        parts
    }
}
