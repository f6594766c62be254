//! The way out: [`RedisPublisher`] sends payloads on channels, and on
//! streams of the same names, and is the outbox relay's [`Publisher`].

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::streams::StreamMaxlen;

use service_layer::ports::{OutboxMessage, PublishError, Publisher};

use super::streams::{PAYLOAD_FIELD, STREAM_MAX_LEN};
use super::{RESPONSE_TIMEOUT, RedisError, lazy_connection};
use crate::messages;

/// Publishes payloads on Redis channels.
///
/// Cheap to clone: clones share one multiplexed connection, which redis's
/// `ConnectionManager` re-establishes in the background after it breaks.
#[derive(Clone)]
pub struct RedisPublisher {
    connection: ConnectionManager,
    /// Whether each message also goes on the stream named as its channel.
    streams: bool,
    /// The URL without its password, for messages.
    url: Arc<str>,
}

/// The relay's way out: each outbox message goes out on its channel (and
/// stream) in the wire format of `messages`, a whole round in one
/// pipelined round trip. Redis runs a connection's commands in the order
/// sent, so the round keeps its order; if the round fails, none of it
/// counts as sent, since a broken connection does not say how much of the
/// pipeline Redis ran.
#[async_trait::async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), PublishError> {
        let round: Vec<_> = messages.iter().map(messages::encode).collect();
        self.send(&round, self.streams)
            .await
            .map_err(|error| PublishError::after(0, error))
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
    /// connection is made on the first publish, so the service starts even
    /// while Redis is down.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the connection manager spawns its
    /// background task here.
    /// With `streams`, each message is also added to the stream named as its
    /// channel, capped at about [`STREAM_MAX_LEN`] entries.
    pub fn connect(url: &str, streams: bool) -> Result<Self, RedisError> {
        // The manager's own retries happen inside one `publish_raw` call, so
        // they are kept short: the relay has its own backoff, and a publish
        // should fail within a second or two when Redis is away, not hang.
        let (connection, shown) = lazy_connection(url, RESPONSE_TIMEOUT, 2)?;
        Ok(Self {
            connection,
            streams,
            url: shown,
        })
    }

    /// Sends `payload` as it is on `channel`, where [`Publisher::publish`]
    /// encodes an outbox message and sends it on `line_allocated` (through
    /// this). Tests use it to play the other systems that send us commands.
    /// `Ok` means Redis took it, not that anyone was listening (pub/sub
    /// keeps nothing for absent subscribers).
    ///
    /// After a broken connection the first command fails and the manager
    /// starts reconnecting; this tries once more on the new connection, so
    /// the first publish after Redis comes back succeeds. A retry may send
    /// the message twice (if the first attempt timed out after Redis got
    /// it), which the `message_id` in every payload allows for.
    pub async fn publish_raw(&self, channel: &str, payload: &str) -> Result<(), RedisError> {
        self.send(&[(channel, payload)], false).await
    }

    /// Publishes each `(channel, payload)` in order and, with `to_stream`,
    /// adds it to the stream of that name, all in one round trip. A stream
    /// entry whose round then failed is added again on the retry: a
    /// duplicate, which the `message_id` allows for, as above.
    async fn send(
        &self,
        round: &[(&str, impl AsRef<str>)],
        to_stream: bool,
    ) -> Result<(), RedisError> {
        let Some(&(first_channel, _)) = round.first() else {
            return Ok(());
        };
        let mut command = redis::pipe();
        for (channel, payload) in round {
            let (channel, payload) = (*channel, payload.as_ref());
            command.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            if to_stream {
                command
                    .cmd("XADD")
                    .arg(channel)
                    .arg(StreamMaxlen::Approx(STREAM_MAX_LEN))
                    .arg("*")
                    .arg(PAYLOAD_FIELD)
                    .arg(payload)
                    .ignore();
            }
        }
        let mut connection = self.connection.clone();
        let mut result = command.query_async::<()>(&mut connection).await;
        let broken = result
            .as_ref()
            .is_err_and(|error| error.is_io_error() || error.is_unrecoverable_error());
        if broken {
            tracing::debug!(url = %self.url, messages = round.len(), "publish failed on a broken connection; retrying once");
            result = command.query_async::<()>(&mut connection).await;
        }
        match result {
            Ok(()) => {
                tracing::debug!(url = %self.url, messages = round.len(), "published");
                Ok(())
            }
            Err(cause) => Err(RedisError::Publish {
                url: self.url.to_string(),
                channel: first_channel.to_owned(),
                messages: round.len(),
                cause,
            }),
        }
    }
}
