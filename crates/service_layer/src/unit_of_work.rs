//! Unit of work and repository (book chapters 2 and 6).
//!
//! A [`UnitOfWork`] is one database transaction plus the identity map of the
//! products loaded in it. Handlers change products through it; nothing is
//! written until [`UnitOfWork::commit`], and dropping it without committing
//! rolls everything back (RAII is the book's context manager).
//!
//! The logic every backend shares (identity map, event collection, working
//! out what changed) lives here; a backend only implements the ports
//! [`Store`] and [`StoreTransaction`]: read a product, and write a
//! [`ChangeSet`] atomically,
//! checking each product's version number (optimistic concurrency, chapter 7).

use std::collections::hash_map::Entry;

// Not std's `HashMap` and `Vec`: every command builds an identity map and
// records the orders it loaded, and the bus benchmark measured SipHash and
// a heap allocation per command (docs/BENCHMARKS.md).
use foldhash::HashMap;
use smallvec::SmallVec;

use chrono::{DateTime, Utc};
use domain::{BatchRef, Event, HoldId, OrderId, Product, Sku};

use crate::ports::{
    ChangeSet, Lines, OutboxMessage, ProductChanges, Store, StoreError, StoreTransaction,
    ViewChange,
};

/// A product loaded or added in this unit of work.
#[derive(Debug)]
struct Tracked {
    product: Product,
    stored_version: Option<u64>,
    /// Orders whose lines of this product are loaded: asking for them again
    /// needs no trip to the store (and must not take one, which would miss
    /// this unit of work's own changes to them). Nearly always one order,
    /// kept inline rather than in a heap allocation of its own.
    orders_loaded: SmallVec<[OrderId; 1]>,
    /// Batches whose lines are all loaded, for the same reason: a second
    /// command of a group shrinking the same batch must see the first's
    /// changes, not the stored lines again.
    batches_loaded: Vec<BatchRef>,
    /// Holds whose parts of this product are loaded, for the same reason.
    holds_loaded: Vec<HoldId>,
    /// How many of the product's pending events `collect_new_events` has
    /// handed out already. All of them stay pending until commit writes them.
    handed_out: usize,
}

impl Tracked {
    fn new(product: Product, stored_version: Option<u64>) -> Self {
        Self {
            product,
            stored_version,
            orders_loaded: SmallVec::new(),
            batches_loaded: Vec::new(),
            holds_loaded: Vec::new(),
            handed_out: 0,
        }
    }

    /// Whether everything `lines` names is in the product already. A linear
    /// search: a unit of work loads the orders of one group at most, and
    /// groups are bounded (`runner`).
    fn holds(&self, lines: Lines<'_>) -> bool {
        match lines {
            Lines::None => true,
            Lines::OfOrder(orderid) => self.orders_loaded.contains(orderid),
            Lines::OfOrders(orderids) => orderids.iter().all(|o| self.orders_loaded.contains(o)),
            Lines::OfBatch(reference) => self.batches_loaded.contains(reference),
            Lines::OfHold(hold_id) => self.holds_loaded.contains(hold_id),
        }
    }

    fn record_loaded(&mut self, lines: Lines<'_>) {
        match lines {
            Lines::OfOrder(orderid) => self.orders_loaded.push(orderid.clone()),
            Lines::OfOrders(orderids) => self.orders_loaded.extend(orderids.iter().cloned()),
            Lines::OfBatch(reference) => self.batches_loaded.push(reference.clone()),
            Lines::OfHold(hold_id) => self.holds_loaded.push(hold_id.clone()),
            Lines::None => {}
        }
    }
}

/// The repository (book chapter 2) over one transaction, with the identity
/// map the book calls `seen`: asking twice for a product gives the same one,
/// and every product it handed out is saved at commit. A product is handed
/// out with its waiting backorders filled as far as its stock allows.
#[derive(Debug)]
pub struct Repository<T> {
    transaction: T,
    seen: HashMap<Sku, Tracked>,
    /// The unit of work's time: which holds are live.
    now: DateTime<Utc>,
}

impl<T: StoreTransaction> Repository<T> {
    /// Registers a product that is not stored yet.
    pub fn add(&mut self, product: Product) {
        let sku = product.sku().clone();
        debug_assert!(
            !self.seen.contains_key(&sku),
            "added a product twice: {sku}"
        );
        self.seen.insert(sku, Tracked::new(product, None));
    }

