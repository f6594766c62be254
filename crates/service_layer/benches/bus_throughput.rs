//! In-memory message bus throughput: 100 000 Allocate commands over 100 SKUs
//! on one core, reported as commands/s for the first and the last 10 %, so
//! that any slowdown as history accumulates shows as a ratio.
//!
//! One command at a time: the in-memory store never waits, so commands in
//! flight together would not form groups here anyway (see `group_commit`);
//! a lone command is group commit's worst case.
//!
//! Run: `cargo bench -p service_layer --bench bus_throughput`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::commands::{Allocate, CreateBatch};
use domain::{BatchRef, OrderId, Quantity, Sku};
use service_layer::memory::MemoryStore;
use service_layer::ports::{Notification, NotificationError, Notifications};
use service_layer::{MessageBus, RetryPolicy};

const SKUS: usize = 100;
const COMMANDS: usize = 100_000;
const SLICES: usize = 10;

/// Notifying costs nothing here: the bus is what is measured.
#[derive(Debug)]
struct Discard;

#[async_trait]
impl Notifications for Discard {
    async fn send(&self, _: &Notification) -> Result<(), NotificationError> {
        Ok(())
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let slices = runtime.block_on(run());
    let rate = |d: Duration| (COMMANDS / SLICES) as f64 / d.as_secs_f64();
    let (first, last) = (rate(slices[0]), rate(slices[SLICES - 1]));
    let total: Duration = slices.iter().sum();
    println!("bus_throughput: {COMMANDS} Allocate commands over {SKUS} SKUs, one core");
    println!(
        "  overall      {:>12.0} commands/s",
        COMMANDS as f64 / total.as_secs_f64()
    );
    println!("  first 10 %   {first:>12.0} commands/s");
    println!("  last 10 %    {last:>12.0} commands/s");
    println!("  last/first   {:>12.2}", last / first);
}

async fn run() -> Vec<Duration> {
    // No relay runs: messages stay in the outbox, so the bus alone is measured.
    let bus = MessageBus::new(
        MemoryStore::new(),
        Arc::new(Discard),
        Arc::new(tokio::sync::Notify::new()),
        RetryPolicy::default(),
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
    let commands: Vec<Allocate> = (0..COMMANDS)
        .map(|i| Allocate {
            orderid: OrderId::parse(&format!("order-{i}")).expect("orderid"),
            sku: skus[i % SKUS].clone(),
            qty: Quantity::parse(1 + (i % 5) as i128, "qty").expect("qty"),
        })
        .collect();
    let mut slices = Vec::with_capacity(SLICES);
    for slice in commands.chunks(COMMANDS / SLICES) {
        let started = Instant::now();
        for command in slice {
            let batch = bus.handle(command.clone()).await.expect("allocated");
            assert!(batch.is_some(), "stock never runs out in this benchmark");
        }
        slices.push(started.elapsed());
    }
    slices
}
