//! Whole orders (beyond the book): an order's lines are of several
//! products, and either every line is allocated or none is.
//!
//! No product can decide that alone, so each decides in two steps: where
//! its line would go, changing nothing ([`Product::placement`]), then,
//! once every line of the order has a place, taking it
//! ([`Product::place`]). The handler takes the first step for every line
//! before the second for any, in one unit of work that commits them all
//! or none (docs/architecture.md, "Whole orders").

use crate::events::{Event, HoldConverted};
use crate::model::{DomainError, OrderLine, Product};
use crate::values::{BatchRef, HoldId, Quantity, Sku};

/// Units of a line on one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub batchref: BatchRef,
    pub qty: Quantity,
}

/// A line that no batch can take whole: how much it asked for, and the most
/// any one batch of its product could give it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: Quantity,
    pub available: u64,
}

/// Where a line of an order goes, found without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a placement changes nothing until it is placed"]
pub enum Placement {
    /// The line is allocated already, with the same quantity: the order
    /// was sent again, and its answer is the allocation made the first time.
    Allocated { sku: Sku, parts: Vec<Part> },
    /// The line fits: whole on one batch, or split over several.
    Fits { line: OrderLine, parts: Vec<Part> },
    /// A live checkout hold holds exactly the line: its units become the
    /// line's allocation.
    Held {
        line: OrderLine,
        hold_id: HoldId,
        parts: Vec<Part>,
    },
    /// Not enough stock for the line, and it waits as a backorder: it did
    /// already (`waiting`, the order was sent again), or it will, within
    /// the SKU's backorder limit.
    Backorder { line: OrderLine, waiting: bool },
    /// Not enough stock for the line.
    Short(Shortage),
}

impl Placement {
    pub fn sku(&self) -> &Sku {
        match self {
            Self::Allocated { sku, .. } => sku,
            Self::Fits { line, .. } | Self::Held { line, .. } | Self::Backorder { line, .. } => {
                &line.sku
            }
            Self::Short(shortage) => &shortage.sku,
        }
    }

    pub fn shortage(&self) -> Option<&Shortage> {
        match self {
            Self::Short(shortage) => Some(shortage),
            Self::Allocated { .. }
            | Self::Fits { .. }
            | Self::Held { .. }
            | Self::Backorder { .. } => None,
        }
    }
}

impl Product {
    /// Where `line` would go, by the book's policy (warehouse first, then
    /// earliest ETA, then creation order), without changing anything and
    /// without recording [`OutOfStock`](crate::events::OutOfStock): an order
    /// refused whole tells its client, not the buyers.
    ///
    /// The line goes whole to the preferred batch that can take it. If none
    /// can and `split` allows, it is spread over batches in the same order,
    /// each giving what it has, and is short only if all of them together
    /// cannot cover it; the shortage's `available` is what the line could
    /// get: the best batch's stock, or with `split` every batch's.
    ///
    /// Needs the lines of `line.orderid` loaded. A line allocated already
    /// with another quantity is refused, as by [`Product::allocate`].
    ///
    /// With `hold`, a live hold the order converts (the caller checks that
    /// it is live), the line goes exactly where the hold's part is; a line
    /// the hold does not hold with that quantity, or one allocated
    /// already, is refused. Needs the hold's parts loaded too.
    pub fn placement(
        &self,
        line: &OrderLine,
        split: bool,
        hold: Option<&HoldId>,
    ) -> Result<Placement, DomainError> {
        if let Some(hold_id) = hold {
            return self.conversion(line, hold_id);
        }
        if let Some(parts) = self.same_allocation_of(line)? {
            return Ok(Placement::Allocated {
                sku: line.sku.clone(),
                parts,
            });
        }
        if self.waits_already(line)? {
            return Ok(Placement::Backorder {
                line: line.clone(),
                waiting: true,
            });
        }
        if let Some(index) = self.preferred_batch_for(line) {
            return Ok(Placement::Fits {
                line: line.clone(),
                parts: vec![Part {
                    batchref: self.batches[index].reference.clone(),
                    qty: line.qty,
                }],
            });
        }
        let available = self.batches.iter().map(|batch| batch.available_quantity());
        let available = if split {
            available.sum()
        } else {
            available.max().unwrap_or(0)
        };
        if split && available >= u64::from(line.qty.get()) {
            return Ok(Placement::Fits {
                line: line.clone(),
                parts: self.spread(line),
            });
        }
        if self.may_backorder(line.qty) {
            return Ok(Placement::Backorder {
                line: line.clone(),
                waiting: false,
            });
        }
        Ok(Placement::Short(Shortage {
            sku: line.sku.clone(),
            requested: line.qty,
            available,
        }))
    }

