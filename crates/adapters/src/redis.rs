//! Redis pub/sub as the "external message bus" of book chapter 11
//! (event-driven integration): other systems send commands on channels we
//! subscribe to, and we publish events for them on channels of our own.
//!
//! - [`RedisPublisher`] sends one payload on one channel. It is what the
//!   outbox relay calls; it connects lazily and reconnects by itself, so a
//!   Redis that is down at start or restarts later costs failed publishes
//!   (which the relay retries), never a failed service.
//! - [`subscribe_forever`] is the consumer's source of messages: a stream
//!   that never ends, reconnecting and resubscribing with capped exponential
//!   backoff and jitter whenever the connection is lost. [`subscribe`] is
//!   the one-connection building block under it, whose stream ends when the
//!   connection does. Both read in a task of their own into a bounded
//!   buffer, so that a flood of messages cannot take the process's memory;
//!   what does not fit is dropped and counted.
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

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Stream, StreamExt};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use service_layer::ports::{OutboxMessage, PublishError, Publisher};

use crate::messages;
use crate::sql::redact_url;

/// How long to wait for a TCP connection (and the handshake) to Redis.
/// Without it, connecting to a host that drops packets waits for the
/// operating system's own timeout, minutes on Linux.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for Redis to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscription checks that Redis still answers. A
/// connection whose peer vanished without closing it (a host crash, a
/// dropped network path) gives no sign otherwise: the subscriber would wait
/// forever for messages that never come.
/// A PING every few seconds costs Redis nothing and bounds how long such
/// a dead connection goes unnoticed (this plus [`RESPONSE_TIMEOUT`]).
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);
/// The first wait before reconnecting, doubled on each failure...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages that may wait for the consumer; beyond them, new messages are
/// dropped. Small messages (a few hundred bytes), so this holds memory to
/// well under a megabyte, yet gives the consumer time to catch up after a
/// burst.
pub const BUFFER_CAPACITY: usize = 1024;
/// At most one warning about dropped messages per this long.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// A connection that stayed up this long was healthy: after losing it, start
/// again from the shortest wait. One that drops sooner keeps its backoff, so
/// a Redis that accepts and then drops connections is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Metric names (described in the `allocation` crate's `metrics` module).
pub mod metric_names {
    /// Incoming messages dropped because the buffer was full, by `channel`.
    pub const MESSAGES_DROPPED: &str = "allocation_redis_messages_dropped_total";
}
use metric_names::MESSAGES_DROPPED;

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
    #[error("cannot publish on Redis channel {channel:?} at {url}: {cause}")]
    Publish {
        url: String,
        channel: String,
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

fn timed_out(what: &str, after: Duration) -> redis::RedisError {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer to {what} within {after:?}"),
    )
    .into()
}

/// Publishes payloads on Redis channels.
///
/// Cheap to clone: clones share one multiplexed connection, which redis's
/// `ConnectionManager` re-establishes in the background after it breaks.
#[derive(Clone)]
pub struct RedisPublisher {
    connection: ConnectionManager,
    /// The URL without its password, for messages.
    url: Arc<str>,
}

/// The relay's way out: each outbox message goes out on `line_allocated`
/// in the wire format of `messages`.
#[async_trait::async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let payload = messages::encode_line_allocated(&message.event, message.message_id);
        RedisPublisher::publish(self, messages::LINE_ALLOCATED, &payload)
            .await
            .map_err(|error| PublishError(Box::new(error)))
    }
}

