//! Turns per product within one process: commands on the same product run
//! one after another, so that a hot product (a flash sale) makes them queue
//! here instead of colliding at commit and running again.
//!
//! Correctness never depends on it: instances share nothing but the
//! database, where the version check still decides. It only keeps one
//! instance from conflicting with itself.

use std::hash::{BuildHasher, RandomState};

use domain::Sku;
use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of locks that products hash onto. Two products may share a
/// lock and then take turns needlessly; with many more locks than commands
/// in flight that is rare, and the set never grows with the catalogue.
#[derive(Debug)]
pub(crate) struct ProductTurns {
    locks: Box<[Mutex<()>]>,
    hasher: RandomState,
}

impl ProductTurns {
    /// Enough locks that a few hundred commands in flight rarely share one.
    const LOCKS: usize = 1024;

    pub(crate) fn new() -> Self {
        Self {
            locks: (0..Self::LOCKS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for `sku`'s turn (first come, first served); the turn lasts
    /// until the guard is dropped.
    pub(crate) async fn wait_for(&self, sku: &Sku) -> MutexGuard<'_, ()> {
        let slot = self.hasher.hash_one(sku) as usize % self.locks.len();
        self.locks[slot].lock().await
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn sku(raw: &str) -> Sku {
        Sku::parse(raw).expect("valid sku")
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
