//! Handlers (book chapters 9 and 10): one per command, and the event
//! handlers. Command handlers load products through the unit of work and call
//! the domain; they never commit, the bus's runner does.
//!
//! Event handlers come in two kinds (the bus routes events to them, see
//! `messagebus`):
//! - transactional: run inside the command's unit of work, before commit,
//!   so their writes commit or roll back with the change: the read model
//!   ([`add_allocation_to_read_model`], [`remove_allocation_from_read_model`]),
//!   the outbox ([`add_to_outbox`]: messages for other systems, and the
//!   out-of-stock email), the lines a shrinking batch gave up
//!   ([`reallocate`]), and the backorders waiting for the stock that
//!   appeared ([`fill_backorders`]);
//! - after commit: start a follow-up command ([`release_broken_hold`]), or
//!   wake the outbox relays (the bus does that itself).
//!
//! Nothing talks to the outside world from a handler: what must reach it
//! goes through the outbox, so that a crash after the commit, or a server
//! down for a while, loses nothing. [`out_of_stock_notification`] says what
//! the out-of-stock email says when its relay sends it.

use std::fmt;
use std::future::Future;

use chrono::{DateTime, Utc};
use domain::commands::{
    AdjustBatch, Allocate, AllocateOrder, ChangeBatchQuantity, ChangeSettings, CreateBatch,
    Deallocate, ReleaseHold,
};
use domain::events::{Allocated, Deallocated, HoldBroken, OutOfStock};
use domain::{
    Allocation, BatchRef, DomainError, Event, Movement, OrderId, OrderLine, Part, Product,
    Quantity, Settings, Shortage, Sku,
};
use uuid::Uuid;

mod holds;
mod shipping;

pub use holds::{MAX_HOLD_TTL, PlacedHold};

use crate::error::Error;
use crate::ports::{
    Notification, OutboxMessage, Outgoing, StockNews, StoreError, StoreTransaction, ViewChange,
};
use crate::unit_of_work::UnitOfWork;

/// A command together with its handler: what the bus runs in a unit of work
/// (see `runner`), again from scratch when the commit hits a version
/// conflict.
///
/// A handler must refuse a command (return an error) before it changes
/// anything: the bus runs commands of one kind together in one unit of work,
/// and a refused one must not spoil the others' changes.
pub trait CommandHandler: fmt::Debug + Clone + Send + Sync + 'static {
    /// What the caller learns when the command succeeds.
    type Reply: Send + 'static;

    /// The command's name in logs and metrics.
    const NAME: &'static str;

    fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> impl Future<Output = Result<Self::Reply, Error>> + Send;

    /// The products the command changes, when the command names them: the
    /// bus then runs it in those products' turns, and groups it with other
    /// commands on the same (first) product.
    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        std::iter::empty()
    }

    /// The order whose lines of [`products`](Self::products) the command
    /// needs, when it names one: a group loads each of its products once,
    /// with the lines of all its commands' orders.
    fn order(&self) -> Option<&OrderId> {
        None
    }
}

impl CommandHandler for CreateBatch {
    type Reply = ();
    const NAME: &'static str = "CreateBatch";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        std::iter::once(&self.sku)
    }

    async fn handle<T: StoreTransaction>(&self, uow: &mut UnitOfWork<T>) -> Result<(), Error> {
        let products = uow.products();
        // References are unique across products, not just within one.
        if let Some(owner) = products.sku_of_batch(&self.reference).await? {
            if owner != self.sku {
                return Err(DomainError::BatchExists {
                    reference: self.reference.clone(),
                }
                .into());
            }
        }
        match products.get(&self.sku).await? {
            Some(product) => product.add_batch(self.reference.clone(), self.qty, self.eta)?,
            None => {
                let mut product = Product::new(self.sku.clone());
                product.add_batch(self.reference.clone(), self.qty, self.eta)?;
                products.add(product);
            }
        }
        Ok(())
    }
}

impl CommandHandler for Allocate {
    /// The batch the line went to, or that it waits or is out of stock.
    type Reply = Allocation;
    const NAME: &'static str = "Allocate";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        std::iter::once(&self.sku)
    }

    fn order(&self) -> Option<&OrderId> {
        Some(&self.orderid)
    }

    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<Allocation, Error> {
        let product = uow
            .products()
            .get_for_order(&self.sku, &self.orderid)
            .await?
            .ok_or_else(|| Error::InvalidSku(self.sku.clone()))?;
        let line = OrderLine {
            orderid: self.orderid.clone(),
            sku: self.sku.clone(),
            qty: self.qty,
        };
        Ok(product.allocate(line)?)
    }
}