impl fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RedisPublisher {
    /// A publisher for the Redis at `url`. Fails only on an invalid URL: the
    /// connection is made on the first [`publish`](Self::publish), so the
    /// service starts even while Redis is down.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the connection manager spawns its
    /// background task here.
    pub fn connect(url: &str) -> Result<Self, RedisError> {
        let (client, shown) = client(url)?;
        // The manager's own retries happen inside one `publish` call, so
        // they are kept short: the relay has its own backoff, and a publish
        // should fail within a second or two when Redis is away, not hang.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|cause| {
                RedisError::InvalidUrl {
                    url: shown.to_string(),
                    cause,
                }
            })?;
        Ok(Self {
            connection,
            url: shown,
        })
    }

    /// Sends `payload` on `channel`. `Ok` means Redis took it, not that
    /// anyone was listening (pub/sub keeps nothing for absent subscribers).
    ///
    /// After a broken connection the first command fails and the manager
    /// starts reconnecting; this tries once more on the new connection, so
    /// the first publish after Redis comes back succeeds. A retry may send
    /// the message twice (if the first attempt timed out after Redis got
    /// it), which the `message_id` in every payload allows for.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), RedisError> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        let mut connection = self.connection.clone();
        let mut result = command.query_async::<usize>(&mut connection).await;
        let broken = result
            .as_ref()
            .is_err_and(|error| error.is_io_error() || error.is_unrecoverable_error());
        if broken {
            tracing::debug!(url = %self.url, channel, "publish failed on a broken connection; retrying once");
            result = command.query_async::<usize>(&mut connection).await;
        }
        match result {
            Ok(receivers) => {
                tracing::debug!(url = %self.url, channel, receivers, "published");
                Ok(())
            }
            Err(cause) => Err(RedisError::Publish {
                url: self.url.to_string(),
                channel: channel.to_owned(),
                cause,
            }),
        }
    }
}

/// One message received on a subscribed channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub channel: String,
    /// The raw payload: decoding (and rejecting) it is the caller's job,
    /// see [`crate::messages::decode`].
    pub payload: Vec<u8>,
}

/// A stream of [`Incoming`] messages, from [`subscribe`] or
/// [`subscribe_forever`]; `.next().await` on it (with
/// [`futures::StreamExt`]) to receive.
///
/// A task of its own reads the connection (and reconnects) into a buffer
/// of [`BUFFER_CAPACITY`] messages, whether or not the stream is polled;
/// while the buffer is full, new messages are dropped and counted
/// ([`metric_names::MESSAGES_DROPPED`]).
/// Dropping the subscription stops the task and closes the connection.
pub struct Subscription {
    messages: mpsc::Receiver<Incoming>,
    connected: watch::Receiver<bool>,
    url: Arc<str>,
}

impl Subscription {
    /// Whether the subscription is currently connected and subscribed,
    /// and a way to wait for that to change (`changed().await`): for a
    /// readiness probe, a metric, or a test that must not publish before
    /// the subscriber listens.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("url", &self.url)
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.messages.poll_recv(cx)
    }
}

/// The bounded queue between the task that reads a subscription and its
/// consumer.
///
/// redis-rs's pub/sub reads its socket as fast as Redis sends, into a queue
/// of its own with no bound: a consumer slower than a flood of messages
/// would let them pile up in memory without limit. So the reading task
/// moves each message from there into this buffer at once, and when the
/// buffer is full, drops it (counted in [`metric_names::MESSAGES_DROPPED`],
/// and logged at most once per [`DROP_WARNING_EVERY`]). Pub/sub delivers at
/// most once anyway: a dropped message is like one published while we were
/// disconnected.
struct Buffer {
    queue: mpsc::Sender<Incoming>,
    /// Messages dropped since the last warning.
    dropped: u64,
    last_warning: Option<Instant>,
}

impl Buffer {
    fn new() -> (Self, mpsc::Receiver<Incoming>) {
        let (queue, messages) = mpsc::channel(BUFFER_CAPACITY);
        let buffer = Self {
            queue,
            dropped: 0,
            last_warning: None,
        };
        (buffer, messages)
    }

