//! Fakes for the ports the outbox relays send through (notifications,
//! publishing) that record what they are given, for tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::ports::{
    Notification, NotificationError, Notifications, OutboxMessage, PublishError, Publisher,
};

/// told to fail its first calls, for retry tests.
#[derive(Debug)]
pub struct Recorder<T> {
    records: Mutex<Vec<T>>,
    failures_left: AtomicU32,
}

/// Records every notification it is asked to send.
pub type RecordingNotifications = Recorder<Notification>;

/// Records every message it is asked to publish.
pub type RecordingPublisher = Recorder<OutboxMessage>;

impl<T: Clone> Default for Recorder<T> {
    fn default() -> Self {
        Self::failing(0)
    }
}

impl<T: Clone> Recorder<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the first `failures` calls (messages, for a publisher), then
    /// records as usual.
    pub fn failing(failures: u32) -> Self {
        Self {
            records: Mutex::default(),
            failures_left: AtomicU32::new(failures),
        }
    }

    /// What it was given, in order.
    pub fn records(&self) -> Vec<T> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, item: &T) -> Result<(), SimulatedFailure> {
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(SimulatedFailure);
        }
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item.clone());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("simulated failure")]
struct SimulatedFailure;

impl Recorder<Notification> {
    pub fn sent(&self) -> Vec<Notification> {
        self.records()
    }
}

#[async_trait]
impl Notifications for Recorder<Notification> {
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError> {
        self.record(notification)
            .map_err(|failure| NotificationError(Box::new(failure)))
    }
}

impl Recorder<OutboxMessage> {
    pub fn published(&self) -> Vec<OutboxMessage> {
        self.records()
    }
}

#[async_trait]
impl Publisher for Recorder<OutboxMessage> {
    /// Message by message, so that a simulated failure stops the round
    /// where it happens, as a real one would.
    async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError> {
        for (sent, message) in messages.iter().enumerate() {
            self.record(message)
                .map_err(|failure| PublishError::after(sent, failure))?;
        }
        Ok(())
    }
}
