//! Turns per product within one process: commands on the same product run
//! one after another, so that a hot product (a flash sale) makes them queue
//! here instead of colliding at commit and running again. And a memory of
//! which products other instances are fighting over, so that commands on
//! them lock the product from the start instead of losing a race first.
//!
//! Correctness never depends on it: instances share nothing but the
//! database, where the version check still decides.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domain::Sku;
// Turns are chosen per command: foldhash, as SipHash measured costly there
// (docs/BENCHMARKS.md).
use foldhash::fast::RandomState;
use smallvec::SmallVec;
use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of slots that products hash onto. Two products may share a
/// slot and then take turns needlessly; with many more slots than commands
/// in flight that is rare, and the set never grows with the catalogue.
#[derive(Debug)]
pub(crate) struct ProductTurns {
    locks: Box<[Mutex<()>]>,
    /// Per slot: until when (milliseconds after `epoch`) its products count
    /// as contended by another instance.
    contended_until: Box<[AtomicU64]>,
    epoch: Instant,
    hasher: RandomState,
}

impl ProductTurns {
    /// Enough slots that a few hundred commands in flight rarely share one.
    const SLOTS: usize = 1024;

    /// How long a conflict marks a product as contended. Long enough to
    /// cover a flash sale's burst, short enough that a product other
    /// instances have left alone goes back to lock-free reads soon.
    const CONTENTION_MEMORY: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self {
            locks: (0..Self::SLOTS).map(|_| Mutex::new(())).collect(),
            contended_until: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            hasher: RandomState::default(),
        }
    }

    fn slot(&self, sku: &Sku) -> usize {
        self.hasher.hash_one(sku) as usize % Self::SLOTS
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Waits for a slot's turn, first come, first served. A free turn is
    /// taken at once, without queueing for it (which costs tokio's lock
    /// future and its cooperative budget on every command). That cannot
    /// jump the queue: tokio's mutex hands itself straight to a waiting
    /// task, so `try_lock` fails while anyone waits for the turn.
    async fn turn_of(&self, slot: usize) -> MutexGuard<'_, ()> {
        match self.locks[slot].try_lock() {
            Ok(guard) => guard,
            Err(_) => self.locks[slot].lock().await,
        }
    }

    /// Waits for the turns of every product in `skus` (first come, first
    /// served; the turns last until dropped), taken in slot order
    /// (each slot once, since products may share one), so that two callers
    /// waiting for overlapping sets cannot deadlock. `contended` is whether
    /// any of the products is.
    pub(crate) async fn wait_for_all<'s>(
        &self,
        skus: impl IntoIterator<Item = &'s Sku>,
    ) -> Turns<'_> {
        let mut slots: SmallVec<[usize; 1]> = SmallVec::new();
        let mut contended = false;
        for sku in skus {
            let slot = self.slot(sku);
            slots.push(slot);
            contended |= self.is_contended(slot);
        }
        slots.sort_unstable();
        slots.dedup();
        let mut guards = SmallVec::with_capacity(slots.len());
        for slot in slots {
            guards.push(self.turn_of(slot).await);
        }
        Turns {
            _guards: guards,
            contended,
        }
    }

    /// Whether a commit on a product of `slot` lost a race with another
    /// instance within the last `CONTENTION_MEMORY`.
    fn is_contended(&self, slot: usize) -> bool {
        let until = self.contended_until[slot].load(Ordering::Relaxed);
        // Most products never conflict: no need to read the clock for them.
        until != 0 && until > self.now_millis()
    }

    /// Records that a commit on `sku` lost a race with another instance.
    pub(crate) fn mark_contended(&self, sku: &Sku) {
        let until = self.now_millis() + Self::CONTENTION_MEMORY.as_millis() as u64;
        self.contended_until[self.slot(sku)].fetch_max(until, Ordering::Relaxed);
    }
}

/// The turns of one or several products, held until dropped.
#[derive(Debug)]
pub(crate) struct Turns<'a> {
    /// Room for one without allocating: most commands and groups are for
    /// one product.
    _guards: SmallVec<[MutexGuard<'a, ()>; 1]>,
    /// Whether a commit on any of the products lost a race with another
    /// instance within the last `ProductTurns::CONTENTION_MEMORY`.
    pub(crate) contended: bool,
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn sku(raw: &str) -> Sku {
        Sku::parse(raw).expect("valid sku")
    }

    impl ProductTurns {
        /// One product's turn, as a command that names its product waits.
        async fn wait_for(&self, sku: &Sku) -> Turns<'_> {
            self.wait_for_all([sku]).await
        }
    }

    #[tokio::test]
    async fn the_same_product_waits_for_its_turn() {
        let turns = ProductTurns::new();
        let first = turns.wait_for(&sku("LAMP")).await;
        assert!(
            turns.wait_for(&sku("LAMP")).now_or_never().is_none(),
            "a second command on LAMP got a turn during the first"
        );
        drop(first);
        assert!(
            turns.wait_for(&sku("LAMP")).now_or_never().is_some(),
            "LAMP's turn did not come back"
        );
    }

    #[tokio::test]
    async fn a_conflict_marks_its_product_as_contended_for_a_while() {
        let turns = ProductTurns::new();
        assert!(!turns.wait_for(&sku("LAMP")).await.contended);
        turns.mark_contended(&sku("LAMP"));
        assert!(turns.wait_for(&sku("LAMP")).await.contended);
        let mut others = 0;
        for n in 0..100 {
            others += usize::from(turns.wait_for(&sku(&format!("TABLE-{n}"))).await.contended);
        }
        assert!(
            others <= 5,
            "{others} of 100 other products count as contended"
        );
    }

    #[tokio::test]
    async fn a_group_takes_the_turns_of_all_its_products() {
        let turns = ProductTurns::new();
        let (lamp, table) = (sku("LAMP"), sku("TABLE"));
        // LAMP twice: one slot, taken once (twice would wait for itself).
        let group = turns.wait_for_all([&lamp, &table, &lamp]).await;
        assert!(turns.wait_for(&lamp).now_or_never().is_none());
        assert!(turns.wait_for(&table).now_or_never().is_none());
        assert!(!group.contended);
        drop(group);
        turns.mark_contended(&table);
        assert!(turns.wait_for_all([&lamp, &table]).await.contended);
    }

    #[tokio::test]
    async fn other_products_rarely_wait() {
        let turns = ProductTurns::new();
        let _lamp_turn = turns.wait_for(&sku("LAMP")).await;
        // A few may share LAMP's lock by hashing; nearly all must not wait.
        let ran = (0..100)
            .filter(|n| {
                turns
                    .wait_for(&sku(&format!("TABLE-{n}")))
                    .now_or_never()
                    .is_some()
            })
            .count();
        assert!(ran >= 95, "only {ran} of 100 other products got a turn");
    }
}
