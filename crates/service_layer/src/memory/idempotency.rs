//! The memory store's idempotency keys: a map from key to its claim or
//! its answer.

use chrono::{DateTime, Utc};

use super::{GrowingMap, MemoryStore};
use crate::ports::{Claim, IdempotencyKeys, StoreError};

#[derive(Debug, Default)]
pub(super) struct KeyTable {
    keys: GrowingMap<String, StoredKey>,
}

#[derive(Debug)]
struct StoredKey {
    fingerprint: String,
    claimed_at: DateTime<Utc>,
    /// `None` while the request runs.
    answer: Option<(u16, String)>,
}

impl IdempotencyKeys for MemoryStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        expired_before: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let mut tables = self.lock();
        let keys = &mut tables.idempotency_keys.keys;
        if let Some(stored) = keys.get(key) {
            let taken_over = match &stored.answer {
                None => stored.claimed_at < stale_before,
                Some(_) => stored.claimed_at < expired_before,
            };
            if !taken_over {
                let fingerprint = stored.fingerprint.clone();
                return Ok(match &stored.answer {
                    None => Claim::Running { fingerprint },
                    Some((status, body)) => Claim::Answered {
                        fingerprint,
                        status: *status,
                        body: body.clone(),
                    },
                });
            }
        }
        keys.insert(
            key.to_owned(),
            StoredKey {
                fingerprint: fingerprint.to_owned(),
                claimed_at: now,
                answer: None,
            },
        );
        Ok(Claim::Claimed)
    }

    async fn complete(&self, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        let mut tables = self.lock();
        if let Some(stored) = tables.idempotency_keys.keys.get_mut(key) {
            stored.answer = Some((status, body.to_owned()));
        }
        Ok(())
    }

    async fn abandon(&self, key: &str) -> Result<(), StoreError> {
        let mut tables = self.lock();
        let keys = &mut tables.idempotency_keys.keys;
        // Only a claim still running: an answer, once kept, stays.
        if keys.get(key).is_some_and(|stored| stored.answer.is_none()) {
            keys.swap_remove(key);
        }
        Ok(())
    }
}