    /// The product with its batches and none of its order lines.
    pub async fn get(&mut self, sku: &Sku) -> Result<Option<&mut Product>, StoreError> {
        self.get_with(sku, Lines::None).await
    }

    /// The product with the lines of `orderid` loaded: what allocating or
    /// deallocating that order needs.
    pub async fn get_for_order(
        &mut self,
        sku: &Sku,
        orderid: &OrderId,
    ) -> Result<Option<&mut Product>, StoreError> {
        self.get_with(sku, Lines::OfOrder(orderid)).await
    }

    /// The product with the lines of every order in `orderids` loaded, in
    /// one trip to the store: a group of allocations loads each product
    /// once this way, and then `get_for_order` finds it here.
    pub async fn get_for_orders(
        &mut self,
        sku: &Sku,
        orderids: &[OrderId],
    ) -> Result<Option<&mut Product>, StoreError> {
        self.get_with(sku, Lines::OfOrders(orderids)).await
    }

    /// The product with the parts of hold `hold_id` on it loaded, live or
    /// expired: what extending, releasing or converting the hold needs.
    pub async fn get_for_hold(
        &mut self,
        sku: &Sku,
        hold_id: &HoldId,
    ) -> Result<Option<&mut Product>, StoreError> {
        self.get_with(sku, Lines::OfHold(hold_id)).await
    }

    /// The SKUs of `orderid`'s lines, in SKU order; empty for no order.
    pub async fn skus_of_order(&mut self, orderid: &OrderId) -> Result<Vec<Sku>, StoreError> {
        self.transaction.skus_of_order(orderid).await
    }

    /// The SKUs hold `hold_id` was placed on, in SKU order; empty if it
    /// never was.
    pub async fn skus_of_hold(&mut self, hold_id: &HoldId) -> Result<Vec<Sku>, StoreError> {
        self.transaction.skus_of_hold(hold_id).await
    }

    /// The product holding batch `reference`, with that batch's lines and
    /// live holds loaded: what shrinking the batch below what it has
    /// allocated and held needs.
    pub async fn get_by_batch(
        &mut self,
        reference: &BatchRef,
    ) -> Result<Option<&mut Product>, StoreError> {
        match self.sku_of_batch(reference).await? {
            Some(sku) => self.get_with(&sku, Lines::OfBatch(reference)).await,
            None => Ok(None),
        }
    }

    /// The SKU of the product that holds batch `reference`, if any.
    pub async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        let seen = self
            .seen
            .values()
            .find(|tracked| tracked.product.batch(reference).is_some());
        match seen {
            Some(tracked) => Ok(Some(tracked.product.sku().clone())),
            None => self.transaction.sku_of_batch(reference).await,
        }
    }

    async fn get_with(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
    ) -> Result<Option<&mut Product>, StoreError> {
        let holds_already = self
            .seen
            .get(sku)
            .is_some_and(|tracked| tracked.holds(lines));
        let loaded = if holds_already {
            None
        } else {
            self.transaction.load(sku, lines, self.now).await?
        };
        match (self.seen.entry(sku.clone()), loaded) {
            (Entry::Occupied(entry), loaded) => {
                let tracked = entry.into_mut();
                // Seen before: keep its state and add the lines asked for
                // now, but none of a batch or an order loaded before: this
                // unit of work may have moved those (a shrink loads a
                // batch's lines with their parts on other batches).
                for batch in loaded.iter().flat_map(Product::batches) {
                    if tracked.batches_loaded.contains(batch.reference()) {
                        continue;
                    }
                    let lines = batch.loaded_lines().iter().cloned();
                    let lines = lines.filter(|l| !tracked.orders_loaded.contains(&l.orderid));
                    tracked.product.load_lines(batch.reference(), lines);
                    let holds = batch.loaded_holds().iter().cloned();
                    tracked.product.load_holds(batch.reference(), holds);
                }
                tracked.record_loaded(lines);
                Ok(Some(&mut tracked.product))
            }
            (Entry::Vacant(entry), Some(mut product)) => {
                let stored_version = Some(product.version());
                // Holds expire by the clock, with no event to say that
                // their units are free: waiting backorders take them before
                // the command sees the product (see `handlers::fill_backorders`).
                product.fill_backorders();
                let tracked = entry.insert(Tracked::new(product, stored_version));
                tracked.record_loaded(lines);
                Ok(Some(&mut tracked.product))
            }
            (Entry::Vacant(_), None) => Ok(None),
        }
    }

    fn collect_new_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for tracked in self.seen.values_mut() {
            let new = &tracked.product.pending_events()[tracked.handed_out..];
            events.extend_from_slice(new);
            tracked.handed_out += new.len();
        }
        events
    }

    /// The transaction back, with what changed in every product seen. A
    /// product whose only event is `OutOfStock` changed nothing, yet is
    /// checked and kept at its version: the out-of-stock email in the
    /// outbox hangs off that check, as every message does, and is only
    /// true if no commit gave the product stock since it was read.
    fn into_changes(self) -> (T, Vec<ProductChanges>) {
        let changes = self
            .seen
            .into_values()
            .filter(|tracked| {
                tracked.stored_version != Some(tracked.product.version())
                    || !tracked.product.pending_events().is_empty()
            })
            .map(|mut tracked| ProductChanges {
                sku: tracked.product.sku().clone(),
                stored_version: tracked.stored_version,
                new_version: tracked.product.version(),
                events: tracked.product.take_events(),
            })
            .collect();
        (self.transaction, changes)
    }
}

