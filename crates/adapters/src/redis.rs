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
//!   connection does.
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
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

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
/// A connection that stayed up this long was healthy: after losing it, start
/// again from the shortest wait. One that drops sooner keeps its backoff, so
/// a Redis that accepts and then drops connections is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);

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
/// It does its work, including reconnecting, only while polled: a consumer
/// loop that stops polling it also stops noticing a lost connection.
pub struct Subscription {
    messages: BoxStream<'static, Incoming>,
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
        self.messages.poll_next_unpin(cx)
    }
}

/// One pub/sub connection, subscribed to every channel asked for.
struct Connected {
    /// Where subscription commands and health-check PINGs go.
    sink: PubSubSink,
    /// What Redis pushes; ends when the connection closes.
    messages: PubSubStream,
    health: Interval,
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
        let mut health =
            tokio::time::interval_at(Instant::now() + HEALTH_CHECK_EVERY, HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            sink,
            messages,
            health,
        })
    }

    /// The next message, or why the connection is lost.
    async fn next(&mut self) -> Result<Incoming, Lost> {
        loop {
            tokio::select! {
                message = self.messages.next() => {
                    return match message {
                        Some(message) => Ok(Incoming {
                            channel: message.get_channel_name().to_owned(),
                            payload: message.get_payload_bytes().to_vec(),
                        }),
                        None => Err(Lost::Closed),
                    };
                }
                _ = self.health.tick() => {
                    // Messages arriving meanwhile wait in redis-rs's
                    // buffer; nothing is lost by pausing to PING.
                    match tokio::time::timeout(RESPONSE_TIMEOUT, self.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(Lost::Unhealthy(error)),
                        Err(_) => return Err(Lost::Unhealthy(timed_out("PING", RESPONSE_TIMEOUT))),
                    }
                }
            }
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
    let log_url = Arc::clone(&shown);
    let messages = futures::stream::unfold(Some((connection, state)), move |current| {
        let url = Arc::clone(&log_url);
        async move {
            let (mut connection, state) = current?;
            match connection.next().await {
                Ok(message) => Some((message, Some((connection, state)))),
                Err(lost) => {
                    tracing::warn!(%url, reason = %lost, "lost the Redis subscription");
                    state.send_replace(false);
                    None
                }
            }
        }
    });
    Ok(Subscription {
        // Fused: polling an ended `unfold` again would panic.
        messages: messages.fuse().boxed(),
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

/// The state of a [`subscribe_forever`] stream between two messages.
struct Forever {
    client: redis::Client,
    channels: Vec<String>,
    url: Arc<str>,
    connection: Option<(Connected, Instant)>,
    backoff: Backoff,
    /// How long to wait before the next attempt: nothing before the first.
    wait: Option<Duration>,
    /// Failed attempts since the last successful one, for the log.
    failures: u32,
    ever_connected: bool,
    state: watch::Sender<bool>,
}

impl Forever {
    async fn next(&mut self) -> Incoming {
        loop {
            let Some((connection, since)) = &mut self.connection else {
                self.connect().await;
                continue;
            };
            match connection.next().await {
                Ok(message) => return message,
                Err(lost) => {
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
                    self.wait = Some(wait);
                    self.connection = None;
                    self.state.send_replace(false);
                }
            }
        }
    }

    /// One attempt to connect and subscribe, after the backoff's wait.
    async fn connect(&mut self) {
        if let Some(wait) = self.wait.take() {
            tokio::time::sleep(wait).await;
        }
        match Connected::open(&self.client, &self.channels).await {
            Ok(connection) => {
                if self.ever_connected {
                    tracing::info!(url = %self.url, channels = ?self.channels, failed_attempts = self.failures, "subscribed to Redis again");
                } else {
                    tracing::info!(url = %self.url, channels = ?self.channels, "subscribed to Redis");
                }
                self.connection = Some((connection, Instant::now()));
                self.ever_connected = true;
                self.failures = 0;
                self.state.send_replace(true);
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
                self.wait = Some(wait);
            }
        }
    }
}

/// Subscribes to `channels` and stays subscribed: a stream that never ends
/// (until dropped), connecting on first poll and reconnecting and
/// resubscribing after every loss, waiting 100 ms doubling to 5 s (with
/// jitter) between failed attempts. Each loss and recovery is logged.
///
/// Fails only on an invalid URL: a Redis that is down when the service
/// starts is waited for like one that went down later. Messages published
/// while it is disconnected are not delivered (pub/sub keeps none).
pub fn subscribe_forever(url: &str, channels: &[&str]) -> Result<Subscription, RedisError> {
    let (client, shown) = client(url)?;
    let (state, connected) = watch::channel(false);
    let forever = Forever {
        client,
        channels: owned(channels),
        url: Arc::clone(&shown),
        connection: None,
        backoff: Backoff::new(),
        wait: None,
        failures: 0,
        ever_connected: false,
        state,
    };
    let messages = futures::stream::unfold(forever, |mut forever| async move {
        let message = forever.next().await;
        Some((message, forever))
    });
    Ok(Subscription {
        messages: messages.boxed(),
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

    #[test]
    fn invalid_urls_are_refused_without_showing_the_password() {
        let error = subscribe_forever("redis://:s3cret@[not-a-host/", &["allocate"])
            .expect_err("not a URL");
        let message = error.to_string();
        assert!(message.starts_with("invalid Redis URL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(matches!(
            subscribe_forever("http://127.0.0.1:6379", &["allocate"]),
            Err(RedisError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn the_publisher_is_lazy_and_never_shows_the_password() {
        // Port 1 on loopback: nothing listens there, yet creating the
        // publisher succeeds; only publishing fails, promptly.
        let publisher =
            RedisPublisher::connect("redis://:s3cret@127.0.0.1:1/0").expect("a valid URL");
        assert!(!format!("{publisher:?}").contains("s3cret"));
        let started = std::time::Instant::now();
        let error = publisher
            .publish("line_allocated", "{}")
            .await
            .expect_err("nothing listens on port 1");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = error.to_string();
        assert!(message.contains("redis://:***@127.0.0.1:1/0"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