    /// Queues `message`, or drops it when the buffer is full (or the
    /// consumer gone: the reading task is about to stop then).
    fn push(&mut self, message: Incoming) {
        let Err(mpsc::error::TrySendError::Full(message)) = self.queue.try_send(message) else {
            return;
        };
        metrics::counter!(MESSAGES_DROPPED, "channel" => message.channel).increment(1);
        self.dropped += 1;
        // A flood drops thousands a second: one line now and then, with
        // the count since the last one, says as much.
        if self
            .last_warning
            .is_none_or(|last| last.elapsed() >= DROP_WARNING_EVERY)
        {
            tracing::warn!(
                dropped = self.dropped,
                capacity = BUFFER_CAPACITY,
                "Redis message buffer full: incoming messages dropped (the consumer is behind)"
            );
            self.dropped = 0;
            self.last_warning = Some(Instant::now());
        }
    }

    /// Resolves once the consumer has dropped the subscription: the
    /// reading task stops then.
    fn consumer_gone(&self) -> impl Future<Output = ()> + use<> {
        let queue = self.queue.clone();
        async move { queue.closed().await }
    }
}

/// One pub/sub connection, subscribed to every channel asked for.
struct Connected {
    /// Where subscription commands and health-check PINGs go.
    sink: PubSubSink,
    /// What Redis pushes; ends when the connection closes.
    messages: PubSubStream,
}

/// Why a connection is no longer usable.
enum Lost {
    /// Redis (or the network) closed it.
    Closed,
    /// It is open but Redis does not answer properly.
    Unhealthy(redis::RedisError),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("connection closed"),
            Self::Unhealthy(error) => write!(f, "health check failed: {error}"),
        }
    }
}

impl Connected {
    async fn open(client: &redis::Client, channels: &[String]) -> redis::RedisResult<Self> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("the connection", CONNECT_TIMEOUT))??;
        let (mut sink, messages) = pubsub.split();
        // One SUBSCRIBE per channel: Redis confirms each channel with its
        // own reply, and redis-rs matches replies to requests one to one,
        // so a multi-channel SUBSCRIBE would leave stray confirmations that
        // a later PING could mistake for its answer.
        for channel in channels {
            tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(channel))
                .await
                .map_err(|_| timed_out("SUBSCRIBE", RESPONSE_TIMEOUT))??;
        }
        Ok(Self { sink, messages })
    }

    /// Moves every message into `buffer` until the connection is lost, and
    /// says why. The health check runs alongside, so that the buffer keeps
    /// being filled while a PING waits for its answer.
    async fn pump(self, buffer: &mut Buffer) -> Lost {
        let Self { sink, mut messages } = self;
        let forward = async {
            while let Some(message) = messages.next().await {
                buffer.push(Incoming {
                    channel: message.get_channel_name().to_owned(),
                    payload: message.get_payload_bytes().to_vec(),
                });
            }
            Lost::Closed
        };
        tokio::select! {
            lost = forward => lost,
            lost = health_check(sink) => lost,
        }
    }
}

/// PINGs Redis every [`HEALTH_CHECK_EVERY`]; returns once an answer fails
/// or takes longer than [`RESPONSE_TIMEOUT`]. (Under a flood the answer
/// queues behind the messages before it, and may be late: the subscription
/// then reconnects, and what was on its way is lost, as pub/sub allows.)
async fn health_check(mut sink: PubSubSink) -> Lost {
    let mut every =
        tokio::time::interval_at(Instant::now() + HEALTH_CHECK_EVERY, HEALTH_CHECK_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Lost::Unhealthy(error),
            Err(_) => return Lost::Unhealthy(timed_out("PING", RESPONSE_TIMEOUT)),
        }
    }
}

fn owned(channels: &[&str]) -> Vec<String> {
    channels.iter().map(|&channel| channel.to_owned()).collect()
}