/// One atomic piece of work (book chapter 6): products through
/// [`UnitOfWork::products`], read-model changes and outgoing messages
/// through [`UnitOfWork::update_view`] and [`UnitOfWork::add_to_outbox`], all
/// written by [`UnitOfWork::commit`] or none.
#[derive(Debug)]
pub struct UnitOfWork<T> {
    products: Repository<T>,
    views: Vec<ViewChange>,
    outbox: Vec<OutboxMessage>,
    deliveries: Vec<String>,
}

impl<T: StoreTransaction> UnitOfWork<T> {
    /// Starts a unit of work on `store`: a transaction with an empty
    /// identity map, happening at `now` (see [`UnitOfWork::now`]).
    pub async fn begin<S: Store<Transaction = T>>(
        store: &S,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(store.begin().await?, now))
    }

    /// A unit of work over [`Store::begin_locking`].
    pub async fn begin_locking<S: Store<Transaction = T>>(
        store: &S,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(store.begin_locking().await?, now))
    }

    pub fn new(transaction: T, now: DateTime<Utc>) -> Self {
        Self {
            products: Repository {
                transaction,
                seen: HashMap::default(),
                now,
            },
            views: Vec::new(),
            outbox: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// When this unit of work happens: one instant for all it reads and
    /// decides, so that a hold is live or expired for the whole of it.
    pub fn now(&self) -> DateTime<Utc> {
        self.products.now
    }

    pub fn products(&mut self) -> &mut Repository<T> {
        &mut self.products
    }

    /// Records a read-model change to write with this unit of work.
    pub fn update_view(&mut self, change: ViewChange) {
        self.views.push(change);
    }

    /// Records a message to publish once this unit of work has committed.
    pub fn add_to_outbox(&mut self, message: OutboxMessage) {
        self.outbox.push(message);
    }

    /// Whether an earlier commit handled the incoming message `delivery`.
    pub async fn was_delivered(&mut self, delivery: &str) -> Result<bool, StoreError> {
        self.products.transaction.was_delivered(delivery).await
    }

    /// Records that this unit of work handles the incoming message
    /// `delivery`: its commit says so, with the changes.
    pub fn record_delivery(&mut self, delivery: &str) {
        self.deliveries.push(delivery.to_owned());
    }

    /// Has every product seen announce its stock level (see
    /// `domain::model::stock_levels`): once, at the end, so that only
    /// crossings that are committed are told.
    pub fn announce_stock_levels(&mut self) {
        for tracked in self.products.seen.values_mut() {
            tracked.product.announce_stock_level();
        }
    }

    /// The events every product seen recorded since the last call (book:
    /// `collect_new_events`). Copies: the products keep them until commit
    /// writes them.
    pub fn collect_new_events(&mut self) -> Vec<Event> {
        self.products.collect_new_events()
    }

    /// Writes every change in one transaction. On [`StoreError::Conflict`]
    /// nothing was written and the whole command should be tried again.
    pub async fn commit(self) -> Result<(), StoreError> {
        let at = self.now();
        let (transaction, products) = self.products.into_changes();
        // A command that changed nothing may run again as it likes: its
        // delivery needs no record (and would have no version check to
        // hang on).
        let deliveries = if products.is_empty() {
            Vec::new()
        } else {
            self.deliveries
        };
        let changes = ChangeSet {
            at,
            products,
            views: self.views,
            outbox: self.outbox,
            deliveries,
        };
        transaction.commit(changes).await
    }
}
