//! The outbox as the relays see it (book chapter 11's "transactional
//! outbox"): claiming a destination's committed messages for a lease,
//! marking them sent, giving them back. Commits write the messages
//! (`write`).

use std::time::{Duration, SystemTime};

use domain::events::{Allocated, OutOfStock, StockMessage};
use domain::{BatchRef, OrderId, Sku};
use service_layer::ports::{
    ClaimedMessage, Destination, Outbox, OutboxBacklog, OutboxMessage, Outgoing, StockNews,
    StoreError,
};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Executor};
use uuid::Uuid;

use super::rows::{get, identifier, mismatch, quantity_from_db, to_u64, unix_millis};
use super::{Dialect, SqlStore, queries};
use crate::messages;

impl Dialect {
    fn claim_outbox_statement(self) -> &'static str {
        match self {
            Self::Sqlite => queries::CLAIM_OUTBOX_SQLITE,
            Self::Postgres => queries::CLAIM_OUTBOX_POSTGRES,
        }
    }
}

/// What an outbox row tells, by its channel.
fn outgoing(row: &AnyRow) -> Result<Outgoing, StoreError> {
    let sku = identifier(&get::<String>(row, "sku")?, Sku::parse)?;
    let channel: String = get(row, "channel")?;
    let message = match channel.as_str() {
        messages::LINE_ALLOCATED => {
            let text = |column| get::<Option<String>>(row, column)?.ok_or_else(|| missing(column));
            return Ok(Outgoing::LineAllocated(Allocated {
                orderid: identifier(&text("orderid")?, OrderId::parse)?,
                qty: quantity_from_db(
                    get::<Option<i64>>(row, "qty")?.ok_or_else(|| missing("qty"))?,
                )?,
                batchref: identifier(&text("batchref")?, BatchRef::parse)?,
                sku,
            }));
        }
        messages::OUT_OF_STOCK => return Ok(Outgoing::OutOfStock(OutOfStock { sku })),
        messages::STOCK_EXHAUSTED => StockMessage::Exhausted,
        messages::BACK_IN_STOCK => StockMessage::BackInStock,
        messages::LOW_STOCK => StockMessage::Low,
        other => return Err(mismatch(format!("an outbox message on channel {other:?}"))),
    };
    let figure = |column| {
        let value = get::<Option<i64>>(row, column)?.unwrap_or(0);
        to_u64(value, column)
    };
    Ok(Outgoing::Stock(StockNews {
        message,
        sku,
        available: figure("available")?,
        threshold: figure("threshold")?,
    }))
}

fn missing(column: &str) -> StoreError {
    mismatch(format!("a line_allocated message without {column}"))
}

impl Outbox for SqlStore {
    async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        destination: Destination,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let _writing = self.wait_to_write().await?;
        let now = SystemTime::now();
        let claim = sqlx::query(self.dialect.claim_outbox_statement())
            .bind(unix_millis(now + lease))
            .bind(unix_millis(now))
            .bind(i64::from(limit))
            .bind(destination.as_str());
        let rows = match self.dialect {
            Dialect::Sqlite => claim
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::backend)?,
            Dialect::Postgres => {
                let mut transaction = self
                    .pool
                    .begin_with(queries::BEGIN_CLAIM_POSTGRES)
                    .await
                    .map_err(StoreError::backend)?;
                let rows = claim
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(StoreError::backend)?;
                transaction.commit().await.map_err(StoreError::backend)?;
                rows
            }
        };
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(ClaimedMessage {
                    position: get(row, "id")?,
                    message: OutboxMessage {
                        message_id: identifier(
                            &get::<String>(row, "message_id")?,
                            Uuid::parse_str,
                        )?,
                        message: outgoing(row)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING gives no order; the relay publishes oldest first.
        claimed.sort_by_key(|message| message.position);
        Ok(claimed)
    }

    async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.for_rows("DELETE FROM outbox WHERE id IN", positions)
            .await
    }

    async fn release(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.for_rows(
            "UPDATE outbox SET claimed_until = NULL WHERE id IN",
            positions,
        )
        .await
    }

    async fn backlog(&self) -> Result<OutboxBacklog, StoreError> {
        read_outbox_backlog(&self.pool).await
    }
}

impl SqlStore {
    /// Runs `statement`, which ends in `WHERE id IN`, for all `ids` in one
    /// round trip. Not cached as a prepared statement: its text changes
    /// with the number of ids.
    async fn for_rows(&self, statement: &str, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _writing = self.wait_to_write().await?;
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!("{statement} ({})", placeholders.join(", "));
        let query = ids.iter().fold(
            sqlx::query(AssertSqlSafe(sql)).persistent(false),
            |query, id| query.bind(*id),
        );
        query
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }
}

/// How many messages wait in the outbox, and for how long the oldest has:
/// for the metrics (`Outbox::backlog`) and for `check`, in its snapshot.
pub(super) async fn read_outbox_backlog<'e>(
    executor: impl Executor<'e, Database = Any>,
) -> Result<OutboxBacklog, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS messages, MIN(created_at) AS oldest FROM outbox")
        .fetch_one(executor)
        .await
        .map_err(StoreError::backend)?;
    let messages: i64 = get(&row, "messages")?;
    let oldest: Option<i64> = get(&row, "oldest")?;
    let now = unix_millis(SystemTime::now());
    Ok(OutboxBacklog {
        messages: u64::try_from(messages).unwrap_or_default(),
        // Clocks of several hosts may disagree a little: never negative.
        oldest_age: oldest
            .map(|written| Duration::from_millis(u64::try_from(now - written).unwrap_or_default())),
    })
}