/// One line of a whole order, allocated: to one batch, or several parts;
/// or, with no parts, waiting as a backorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedLine {
    pub sku: Sku,
    pub qty: Quantity,
    pub parts: Vec<Part>,
}

impl AllocatedLine {
    /// Whether the line waits for stock rather than having it.
    pub fn is_backordered(&self) -> bool {
        self.parts.is_empty()
    }
}

impl CommandHandler for AllocateOrder {
    /// Every line, in the order the client listed them.
    type Reply = Vec<AllocatedLine>;
    const NAME: &'static str = "AllocateOrder";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        self.lines.iter().map(|(sku, _)| sku)
    }

    fn order(&self) -> Option<&OrderId> {
        Some(&self.orderid)
    }

    /// All or nothing (see `domain::model::orders`): every line's place is
    /// found before any is taken, and one short line refuses the order.
    /// Products are loaded in SKU order, so that locking units of work lock
    /// them in the same order and two orders cannot deadlock.
    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<Vec<AllocatedLine>, Error> {
        let hold = match &self.hold_id {
            Some(hold_id) => {
                let order_skus: Vec<&Sku> = self.lines.iter().map(|(sku, _)| sku).collect();
                // The hold's products and the order's, locked in one SKU
                // order whatever the hold holds.
                let mut skus = uow.products().skus_of_hold(hold_id).await?;
                skus.extend(order_skus.iter().map(|&sku| sku.clone()));
                skus.sort();
                skus.dedup();
                for sku in &skus {
                    uow.products().get(sku).await?;
                }
                holds::hold_to_convert(uow, hold_id, &order_skus).await?
            }
            None => None,
        };
        let mut placements = Vec::with_capacity(self.lines.len());
        for (sku, qty) in self.lines.sorted_by_sku() {
            let product = uow
                .products()
                .get_for_order(sku, &self.orderid)
                .await?
                .ok_or_else(|| Error::InvalidSku(sku.clone()))?;
            let line = OrderLine {
                orderid: self.orderid.clone(),
                sku: sku.clone(),
                qty: *qty,
            };
            placements.push(product.placement(&line, self.split, hold.as_ref())?);
        }
        let short: Vec<Shortage> = placements
            .iter()
            .filter_map(|placement| placement.shortage().cloned())
            .collect();
        if !short.is_empty() {
            return Err(DomainError::OrderShort {
                orderid: self.orderid.clone(),
                short,
            }
            .into());
        }
        // Taken in the order the client listed the lines, the order of the
        // reply: the products are in the unit of work already.
        placements.sort_by_cached_key(|placement| {
            self.lines
                .iter()
                .position(|(sku, _)| sku == placement.sku())
        });
        let mut allocated = Vec::with_capacity(placements.len());
        for (placement, (sku, qty)) in placements.into_iter().zip(self.lines.iter()) {
            let product = uow
                .products()
                .get(sku)
                .await?
                .ok_or_else(|| Error::InvalidSku(sku.clone()))?;
            allocated.push(AllocatedLine {
                sku: sku.clone(),
                qty: *qty,
                parts: product.place(placement)?,
            });
        }
        Ok(allocated)
    }
}

impl CommandHandler for ChangeBatchQuantity {
    type Reply = ();
    const NAME: &'static str = "ChangeBatchQuantity";

    async fn handle<T: StoreTransaction>(&self, uow: &mut UnitOfWork<T>) -> Result<(), Error> {
        resize(uow, &self.reference, |product| {
            product.change_batch_quantity(&self.reference, self.qty)
        })
        .await
    }
}

/// Runs `change`, a change of batch `reference`'s quantity, on its product
/// loaded with its totals only; loads the batch's lines and live holds,
/// and runs it again, only when it refused for want of them (a shrink below
/// what the batch has allocated and held). Most changes need none, and a
/// batch's lines grow with its history: a stocktaker's count should not
/// read every line the batch ever took. (The refusal changed nothing, as
/// every refusal of the model.)
async fn resize<T: StoreTransaction, R>(
    uow: &mut UnitOfWork<T>,
    reference: &BatchRef,
    change: impl Fn(&mut Product) -> Result<R, DomainError>,
) -> Result<R, Error> {
    let unknown = || DomainError::UnknownBatch {
        reference: reference.clone(),
    };
    let products = uow.products();
    let sku = products
        .sku_of_batch(reference)
        .await?
        .ok_or_else(unknown)?;
    let product = products.get(&sku).await?.ok_or_else(unknown)?;
    match change(product) {
        Err(DomainError::LinesNotLoaded { .. }) => {}
        done => return Ok(done?),
    }
    let product = products
        .get_by_batch(reference)
        .await?
        .ok_or_else(unknown)?;
    match change(product) {
        // The lines read disagree with the totals read before them: another
        // instance committed in between (a database reads each statement at
        // its own moment). As any lost race, it is run again, and the next
        // attempt locks the product as it reads it.
        Err(DomainError::LinesNotLoaded { .. }) => Err(Error::Store(StoreError::Conflict { sku })),
        done => Ok(done?),
    }
}

