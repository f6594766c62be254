//! In-memory implementations of every port: the storage behind the unit of
//! work and the read model (`DATABASE_URL=memory://`, unit tests, benchmarks),
//! and notification and publishing fakes that record what they were given.
//!
//! The memory store behaves like the SQL ones where it matters: a transaction
//! reads only what a command needs, writes nothing until commit, and a commit
//! whose products changed since they were read is refused with a conflict.

mod clock;
mod holds;
mod idempotency;
mod outbox;
mod product;
mod recorders;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};
use domain::{BatchRef, Closed, Event, HoldId, OrderId, Product, Settings, Sku};
// Not std's: the bus benchmark measured SipHash, the growth of std's
// `HashMap` and a heap row per order as real costs of every command
// (docs/BENCHMARKS.md, "Making the lone command cheaper").
use foldhash::HashMap;
use foldhash::fast::RandomState;
use indexmap::IndexMap;
use smallvec::SmallVec;

use crate::ports::{
    AllocationView, BatchView, ChangeSet, HoldLineView, HoldState, HoldView, LineStatus, Lines,
    MovementView, OrderLineView, OutboxMessage, PartView, ReadModel, Store, StoreError,
    StoreTransaction, ViewChange,
};
use holds::HoldTable;
use outbox::OutboxTable;
use product::StoredProduct;

pub use clock::ManualClock;
pub use recorders::{Recorder, RecordingNotifications, RecordingPublisher};

/// Products and the read model, shared by every transaction and query.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    /// Set by [`MemoryStore::stall_commits`].
    stalled: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Tables {
    products: HashMap<Sku, StoredProduct>,
    batch_owners: HashMap<BatchRef, Sku>,
    /// An order's rows, sorted by SKU. Nearly every order is for one SKU,
    /// so one row is kept inline rather than in a heap allocation of its own.
    allocations_view: GrowingMap<OrderId, SmallVec<[AllocationView; 1]>>,
    /// The SKUs of each order's lines, whatever became of them, sorted:
    /// what shipping and cancelling a whole order look up.
    order_skus: GrowingMap<OrderId, SmallVec<[Sku; 1]>>,
    holds: HoldTable,
    idempotency_keys: idempotency::KeyTable,
    outbox: OutboxTable,
    /// The incoming messages handled (`ChangeSet::deliveries`).
    deliveries: foldhash::HashSet<String>,
}

/// A hash map for the tables that grow with every allocation (an order's
/// line, its read-model rows). `IndexMap` keeps each key's hash beside it,
/// so doubling its index never re-reads the keys, as a `HashMap` must, and
/// new entries are appended rather than scattered. Iteration order is
/// never relied on: removals swap the last entry into the gap.
type GrowingMap<K, V> = IndexMap<K, V, RandomState>;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every commit from now on wait forever, as a database that
    /// stopped answering: for tests of what a stuck request does.
    pub fn stall_commits(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// The messages committed and not yet marked sent, oldest first.
    pub fn unsent_messages(&self) -> Vec<OutboxMessage> {
        self.lock().outbox.unsent_messages()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the tables half
        // written: commits validate before they change anything.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    type Transaction = MemoryTransaction;

    async fn begin(&self) -> Result<MemoryTransaction, StoreError> {
        Ok(MemoryTransaction {
            store: self.clone(),
        })
    }
}

/// Reads under a short lock; writes everything at commit.
#[derive(Debug)]
pub struct MemoryTransaction {
    store: MemoryStore,
}

impl StoreTransaction for MemoryTransaction {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>, StoreError> {
        let tables = self.store.lock();
        Ok(tables
            .products
            .get(sku)
            .map(|stored| stored.to_product(sku, lines, &tables.holds, now)))
    }

    async fn skus_of_order(&mut self, orderid: &OrderId) -> Result<Vec<Sku>, StoreError> {
        let tables = self.store.lock();
        // As the SQL stores: only products that still have a row of the
        // order (a line deallocated, or lost by a shrinking batch, has none).
        let skus = tables.order_skus.get(orderid).into_iter().flatten();
        Ok(skus
            .filter(|sku| {
                let product = tables.products.get(*sku);
                product.is_some_and(|p| {
                    p.lines.contains_key(orderid) || p.backorder_of(orderid).is_some()
                })
            })
            .cloned()
            .collect())
    }

    async fn skus_of_hold(&mut self, hold_id: &HoldId) -> Result<Vec<Sku>, StoreError> {
        let tables = self.store.lock();
        let mut skus: Vec<Sku> = tables
            .holds
            .all_parts_of(hold_id)
            .iter()
            .map(|part| part.sku.clone())
            .collect();
        skus.sort();
        skus.dedup();
        Ok(skus)
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        Ok(self.store.lock().batch_owners.get(reference).cloned())
    }

    async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        Ok(self.store.lock().deliveries.contains(delivery))
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        if self.store.stalled.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let mut tables = self.store.lock();
        tables.check(&changes)?;
        tables.apply(changes);
        Ok(())
    }
}

