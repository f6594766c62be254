//! Backorders (beyond the book): with a SKU's backorder limit above zero, a
//! line no batch can take waits for stock instead of being refused, and
//! waiting lines are allocated, oldest first, as soon as stock can take
//! them.
//!
//! The product keeps its waiting backorders, all of them (their units are
//! bounded by the limit, unlike the lines of its history), and
//! [`Product::fill_backorders`] gives them the stock they fit. The service
//! layer calls it when an event says stock appeared (book chapter 9), and
//! on loading a product whose holds may have expired since it was stored,
//! so that no new allocation ever takes units a waiting backorder could
//! have had.

#[cfg(test)]
mod tests;

use crate::events::{BackorderFilled, BackorderWithdrawn, Backordered, Event, SettingsChanged};
use crate::model::{DomainError, OrderLine, Product};
use crate::values::{OrderId, Quantity};

/// A line waiting for stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backorder {
    pub orderid: OrderId,
    pub qty: Quantity,
    /// The product's version when it was placed: backorders are filled in
    /// this order, oldest first.
    pub number: u64,
}

/// A SKU's settings: both 0 by default, that is no backorders and no
/// low-stock messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// How many units may wait as backorders at once.
    pub backorder_limit: u64,
    /// Below how many available units the product is low on stock.
    pub low_stock_threshold: u64,
}

impl Product {
    /// A stored product's settings, for a repository restoring it.
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Adds stored waiting backorders, for a repository loading them: all
    /// of them, in any order (they are kept oldest first). Ones it has
    /// already are skipped.
    pub fn load_backorders(&mut self, backorders: impl IntoIterator<Item = Backorder>) {
        for backorder in backorders {
            if self.backorder_of(&backorder.orderid).is_none() {
                self.backorders.push(backorder);
            }
        }
        self.backorders.sort_by_key(|backorder| backorder.number);
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The waiting backorders, oldest first.
    pub fn backorders(&self) -> &[Backorder] {
        &self.backorders
    }

    /// Units waiting as backorders.
    pub fn backordered(&self) -> u64 {
        self.backorders
            .iter()
            .map(|backorder| u64::from(backorder.qty.get()))
            .sum()
    }

    /// Changes the SKU's settings, recording [`SettingsChanged`]; the
    /// settings it has already change nothing. A lower limit withdraws no
    /// backorder: it only stops new ones until fewer units wait.
    pub fn change_settings(&mut self, settings: Settings) {
        if settings != self.settings {
            self.settings = settings;
            self.record(Event::SettingsChanged(SettingsChanged {
                sku: self.sku.clone(),
                settings,
            }));
        }
    }

    /// Allocates waiting backorders, oldest first, each whole to the batch
    /// the allocation policy prefers among those that can take it,
    /// recording [`BackorderFilled`] then an `Allocated` for each. One that
    /// fits no batch is skipped for the next. Returns how many it filled.
    pub fn fill_backorders(&mut self) -> usize {
        let mut filled = 0;
        let mut position = 0;
        while position < self.backorders.len() {
            let backorder = &self.backorders[position];
            let line = OrderLine {
                orderid: backorder.orderid.clone(),
                sku: self.sku.clone(),
                qty: backorder.qty,
            };
            let Some(index) = self.preferred_batch_for(&line) else {
                position += 1;
                continue;
            };
            self.backorders.remove(position);
            self.record(Event::BackorderFilled(BackorderFilled {
                orderid: line.orderid.clone(),
                sku: line.sku.clone(),
                qty: line.qty,
            }));
            self.allocate_to(index, line);
            filled += 1;
        }
        filled
    }

    /// The waiting backorder of `orderid`, if any.
    pub fn backorder_of(&self, orderid: &OrderId) -> Option<&Backorder> {
        self.backorders.iter().find(|b| &b.orderid == orderid)
    }

    /// Whether `line` waits as a backorder already: sending it again is
    /// answered so. One of another quantity is refused.
    pub(super) fn waits_already(&self, line: &OrderLine) -> Result<bool, DomainError> {
        match self.backorder_of(&line.orderid) {
            None => Ok(false),
            Some(waiting) if waiting.qty == line.qty => Ok(true),
            Some(waiting) => Err(DomainError::AlreadyBackordered {
                orderid: line.orderid.clone(),
                sku: line.sku.clone(),
                backordered: waiting.qty.get().into(),
            }),
        }
    }

    /// Whether `qty` more units may wait, within the SKU's limit.
    pub(super) fn may_backorder(&self, qty: Quantity) -> bool {
        self.backordered() + u64::from(qty.get()) <= self.settings.backorder_limit
    }

    /// Makes `line`, which no batch can take, wait ([`Backordered`]).
    pub(super) fn backorder(&mut self, line: OrderLine) {
        let number = self.version + 1;
        self.backorders.push(Backorder {
            orderid: line.orderid.clone(),
            qty: line.qty,
            number,
        });
        self.record(Event::Backordered(Backordered {
            orderid: line.orderid,
            sku: line.sku,
            qty: line.qty,
            number,
        }));
    }

    /// Withdraws `orderid`'s waiting backorder, if it has one, recording
    /// [`BackorderWithdrawn`]; `cancelled` says its order was cancelled
    /// (the line stays the order's, cancelled) rather than the line
    /// deallocated.
    pub(super) fn withdraw_backorder(&mut self, orderid: &OrderId, cancelled: bool) -> bool {
        let Some(position) = self.backorders.iter().position(|b| &b.orderid == orderid) else {
            return false;
        };
        let backorder = self.backorders.remove(position);
        self.record(Event::BackorderWithdrawn(BackorderWithdrawn {
            orderid: backorder.orderid,
            sku: self.sku.clone(),
            qty: backorder.qty,
            cancelled,
        }));
        true
    }
}
