//! Redis Streams through a consumer group: the durable way in, beside
//! pub/sub. Each entry goes to one consumer of the group and stays pending
//! until that consumer acknowledges it; entries a consumer left pending
//! (it died, or keeps failing) are claimed by another after a while; an
//! entry that never succeeds goes to a dead-letter stream with its reason.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamMaxlen, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};

use super::{RESPONSE_TIMEOUT, RedisError, lazy_connection};

/// The field of an entry that holds its message, as a channel message's
/// whole payload would.
pub const PAYLOAD_FIELD: &str = "payload";
/// Outgoing and dead-letter streams keep at least this many entries
/// (`MAXLEN ~`: Redis trims whole blocks, never below the count).
pub const STREAM_MAX_LEN: usize = 100_000;

/// The dead-letter stream of `stream`: where its entries that never
/// succeeded go, with the reason.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dead_letter")
}

/// How a [`StreamConsumer`] reads and reclaims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// The consumer group; created, reading from the start of each stream,
    /// if missing.
    pub group: String,
    /// This consumer's name in the group: unique per running process.
    pub consumer: String,
    /// Most entries taken at once.
    pub batch: usize,
    /// How long one read waits for new entries when there are none.
    pub block: Duration,
    /// How long an entry must have stayed pending, unacknowledged, before
    /// another consumer may take it over (its consumer died or failed).
    pub claim_idle: Duration,
    /// Deliveries after which an entry goes to the dead-letter stream
    /// rather than to a handler again.
    pub max_deliveries: u64,
}

impl StreamSettings {
    /// The defaults for `group` and `consumer`.
    pub fn new(group: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            consumer: consumer.into(),
            batch: 64,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

/// One entry of a stream, as delivered to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub stream: String,
    pub id: String,
    /// The [`PAYLOAD_FIELD`]; `None` when the entry has none.
    pub payload: Option<Vec<u8>>,
    /// How many times the group has delivered it, this time included.
    pub deliveries: u64,
}

impl StreamEntry {
    fn from_reply(stream: &str, entry: StreamId, deliveries: u64) -> Self {
        Self {
            stream: stream.to_owned(),
            payload: entry.get::<Vec<u8>>(PAYLOAD_FIELD),
            id: entry.id,
            deliveries,
        }
    }
}

/// A consumer of some streams in one consumer group. It owns one
/// connection (a blocking read holds it), which the `ConnectionManager`
/// re-establishes after it breaks; a call that fails meanwhile returns the
/// error, and the caller backs off.
pub struct StreamConsumer {
    connection: ConnectionManager,
    streams: Vec<String>,
    settings: StreamSettings,
    /// Where each stream's next reclaim starts (XAUTOCLAIM's cursor).
    reclaim_from: HashMap<String, String>,
    url: Arc<str>,
}

impl fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("url", &self.url)
            .field("streams", &self.streams)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StreamConsumer {
    /// A consumer of `streams` at `url`. Fails only on an invalid URL: it
    /// connects on first use, so the service starts while Redis is down.
    pub fn connect(
        url: &str,
        streams: &[&str],
        settings: StreamSettings,
    ) -> Result<Self, RedisError> {
        // A read blocks for up to `block` before Redis answers.
        let (connection, shown) = lazy_connection(url, settings.block + RESPONSE_TIMEOUT, 1)?;
        Ok(Self {
            connection,
            streams: streams.iter().map(|&s| s.to_owned()).collect(),
            reclaim_from: HashMap::new(),
            settings,
            url: shown,
        })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// Creates the group on every stream that lacks it (and the stream, if
    /// missing), reading from the stream's start: entries added before any
    /// consumer ran are handled too.
    pub async fn ensure_groups(&mut self) -> Result<(), RedisError> {
        for stream in &self.streams {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.settings.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut self.connection)
                .await;
            match created {
                Err(cause) if cause.code() != Some("BUSYGROUP") => {
                    return Err(self.failed("XGROUP CREATE", cause));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// New entries for this consumer, waiting up to `block` for some.
    pub async fn read(&mut self) -> Result<Vec<StreamEntry>, RedisError> {
        let options = StreamReadOptions::default()
            .group(&self.settings.group, &self.settings.consumer)
            .count(self.settings.batch)
            .block(millis(self.settings.block));
        let new_only: Vec<&str> = self.streams.iter().map(|_| ">").collect();
        let reply = redis::cmd("XREADGROUP")
            .arg(&options)
            .arg("STREAMS")
            .arg(&self.streams)
            .arg(&new_only)
            .query_async::<Option<StreamReadReply>>(&mut self.connection)
            .await;
        let reply = match reply {
            Ok(reply) => reply.unwrap_or_default(),
            // The group is gone (Redis restarted without its data, or
            // someone deleted it): make it again, and read next time.
            Err(cause) if cause.code() == Some("NOGROUP") => {
                self.ensure_groups().await?;
                return Ok(Vec::new());
            }
            Err(cause) => return Err(self.failed("XREADGROUP", cause)),
        };
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|key| {
                let stream = key.key;
                key.ids
                    .into_iter()
                    .map(move |entry| StreamEntry::from_reply(&stream, entry, 1))
            })
            .collect())
    }

    /// Takes over entries that have stayed pending for longer than
    /// `claim_idle`, whichever consumer of the group had them (this one
    /// included: an entry it failed to handle comes back this way), with
    /// how many times each was delivered. Goes round each stream's pending
    /// entries a batch per call.
    pub async fn reclaim(&mut self) -> Result<Vec<StreamEntry>, RedisError> {
        let mut reclaimed = Vec::new();
        for stream in self.streams.clone() {
            let from = self
                .reclaim_from
                .get(&stream)
                .cloned()
                .unwrap_or_else(|| "0-0".to_owned());
            let reply = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&self.settings.group)
                .arg(&self.settings.consumer)
                .arg(millis(self.settings.claim_idle))
                .arg(&from)
                .arg(StreamAutoClaimOptions::default().count(self.settings.batch))
                .query_async::<StreamAutoClaimReply>(&mut self.connection)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(cause) if cause.code() == Some("NOGROUP") => {
                    self.ensure_groups().await?;
                    continue;
                }
                Err(cause) => return Err(self.failed("XAUTOCLAIM", cause)),
            };
            self.reclaim_from
                .insert(stream.clone(), reply.next_stream_id.clone());
            if reply.claimed.is_empty() {
                continue;
            }
            let deliveries = self.deliveries(&stream, &reply.claimed).await?;
            reclaimed.extend(reply.claimed.into_iter().filter_map(|entry| {
                let times = *deliveries.get(&entry.id)?;
                Some(StreamEntry::from_reply(&stream, entry, times))
            }));
        }
        Ok(reclaimed)
    }

    /// How many times each of `entries` of `stream`, just claimed, was
    /// delivered, asked entry by entry (one round trip); an entry missing
    /// from the answer is no longer pending (another consumer acknowledged
    /// it meanwhile).
    async fn deliveries(
        &mut self,
        stream: &str,
        entries: &[StreamId],
    ) -> Result<HashMap<String, u64>, RedisError> {
        if entries.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(&self.settings.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = pipe
            .query_async(&mut self.connection)
            .await
            .map_err(|cause| self.failed("XPENDING", cause))?;
        Ok(replies
            .into_iter()
            .flat_map(|reply| reply.ids)
            .map(|pending| (pending.id, pending.times_delivered as u64))
            .collect())
    }

    /// This consumer's own pending entries (delivered to it before a
    /// restart under the same name, never acknowledged): what it takes up
    /// first, at once rather than after `claim_idle`.
    pub async fn own_pending(&mut self) -> Result<Vec<StreamEntry>, RedisError> {
        let options = StreamReadOptions::default()
            .group(&self.settings.group, &self.settings.consumer)
            .count(self.settings.batch);
        let from_start: Vec<&str> = self.streams.iter().map(|_| "0").collect();
        let reply = redis::cmd("XREADGROUP")
            .arg(&options)
            .arg("STREAMS")
            .arg(&self.streams)
            .arg(&from_start)
            .query_async::<Option<StreamReadReply>>(&mut self.connection)
            .await
            .map_err(|cause| self.failed("XREADGROUP", cause))?
            .unwrap_or_default();
        let mut entries = Vec::new();
        for key in reply.keys {
            let deliveries = self.deliveries(&key.key, &key.ids).await?;
            for entry in key.ids {
                if let Some(&times) = deliveries.get(&entry.id) {
                    entries.push(StreamEntry::from_reply(&key.key, entry, times));
                }
            }
        }
        Ok(entries)
    }

    /// Keeps `entries` with this consumer while it retries them (their
    /// commands failed for a reason that may pass, the database away):
    /// resets their idle time, so that no other consumer takes them over,
    /// without counting a delivery (`XCLAIM ... JUSTID`). An outage thus
    /// sends no entry to the dead-letter stream.
    pub async fn hold(&mut self, entries: &[StreamEntry]) -> Result<(), RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XCLAIM")
                .arg(&entry.stream)
                .arg(&self.settings.group)
                .arg(&self.settings.consumer)
                .arg(0)
                .arg(&entry.id)
                .arg("JUSTID")
                .ignore();
        }
        pipe.query_async::<()>(&mut self.connection)
            .await
            .map_err(|cause| self.failed("XCLAIM", cause))
    }

