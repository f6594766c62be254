//! Checkout holds (beyond the book): units of particular batches set aside
//! while a customer pays, for anyone else as good as allocated until the
//! hold expires, is released, or becomes the order's allocation.
//!
//! A hold spans products, as an order does, and is placed the same way:
//! every line's place found first ([`Product::hold_placement`]), then taken
//! ([`Product::hold`]), in one unit of work. Each product keeps its share:
//! the live held total of each batch, and the parts of the holds a command
//! names. The domain has no clock: the repository counts in a batch's held
//! total only the holds live when it read them, and marks each part it
//! loads live or not, so that expiry is exact without anything sweeping.

use chrono::{DateTime, Utc};

use crate::events::{Event, Held, HoldExtended, HoldReleased};
use crate::model::{DomainError, Part, Product, Shortage};
use crate::values::{HoldId, Quantity};

/// Units of one batch that a hold sets aside, as loaded for a command that
/// names the hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPart {
    pub hold_id: HoldId,
    pub qty: Quantity,
    pub expires_at: DateTime<Utc>,
    /// Whether the hold was live (not expired) when the part was loaded,
    /// and so counts in its batch's held total.
    pub live: bool,
}

impl Product {
    /// Where `qty` units of a hold would go: whole, on the batch the
    /// allocation policy prefers among those with room. A hold, unlike an
    /// order, is never split. Short, it says the most one batch has.
    pub fn hold_placement(&self, qty: Quantity) -> Result<Part, Shortage> {
        let preferred = self
            .batches
            .iter()
            .filter(|batch| batch.available_quantity() >= u64::from(qty.get()))
            .min_by_key(|batch| batch.preference());
        match preferred {
            Some(batch) => Ok(Part {
                batchref: batch.reference.clone(),
                qty,
            }),
            None => Err(Shortage {
                sku: self.sku.clone(),
                requested: qty,
                available: self
                    .batches
                    .iter()
                    .map(|batch| batch.available_quantity())
                    .max()
                    .unwrap_or(0),
            }),
        }
    }

    /// Sets aside `part` for `hold_id` until `expires_at`, recording
    /// [`Held`]. The product must not have changed since
    /// [`Product::hold_placement`] found the place: a place no longer free
    /// is refused, changing nothing.
    pub fn hold(
        &mut self,
        hold_id: &HoldId,
        part: Part,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let Some(batch) = self.batches.iter_mut().find(|batch| {
            batch.reference == part.batchref
                && batch.available_quantity() >= u64::from(part.qty.get())
        }) else {
            return Err(DomainError::NoPlace {
                sku: self.sku.clone(),
                requested: part.qty,
            });
        };
        batch.hold(HeldPart {
            hold_id: hold_id.clone(),
            qty: part.qty,
            expires_at,
            live: true,
        });
        self.record(Event::Held(Held {
            hold_id: hold_id.clone(),
            sku: self.sku.clone(),
            batchref: part.batchref,
            qty: part.qty,
            expires_at,
        }));
        Ok(())
    }

    /// The loaded parts of `hold_id` on this product, with their batches.
    pub fn held_parts(&self, hold_id: &HoldId) -> Vec<(Part, &HeldPart)> {
        self.batches
            .iter()
            .flat_map(|batch| {
                batch
                    .holds
                    .iter()
                    .filter(|part| &part.hold_id == hold_id)
                    .map(|part| {
                        let at = Part {
                            batchref: batch.reference.clone(),
                            qty: part.qty,
                        };
                        (at, part)
                    })
            })
            .collect()
    }

    /// Moves the expiry of this product's parts of `hold_id`, recording
    /// [`HoldExtended`]. The caller decides whether the hold may still be
    /// extended (it must be live); a product holding none of it changes
    /// nothing.
    pub fn extend_hold(&mut self, hold_id: &HoldId, expires_at: DateTime<Utc>) {
        let mut extended = false;
        for batch in &mut self.batches {
            for part in batch.holds.iter_mut().filter(|p| &p.hold_id == hold_id) {
                part.expires_at = expires_at;
                extended = true;
            }
        }
        if extended {
            self.record(Event::HoldExtended(HoldExtended {
                hold_id: hold_id.clone(),
                sku: self.sku.clone(),
                expires_at,
            }));
        }
    }

    /// Gives back this product's parts of `hold_id` (live or expired),
    /// recording [`HoldReleased`] for each; returns them. Releasing again
    /// finds nothing and changes nothing.
    pub fn release_hold(&mut self, hold_id: &HoldId) -> Vec<Part> {
        let mut released = Vec::new();
        for batch in &mut self.batches {
            if let Some(part) = batch.release_hold(hold_id) {
                released.push(Part {
                    batchref: batch.reference.clone(),
                    qty: part.qty,
                });
            }
        }
        for part in &released {
            self.record(Event::HoldReleased(HoldReleased {
                hold_id: hold_id.clone(),
                sku: self.sku.clone(),
                batchref: part.batchref.clone(),
                qty: part.qty,
            }));
        }
        released
    }

    /// A line that does not match this product's part of `hold_id`.
    pub(super) fn mismatch(&self, hold_id: &HoldId) -> DomainError {
        DomainError::HoldMismatch {
            hold_id: hold_id.clone(),
            sku: self.sku.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::events::{Allocated, HoldConverted};
    use crate::fixtures::{batchref, orderid, qty, sku};
    use crate::model::{Allocation, OrderLine, Placement};
    use crate::values::HoldId;

    fn hold_id(name: &str) -> HoldId {
        HoldId::parse(name).expect("hold id")
    }

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, minute, 0)
            .single()
            .expect("a time")
    }

