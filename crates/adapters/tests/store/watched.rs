//! [`Watched`], a store wrapper for the concurrency tests: it records each
//! commit's outcome and version numbers, and can hold one back.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use domain::{BatchRef, Event, Product, Sku};
use service_layer::ports::{ChangeSet, Lines};
use service_layer::{Store, StoreError, StoreTransaction};
use tokio::sync::oneshot;

/// A store that records every commit made through it and can hold the next
/// one back until the test lets it go. Clones share what they record.
#[derive(Debug, Clone)]
pub struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

#[derive(Debug, Default)]
pub struct Watch {
    commits: Mutex<Vec<Commit>>,
    gate: Mutex<Option<Gate>>,
}

/// Holds a commit back: `reached` tells the test it got there, and the
/// commit goes on when the test sends on the other end of `release`.
#[derive(Debug)]
pub struct Gate {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// One commit attempt, as the store saw it.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Each product it wrote: SKU, version it was loaded at, new version.
    pub products: Vec<(Sku, Option<u64>, u64)>,
    pub events: Vec<Event>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Conflict,
    Failed(String),
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Store> Watched<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            watch: Arc::default(),
        }
    }

    /// Makes the next commit wait, just before it writes anything. Returns
    /// a receiver that fires when a commit is waiting, and the sender that
    /// lets it go on.
    pub fn hold_next_commit(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached, reached_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        *lock(&self.watch.gate) = Some(Gate { reached, release });
        (reached_rx, release_tx)
    }

    pub fn commits(&self) -> Vec<Commit> {
        lock(&self.watch.commits).clone()
    }
}

impl<S: Store> Store for Watched<S> {
    type Transaction = WatchedTransaction<S::Transaction>;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        Ok(WatchedTransaction {
            inner: self.inner.begin().await?,
            watch: self.watch.clone(),
        })
    }

    async fn begin_locking(&self) -> Result<Self::Transaction, StoreError> {
        Ok(WatchedTransaction {
            inner: self.inner.begin_locking().await?,
            watch: self.watch.clone(),
        })
    }
}

#[derive(Debug)]
pub struct WatchedTransaction<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T: StoreTransaction> StoreTransaction for WatchedTransaction<T> {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Product>, StoreError> {
        self.inner.load(sku, lines, now).await
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        self.inner.sku_of_batch(reference).await
    }

    async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        self.inner.was_delivered(delivery).await
    }

    async fn skus_of_order(&mut self, orderid: &domain::OrderId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_order(orderid).await
    }

    async fn skus_of_hold(&mut self, hold_id: &domain::HoldId) -> Result<Vec<Sku>, StoreError> {
        self.inner.skus_of_hold(hold_id).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        let gate = lock(&self.watch.gate).take();
        if let Some(Gate { reached, release }) = gate {
            // Errors only mean the test stopped waiting: go on regardless.
            let _ = reached.send(());
            let _ = release.await;
        }
        let products = changes
            .products
            .iter()
            .map(|p| (p.sku.clone(), p.stored_version, p.new_version))
            .collect();
        let events = changes
            .products
            .iter()
            .flat_map(|p| p.events.iter().cloned())
            .collect();
        let result = self.inner.commit(changes).await;
        let outcome = match &result {
            Ok(()) => Outcome::Committed,
            Err(StoreError::Conflict { .. }) => Outcome::Conflict,
            Err(error) => Outcome::Failed(error.to_string()),
        };
        lock(&self.watch.commits).push(Commit {
            products,
            events,
            outcome,
        });
        result
    }
}

/// `future`, or a panic if it takes more than 30 s: a test that waits on
/// another task fails rather than hangs.
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 30 s"))
}
