//! The Redis entrypoint (book chapter 11, "event-driven architecture"): the
//! consumer of the external message bus. It subscribes to `allocate` and
//! `change_batch_quantity`, turns each message into a command and hands it
//! to the message bus. A malformed message is logged with its reason,
//! counted and skipped; the subscription reconnects by itself when Redis
//! goes away, so the consumer never dies of either. Messages that arrive
//! while it is busy wait in the subscription's bounded buffer; beyond that
//! they are dropped and counted (`adapters::redis`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adapters::messages;
use adapters::redis::{Incoming, subscribe_forever};
use domain::Command;
use futures::StreamExt;
use service_layer::{MessageBus, Store};
use tokio::sync::watch;
use tracing::field::Empty;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::metrics::{REDIS_CONNECTED, REDIS_PROCESSED, REDIS_RECEIVED};

/// Attempts at a message whose command failed for a reason that may pass
/// (the database unreachable, endless contention). Pub/sub never delivers
/// it again, so giving up loses it: try a little before that.
const ATTEMPTS: u32 = 3;

/// Consumes messages until `shutdown` resolves; the message being handled
/// then is finished first.
pub async fn consume_channels<S: Store>(
    bus: Arc<MessageBus<S>>,
    redis_url: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut subscription = subscribe_forever(redis_url, &messages::INCOMING)?;
    info!(channels = ?messages::INCOMING, "consuming Redis messages");
    tokio::spawn(report_connection(subscription.connected()));
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = subscription.next() => message,
        };
        // The subscription reconnects forever; it ends only if dropped.
        let Some(message) = message else { break };
        metrics::counter!(REDIS_RECEIVED, "channel" => message.channel.clone()).increment(1);
        let span = info_span!(
            "message",
            channel = %message.channel,
            orderid = Empty,
            sku = Empty,
            batchref = Empty,
        );
        handle(&bus, message).instrument(span).await;
    }
    info!("Redis consumer stopped");
    Ok(())
}

/// Mirrors the subscription's state in a gauge until the subscription is
/// dropped (the consumer stopped): then it is disconnected for good.
async fn report_connection(mut connected: watch::Receiver<bool>) {
    loop {
        let now = f64::from(u8::from(*connected.borrow_and_update()));
        metrics::gauge!(REDIS_CONNECTED).set(now);
        if connected.changed().await.is_err() {
            break;
        }
    }
    metrics::gauge!(REDIS_CONNECTED).set(0.0);
}

/// Adds the ids of the command to the message's span, for its log lines.
fn record_ids(command: &Command) {
    let span = Span::current();
    match command {
        Command::Allocate(c) => {
            span.record("orderid", c.orderid.as_str());
            span.record("sku", c.sku.as_str());
        }
        Command::ShipOrder(c) => {
            span.record("orderid", c.orderid.as_str());
        }
        Command::CancelOrder(c) => {
            span.record("orderid", c.orderid.as_str());
        }
        // Holds and settings come over HTTP only.
        Command::PlaceHold(_)
        | Command::ExtendHold(_)
        | Command::ReleaseHold(_)
        | Command::ChangeSettings(_) => {}
        Command::AllocateOrder(c) => {
            span.record("orderid", c.orderid.as_str());
        }
        Command::ChangeBatchQuantity(c) => {
            span.record("batchref", c.reference.as_str());
        }
        Command::AdjustBatch(c) => {
            span.record("batchref", c.reference.as_str());
        }
        Command::CreateBatch(c) => {
            span.record("batchref", c.reference.as_str());
            span.record("sku", c.sku.as_str());
        }
        Command::Deallocate(c) => {
            span.record("orderid", c.orderid.as_str());
            span.record("sku", c.sku.as_str());
        }
    }
}

fn count_processed(channel: &str, outcome: &'static str) {
    metrics::counter!(REDIS_PROCESSED, "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

async fn handle<S: Store>(bus: &Arc<MessageBus<S>>, message: Incoming) {
    let outcome = run_message(bus, &message.channel, &message.payload, None).await;
    count_processed(&message.channel, outcome.name());
}

/// What became of one incoming message.
#[derive(Debug)]
pub enum Outcome {
    /// Its command committed.
    Handled,
    /// It was delivered again after its command committed: not run again.
    Duplicate,
    /// Its command was refused (an unknown SKU, a conflicting line): an
    /// answer, logged; sending it again would be refused again.
    Refused,
    /// It is not a command: the reason.
    Malformed(String),
    /// Its command failed for a reason that may pass (the database away,
    /// endless contention), after a few attempts (logged with the error).
    Failed,
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Duplicate => "duplicate",
            Self::Refused => "refused",
            Self::Malformed(_) => "malformed",
            Self::Failed => "failed",
        }
    }
}

/// Decodes a message that arrived on `channel` (or stream) and runs its
/// command on the bus, trying again a few times while it fails for a
/// reason that may pass; logs what became of it, in the caller's span.
/// `delivery` is the key of a message that may be delivered again (a
/// stream entry's): a second delivery after its command committed is
/// answered as handled, and not run again.
pub async fn run_message<S: Store>(
    bus: &Arc<MessageBus<S>>,
    channel: &str,
    payload: &[u8],
    delivery: Option<&str>,
) -> Outcome {
    let command = match messages::decode(channel, payload) {
        Ok(command) => command,
        Err(reason) => {
            warn!(%reason, "skipping malformed message");
            return Outcome::Malformed(reason.to_string());
        }
    };
    record_ids(&command);
    let mut attempt = 1;
    loop {
        match bus.dispatch_delivered(command.clone(), delivery).await {
            Ok(()) => {
                debug!(command = ?command, "message handled");
                return Outcome::Handled;
            }
            Err(service_layer::Error::AlreadyDelivered) => {
                info!(command = ?command, "message delivered again after it was handled; not run again");
                return Outcome::Duplicate;
            }
            Err(error) if !error.is_transient() => {
                warn!(command = ?command, %error, "message refused");
                return Outcome::Refused;
            }
            Err(error) if attempt < ATTEMPTS => {
                warn!(command = ?command, %error, attempt, "message failed, retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                attempt += 1;
            }
            Err(error) => {
                error!(command = ?command, %error, attempts = attempt, "message failed, giving up");
                return Outcome::Failed;
            }
        }
    }
}
