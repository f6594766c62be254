//! Idempotency keys in the SQL stores: one row per key, claimed with an
//! upsert that only takes over a stale claim or an expired answer, so that
//! of two instances claiming one key at once exactly one wins.

use chrono::{DateTime, Utc};
use service_layer::ports::{Claim, IdempotencyKeys, StoreError};

use super::SqlStore;
use super::rows::{first_row_once_done, get, mismatch, time_to_db};

/// Inserts the claim, or takes over one left running since before `$4`,
/// or an answer from before `$5`; returns a row only if it claimed.
const CLAIM: &str = "INSERT INTO idempotency_keys (key, fingerprint, claimed_at) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, \
     claimed_at = excluded.claimed_at, status = NULL, body = NULL \
     WHERE (idempotency_keys.status IS NULL AND idempotency_keys.claimed_at < $4) \
     OR (idempotency_keys.status IS NOT NULL AND idempotency_keys.claimed_at < $5) \
     RETURNING key";

const HOLDER: &str = "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = $1";

impl IdempotencyKeys for SqlStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        expired_before: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        // Twice at most: a holder that gave the key back between the two
        // statements leaves it free for the second try.
        for _ in 0..2 {
            let claim = sqlx::query(CLAIM)
                .bind(key)
                .bind(fingerprint)
                .bind(time_to_db(now))
                .bind(time_to_db(stale_before))
                .bind(time_to_db(expired_before));
            let claimed = first_row_once_done(claim, &self.pool)
                .await
                .map_err(StoreError::backend)?;
            if claimed.is_some() {
                return Ok(Claim::Claimed);
            }
            let holder = sqlx::query(HOLDER)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            let Some(row) = holder else {
                continue;
            };
            let fingerprint = get::<String>(&row, "fingerprint")?;
            return Ok(match get::<Option<i64>>(&row, "status")? {
                None => Claim::Running { fingerprint },
                Some(status) => Claim::Answered {
                    fingerprint,
                    status: u16::try_from(status)
                        .map_err(|_| mismatch(format!("an answer with status {status}")))?,
                    body: get::<Option<String>>(&row, "body")?.unwrap_or_default(),
                },
            });
        }
        Ok(Claim::Running {
            fingerprint: fingerprint.to_owned(),
        })
    }

    async fn complete(&self, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE idempotency_keys SET status = $2, body = $3 WHERE key = $1")
            .bind(key)
            .bind(i64::from(status))
            .bind(body)
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    async fn abandon(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND status IS NULL")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }
}
