//! In-memory message bus throughput: 100 000 Allocate commands over 100 SKUs
//! on one core, reported as commands/s overall and for the first and the
//! last 10 %, so that any slowdown as history accumulates shows as a ratio.
//!
//! Each figure is the median of seven fresh runs (a fresh store and bus
//! each): one run lasts a tenth of a second, and a neighbour on a shared
//! machine can halve a single one.
//!
//! The workload is the service's, without the network and the database:
//! - each command is built shortly before it is handled and moved into the
//!   bus, as the HTTP layer builds one per request (built all up front and
//!   cloned, their identifiers sat cold in memory, a cache miss per command
//!   that a parsed request does not have);
//! - an outbox relay drains the outbox every 100 commands, as the service's
//!   relay keeps up with commits; its rounds are timed with the commands,
//!   publishing to nowhere. Without it the outbox grew 100 000 messages
//!   deep, which no running service's does.
//!
//! One command at a time: the in-memory store never waits, so commands in
//! flight together would not form groups here anyway (see `runner`);
//! a lone command is group commit's worst case.
//!
//! Run: `cargo bench -p service_layer --bench bus_throughput`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::commands::{Allocate, CreateBatch};
use domain::{BatchRef, OrderId, Quantity, Sku};
use service_layer::memory::MemoryStore;
use service_layer::ports::{Destination, OutboxMessage, PublishError, Publisher};
use service_layer::relay::{OutboxRelay, RelaySettings, Wakeups};
use service_layer::{MessageBus, RetryPolicy};

const SKUS: usize = 100;
const COMMANDS: usize = 100_000;
const SLICES: usize = 10;
const RUNS: usize = 7;
/// Commands between two relay rounds: the relay's batch size.
const RELAY_EVERY: usize = 100;

/// Publishing costs nothing here: the bus is what is measured.
#[derive(Debug)]
struct Discard;

#[async_trait]
impl Publisher for Discard {
    async fn publish(&self, _: &[OutboxMessage]) -> Result<(), PublishError> {
        Ok(())
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let runs: Vec<Run> = (0..RUNS).map(|_| runtime.block_on(run())).collect();
    let overall = median(runs.iter().map(Run::overall));
    let first = median(runs.iter().map(|run| run.rate(0)));
    let last = median(runs.iter().map(|run| run.rate(SLICES - 1)));
    let each: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.overall())).collect();
    println!("bus_throughput: {COMMANDS} Allocate commands over {SKUS} SKUs, one core");
    println!("  each run     {} commands/s", each.join(" "));
    println!("  overall      {overall:>12.0} commands/s (median of {RUNS} runs)");
    println!("  first 10 %   {first:>12.0} commands/s");
    println!("  last 10 %    {last:>12.0} commands/s");
    println!("  last/first   {:>12.2}", last / first);
}

/// How long each tenth of one run's commands took.
struct Run(Vec<Duration>);

impl Run {
    fn rate(&self, slice: usize) -> f64 {
        (COMMANDS / SLICES) as f64 / self.0[slice].as_secs_f64()
    }

    fn overall(&self) -> f64 {
        COMMANDS as f64 / self.0.iter().sum::<Duration>().as_secs_f64()
    }
}

fn median(rates: impl Iterator<Item = f64>) -> f64 {
    let mut rates: Vec<f64> = rates.collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

async fn run() -> Run {
    let store = MemoryStore::new();
    let outbox_written = Wakeups::new();
    let bus = Arc::new(MessageBus::new(
        store.clone(),
        outbox_written.clone(),
        RetryPolicy::default(),
    ));
    let relay = OutboxRelay::new(
        store,
        Destination::Messages,
        Arc::new(Discard),
        outbox_written.of(Destination::Messages),
        RelaySettings::default(),
    );
    let skus: Vec<Sku> = (0..SKUS)
        .map(|i| Sku::parse(&format!("SKU-{i:03}")).expect("sku"))
        .collect();
    for (i, sku) in skus.iter().enumerate() {
        let batch = CreateBatch {
            reference: BatchRef::parse(&format!("batch-{i:03}")).expect("ref"),
            sku: sku.clone(),
            qty: Quantity::parse(Quantity::MAX.into(), "qty").expect("qty"),
            eta: None,
        };
        bus.handle(batch).await.expect("batch created");
    }
    let per_slice = COMMANDS / SLICES;
    let mut slices = Vec::with_capacity(SLICES);
    for slice in 0..SLICES {
        let commands: Vec<Allocate> = (slice * per_slice..(slice + 1) * per_slice)
            .map(|i| Allocate {
                orderid: OrderId::parse(&format!("order-{i}")).expect("orderid"),
                sku: skus[i % SKUS].clone(),
                qty: Quantity::parse(1 + (i % 5) as i128, "qty").expect("qty"),
            })
            .collect();
        let started = Instant::now();
        for (n, command) in commands.into_iter().enumerate() {
            let batch = bus.handle(command).await.expect("allocated");
            assert!(
                batch.batchref().is_some(),
                "stock never runs out in this benchmark"
            );
            if n % RELAY_EVERY == RELAY_EVERY - 1 {
                relay.relay_pending().await.expect("relayed");
            }
        }
        slices.push(started.elapsed());
    }
    let left = relay.relay_pending().await.expect("relayed");
    assert_eq!(left, 0, "the relay kept up with the commands");
    Run(slices)
}