    /// LAMP with 10 in the warehouse, events cleared.
    fn lamps() -> Product {
        let mut product = Product::new(sku("LAMP"));
        product
            .add_batch(batchref("home"), qty(10), None)
            .expect("batch");
        product.take_events();
        product
    }

    fn held(product: &mut Product, name: &str, units: u32) {
        let part = product.hold_placement(qty(units)).expect("room");
        product.hold(&hold_id(name), part, at(15)).expect("held");
    }

    fn home(product: &Product) -> &crate::model::Batch {
        product.batch(&batchref("home")).expect("batch")
    }

    #[test]
    fn a_hold_sets_units_aside_from_everyone_else() {
        let mut product = lamps();
        held(&mut product, "h1", 7);
        assert_eq!(
            product.take_events(),
            [Event::Held(Held {
                hold_id: hold_id("h1"),
                sku: sku("LAMP"),
                batchref: batchref("home"),
                qty: qty(7),
                expires_at: at(15),
            })]
        );
        assert_eq!(
            (
                home(&product).held_quantity(),
                home(&product).available_quantity()
            ),
            (7, 3)
        );
        let line = OrderLine {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
            qty: qty(4),
        };
        assert_eq!(
            product.allocate(line),
            Ok(Allocation::OutOfStock),
            "held units are not free"
        );
        assert_eq!(
            product.hold_placement(qty(4)),
            Err(Shortage {
                sku: sku("LAMP"),
                requested: qty(4),
                available: 3
            }),
            "nor free for another hold"
        );
    }

    #[test]
    fn releasing_gives_the_units_back_once() {
        let mut product = lamps();
        held(&mut product, "h1", 7);
        product.take_events();
        let released = product.release_hold(&hold_id("h1"));
        assert_eq!(
            released,
            [Part {
                batchref: batchref("home"),
                qty: qty(7)
            }]
        );
        assert_eq!(home(&product).available_quantity(), 10);
        assert_eq!(product.take_events().len(), 1);
        assert_eq!(product.release_hold(&hold_id("h1")), []);
        assert!(product.pending_events().is_empty());
    }

    #[test]
    fn an_expired_part_counts_for_nothing_and_its_release_frees_nothing() {
        let mut product = lamps();
        product.load_holds(
            &batchref("home"),
            [HeldPart {
                hold_id: hold_id("old"),
                qty: qty(7),
                expires_at: at(0),
                live: false,
            }],
        );
        assert_eq!(home(&product).available_quantity(), 10);
        assert_eq!(product.release_hold(&hold_id("old")).len(), 1);
        assert_eq!(home(&product).available_quantity(), 10);
    }

    #[test]
    fn extending_moves_the_expiry_of_every_part() {
        let mut product = lamps();
        held(&mut product, "h1", 2);
        product.take_events();
        product.extend_hold(&hold_id("h1"), at(45));
        let parts = product.held_parts(&hold_id("h1"));
        assert_eq!(parts[0].1.expires_at, at(45));
        assert_eq!(
            product.take_events(),
            [Event::HoldExtended(HoldExtended {
                hold_id: hold_id("h1"),
                sku: sku("LAMP"),
                expires_at: at(45),
            })]
        );
        product.extend_hold(&hold_id("unknown"), at(50));
        assert!(product.pending_events().is_empty());
    }

    #[test]
    fn converting_moves_the_held_units_to_the_order() {
        let mut product = lamps();
        held(&mut product, "h1", 7);
        product.take_events();
        let line = OrderLine {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
            qty: qty(7),
        };
        let h1 = hold_id("h1");
        let placement = product.placement(&line, false, Some(&h1)).expect("placed");
        assert!(matches!(placement, Placement::Held { .. }), "{placement:?}");
        let parts = product.place(placement).expect("converted");
        assert_eq!(parts.len(), 1);
        assert_eq!(
            product.take_events(),
            [
                Event::HoldConverted(HoldConverted {
                    hold_id: h1.clone(),
                    sku: sku("LAMP"),
                    batchref: batchref("home"),
                    qty: qty(7),
                }),
                Event::Allocated(Allocated {
                    orderid: orderid("o1"),
                    sku: sku("LAMP"),
                    qty: qty(7),
                    batchref: batchref("home"),
                })
            ]
        );
        let batch = home(&product);
        assert_eq!(
            (
                batch.allocated_quantity(),
                batch.held_quantity(),
                batch.available_quantity()
            ),
            (7, 0, 3)
        );
        assert!(product.held_parts(&h1).is_empty());
    }

    #[test]
    fn converting_other_lines_than_the_hold_holds_is_refused() {
        let mut product = lamps();
        held(&mut product, "h1", 7);
        let line = OrderLine {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
            qty: qty(6),
        };
        assert_eq!(
            product.placement(&line, false, Some(&hold_id("h1"))),
            Err(DomainError::HoldMismatch {
                hold_id: hold_id("h1"),
                sku: sku("LAMP")
            })
        );
    }

    #[test]
    fn a_shrinking_batch_gives_up_its_newest_holds_before_any_line() {
        let mut product = lamps();
        let line = OrderLine {
            orderid: orderid("o1"),
            sku: sku("LAMP"),
            qty: qty(4),
        };
        product.allocate(line).expect("allocated");
        held(&mut product, "older", 2);
        held(&mut product, "newer", 3);
        product.take_events();

        product
            .change_batch_quantity(&batchref("home"), qty(7))
            .expect("changed");
        let events = product.take_events();
        assert!(
            matches!(&events[0], Event::HoldBroken(e) if e.hold_id == hold_id("newer")),
            "{events:?}"
        );
        assert!(
            matches!(events[1], Event::BatchQuantityChanged(_)),
            "{events:?}"
        );
        assert_eq!(home(&product).held_quantity(), 2);
        assert_eq!(home(&product).allocated_quantity(), 4);
    }
}