/// Subscribes to `channels` on one connection. The stream ends when that
/// connection is lost (and [`Subscription::connected`] turns `false`); use
/// [`subscribe_forever`] for a consumer that should outlive Redis restarts.
pub async fn subscribe(url: &str, channels: &[&str]) -> Result<Subscription, RedisError> {
    let (client, shown) = client(url)?;
    let channels = owned(channels);
    let connection =
        Connected::open(&client, &channels)
            .await
            .map_err(|cause| RedisError::Subscribe {
                url: shown.to_string(),
                channels: channels.clone(),
                cause,
            })?;
    let (state, connected) = watch::channel(true);
    let (mut buffer, messages) = Buffer::new();
    let url = Arc::clone(&shown);
    tokio::spawn(async move {
        tokio::select! {
            () = buffer.consumer_gone() => {}
            lost = connection.pump(&mut buffer) => {
                tracing::warn!(%url, reason = %lost, "lost the Redis subscription");
                state.send_replace(false);
            }
        }
    });
    Ok(Subscription {
        messages,
        connected,
        url: shown,
    })
}

/// Waits that double from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each one
/// randomised ("equal jitter": between half and all of it), so that many
/// instances that lost Redis together do not all come back at once.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = ceiling / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a [`subscribe_forever`] task keeps between connections.
struct Forever {
    client: redis::Client,
    channels: Vec<String>,
    url: Arc<str>,
    backoff: Backoff,
    /// Failed attempts since the last successful one, for the log.
    failures: u32,
    ever_connected: bool,
    state: watch::Sender<bool>,
}

impl Forever {
    /// Connects and moves messages into `buffer`, again after every loss,
    /// forever.
    async fn run(mut self, buffer: &mut Buffer) {
        loop {
            let connection = self.connect().await;
            let since = Instant::now();
            let lost = connection.pump(buffer).await;
            self.state.send_replace(false);
            if since.elapsed() >= STABLE_AFTER {
                self.backoff.reset();
            }
            let wait = self.backoff.next_delay();
            tracing::warn!(
                url = %self.url,
                channels = ?self.channels,
                reason = %lost,
                reconnect_in_ms = millis(wait),
                "lost the Redis subscription; reconnecting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Attempts to connect and subscribe until one succeeds, waiting
    /// longer after each failure.
    async fn connect(&mut self) -> Connected {
        loop {
            match Connected::open(&self.client, &self.channels).await {
                Ok(connection) => {
                    if self.ever_connected {
                        tracing::info!(url = %self.url, channels = ?self.channels, failed_attempts = self.failures, "subscribed to Redis again");
                    } else {
                        tracing::info!(url = %self.url, channels = ?self.channels, "subscribed to Redis");
                    }
                    self.ever_connected = true;
                    self.failures = 0;
                    self.state.send_replace(true);
                    return connection;
                }
                Err(error) => {
                    self.failures += 1;
                    let wait = self.backoff.next_delay();
                    tracing::warn!(
                        url = %self.url,
                        channels = ?self.channels,
                        attempt = self.failures,
                        retry_in_ms = millis(wait),
                        %error,
                        "cannot subscribe to Redis; will retry"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Subscribes to `channels` and stays subscribed: a stream that never ends
/// (until dropped). Its task connects at once, and reconnects and
/// resubscribes after every loss, waiting 100 ms doubling to 5 s (with
/// jitter) between failed attempts. Each loss and recovery is logged.
///
/// Fails only on an invalid URL: a Redis that is down when the service
/// starts is waited for like one that went down later. Messages published
/// while it is disconnected are not delivered (pub/sub keeps none).
///
/// # Panics
///
/// Outside a Tokio runtime: the task is spawned here.
pub fn subscribe_forever(url: &str, channels: &[&str]) -> Result<Subscription, RedisError> {
    let (client, shown) = client(url)?;
    let (state, connected) = watch::channel(false);
    let forever = Forever {
        client,
        channels: owned(channels),
        url: Arc::clone(&shown),
        backoff: Backoff::new(),
        failures: 0,
        ever_connected: false,
        state,
    };
    let (mut buffer, messages) = Buffer::new();
    tokio::spawn(async move {
        tokio::select! {
            () = buffer.consumer_gone() => {}
            () = forever.run(&mut buffer) => {}
        }
    });
    Ok(Subscription {
        messages,
        connected,
        url: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_within_half_and_all() {
        let mut backoff = Backoff::new();
        let mut ceiling = BACKOFF_MIN;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff.next, BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }
}
