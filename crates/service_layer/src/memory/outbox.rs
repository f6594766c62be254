//! The memory store's outbox: committed messages in a deque indexed by
//! position, claimed (by destination), marked sent and released as the SQL
//! outbox is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::MemoryStore;
use crate::ports::{ClaimedMessage, Destination, Outbox, OutboxBacklog, OutboxMessage, StoreError};

/// Committed messages from the oldest unsent one on, in position order.
/// Positions are consecutive, so a row is found by arithmetic, not search,
/// and a commit appends at the back. A message sent before older ones
/// leaves a gap (`None`) until they are sent too; sent rows at the front
/// are dropped.
#[derive(Debug)]
pub(super) struct OutboxTable {
    rows: VecDeque<Option<OutboxRow>>,
    /// The position of `rows[0]`.
    first_position: i64,
    unsent: u64,
}

#[derive(Debug)]
struct OutboxRow {
    message: OutboxMessage,
    claimed_until: Option<Instant>,
    written_at: Instant,
}

impl Outbox for MemoryStore {
    async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        destination: Destination,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let now = Instant::now();
        let mut tables = self.lock();
        let claimable = tables
            .outbox
            .unsent_mut()
            .filter(|(_, row)| row.message.message.destination() == destination)
            .filter(|(_, row)| row.claimed_until.is_none_or(|until| until <= now))
            .take(limit as usize);
        let mut claimed = Vec::new();
        for (position, row) in claimable {
            row.claimed_until = Some(now + lease);
            claimed.push(ClaimedMessage {
                position,
                message: row.message.clone(),
            });
        }
        Ok(claimed)
    }

    async fn mark_sent(&self, positions: &[i64]) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for &position in positions {
            tables.outbox.remove(position);
        }
        Ok(())
    }

    async fn release(&self, positions: &[i64]) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for &position in positions {
            if let Some(row) = tables.outbox.get_mut(position) {
                row.claimed_until = None;
            }
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let tables = self.lock();
        // Positions grow with time: the first row is the oldest.
        let oldest = tables.outbox.unsent().next();
        Ok(OutboxBacklog {
            messages: tables.outbox.unsent,
            oldest_age: oldest.map(|(_, row)| row.written_at.elapsed()),
        })
    }
}

impl Default for OutboxTable {
    fn default() -> Self {
        Self {
            rows: VecDeque::new(),
            // Positions start at 1, as in the SQL stores.
            first_position: 1,
            unsent: 0,
        }
    }
}

impl OutboxTable {
    /// The messages committed and not yet marked sent, oldest first.
    pub(super) fn unsent_messages(&self) -> Vec<OutboxMessage> {
        self.unsent().map(|(_, row)| row.message.clone()).collect()
    }

    pub(super) fn append(&mut self, message: OutboxMessage, written_at: Instant) {
        self.rows.push_back(Some(OutboxRow {
            message,
            claimed_until: None,
            written_at,
        }));
        self.unsent += 1;
    }

    /// Where `position` sits in `rows`, if it is still there.
    fn index(&self, position: i64) -> Option<usize> {
        usize::try_from(position - self.first_position)
            .ok()
            .filter(|&index| index < self.rows.len())
    }

    fn get_mut(&mut self, position: i64) -> Option<&mut OutboxRow> {
        let index = self.index(position)?;
        self.rows[index].as_mut()
    }

    /// Drops a sent message, and the gaps it leaves at the front.
    fn remove(&mut self, position: i64) {
        let Some(index) = self.index(position) else {
            return;
        };
        if self.rows[index].take().is_some() {
            self.unsent -= 1;
        }
        while let Some(None) = self.rows.front() {
            self.rows.pop_front();
            self.first_position += 1;
        }
    }

    /// The unsent messages with their positions, oldest first.
    fn unsent(&self) -> impl Iterator<Item = (i64, &OutboxRow)> {
        let positions = self.first_position..;
        positions
            .zip(&self.rows)
            .filter_map(|(position, row)| Some((position, row.as_ref()?)))
    }

    fn unsent_mut(&mut self) -> impl Iterator<Item = (i64, &mut OutboxRow)> {
        let positions = self.first_position..;
        positions
            .zip(&mut self.rows)
            .filter_map(|(position, row)| Some((position, row.as_mut()?)))
    }
}
