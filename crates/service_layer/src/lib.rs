//! The service layer (book chapters 4, 6, 9, 10, 12 and 13): the message bus
//! that handles commands and events, the unit of work and repository that
//! give handlers products to change, the ports through which the service
//! talks to the outside world, and in-memory implementations of all of them.
//!
//! It depends on `domain` only. Storage, email and messaging live in the
//! `adapters` crate and plug in through the traits defined here.

pub mod caller;
mod group_commit;
pub mod handlers;
pub mod memory;
pub mod messagebus;
pub mod ports;
mod product_turns;
pub mod relay;
pub mod unit_of_work;

pub use messagebus::{Error, MessageBus, RetryPolicy};
pub use ports::{
    ChangeSet, Lines, ProductChanges, Store, StoreError, StoreTransaction, ViewChange,
};
pub use unit_of_work::UnitOfWork;
