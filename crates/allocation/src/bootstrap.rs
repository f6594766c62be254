//! Dependency injection (book chapter 13): the one place that picks concrete
//! adapters and wires them into the message bus. Handlers and entrypoints
//! only ever see the traits.

use std::sync::Arc;

use adapters::log::{LogNotifications, LogPublisher};
use adapters::sql::{PoolSettings, SqlStore};
use service_layer::ports::{Notifications, Publisher};
use service_layer::{MessageBus, RetryPolicy, Store};

use crate::config::DatabaseArgs;

/// The adapters for the outside world. Log-only for now: SMTP and Redis plug
/// in here without any handler changing.
#[derive(Debug, Clone)]
pub struct Outside {
    pub notifications: Arc<dyn Notifications>,
    pub publisher: Arc<dyn Publisher>,
}

impl Default for Outside {
    fn default() -> Self {
        Self {
            notifications: Arc::new(LogNotifications),
            publisher: Arc::new(LogPublisher),
        }
    }
}

/// The ready message bus over `store`.
pub fn bootstrap<S: Store>(store: S, outside: Outside) -> MessageBus<S> {
    MessageBus::new(
        store,
        outside.notifications,
        outside.publisher,
        RetryPolicy::default(),
    )
}

/// Connects to the SQLite or PostgreSQL database and migrates its schema.
pub async fn open_sql_store(database: &DatabaseArgs) -> anyhow::Result<SqlStore> {
    let settings = PoolSettings {
        max_connections: database.database_max_connections,
        acquire_timeout: database.acquire_timeout(),
    };
    // The error already names the database, password hidden.
    Ok(SqlStore::connect(database.database_url.expose(), settings).await?)
}