impl Tables {
    /// Refuses the whole change set, before anything is written, when a
    /// product moved on since it was read or a batch reference is taken.
    fn check(&self, changes: &ChangeSet) -> Result<(), StoreError> {
        // Another unit of work handled one of these messages first.
        if let (Some(change), true) = (
            changes.products.first(),
            changes
                .deliveries
                .iter()
                .any(|d| self.deliveries.contains(d)),
        ) {
            return Err(StoreError::Conflict {
                sku: change.sku.clone(),
            });
        }
        for change in &changes.products {
            let conflict = || StoreError::Conflict {
                sku: change.sku.clone(),
            };
            let stored_version = self.products.get(&change.sku).map(|p| p.version);
            if stored_version != change.stored_version {
                return Err(conflict());
            }
            for event in &change.events {
                if let Event::BatchCreated(created) = event {
                    if self.batch_owners.contains_key(&created.reference) {
                        return Err(conflict());
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, changes: ChangeSet) {
        let now = Instant::now();
        self.deliveries.extend(changes.deliveries);
        for change in changes.products {
            for event in &change.events {
                if let Event::BatchCreated(created) = event {
                    self.batch_owners
                        .insert(created.reference.clone(), change.sku.clone());
                }
            }
            // The events move into the tables: the change set is spent here.
            let product = self.products.entry(change.sku.clone()).or_default();
            product.version = change.new_version;
            for event in change.events {
                let ordered = match &event {
                    Event::Allocated(e) => Some((&e.orderid, &e.sku)),
                    Event::Backordered(e) => Some((&e.orderid, &e.sku)),
                    _ => None,
                };
                if let Some((orderid, sku)) = ordered {
                    let skus = self.order_skus.entry(orderid.clone()).or_default();
                    if let Err(at) = skus.binary_search(sku) {
                        skus.insert(at, sku.clone());
                    }
                }
                self.holds.apply(&change.sku, &event, |reference| {
                    product.batch_index(reference)
                });
                product.apply(event, changes.at);
            }
        }
        for view in changes.views {
            self.apply_view(view);
        }
        for message in changes.outbox {
            self.outbox.append(message, now);
        }
    }

    fn apply_view(&mut self, change: ViewChange) {
        match change {
            ViewChange::Allocated {
                orderid,
                sku,
                batchref,
            } => {
                let rows = self.allocations_view.entry(orderid).or_default();
                let row = AllocationView { sku, batchref };
                // Kept sorted by SKU and batch, the order the SQL read model
                // answers in; a part joining its line's part is there already.
                let place = rows.binary_search_by(|other| {
                    (&other.sku, &other.batchref).cmp(&(&row.sku, &row.batchref))
                });
                if let Err(at) = place {
                    rows.insert(at, row);
                }
            }
            ViewChange::Deallocated {
                orderid,
                sku,
                batchref,
            } => {
                if let Some(rows) = self.allocations_view.get_mut(&orderid) {
                    rows.retain(|row| row.sku != sku || row.batchref != batchref);
                    if rows.is_empty() {
                        self.allocations_view.swap_remove(&orderid);
                    }
                }
            }
        }
    }
}

impl ReadModel for MemoryStore {
    async fn allocations(&self, orderid: &OrderId) -> Result<Vec<AllocationView>, StoreError> {
        Ok(self
            .lock()
            .allocations_view
            .get(orderid)
            .map(|rows| rows.to_vec())
            .unwrap_or_default())
    }

    async fn order(&self, orderid: &OrderId) -> Result<Vec<OrderLineView>, StoreError> {
        let tables = self.lock();
        let skus = tables.order_skus.get(orderid).into_iter().flatten();
        Ok(skus
            .filter_map(|sku| {
                let product = tables.products.get(sku)?;
                if let Some(stored) = product.backorder_of(orderid) {
                    return Some(OrderLineView {
                        sku: sku.clone(),
                        qty: stored.backorder.qty.get().into(),
                        status: if stored.cancelled {
                            LineStatus::Cancelled
                        } else {
                            LineStatus::Backordered
                        },
                        parts: Vec::new(),
                    });
                }
                let mut parts: Vec<_> = product.lines.get(orderid)?.iter().collect();
                // By batch, in creation order, as the SQL read model.
                parts.sort_by_key(|part| part.batch);
                let status = match parts.first()?.closed {
                    None => LineStatus::Allocated,
                    Some(Closed::Shipped) => LineStatus::Shipped,
                    Some(Closed::Cancelled) => LineStatus::Cancelled,
                };
                let parts: Vec<PartView> = parts
                    .into_iter()
                    .map(|part| PartView {
                        batchref: product.batches[part.batch].reference.clone(),
                        qty: u64::from(part.qty.get()),
                    })
                    .collect();
                Some(OrderLineView {
                    sku: sku.clone(),
                    qty: parts.iter().map(|part| part.qty).sum(),
                    status,
                    parts,
                })
            })
            .collect())
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<HoldView>, StoreError> {
        let tables = self.lock();
        let parts = tables.holds.all_parts_of(hold_id);
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let state = [HoldState::Converted, HoldState::Released]
            .into_iter()
            .find(|ended| parts.iter().any(|part| part.state == *ended))
            .unwrap_or(HoldState::Active);
        let mut sorted: Vec<_> = parts.iter().collect();
        sorted.sort_by(|a, b| (&a.sku, a.batch).cmp(&(&b.sku, b.batch)));
        let mut lines: Vec<HoldLineView> = Vec::new();
        for part in sorted {
            let Some(product) = tables.products.get(&part.sku) else {
                continue;
            };
            let part_view = PartView {
                batchref: product.batches[part.batch].reference.clone(),
                qty: u64::from(part.qty.get()),
            };
            match lines.last_mut() {
                Some(line) if line.sku == part.sku => {
                    line.qty += part_view.qty;
                    line.parts.push(part_view);
                }
                _ => lines.push(HoldLineView {
                    sku: part.sku.clone(),
                    qty: part_view.qty,
                    parts: vec![part_view],
                }),
            }
        }
        Ok(Some(HoldView {
            hold_id: hold_id.clone(),
            expires_at: first.expires_at,
            state,
            lines,
        }))
    }

    async fn batches(&self, sku: &Sku, now: DateTime<Utc>) -> Result<Vec<BatchView>, StoreError> {
        let tables = self.lock();
        let batches = tables
            .products
            .get(sku)
            .map(|p| p.batches.as_slice())
            .unwrap_or_default();
        Ok(batches
            .iter()
            .enumerate()
            .map(|(index, b)| BatchView {
                reference: b.reference.clone(),
                eta: b.eta,
                purchased: b.purchased,
                allocated: b.allocated,
                held: tables.holds.held(sku, index, now),
            })
            .collect())
    }

    async fn settings(&self, sku: &Sku) -> Result<Option<Settings>, StoreError> {
        Ok(self
            .lock()
            .products
            .get(sku)
            .map(|product| product.settings))
    }

    async fn backordered(&self, sku: &Sku) -> Result<u64, StoreError> {
        let tables = self.lock();
        let waiting = tables
            .products
            .get(sku)
            .into_iter()
            .flat_map(|p| p.waiting_backorders());
        Ok(waiting
            .map(|backorder| u64::from(backorder.qty.get()))
            .sum())
    }

    async fn movements(
        &self,
        reference: &BatchRef,
    ) -> Result<Option<Vec<MovementView>>, StoreError> {
        let tables = self.lock();
        let batch = tables
            .batch_owners
            .get(reference)
            .and_then(|sku| tables.products.get(sku))
            .and_then(|product| Some(&product.batches[product.batch_index(reference)?]));
        Ok(batch.map(|batch| batch.movements.clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
