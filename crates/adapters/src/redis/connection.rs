//! One pub/sub connection: opening it, subscribing, moving what arrives
//! into a subscription's buffer, and noticing when it silently dies.

use std::fmt;
use std::time::Duration;

use futures::stream::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::{Instant, MissedTickBehavior};

use super::subscription::{Buffer, Incoming};
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, timed_out};

/// How often an idle subscription checks that Redis still answers. A
/// connection whose peer vanished without closing it (a host crash, a
/// dropped network path) gives no sign otherwise: the subscriber would wait
/// forever for messages that never come.
/// A PING every few seconds costs Redis nothing and bounds how long such
/// a dead connection goes unnoticed (this plus [`RESPONSE_TIMEOUT`]).
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);

/// One pub/sub connection, subscribed to every channel asked for.
pub(super) struct Connected {
    /// Where subscription commands and health-check PINGs go.
    sink: PubSubSink,
    /// What Redis pushes; ends when the connection closes.
    messages: PubSubStream,
}

/// Why a connection is no longer usable.
pub(super) enum Lost {
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
    pub(super) async fn open(
        client: &redis::Client,
        channels: &[String],
    ) -> redis::RedisResult<Self> {
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
    pub(super) async fn pump(self, buffer: &mut Buffer) -> Lost {
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
