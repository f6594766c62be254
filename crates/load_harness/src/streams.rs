//! The Redis Streams phase: how fast the service's instances consume
//! `allocate` entries, to compare with how fast they answer `POST
//! /allocate`. Each instance count gets a Redis database of its own (its
//! streams are keys there), so the phases' consumer groups never meet.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamInfoGroupsReply;

use crate::workload::Workload;

/// The stream the service reads `allocate` commands from.
const STREAM: &str = "allocate";
/// The service's default consumer group.
const GROUP: &str = "allocation";
/// Entries added per round trip.
const CHUNK: usize = 500;
/// Far above what consuming a phase's entries takes; a bound, not an
/// expectation.
const BOUND: Duration = Duration::from_secs(600);

/// `base` (`redis://HOST:PORT[/DB]`) with database `10 + instances`: the
/// phase with that many instances uses it alone.
pub fn url_for(base: &str, instances: u32) -> anyhow::Result<String> {
    let mut url =
        reqwest::Url::parse(base).with_context(|| format!("invalid --redis-url {base}"))?;
    if url.scheme() != "redis" {
        bail!("--redis-url must be redis://HOST:PORT");
    }
    url.set_path(&format!("/{}", 10 + instances));
    Ok(url.to_string())
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("invalid Redis URL {url}"))?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))
}

/// Empties the phase's Redis database of what an earlier run left there:
/// called before its services start, so that they find no old entries.
pub async fn clear(url: &str) -> anyhow::Result<()> {
    let mut connection = connect(url).await?;
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut connection)
        .await
        .context("FLUSHDB")
}

/// Adds `count` entries of `allocate` (the workload's lines from `first`
/// on) to the phase's stream, and returns how long the services took to
/// consume them: from the first entry added until the group has every
/// entry delivered and acknowledged.
pub async fn consume(
    url: &str,
    workload: &Workload,
    first: u64,
    count: u64,
) -> anyhow::Result<Duration> {
    let mut connection = connect(url).await?;
    let started = Instant::now();
    let seqs: Vec<u64> = (first..first + count).collect();
    for chunk in seqs.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for &seq in chunk {
            let line = workload.line(seq);
            let payload = serde_json::json!({
                "orderid": line.orderid,
                "sku": line.sku,
                "qty": line.qty,
            });
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("payload")
                .arg(payload.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .context("XADD")?;
    }
    loop {
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(STREAM)
            .query_async(&mut connection)
            .await
            .context("XINFO GROUPS")?;
        let done = groups
            .groups
            .iter()
            .find(|group| group.name == GROUP)
            .is_some_and(|group| group.pending == 0 && group.lag == Some(0));
        if done {
            return Ok(started.elapsed());
        }
        if started.elapsed() > BOUND {
            bail!("the services did not consume {count} entries within {BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