    fn conversion(&self, line: &OrderLine, hold_id: &HoldId) -> Result<Placement, DomainError> {
        let allocated = self.parts_of(&line.orderid);
        if !allocated.is_empty() {
            return Err(DomainError::AlreadyAllocated {
                orderid: line.orderid.clone(),
                sku: line.sku.clone(),
                allocated: allocated.iter().map(|p| u64::from(p.qty.get())).sum(),
            });
        }
        let parts: Vec<Part> = self
            .held_parts(hold_id)
            .into_iter()
            .map(|(part, _)| part)
            .collect();
        let held: u64 = parts.iter().map(|p| u64::from(p.qty.get())).sum();
        if held != u64::from(line.qty.get()) {
            return Err(self.mismatch(hold_id));
        }
        Ok(Placement::Held {
            line: line.clone(),
            hold_id: hold_id.clone(),
            parts,
        })
    }

    /// `line` spread over the batches in policy order, each giving all it
    /// has until the line is covered.
    fn spread(&self, line: &OrderLine) -> Vec<Part> {
        let mut by_preference: Vec<_> = self.batches.iter().collect();
        // A stable sort: creation order still breaks ties.
        by_preference.sort_by_key(|batch| batch.preference());
        let mut wanted = u64::from(line.qty.get());
        let mut parts = Vec::new();
        for batch in by_preference {
            let taken = wanted.min(batch.available_quantity());
            let Ok(qty) = Quantity::parse(taken.into(), "qty") else {
                continue; // nothing left on this batch
            };
            parts.push(Part {
                batchref: batch.reference.clone(),
                qty,
            });
            wanted -= taken;
            if wanted == 0 {
                break;
            }
        }
        parts
    }

    /// Takes the place [`Product::placement`] found, recording an
    /// [`Allocated`](crate::events::Allocated) per part, and returns the
    /// line's parts: none for a backorder. The product must not have
    /// changed in between: a place no longer free is refused, changing
    /// nothing.
    pub fn place(&mut self, placement: Placement) -> Result<Vec<Part>, DomainError> {
        let (line, parts) = match placement {
            Placement::Allocated { parts, .. } => return Ok(parts),
            Placement::Backorder { waiting: true, .. } => return Ok(Vec::new()),
            Placement::Backorder {
                line,
                waiting: false,
            } => {
                if !self.may_backorder(line.qty) {
                    return Err(DomainError::NoPlace {
                        sku: line.sku,
                        requested: line.qty,
                    });
                }
                self.backorder(line);
                return Ok(Vec::new());
            }
            Placement::Short(shortage) => {
                return Err(DomainError::NoPlace {
                    sku: shortage.sku,
                    requested: shortage.requested,
                });
            }
            Placement::Held {
                line,
                hold_id,
                parts,
            } => return self.convert(line, &hold_id, parts),
            Placement::Fits { line, parts } => (line, parts),
        };
        let part_line = |part: &Part| OrderLine {
            qty: part.qty,
            ..line.clone()
        };
        let mut places = Vec::with_capacity(parts.len());
        for part in &parts {
            let place = self.batches.iter().position(|batch| {
                batch.reference == part.batchref && batch.can_allocate(&part_line(part))
            });
            places.push(place.ok_or_else(|| DomainError::NoPlace {
                sku: line.sku.clone(),
                requested: line.qty,
            })?);
        }
        for (index, part) in places.into_iter().zip(&parts) {
            self.allocate_to(index, part_line(part));
        }
        Ok(parts)
    }

    /// Turns the hold's parts into the line's allocation, recording
    /// [`HoldConverted`] then [`Allocated`](crate::events::Allocated) for
    /// each: the units move from held to allocated, and no one else's
    /// availability changes.
    fn convert(
        &mut self,
        line: OrderLine,
        hold_id: &HoldId,
        parts: Vec<Part>,
    ) -> Result<Vec<Part>, DomainError> {
        let held = self.held_parts(hold_id);
        let still_held = parts
            .iter()
            .all(|part| held.iter().any(|(at, loaded)| at == part && loaded.live));
        if !still_held || held.len() != parts.len() {
            return Err(self.mismatch(hold_id));
        }
        for part in &parts {
            let Some(index) = self
                .batches
                .iter()
                .position(|batch| batch.reference == part.batchref)
            else {
                continue; // unreachable: the part was found on this batch
            };
            self.batches[index].release_hold(hold_id);
            self.record(Event::HoldConverted(HoldConverted {
                hold_id: hold_id.clone(),
                sku: self.sku.clone(),
                batchref: part.batchref.clone(),
                qty: part.qty,
            }));
            let part_line = OrderLine {
                qty: part.qty,
                ..line.clone()
            };
            self.allocate_to(index, part_line);
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests;
