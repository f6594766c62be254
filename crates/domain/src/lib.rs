//! The domain model of the allocation service (book chapters 1, 7, 8 and 10).
//!
//! Pure and synchronous: no I/O, no async, no database types. Everything the
//! outside world sends is parsed into the value types of [`values`] first, so
//! the model itself never sees an invalid identifier or quantity.

pub mod commands;
pub mod events;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod model;
pub mod values;

pub use commands::Command;
pub use events::Event;
pub use model::{
    Adjustment, AdjustmentReason, Allocation, Backorder, Batch, Change, Closed, DomainError,
    HeldPart, Movement, OrderLine, Part, Placement, Product, Reason, Settings, Shipment, Shortage,
    StockLevel,
};
pub use values::{BatchRef, HoldId, Note, OrderId, OrderLines, Quantity, Sku, ValueError};
