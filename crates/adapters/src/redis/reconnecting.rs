//! Staying subscribed: [`subscribe_forever`] reconnects and resubscribes
//! after every loss, with capped exponential backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use super::connection::Connected;
use super::subscription::{Buffer, Subscription, owned};
use super::{BACKOFF_MIN, RedisError, client};

/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that stayed up this long was healthy: after losing it, start
/// again from the shortest wait. One that drops sooner keeps its backoff, so
/// a Redis that accepts and then drops connections is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);

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

/// The task behind [`subscribe_forever`], and what it keeps between
/// connections.
struct ReconnectingSubscriber {
    client: redis::Client,
    channels: Vec<String>,
    url: Arc<str>,
    backoff: Backoff,
    /// Failed attempts since the last successful one, for the log.
    failures: u32,
    ever_connected: bool,
    state: watch::Sender<bool>,
}

impl ReconnectingSubscriber {
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
    let subscriber = ReconnectingSubscriber {
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
            () = subscriber.run(&mut buffer) => {}
        }
    });
    Ok(Subscription::new(messages, connected, shown))
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
