//! The Redis entrypoint (book chapter 11, "event-driven architecture"): the
//! consumer of the external message bus. It subscribes to `allocate` and
//! `change_batch_quantity`, turns each message into a command and hands it
//! to the message bus. A malformed message is logged with its reason,
//! counted and skipped; the subscription reconnects by itself when Redis
//! goes away, so the consumer never dies of either.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adapters::messages;
use adapters::redis::{Incoming, subscribe_forever};
use futures::StreamExt;
use service_layer::{MessageBus, Store};
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Attempts at a message whose command failed for a reason that may pass
/// (the database unreachable, endless contention). Pub/sub never delivers
/// it again, so giving up loses it: try a little before that.
const ATTEMPTS: u32 = 3;

/// What the consumer did with the messages it received.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub handled: AtomicU64,
    /// Well-formed, but the domain refused the command (e.g. unknown batch).
    pub refused: AtomicU64,
    /// Not a valid message for its channel.
    pub malformed: AtomicU64,
    /// Valid, but handling failed even after retries.
    pub failed: AtomicU64,
}

/// Consumes messages until `shutdown` resolves; the message being handled
/// then is finished first.
pub async fn consume<S: Store>(
    bus: Arc<MessageBus<S>>,
    redis_url: &str,
    stats: Arc<ConsumerStats>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut subscription = subscribe_forever(redis_url, &messages::INCOMING)?;
    info!(channels = ?messages::INCOMING, "consuming Redis messages");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = subscription.next() => message,
        };
        // The subscription reconnects forever; it ends only if dropped.
        let Some(message) = message else { break };
        let span = info_span!("message", channel = %message.channel);
        handle(&bus, &stats, message).instrument(span).await;
    }
    info!("Redis consumer stopped");
    Ok(())
}

async fn handle<S: Store>(bus: &MessageBus<S>, stats: &ConsumerStats, message: Incoming) {
    let command = match messages::decode(&message.channel, &message.payload) {
        Ok(command) => command,
        Err(reason) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            warn!(%reason, "skipping malformed message");
            return;
        }
    };
    let mut attempt = 1;
    loop {
        match bus.dispatch(command.clone()).await {
            Ok(()) => {
                stats.handled.fetch_add(1, Ordering::Relaxed);
                debug!(command = ?command, "message handled");
                return;
            }
            Err(error) if !error.is_transient() => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!(command = ?command, %error, "message refused");
                return;
            }
            Err(error) if attempt < ATTEMPTS => {
                warn!(command = ?command, %error, attempt, "message failed, retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                attempt += 1;
            }
            Err(error) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                error!(command = ?command, %error, attempts = attempt, "message failed, giving up");
                return;
            }
        }
    }
}
