//! Stock levels (beyond the book): whether a product has units an
//! allocation could take, few of them, or none, as other systems were last
//! told. The product keeps the level it last announced (in stock until it
//! first crossed), and [`Product::announce_stock_level`] records a
//! [`StockLevelChanged`] when its stock has crossed into another: once per
//! crossing, whatever the commands in between, since the unit of work
//! announces once, before it commits, and the level is stored with the
//! product's version.

#[cfg(test)]
mod tests;

use crate::events::{Event, StockLevelChanged};
use crate::model::Product;

/// Where a product's available units stand against its low-stock
/// threshold. A new product is in stock: it has its first batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StockLevel {
    /// Nothing an allocation could take.
    Out,
    /// Some, but fewer than the SKU's low-stock threshold.
    Low,
    /// At or above the threshold.
    #[default]
    In,
}

impl StockLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::Low => "low",
            Self::In => "in",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Out, Self::Low, Self::In]
            .into_iter()
            .find(|level| level.as_str() == text)
    }
}

impl Product {
    /// The level a stored product last announced, for a repository
    /// restoring it.
    pub fn with_announced_level(mut self, level: StockLevel) -> Self {
        self.announced = level;
        self
    }

    pub fn announced_level(&self) -> StockLevel {
        self.announced
    }

    /// What allocations could take now, over every batch.
    pub fn available(&self) -> u64 {
        self.batches.iter().map(|b| b.available_quantity()).sum()
    }

    /// The level its stock is at now.
    pub fn stock_level(&self) -> StockLevel {
        match self.available() {
            0 => StockLevel::Out,
            available if available < self.settings.low_stock_threshold => StockLevel::Low,
            _ => StockLevel::In,
        }
    }

    /// Records [`StockLevelChanged`] if the stock is at another level than
    /// the one last announced.
    pub fn announce_stock_level(&mut self) {
        let level = self.stock_level();
        if self.announced == level {
            return;
        }
        let event = StockLevelChanged {
            sku: self.sku.clone(),
            from: self.announced,
            to: level,
            available: self.available(),
            threshold: self.settings.low_stock_threshold,
        };
        self.announced = level;
        self.record(Event::StockLevelChanged(event));
    }
}
