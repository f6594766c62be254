//! Whole orders (beyond the book): an order's lines are of several
//! products, and either every line is allocated or none is.
//!
//! No product can decide that alone, so each decides in two steps: where
//! its line would go, changing nothing ([`Product::placement`]), then,
//! once every line of the order has a place, taking it
//! ([`Product::place`]). The handler takes the first step for every line
//! before the second for any, in one unit of work that commits them all
//! or none (docs/architecture.md, "Whole orders").

use crate::model::{DomainError, OrderLine, Product};
use crate::values::{BatchRef, Quantity, Sku};

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
    /// A batch can take the line.
    Fits { line: OrderLine, batchref: BatchRef },
    /// No batch can take the line whole.
    Short(Shortage),
}

impl Placement {
    pub fn sku(&self) -> &Sku {
        match self {
            Self::Allocated { sku, .. } => sku,
            Self::Fits { line, .. } => &line.sku,
            Self::Short(shortage) => &shortage.sku,
        }
    }

    pub fn shortage(&self) -> Option<&Shortage> {
        match self {
            Self::Short(shortage) => Some(shortage),
            Self::Allocated { .. } | Self::Fits { .. } => None,
        }
    }
}

impl Product {
    /// Where `line` would go, by the book's policy (warehouse first, then
    /// earliest ETA, then creation order), without changing anything and
    /// without recording [`OutOfStock`](crate::events::OutOfStock): an order
    /// refused whole tells its client, not the buyers. Needs the lines of
    /// `line.orderid` loaded. A line allocated already with another quantity
    /// is refused, as by [`Product::allocate`].
    pub fn placement(&self, line: &OrderLine) -> Result<Placement, DomainError> {
        if let Some((batch, existing)) = self.same_allocation_of(line)? {
            return Ok(Placement::Allocated {
                sku: line.sku.clone(),
                parts: vec![Part {
                    batchref: batch.reference.clone(),
                    qty: existing.qty,
                }],
            });
        }
        Ok(match self.preferred_batch_for(line) {
            Some(index) => Placement::Fits {
                line: line.clone(),
                batchref: self.batches[index].reference.clone(),
            },
            None => Placement::Short(Shortage {
                sku: line.sku.clone(),
                requested: line.qty,
                available: self
                    .batches
                    .iter()
                    .map(|batch| batch.available_quantity())
                    .max()
                    .unwrap_or(0),
            }),
        })
    }

    /// Takes the place [`Product::placement`] found, recording
    /// [`Allocated`], and returns the line's parts. The product must not
    /// have changed in between: a place no longer free is refused, changing
    /// nothing.
    pub fn place(&mut self, placement: Placement) -> Result<Vec<Part>, DomainError> {
        let (line, batchref) = match placement {
            Placement::Allocated { parts, .. } => return Ok(parts),
            Placement::Short(shortage) => {
                return Err(DomainError::NoPlace {
                    sku: shortage.sku,
                    requested: shortage.requested,
                });
            }
            Placement::Fits { line, batchref } => (line, batchref),
        };
        let index = self
            .batches
            .iter()
            .position(|batch| batch.reference == batchref && batch.can_allocate(&line))
            .ok_or_else(|| DomainError::NoPlace {
                sku: line.sku.clone(),
                requested: line.qty,
            })?;
        let qty = line.qty;
        let batchref = self.allocate_to(index, line);
        Ok(vec![Part { batchref, qty }])
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::events::{Allocated, Event};
    use crate::fixtures::{batchref, orderid, qty, sku};

    fn line(order: &str, units: u32) -> OrderLine {
        OrderLine {
            orderid: orderid(order),
            sku: sku("SOFA"),
            qty: qty(units),
        }
    }

    /// SOFA with a shipment of 10 due, and 5 in the warehouse (created
    /// after it), events cleared.
    fn sofa() -> Product {
        let due = NaiveDate::from_ymd_opt(2026, 12, 24).expect("date");
        let mut product = Product::new(sku("SOFA"));
        product
            .add_batch(batchref("ship"), qty(10), Some(due))
            .expect("batch");
        product
            .add_batch(batchref("home"), qty(5), None)
            .expect("batch");
        product.take_events();
        product
    }

    #[test]
    fn a_placement_follows_the_books_policy_and_changes_nothing() {
        let product = sofa();
        let before = product.clone();
        let placement = product.placement(&line("o1", 5)).expect("placed");
        assert_eq!(
            placement,
            Placement::Fits {
                line: line("o1", 5),
                batchref: batchref("home")
            }
        );
        assert_eq!(product, before);
    }

    #[test]
    fn placing_allocates_the_line_where_it_was_placed() {
        let mut product = sofa();
        let placement = product.placement(&line("o1", 6)).expect("placed");
        let parts = product.place(placement).expect("taken");
        assert_eq!(
            parts,
            [Part {
                batchref: batchref("ship"),
                qty: qty(6)
            }]
        );
        assert_eq!(
            product.take_events(),
            [Event::Allocated(Allocated {
                orderid: orderid("o1"),
                sku: sku("SOFA"),
                qty: qty(6),
                batchref: batchref("ship"),
            })]
        );
        assert_eq!(product.version(), 3);
    }

    #[test]
    fn a_line_no_batch_can_take_whole_is_short_by_what_the_best_batch_has() {
        let mut product = sofa();
        let placement = product.placement(&line("o1", 11)).expect("answered");
        assert_eq!(
            placement.shortage(),
            Some(&Shortage {
                sku: sku("SOFA"),
                requested: qty(11),
                available: 10,
            })
        );
        // No out-of-stock event: a refused order tells its client only.
        assert!(product.pending_events().is_empty());
        assert_eq!(
            product.place(placement),
            Err(DomainError::NoPlace {
                sku: sku("SOFA"),
                requested: qty(11)
            })
        );
        assert!(product.pending_events().is_empty());
    }

    #[test]
    fn a_line_sent_again_is_answered_with_its_allocation_and_changes_nothing() {
        let mut product = sofa();
        let first = product.placement(&line("o1", 2)).expect("placed");
        product.place(first).expect("taken");
        product.take_events();
        let version = product.version();

        let again = product.placement(&line("o1", 2)).expect("placed");
        assert_eq!(
            product.place(again),
            Ok(vec![Part {
                batchref: batchref("home"),
                qty: qty(2)
            }])
        );
        assert!(product.pending_events().is_empty());
        assert_eq!(product.version(), version);

        assert!(matches!(
            product.placement(&line("o1", 3)),
            Err(DomainError::AlreadyAllocated { .. })
        ));
    }

    #[test]
    fn a_place_taken_in_between_is_refused_and_changes_nothing() {
        let mut product = sofa();
        let placement = product.placement(&line("o1", 5)).expect("placed");
        product
            .allocate(line("o2", 1))
            .expect("allocated")
            .expect("to a batch");
        let before = product.clone();
        assert!(matches!(
            product.place(placement),
            Err(DomainError::NoPlace { .. })
        ));
        assert_eq!(product, before);
    }
}
