//! Unit of work and repository (book chapters 2 and 6).
//!
//! A [`UnitOfWork`] is one database transaction plus the identity map of the
//! products loaded in it. Handlers change products through it; nothing is
//! written until [`UnitOfWork::commit`], and dropping it without committing
//! rolls everything back (RAII is the book's context manager).
//!
//! The logic every backend shares (identity map, event collection, working
//! out what changed) lives here; a backend only implements [`Store`] and
//! [`StoreTransaction`]: read a product, and write a [`ChangeSet`] atomically,
//! checking each product's version number (optimistic concurrency, chapter 7).

use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::Arc;

use foldhash::HashMap;
use smallvec::SmallVec;

use domain::{BatchRef, Event, OrderId, Product, Sku};

use crate::ports::OutboxMessage;

/// The storage failed, or refused a commit that raced with another one.
/// Cheap to clone, so that one failed group commit can answer each of its
/// commands with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another transaction changed what this one read: retry from scratch.
    #[error("product {sku} was changed by a concurrent transaction")]
    Conflict { sku: Sku },
    #[error("storage failed: {0}")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Arc::new(error))
    }
}

/// Which order lines to load with a product. A product's history may hold
/// millions of lines; a command needs those of one order or of one batch.
#[derive(Debug, Clone, Copy)]
pub enum Lines<'a> {
    None,
    OfOrder(&'a OrderId),
    /// The lines of several orders: what a group of allocations needs.
    OfOrders(&'a [OrderId]),
    OfBatch(&'a BatchRef),
}

/// A storage backend: starts transactions.
pub trait Store: Clone + Send + Sync + 'static {
    type Transaction: StoreTransaction;

    /// Starts a transaction. Its reads need not hold locks: the commit checks
    /// every product's version, so a product changed since it was read fails
    /// the commit with [`StoreError::Conflict`] (optimistic concurrency).
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// Starts a unit of work: a transaction with an empty identity map.
    fn start(
        &self,
    ) -> impl Future<Output = Result<UnitOfWork<Self::Transaction>, StoreError>> + Send {
        async { Ok(UnitOfWork::new(self.begin().await?)) }
    }

    /// Starts a transaction that locks each product as it loads it, until
    /// it ends: other writers to those products wait instead of racing it.
    /// For a command that already lost a race (a version conflict), so that
    /// its next attempt does not lose again however hot the product. A
    /// backend whose transactions already exclude each other keeps this
    /// default.
    fn begin_locking(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send {
        self.begin()
    }

    /// How many groups of allocations the bus commits side by side (see
    /// `group_commit`): one for a database that takes one writer at a time
    /// anyway, more for one whose writers to different products run in
    /// parallel. Fewer lanes make bigger groups, hence fewer commits.
    fn write_lanes(&self) -> usize {
        1
    }

    /// Whether a write could commit now (the readiness probe): a locking
    /// transaction begins and commits, writing nothing. Reads can succeed
    /// while writes cannot: SQLite's write lock held by a stuck writer, or a
    /// pool whose every connection is stuck inside a transaction.
    fn check_writable(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async {
            let transaction = self.begin_locking().await?;
            transaction.commit(ChangeSet::default()).await
        }
    }

    /// A unit of work over [`Store::begin_locking`].
    fn start_locking(
        &self,
    ) -> impl Future<Output = Result<UnitOfWork<Self::Transaction>, StoreError>> + Send {
        async { Ok(UnitOfWork::new(self.begin_locking().await?)) }
    }
}

/// One open transaction of a backend. Dropping it rolls back.
pub trait StoreTransaction: Send {
    /// The product with every batch (in creation order) and the given lines.
    fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
    ) -> impl Future<Output = Result<Option<Product>, StoreError>> + Send;

    /// The SKU of the product that holds batch `reference`, if any.
    fn sku_of_batch(
        &mut self,
        reference: &BatchRef,
    ) -> impl Future<Output = Result<Option<Sku>, StoreError>> + Send;

    /// Writes `changes` and commits, or fails with [`StoreError::Conflict`]
    /// (and writes nothing) if a product's stored version is no longer the
    /// one it was loaded at, or a batch reference or order line is taken.
    fn commit(self, changes: ChangeSet) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Everything a unit of work writes at commit.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub products: Vec<ProductChanges>,
    pub views: Vec<ViewChange>,
    /// Messages for other systems, published by the relay after commit.
    pub outbox: Vec<OutboxMessage>,
}

impl ChangeSet {
    /// Whether there is nothing to write (a command that changed nothing,
    /// such as allocating a line that is already allocated).
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.views.is_empty() && self.outbox.is_empty()
    }
}