/// What an adjustment left: the batch's figures after it, and its ledger
/// entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    pub reference: BatchRef,
    pub qty: u64,
    pub allocated: u64,
    pub available: u64,
    pub movement: Movement,
    /// When it moved: the unit of work's time.
    pub at: DateTime<Utc>,
}

impl CommandHandler for AdjustBatch {
    type Reply = Adjusted;
    const NAME: &'static str = "AdjustBatch";

    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<Adjusted, Error> {
        let at = uow.now();
        resize(uow, &self.reference, |product| {
            let movement = product.adjust_batch(&self.reference, self.adjustment.clone())?;
            let batch =
                product
                    .batch(&self.reference)
                    .ok_or_else(|| DomainError::UnknownBatch {
                        reference: self.reference.clone(),
                    })?;
            Ok(Adjusted {
                reference: self.reference.clone(),
                qty: batch.purchased_quantity(),
                allocated: batch.allocated_quantity(),
                available: batch.available_quantity(),
                movement,
                at,
            })
        })
        .await
    }
}

impl CommandHandler for Deallocate {
    /// The parts the line was taken off: one per batch it was on.
    type Reply = Vec<Part>;
    const NAME: &'static str = "Deallocate";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        std::iter::once(&self.sku)
    }

    fn order(&self) -> Option<&OrderId> {
        Some(&self.orderid)
    }

    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<Vec<Part>, Error> {
        let product = uow
            .products()
            .get_for_order(&self.sku, &self.orderid)
            .await?
            .ok_or_else(|| Error::InvalidSku(self.sku.clone()))?;
        Ok(product.deallocate(&self.orderid)?)
    }
}

impl CommandHandler for ChangeSettings {
    /// The SKU's settings now.
    type Reply = Settings;
    const NAME: &'static str = "ChangeSettings";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        std::iter::once(&self.sku)
    }

    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<Settings, Error> {
        let product = uow
            .products()
            .get(&self.sku)
            .await?
            .ok_or_else(|| Error::UnknownProduct(self.sku.clone()))?;
        let current = product.settings();
        product.change_settings(Settings {
            backorder_limit: self.backorder_limit.unwrap_or(current.backorder_limit),
            low_stock_threshold: self
                .low_stock_threshold
                .unwrap_or(current.low_stock_threshold),
        });
        Ok(product.settings())
    }
}

/// The transactional event handlers: their writes commit or roll back with
/// the command that raised the event.
pub async fn handle_in_transaction<T: StoreTransaction>(
    event: &Event,
    uow: &mut UnitOfWork<T>,
) -> Result<(), StoreError> {
    match event {
        Event::Allocated(e) => {
            add_allocation_to_read_model(e, uow);
            add_to_outbox(Outgoing::LineAllocated(e.clone()), uow);
        }
        Event::StockLevelChanged(e) => {
            if let Some(message) = e.message() {
                let news = StockNews {
                    message,
                    sku: e.sku.clone(),
                    available: e.available,
                    threshold: e.threshold,
                };
                add_to_outbox(Outgoing::Stock(news), uow);
            }
        }
        Event::Deallocated(e) => {
            remove_allocation_from_read_model(&e.orderid, &e.sku, &e.batchref, uow);
            reallocate(e, uow).await?;
            // A part bigger than the batch's excess leaves room behind it.
            fill_backorders(&e.sku, uow).await?;
        }
        Event::AllocationCancelled(e) => {
            remove_allocation_from_read_model(&e.orderid, &e.sku, &e.batchref, uow);
            fill_backorders(&e.sku, uow).await?;
        }
        Event::LineCancelled(e) => {
            remove_allocation_from_read_model(&e.orderid, &e.sku, &e.batchref, uow);
            fill_backorders(&e.sku, uow).await?;
        }
        // An email, in the outbox like any message: one per event however
        // many instances run, and not lost to a crash after the commit.
        Event::OutOfStock(e) => add_to_outbox(Outgoing::OutOfStock(e.clone()), uow),
        Event::StockMoved(e) if e.movement.delta > 0 => fill_backorders(&e.sku, uow).await?,
        Event::HoldReleased(e) => fill_backorders(&e.sku, uow).await?,
        // Holds and backorders are read from the write tables: no read
        // model to keep. A shipped line stays on its batch in the read
        // model: it was allocated there.
        Event::BatchCreated(_)
        | Event::Shipped(_)
        | Event::BatchQuantityChanged(_)
        | Event::StockMoved(_)
        | Event::Held(_)
        | Event::HoldExtended(_)
        | Event::HoldBroken(_)
        | Event::HoldConverted(_)
        | Event::Backordered(_)
        | Event::BackorderFilled(_)
        | Event::BackorderWithdrawn(_)
        | Event::SettingsChanged(_) => {}
    }
    Ok(())
}

