//! Adapters: the implementations of the service layer's ports that talk to
//! the outside world (book chapters 2, 6 and 13, "dependency inversion").
//!
//! - [`sql`]: the unit of work's storage and the read model, on SQLite or
//!   PostgreSQL, with the schema migrations;
//! - [`log`]: notifications and publishing that only write to the log, for
//!   when no SMTP server or Redis is configured.
//!
//! The service layer defines the traits and knows nothing of this crate;
//! the `allocation` binary picks the adapters at start and hands them to the
//! message bus.

pub mod log;
pub mod sql;

pub use log::{LogNotifications, LogPublisher};
pub use sql::{PoolSettings, SqlError, SqlStore, SqlTransaction};
