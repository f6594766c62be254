//! The Redis Streams entrypoint: the consumer-group form of the Redis
//! consumer, for several instances. Each entry of `allocate` and
//! `change_batch_quantity` goes to one instance, which acknowledges it only
//! once its command committed (or was refused, or the entry is not a
//! command, which then goes to the dead-letter stream). The commit records
//! the entry, so that one delivered again takes effect once. An entry whose
//! command failed for a reason that may pass is retried by its consumer
//! before anything new; entries left pending by a consumer that died are
//! taken over after `claim_idle`; one delivered more than `max_deliveries`
//! times goes to the dead-letter stream too, so that it cannot stop the
//! others.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adapters::messages;
use adapters::redis::{StreamConsumer, StreamEntry};
use futures::future::join_all;
use service_layer::{MessageBus, Store};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, error, info, info_span, warn};

use super::redis::{Outcome, run_message};
use crate::metrics::{STREAM_DEAD_LETTERS, STREAM_ENTRIES, STREAM_RECLAIMED};

/// The longest wait between attempts while Redis fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to do with an entry once its handler is done.
enum Verdict {
    Acknowledge,
    DeadLetter(String),
    /// Leave it pending, and try it again (see `consume_streams`).
    Keep,
}

/// Consumes the incoming streams until `shutdown` resolves; the entries
/// being handled then are finished (and acknowledged) first.
pub async fn consume_streams<S: Store>(
    bus: Arc<MessageBus<S>>,
    mut consumer: StreamConsumer,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let settings = consumer.settings().clone();
    info!(
        streams = ?messages::INCOMING,
        group = %settings.group,
        consumer = %settings.consumer,
        "consuming Redis streams"
    );
    // Pending entries first: this consumer's own from before a restart,
    // then any a dead consumer left.
    let mut own_taken = false;
    let mut next_reclaim = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut groups_ready = false;
    // Entries whose commands failed for a reason that may pass: retried
    // here, held by this consumer, before anything new is read, so that an
    // outage neither sweeps the stream into the pending list nor counts
    // deliveries towards the dead-letter stream.
    let mut failing: Vec<StreamEntry> = Vec::new();
    loop {
        if !backoff.is_zero() {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        // Checked between reads rather than raced against one: a read
        // that is cut short may already have delivered entries, which
        // would then wait for `claim_idle`. A read blocks for a second at
        // most.
        if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
            break;
        }
        if !groups_ready {
            if let Err(error) = consumer.ensure_groups().await {
                backoff = next_backoff(backoff);
                warn!(%error, retry_in = ?backoff, "cannot set up the consumer group");
                continue;
            }
            groups_ready = true;
        }
        let reclaiming = failing.is_empty() && own_taken && Instant::now() >= next_reclaim;
        let entries = if !failing.is_empty() {
            match consumer.hold(&failing).await {
                Ok(()) => Ok(std::mem::take(&mut failing)),
                Err(error) => Err(error),
            }
        } else if !own_taken {
            consumer.own_pending().await
        } else if reclaiming {
            next_reclaim = Instant::now() + settings.claim_idle / 2;
            consumer.reclaim().await
        } else {
            consumer.read().await
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                backoff = next_backoff(backoff);
                warn!(%error, retry_in = ?backoff, "cannot read the Redis streams");
                continue;
            }
        };
        own_taken = true;
        if reclaiming {
            for entry in &entries {
                metrics::counter!(STREAM_RECLAIMED, "stream" => entry.stream.clone()).increment(1);
            }
            if !entries.is_empty() {
                info!(count = entries.len(), "took over pending stream entries");
            }
        }
        failing = handle_all(&bus, &mut consumer, entries).await;
        backoff = if failing.is_empty() {
            Duration::ZERO
        } else {
            let backoff = next_backoff(backoff);
            warn!(count = failing.len(), retry_in = ?backoff, "stream entries failed; retrying them before reading more");
            backoff
        };
    }
    info!("Redis streams consumer stopped");
    Ok(())
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
}

/// Handles `entries` side by side (commands on one product share a commit,
/// as concurrent HTTP requests do), then acknowledges what is done with
/// one `XACK` per stream; returns those whose commands failed for a reason
/// that may pass, still pending.
async fn handle_all<S: Store>(
    bus: &Arc<MessageBus<S>>,
    consumer: &mut StreamConsumer,
    entries: Vec<StreamEntry>,
) -> Vec<StreamEntry> {
    let max_deliveries = consumer.settings().max_deliveries;
    let verdicts = join_all(entries.iter().map(|entry| {
        let span = info_span!(
            "stream_entry",
            stream = %entry.stream,
            id = %entry.id,
            orderid = Empty,
            sku = Empty,
            batchref = Empty,
        );
        judge(bus, entry, max_deliveries).instrument(span)
    }))
    .await;
    let mut done: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut failing = Vec::new();
    for (entry, verdict) in entries.iter().zip(verdicts) {
        match verdict {
            Verdict::Acknowledge => done
                .entry(entry.stream.as_str())
                .or_default()
                .push(entry.id.clone()),
            Verdict::DeadLetter(reason) => {
                match consumer.dead_letter(entry, &reason).await {
                    Ok(()) => {
                        metrics::counter!(STREAM_DEAD_LETTERS, "stream" => entry.stream.clone())
                            .increment(1);
                        warn!(stream = %entry.stream, id = %entry.id, %reason, "entry moved to the dead-letter stream");
                    }
                    // Still pending: it comes back, and goes there then.
                    Err(error) => warn!(%error, id = %entry.id, "cannot dead-letter the entry"),
                }
            }
            Verdict::Keep => failing.push(entry.clone()),
        }
    }
    for (stream, ids) in done {
        if let Err(error) = consumer.ack(stream, &ids).await {
            // Their commands committed: delivered again after
            // `claim_idle`, they are run again (see docs/operations.md).
            error!(%error, stream, count = ids.len(), "cannot acknowledge handled entries");
        }
    }
    failing
}

/// Runs one entry's command, and says what to do with the entry.
async fn judge<S: Store>(
    bus: &Arc<MessageBus<S>>,
    entry: &StreamEntry,
    max_deliveries: u64,
) -> Verdict {
    let stream = entry.stream.clone();
    if entry.deliveries > max_deliveries {
        count(&stream, "dead_letter");
        return Verdict::DeadLetter(format!(
            "delivered {} times without being handled (its consumers failed on it or died)",
            entry.deliveries
        ));
    }
    let Some(payload) = &entry.payload else {
        count(&stream, "malformed");
        return Verdict::DeadLetter(format!("no {:?} field", adapters::redis::PAYLOAD_FIELD));
    };
    let delivery = format!("{}/{}", entry.stream, entry.id);
    let outcome = run_message(bus, &entry.stream, payload, Some(&delivery)).await;
    count(&stream, outcome.name());
    match outcome {
        Outcome::Handled | Outcome::Duplicate | Outcome::Refused => Verdict::Acknowledge,
        Outcome::Malformed(reason) => Verdict::DeadLetter(reason),
        Outcome::Failed => Verdict::Keep,
    }
}

fn count(stream: &str, outcome: &'static str) {
    metrics::counter!(STREAM_ENTRIES, "stream" => stream.to_owned(), "outcome" => outcome)
        .increment(1);
}
