//! Statement texts composed once per *shape* (what a text depends on) and
//! kept for the life of the process: formatting a commit's SQL anew for
//! every commit cost the service more than all else the write does
//! (docs/BENCHMARKS.md). Commits take few shapes; past [`KEPT`] (a flood of
//! odd groups), texts are composed each time and not kept.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

/// How many shapes a backend keeps texts for.
const KEPT: usize = 1024;

/// Texts by shape. Looked up on every commit: foldhash, as SipHash
/// measured costly there.
pub(super) struct KeptTexts<K, T> {
    texts: LazyLock<Mutex<HashMap<K, T, foldhash::fast::FixedState>>>,
}

impl<K: Hash + Eq, T: Clone> KeptTexts<K, T> {
    pub(super) const fn new() -> Self {
        Self {
            texts: LazyLock::new(Mutex::default),
        }
    }

    pub(super) fn get(&self, shape: &K) -> Option<T> {
        self.lock().get(shape).cloned()
    }

    pub(super) fn keep(&self, shape: K, text: T) {
        let mut texts = self.lock();
        if texts.len() < KEPT {
            texts.insert(shape, text);
        }
    }

    pub(super) fn get_or_compose(&self, shape: K, compose: impl FnOnce() -> T) -> T {
        if let Some(text) = self.get(&shape) {
            return text;
        }
        let text = compose();
        self.keep(shape, text.clone());
        text
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, T, foldhash::fast::FixedState>> {
        // A map of finished texts stays consistent whatever panicked.
        self.texts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