/// Transactional: stock appeared (a batch grew or arrived, a line or a
/// hold gave units back, a shrink took off more than it had to), so the product's waiting backorders have it
/// first (book chapter 9's reallocation, in the same transaction: no
/// command in between can take what they could have had). The product is
/// in the unit of work already; the lines it fills raise `Allocated`,
/// handled in turn.
pub async fn fill_backorders<T: StoreTransaction>(
    sku: &Sku,
    uow: &mut UnitOfWork<T>,
) -> Result<(), StoreError> {
    if let Some(product) = uow.products().get(sku).await? {
        product.fill_backorders();
    }
    Ok(())
}

/// Transactional: a line (or a part of a split line) that a shrinking
/// batch gave up goes to another batch, or waits, or is out of stock
/// (book chapter 9, which sends `Allocate` after the commit). In the same
/// transaction: after the commit, a client that sent the line again in
/// between had it allocated, and the follow-up then allocated it a second
/// time; and a follow-up that failed lost the line for good. The product
/// holds the line's other parts already: they load with any part.
pub async fn reallocate<T: StoreTransaction>(
    event: &Deallocated,
    uow: &mut UnitOfWork<T>,
) -> Result<(), StoreError> {
    if let Some(product) = uow.products().get(&event.sku).await? {
        product.reallocate(OrderLine {
            orderid: event.orderid.clone(),
            sku: event.sku.clone(),
            qty: event.qty,
        });
    }
    Ok(())
}

/// Transactional: a new allocation shows in the `allocations` read model.
pub fn add_allocation_to_read_model<T: StoreTransaction>(
    event: &Allocated,
    uow: &mut UnitOfWork<T>,
) {
    uow.update_view(ViewChange::Allocated {
        orderid: event.orderid.clone(),
        sku: event.sku.clone(),
        batchref: event.batchref.clone(),
    });
}

/// Transactional: a line (or a part of one) that left its batch leaves the
/// read model too.
pub fn remove_allocation_from_read_model<T: StoreTransaction>(
    orderid: &OrderId,
    sku: &Sku,
    batchref: &BatchRef,
    uow: &mut UnitOfWork<T>,
) {
    uow.update_view(ViewChange::Deallocated {
        orderid: orderid.clone(),
        sku: sku.clone(),
        batchref: batchref.clone(),
    });
}

/// Transactional: a message for other systems (`line_allocated` with an
/// allocation, a stock level's crossing) or for people (the out-of-stock
/// email) is written with the change it tells of, so it cannot be lost
/// between commit and publish.
pub fn add_to_outbox<T: StoreTransaction>(message: Outgoing, uow: &mut UnitOfWork<T>) {
    uow.add_to_outbox(OutboxMessage {
        message_id: Uuid::new_v4(),
        message,
    });
}

/// What the out-of-stock email of outbox message `id` says, to warn the
/// people who buy stock. The one place its wording lives.
pub fn out_of_stock_notification(id: Uuid, event: &OutOfStock) -> Notification {
    Notification {
        id,
        subject: format!("Out of stock for {}", event.sku),
        body: format!("Out of stock for {}", event.sku),
    }
}

/// The notification an outbox message is, if it is one: what the
/// notifications relay sends.
pub fn notification_of(message: &OutboxMessage) -> Option<Notification> {
    match &message.message {
        Outgoing::OutOfStock(event) => Some(out_of_stock_notification(message.message_id, event)),
        Outgoing::LineAllocated(_) | Outgoing::Stock(_) => None,
    }
}

/// After commit: a hold that a shrinking batch broke is released whole,
/// its other products' units freed.
pub fn release_broken_hold(event: &HoldBroken) -> ReleaseHold {
    ReleaseHold {
        hold_id: event.hold_id.clone(),
    }
}

#[cfg(test)]
mod tests;