    /// Acknowledges `ids` of `stream`: done with, never delivered again.
    pub async fn ack(&mut self, stream: &str, ids: &[String]) -> Result<(), RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(stream)
            .arg(&self.settings.group)
            .arg(ids)
            .query_async::<u64>(&mut self.connection)
            .await
            .map_err(|cause| self.failed("XACK", cause))?;
        Ok(())
    }

    /// Moves `entry` to its stream's dead-letter stream with `reason`, and
    /// acknowledges it, both or neither (MULTI/EXEC).
    pub async fn dead_letter(
        &mut self,
        entry: &StreamEntry,
        reason: &str,
    ) -> Result<(), RedisError> {
        let payload = entry.payload.as_deref().unwrap_or_default();
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(dead_letter_stream(&entry.stream))
            .arg(StreamMaxlen::Approx(STREAM_MAX_LEN))
            .arg("*")
            .arg("stream")
            .arg(&entry.stream)
            .arg("id")
            .arg(&entry.id)
            .arg(PAYLOAD_FIELD)
            .arg(payload)
            .arg("reason")
            .arg(reason)
            .arg("deliveries")
            .arg(entry.deliveries)
            .ignore()
            .cmd("XACK")
            .arg(&entry.stream)
            .arg(&self.settings.group)
            .arg(&entry.id)
            .ignore()
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(|cause| self.failed("dead-lettering", cause))
    }

    fn failed(&self, command: &'static str, cause: redis::RedisError) -> RedisError {
        RedisError::Stream {
            url: self.url.to_string(),
            command,
            cause,
        }
    }
}

fn millis(duration: Duration) -> usize {
    usize::try_from(duration.as_millis()).unwrap_or(usize::MAX)
}
