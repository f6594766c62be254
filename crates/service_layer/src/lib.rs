//! The service layer (book chapters 4, 6, 9, 10, 12 and 13): the message bus
//! that handles commands and events, the unit of work and repository that
//! give handlers products to change, the ports through which the service
//! talks to the outside world, and in-memory implementations of all of them.
//!
//! It depends on `domain` only. Storage, email and messaging live in the
//! `adapters` crate and plug in through the traits of [`ports`].
//!
//! Reading order, the book's path first: [`messagebus`], [`handlers`],
//! [`unit_of_work`], [`ports`]; then how the bus runs a command (`runner`:
//! groups, product turns, conflict retries) and why a command always runs
//! to its end ([`caller`]).

pub mod caller;
mod error;
pub mod handlers;
pub mod memory;
pub mod messagebus;
pub mod ports;
pub mod relay;
mod runner;
mod telemetry;
pub mod unit_of_work;

pub use error::Error;
pub use messagebus::MessageBus;
pub use ports::{
    ChangeSet, Lines, ProductChanges, Store, StoreError, StoreTransaction, ViewChange,
};
pub use runner::{Grouped, RetryPolicy};
pub use telemetry::metric_names;
pub use unit_of_work::UnitOfWork;
