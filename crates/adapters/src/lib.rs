//! Adapters: the implementations of the service layer's ports that talk to
//! the outside world (book chapters 2, 6 and 13, "dependency inversion").
//!
//! - [`sql`]: the unit of work's storage and the read model, on SQLite or
//!   PostgreSQL, with the schema migrations;
//! - [`log`]: notifications and publishing that only write to the log, for
//!   when no SMTP server or Redis is configured;
//! - [`messages`]: the JSON wire formats of the Redis messages (chapter 11);
//! - [`redis`]: Redis pub/sub, the external message bus: a publisher and a
//!   subscription that reconnects by itself;
//! - [`email`]: notifications by SMTP;
//! - [`csv_files`]: the book's appendix, a store backed by CSV files;
//! - [`redact_url`]: how every adapter names its server in messages.
//!
//! The service layer defines the traits and knows nothing of this crate;
//! the `allocation` binary picks the adapters at start and hands them to the
//! message bus.

pub mod csv_files;
pub mod email;
pub mod log;
pub mod messages;
mod redact;
pub mod redis;
pub mod sql;

pub use email::{EmailConfigError, EmailError, EmailNotifications};
pub use log::{LogNotifications, LogPublisher};
pub use messages::DecodeError;
pub use redact::redact_url;
pub use redis::{Incoming, RedisError, RedisPublisher, Subscription, subscribe, subscribe_forever};
pub use sql::{PoolSettings, SqlError, SqlStore, SqlTransaction};
