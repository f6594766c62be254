//! Prometheus metrics: the one recorder of the process, which the `metrics`
//! macros here and in the service layer write to and `GET /metrics` renders.
//!
//! The macros reach the recorder through a process-global, like `tracing`'s
//! dispatcher, so there is exactly one per process, installed on first use:
//! by the binary at start, or by the first app a test builds. Every app in a
//! process renders that same recorder; tests that need exact counts run the
//! binary, a process of their own.

use std::sync::OnceLock;
use std::time::Duration;

use adapters::email::metric_names::{EMAILS_DROPPED, EMAILS_SENT};
use adapters::redis::metric_names::MESSAGES_DROPPED as REDIS_DROPPED;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use service_layer::metric_names;

/// Request latencies, in seconds: from an in-memory answer to the timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Allocations per group commit: 1 when alone, up to the group limit (256).
const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub const HTTP_REQUESTS: &str = "allocation_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "allocation_http_request_duration_seconds";
pub const OUTBOX_MESSAGES: &str = "allocation_outbox_messages";
pub const OUTBOX_OLDEST_AGE: &str = "allocation_outbox_oldest_message_age_seconds";
pub const REDIS_CONNECTED: &str = "allocation_redis_consumer_connected";
pub const REDIS_RECEIVED: &str = "allocation_redis_messages_received_total";
pub const REDIS_PROCESSED: &str = "allocation_redis_messages_processed_total";
pub const STREAM_ENTRIES: &str = "allocation_stream_entries_total";
pub const STREAM_RECLAIMED: &str = "allocation_stream_entries_reclaimed_total";
pub const STREAM_DEAD_LETTERS: &str = "allocation_stream_dead_letters_total";

/// The process's recorder, installed on the first call.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(metric_names::GROUP_COMMIT_SIZE.into()),
                GROUP_SIZE_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Whoever embeds the service installed theirs first: the
            // metrics go there, and /metrics shows only what this recorder
            // has (nothing).
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// Keeps the recorder's memory bounded between scrapes (rendering does the
/// same work, so this matters only when nobody scrapes).
pub async fn upkeep_forever() {
    let handle = prometheus();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.run_upkeep();
    }
}

/// The `# HELP` lines: what each series means, for whoever reads /metrics.
fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    describe_counter!(
        metric_names::MESSAGES_HANDLED,
        "Commands and events handled by the message bus, by kind, name and outcome"
    );
    describe_counter!(
        metric_names::CONFLICT_RETRIES,
        "Commands run again after a version conflict at commit, by command"
    );
    describe_counter!(
        metric_names::EVENT_HANDLER_RETRIES,
        "Event handlers retried after a transient failure, by event"
    );
    describe_counter!(
        metric_names::EVENT_HANDLER_GIVE_UPS,
        "Event handlers abandoned after their last attempt, by event"
    );
    describe_histogram!(
        metric_names::GROUP_COMMIT_SIZE,
        "Allocations committed together in one unit of work (group commit)"
    );
    describe_gauge!(
        OUTBOX_MESSAGES,
        "Committed outbox messages (for Redis and emails) not yet sent (at scrape time)"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest unpublished outbox message has waited (0 when none)"
    );
    describe_gauge!(
        REDIS_CONNECTED,
        "1 while the Redis consumer is connected and subscribed, else 0"
    );
    describe_counter!(REDIS_RECEIVED, "Redis messages received, by channel");
    describe_counter!(
        REDIS_PROCESSED,
        "Redis messages done with, by channel and outcome (handled, refused, malformed, failed)"
    );
    describe_counter!(
        STREAM_ENTRIES,
        "Redis stream entries done with, by stream and outcome (handled, duplicate: handled \
         before, refused, malformed, failed: left pending, dead_letter: delivered too often)"
    );
    describe_counter!(
        STREAM_RECLAIMED,
        "Redis stream entries taken over after staying pending too long, by stream"
    );
    describe_counter!(
        STREAM_DEAD_LETTERS,
        "Redis stream entries moved to their dead-letter stream, by stream"
    );
    describe_counter!(
        REDIS_DROPPED,
        "Redis messages dropped on arrival because the consumer's buffer was full, by channel"
    );
    describe_counter!(EMAILS_SENT, "Emails the SMTP server accepted");
    describe_counter!(
        EMAILS_DROPPED,
        "Emails the SMTP server refused for good (5xx), dropped rather than retried, by reason (refused)"
    );
}
