//! Notifications and publishing to the log: the ports the outbox relays
//! send through (book chapters 9 and 11) when no SMTP server or Redis is
//! configured.
//!
//! They never fail, so the relays never retry them.

use async_trait::async_trait;
use service_layer::ports::{
    Notification, NotificationError, Notifications, OutboxMessage, PublishError, Publisher,
};

/// Writes each notification to the log as a warning: someone should act on
/// it, and with no email configured the log is where they will look.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifications;

#[async_trait]
impl Notifications for LogNotifications {
    async fn send(&self, notification: &Notification) -> Result<(), NotificationError> {
        tracing::warn!(
            subject = %notification.subject,
            body = %notification.body,
            "notification (no SMTP server configured, so it is only logged)"
        );
        Ok(())
    }
}

/// Writes each message for other systems to the log instead of Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogPublisher;

#[async_trait]
impl Publisher for LogPublisher {
    async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError> {
        for message in messages {
            let (channel, payload) = crate::messages::encode(message);
            tracing::info!(
                channel,
                message_id = %message.message_id,
                sku = %message.message.sku(),
                payload,
                "message (no Redis configured, so it is only logged)"
            );
        }
        Ok(())
    }
}
