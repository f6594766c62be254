//! The memory store's checkout holds: every part by hold (what commands and
//! queries naming a hold read), and each batch's active parts by expiry
//! (what a load counts as held), so that neither costs more as expired and
//! ended holds pile up.

use std::collections::BTreeMap;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use domain::events::{HoldBroken, HoldReleased};
use domain::{Event, HeldPart, HoldId, Quantity, Sku};
use foldhash::HashMap;
use smallvec::SmallVec;

use super::GrowingMap;
use crate::ports::HoldState;

/// Where an active part sits among its batch's: its expiry, then its age.
type Expiry = (DateTime<Utc>, u64);

/// A batch's active parts, by [`Expiry`].
type ActiveParts = BTreeMap<Expiry, (HoldId, Quantity)>;

#[derive(Debug, Default)]
pub(super) struct HoldTable {
    by_hold: GrowingMap<HoldId, SmallVec<[StoredHoldPart; 1]>>,
    /// The active parts of each batch, `(sku, batch index)`, by expiry and
    /// then age: those live at a time are one range.
    active: HashMap<(Sku, usize), ActiveParts>,
    next_seq: u64,
}

#[derive(Debug)]
pub(super) struct StoredHoldPart {
    pub sku: Sku,
    pub batch: usize,
    pub qty: Quantity,
    pub expires_at: DateTime<Utc>,
    pub state: HoldState,
    /// Placing order, so that a batch's holds load oldest first.
    seq: u64,
}

/// After `now`: the live part of a batch's active parts.
fn live_after(now: DateTime<Utc>) -> (Bound<Expiry>, Bound<Expiry>) {
    (Bound::Excluded((now, u64::MAX)), Bound::Unbounded)
}

impl HoldTable {
    /// Units of the batch set aside by holds live at `now`.
    pub fn held(&self, sku: &Sku, batch: usize, now: DateTime<Utc>) -> u64 {
        self.active
            .get(&(sku.clone(), batch))
            .map(|parts| {
                parts
                    .range(live_after(now))
                    .map(|(_, (_, qty))| u64::from(qty.get()))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The batch's parts live at `now`, oldest first: what shrinking it needs.
    pub fn live_of_batch(&self, sku: &Sku, batch: usize, now: DateTime<Utc>) -> Vec<HeldPart> {
        let Some(parts) = self.active.get(&(sku.clone(), batch)) else {
            return Vec::new();
        };
        let mut live: Vec<_> = parts.range(live_after(now)).collect();
        live.sort_by_key(|((_, seq), _)| *seq);
        live.into_iter()
            .map(|((expires_at, _), (hold_id, qty))| HeldPart {
                hold_id: hold_id.clone(),
                qty: *qty,
                expires_at: *expires_at,
                live: true,
            })
            .collect()
    }

    /// The active parts of `hold_id` on product `sku`, each with its batch.
    pub fn parts_of(
        &self,
        hold_id: &HoldId,
        sku: &Sku,
        now: DateTime<Utc>,
    ) -> Vec<(usize, HeldPart)> {
        self.by_hold
            .get(hold_id)
            .into_iter()
            .flatten()
            .filter(|part| &part.sku == sku && part.state == HoldState::Active)
            .map(|part| {
                let held = HeldPart {
                    hold_id: hold_id.clone(),
                    qty: part.qty,
                    expires_at: part.expires_at,
                    live: part.expires_at > now,
                };
                (part.batch, held)
            })
            .collect()
    }

    /// Every part of `hold_id`, whatever became of it.
    pub fn all_parts_of(&self, hold_id: &HoldId) -> &[StoredHoldPart] {
        self.by_hold
            .get(hold_id)
            .map_or(&[], |parts| parts.as_slice())
    }

    /// Writes what a hold event says happened; `batch` finds a batch's
    /// index in product `sku`.
    pub fn apply(
        &mut self,
        sku: &Sku,
        event: &Event,
        batch: impl Fn(&domain::BatchRef) -> Option<usize>,
    ) {
        match event {
            Event::Held(e) => {
                let Some(index) = batch(&e.batchref) else {
                    return;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                self.active
                    .entry((sku.clone(), index))
                    .or_default()
                    .insert((e.expires_at, seq), (e.hold_id.clone(), e.qty));
                self.by_hold
                    .entry(e.hold_id.clone())
                    .or_default()
                    .push(StoredHoldPart {
                        sku: sku.clone(),
                        batch: index,
                        qty: e.qty,
                        expires_at: e.expires_at,
                        state: HoldState::Active,
                        seq,
                    });
            }
            Event::HoldExtended(e) => {
                for part in self.by_hold.get_mut(&e.hold_id).into_iter().flatten() {
                    if &part.sku == sku && part.state == HoldState::Active {
                        if let Some(parts) = self.active.get_mut(&(sku.clone(), part.batch)) {
                            if let Some(held) = parts.remove(&(part.expires_at, part.seq)) {
                                parts.insert((e.expires_at, part.seq), held);
                            }
                        }
                        part.expires_at = e.expires_at;
                    }
                }
            }
            Event::HoldReleased(HoldReleased {
                hold_id, batchref, ..
            })
            | Event::HoldBroken(HoldBroken {
                hold_id, batchref, ..
            }) => self.end(sku, hold_id, batch(batchref), HoldState::Released),
            Event::HoldConverted(e) => {
                self.end(sku, &e.hold_id, batch(&e.batchref), HoldState::Converted)
            }
            _ => {}
        }
    }

    fn end(&mut self, sku: &Sku, hold_id: &HoldId, batch: Option<usize>, state: HoldState) {
        for part in self.by_hold.get_mut(hold_id).into_iter().flatten() {
            if &part.sku == sku && Some(part.batch) == batch && part.state == HoldState::Active {
                if let Some(parts) = self.active.get_mut(&(sku.clone(), part.batch)) {
                    parts.remove(&(part.expires_at, part.seq));
                }
                part.state = state;
            }
        }
    }
}
