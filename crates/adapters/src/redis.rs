//! Redis pub/sub as the "external message bus" of book chapter 11
//! (event-driven integration): other systems send commands on channels we
//! subscribe to, and we publish events for them on channels of our own.
//!
//! - `publisher`: [`RedisPublisher`] sends one payload on one channel. It
//!   is what the outbox relay calls; it connects lazily and reconnects by
//!   itself, so a Redis that is down at start or restarts later costs
//!   failed publishes (which the relay retries), never a failed service.
//! - `subscription`: a [`Subscription`] is a stream of [`Incoming`]
//!   messages, read in a task of its own into a bounded buffer, so that a
//!   flood of messages cannot take the process's memory (what does not fit
//!   is dropped and counted). [`subscribe`] makes one whose stream ends
//!   with its one connection.
//! - `reconnecting`: [`subscribe_forever`] is the consumer's source of
//!   messages: a stream that never ends, reconnecting and resubscribing
//!   with capped exponential backoff and jitter whenever the connection is
//!   lost.
//! - `connection`: one pub/sub connection, subscribed and health-checked.
//! - `streams`: a [`StreamConsumer`] reads Redis Streams through a consumer
//!   group, the durable way in for several instances (each entry to one
//!   consumer, kept until acknowledged, claimed from a consumer that died).
//!
//! What goes on the wire is [`crate::messages`]' business; this module moves
//! bytes. Pub/sub delivers only to whoever listens at that moment: a message
//! published while a subscriber reconnects is lost to it. That is why the
//! service publishes through an outbox, and why the book's consumers (and
//! ours) must tolerate both gaps and duplicates.
//!
//! URLs are logged and shown in errors only through
//! [`crate::sql::redact_url`], so a password in `redis://:secret@host`
//! never reaches a log.

mod connection;
mod publisher;
mod reconnecting;
mod streams;
mod subscription;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::redact::redact_url;

pub use publisher::RedisPublisher;
pub use reconnecting::subscribe_forever;
pub use streams::{
    PAYLOAD_FIELD, STREAM_MAX_LEN, StreamConsumer, StreamEntry, StreamSettings, dead_letter_stream,
};
pub use subscription::{BUFFER_CAPACITY, Incoming, Subscription, subscribe};

/// How long to wait for a TCP connection (and the handshake) to Redis.
/// Without it, connecting to a host that drops packets waits for the
/// operating system's own timeout, minutes on Linux.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for Redis to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before reconnecting, doubled on each failure (up to a
/// cap that differs between publisher and subscriber).
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Metric names (described in the `allocation` crate's `metrics` module).
pub mod metric_names {
    /// Incoming messages dropped because the buffer was full, by `channel`.
    pub const MESSAGES_DROPPED: &str = "allocation_redis_messages_dropped_total";
}

/// Why talking to Redis failed. Messages show the URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(
        "invalid Redis URL {url}: {cause} (expected redis://[[user]:password@]host[:port][/db])"
    )]
    InvalidUrl {
        url: String,
        cause: redis::RedisError,
    },
    #[error(
        "cannot publish {messages} message(s) on Redis at {url} (channel {channel:?} first): {cause}"
    )]
    Publish {
        url: String,
        /// The first message's channel.
        channel: String,
        messages: usize,
        cause: redis::RedisError,
    },
    #[error("Redis {command} failed at {url}: {cause}")]
    Stream {
        url: String,
        command: &'static str,
        cause: redis::RedisError,
    },
    #[error("cannot subscribe to Redis channels {channels:?} at {url}: {cause}")]
    Subscribe {
        url: String,
        channels: Vec<String>,
        cause: redis::RedisError,
    },
}

/// A Redis client for `url`, and the URL as it may be shown.
fn client(url: &str) -> Result<(redis::Client, Arc<str>), RedisError> {
    let shown: Arc<str> = redact_url(url).into();
    match redis::Client::open(url) {
        Ok(client) => Ok((client, shown)),
        Err(cause) => Err(RedisError::InvalidUrl {
            url: shown.to_string(),
            cause,
        }),
    }
}

/// A lazily connected, self-reconnecting connection to the Redis at `url`
/// (which fails only when the URL is invalid), and the URL as it may be
/// shown. Each call on it waits `response_timeout` at most; after a broken
/// connection, the manager tries `retries` times within the call, backing
/// off from [`BACKOFF_MIN`] to a second.
fn lazy_connection(
    url: &str,
    response_timeout: Duration,
    retries: usize,
) -> Result<(ConnectionManager, Arc<str>), RedisError> {
    let (client, shown) = client(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(retries)
        .set_min_delay(BACKOFF_MIN)
        .set_max_delay(Duration::from_secs(1));
    match ConnectionManager::new_lazy_with_config(client, config) {
        Ok(connection) => Ok((connection, shown)),
        Err(cause) => Err(RedisError::InvalidUrl {
            url: shown.to_string(),
            cause,
        }),
    }
}

fn timed_out(what: &str, after: Duration) -> redis::RedisError {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer to {what} within {after:?}"),
    )
    .into()
}
