//! The way in: a [`Subscription`] is a stream of [`Incoming`] messages,
//! read in a task of its own into a bounded [`Buffer`]; [`subscribe`] makes
//! one on a single connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::Stream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::connection::Connected;
use super::metric_names::MESSAGES_DROPPED;
use super::{RedisError, client};

/// Messages that may wait for the consumer; beyond them, new messages are
/// dropped. Small messages (a few hundred bytes), so this holds memory to
/// well under a megabyte, yet gives the consumer time to catch up after a
/// burst.
pub const BUFFER_CAPACITY: usize = 1024;
/// At most one warning about dropped messages per this long.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One message received on a subscribed channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub channel: String,
    /// The raw payload: decoding (and rejecting) it is the caller's job,
    /// see [`crate::messages::decode`].
    pub payload: Vec<u8>,
}

/// A stream of [`Incoming`] messages, from [`subscribe`] or
/// [`subscribe_forever`](super::subscribe_forever); `.next().await` on it
/// (with [`futures::StreamExt`]) to receive.
///
/// A task of its own reads the connection (and reconnects) into a buffer
/// of [`BUFFER_CAPACITY`] messages, whether or not the stream is polled;
/// while the buffer is full, new messages are dropped and counted
/// ([`MESSAGES_DROPPED`]).
/// Dropping the subscription stops the task and closes the connection.
pub struct Subscription {
    messages: mpsc::Receiver<Incoming>,
    connected: watch::Receiver<bool>,
    url: Arc<str>,
}

impl Subscription {
    /// The consumer's end of `buffer`'s queue, and of the `connected` state
    /// the reading task keeps up to date.
    pub(super) fn new(
        messages: mpsc::Receiver<Incoming>,
        connected: watch::Receiver<bool>,
        url: Arc<str>,
    ) -> Self {
        Self {
            messages,
            connected,
            url,
        }
    }

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
/// buffer is full, drops it (counted in [`MESSAGES_DROPPED`],
/// and logged at most once per [`DROP_WARNING_EVERY`]). Pub/sub delivers at
/// most once anyway: a dropped message is like one published while we were
/// disconnected.
pub(super) struct Buffer {
    queue: mpsc::Sender<Incoming>,
    /// Messages dropped since the last warning.
    dropped: u64,
    last_warning: Option<Instant>,
}

impl Buffer {
    pub(super) fn new() -> (Self, mpsc::Receiver<Incoming>) {
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
    pub(super) fn push(&mut self, message: Incoming) {
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
    pub(super) fn consumer_gone(&self) -> impl Future<Output = ()> + use<> {
        let queue = self.queue.clone();
        async move { queue.closed().await }
    }
}

pub(super) fn owned(channels: &[&str]) -> Vec<String> {
    channels.iter().map(|&channel| channel.to_owned()).collect()
}

/// Subscribes to `channels` on one connection. The stream ends when that
/// connection is lost (and [`Subscription::connected`] turns `false`); use
/// [`subscribe_forever`](super::subscribe_forever) for a consumer that
/// should outlive Redis restarts.
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
    Ok(Subscription::new(messages, connected, shown))
}