/// What happened to one product: its events, in order, say what to write.
#[derive(Debug)]
pub struct ProductChanges {
    pub sku: Sku,
    /// `None` for a product that is not stored yet.
    pub stored_version: Option<u64>,
    pub new_version: u64,
    pub events: Vec<Event>,
}

/// A change to the read model (book chapter 12), written in the same
/// transaction as the products so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    Allocated {
        orderid: OrderId,
        sku: Sku,
        batchref: BatchRef,
    },
    Deallocated {
        orderid: OrderId,
        sku: Sku,
    },
}

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
            handed_out: 0,
        }
    }

    /// Whether everything `lines` names is in the product already. A linear
    /// search: a unit of work loads the orders of one group at most, and
    /// groups are bounded (`group_commit`).
    fn holds(&self, lines: Lines<'_>) -> bool {
        match lines {
            Lines::None => true,
            Lines::OfOrder(orderid) => self.orders_loaded.contains(orderid),
            Lines::OfOrders(orderids) => orderids.iter().all(|o| self.orders_loaded.contains(o)),
            Lines::OfBatch(_) => false,
        }
    }

    fn record_loaded(&mut self, lines: Lines<'_>) {
        match lines {
            Lines::OfOrder(orderid) => self.orders_loaded.push(orderid.clone()),
            Lines::OfOrders(orderids) => self.orders_loaded.extend(orderids.iter().cloned()),
            Lines::None | Lines::OfBatch(_) => {}
        }
    }
}

/// The repository (book chapter 2) over one transaction, with the identity
/// map the book calls `seen`: asking twice for a product gives the same one,
/// and every product it handed out is saved at commit.
#[derive(Debug)]
pub struct Repository<T> {
    transaction: T,
    seen: HashMap<Sku, Tracked>,
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

    /// The product holding batch `reference`, with that batch's lines loaded:
    /// what changing the batch's quantity needs.
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
            self.transaction.load(sku, lines).await?
        };
        match (self.seen.entry(sku.clone()), loaded) {
            (Entry::Occupied(entry), loaded) => {
                let tracked = entry.into_mut();
                // Seen before: keep its state and add the lines asked for now.
                for batch in loaded.iter().flat_map(Product::batches) {
                    let lines = batch.loaded_lines().iter().cloned();
                    tracked.product.load_lines(batch.reference(), lines);
                }
                tracked.record_loaded(lines);
                Ok(Some(&mut tracked.product))
            }
            (Entry::Vacant(entry), Some(product)) => {
                let stored_version = Some(product.version());
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

    /// The transaction back, with what changed in every product seen.
    fn into_changes(self) -> (T, Vec<ProductChanges>) {
        let changes = self
            .seen
            .into_values()
            .filter(|tracked| tracked.stored_version != Some(tracked.product.version()))
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
}

impl<T: StoreTransaction> UnitOfWork<T> {
    pub fn new(transaction: T) -> Self {
        Self {
            products: Repository {
                transaction,
                seen: HashMap::default(),
            },
            views: Vec::new(),
            outbox: Vec::new(),
        }
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

    /// The events every product seen recorded since the last call (book:
    /// `collect_new_events`). Copies: the products keep them until commit
    /// writes them.
    pub fn collect_new_events(&mut self) -> Vec<Event> {
        self.products.collect_new_events()
    }

    /// Writes every change in one transaction. On [`StoreError::Conflict`]
    /// nothing was written and the whole command should be tried again.
    pub async fn commit(self) -> Result<(), StoreError> {
        let (transaction, products) = self.products.into_changes();
        let changes = ChangeSet {
            products,
            views: self.views,
            outbox: self.outbox,
        };
        transaction.commit(changes).await
    }
}
