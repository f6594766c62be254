//! The workload and the closed-loop load driver.
//!
//! The workload is deterministic: order line number `n` always has the same
//! SKU and quantity, so every phase (HTTP service, raw SQL) allocates the
//! same lines to the same products from the same batches, and their
//! databases stay in equal states when they have run equally many lines.
//!
//! The driver runs `concurrency` workers; each sends one allocation, waits
//! for its answer, records the latency, and sends the next, until the phase
//! has sent its number of requests or its time is up (closed loop: the
//! offered load adapts to the system's speed, as a pool of real clients
//! would).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::http::HttpTarget;
use crate::raw::RawTarget;
use crate::stats::{Outcome, Recorder};

/// Batches per product: one in the warehouse, two on ships.
pub const BATCHES_PER_SKU: usize = 3;

/// Each batch's quantity: the largest the service accepts, so that no run
/// ever runs out of stock (lines take 1 to 3 units).
pub const BATCH_QTY: i64 = 1_000_000_000;

/// One order line to allocate.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its number in the phase's sequence (which instance gets it).
    pub seq: u64,
    pub orderid: String,
    pub sku: String,
    pub qty: i64,
    /// Two more SKUs, different from `sku` and each other when there are
    /// three or more: the rest of the line's order, for requests of whole
    /// orders (`Shape::Order3`).
    pub more_skus: [String; 2],
}

/// One batch to create before the run.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub reference: String,
    pub sku: String,
    pub qty: i64,
    /// `YYYY-MM-DD`, or `None` for warehouse stock.
    pub eta: Option<&'static str>,
}

/// The products, their batches, and the order lines of a run.
#[derive(Debug)]
pub struct Workload {
    /// Makes this run's SKUs and order ids unique, so that a server the
    /// harness did not start (`--url`) starts from fresh products too.
    tag: String,
    skus: u32,
}

impl Workload {
    pub fn new(tag: String, skus: u32) -> Self {
        Self {
            tag,
            skus: skus.max(1),
        }
    }

    pub fn sku(&self, index: u32) -> String {
        format!("LOAD-{}-{index:04}", self.tag)
    }

    /// Every product's batches, in the order they are created (which breaks
    /// ties between equally preferred batches, so the order matters).
    pub fn batches(&self) -> Vec<BatchSpec> {
        let etas: [Option<&'static str>; BATCHES_PER_SKU] =
            [None, Some("2031-01-10"), Some("2031-02-10")];
        (0..self.skus)
            .flat_map(|index| {
                let sku = self.sku(index);
                etas.into_iter().enumerate().map(move |(n, eta)| BatchSpec {
                    reference: format!("{sku}-b{n}"),
                    sku: sku.clone(),
                    qty: BATCH_QTY,
                    eta,
                })
            })
            .collect()
    }

    /// Order line number `seq`: a unique order id, a SKU spread uniformly
    /// (pseudo-randomly, but the same in every phase) over the products,
    /// and 1 to 3 units.
    pub fn line(&self, seq: u64) -> Line {
        let mixed = splitmix64(seq);
        let sku = u32::try_from(mixed % u64::from(self.skus)).unwrap_or(0);
        let next = |step: u32| self.sku((sku + step) % self.skus);
        Line {
            seq,
            orderid: format!("load-{}-{seq}", self.tag),
            sku: self.sku(sku),
            qty: 1 + i64::try_from((mixed >> 40) % 3).unwrap_or(0),
            more_skus: [next(1), next(2)],
        }
    }
}

/// A well-mixed 64-bit hash (Steele, Lea and Flood's SplitMix64 finaliser).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What is measured: the service over HTTP, or one raw SQL variant.
#[derive(Debug)]
pub enum Target {
    Http(HttpTarget),
    Raw(RawTarget),
}

impl Target {
    async fn allocate(&self, line: &Line) -> Outcome {
        match self {
            Self::Http(target) => target.send(line).await,
            Self::Raw(target) => target.allocate(line).await,
        }
    }

    /// Order lines a request allocates when it succeeds.
    fn lines_per_request(&self) -> u64 {
        match self {
            Self::Http(target) => target.shape().lines(),
            Self::Raw(_) => 1,
        }
    }
}

/// A target with its own sequence of order line numbers: every line it is
/// sent is new, across warm-up, slices and concurrency levels.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    pub target: Target,
    /// Where its CPU time is counted.
    pub cpu_sources: crate::cpu::Sources,
    next_line: AtomicU64,
    /// Lines that were allocated, warm-up included: what its database
    /// should hold at the end.
    pub allocated_total: AtomicU64,
    pub allocated_qty_total: AtomicU64,
}

impl Phase {
    /// A phase whose lines are numbered from `first`: phases sharing a
    /// database must not send the same order twice.
    pub fn numbered_from(mut self, first: u64) -> Self {
        self.next_line = AtomicU64::new(first);
        self
    }

    pub fn new(name: impl Into<String>, target: Target, cpu_sources: crate::cpu::Sources) -> Self {
        Self {
            name: name.into(),
            target,
            cpu_sources,
            next_line: AtomicU64::new(0),
            allocated_total: AtomicU64::new(0),
            allocated_qty_total: AtomicU64::new(0),
        }
    }
}

/// When a slice of a phase stops.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Requests(u64),
    Duration(Duration),
}

/// Runs one slice of `phase` at `concurrency` until `limit`, and returns
/// what its workers recorded, with the slice's wall-clock time.
pub async fn drive(
    phase: &Arc<Phase>,
    workload: &Arc<Workload>,
    concurrency: u32,
    limit: Limit,
) -> anyhow::Result<Recorder> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = match limit {
        Limit::Duration(duration) => Some(started + duration),
        Limit::Requests(_) => None,
    };
    let expected = match limit {
        Limit::Requests(n) => usize::try_from(n / u64::from(concurrency.max(1))).unwrap_or(0),
        Limit::Duration(_) => 1024,
    };
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (phase, workload, issued) = (phase.clone(), workload.clone(), issued.clone());
        workers.spawn(async move {
            let mut recorder = Recorder::with_capacity(expected + 16);
            loop {
                let go_on = match (limit, deadline) {
                    (Limit::Requests(n), _) => issued.fetch_add(1, Ordering::Relaxed) < n,
                    (_, Some(deadline)) => Instant::now() < deadline,
                    (Limit::Duration(_), None) => false,
                };
                if !go_on {
                    break;
                }
                let line = workload.line(phase.next_line.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let outcome = phase.target.allocate(&line).await;
                let latency = sent.elapsed();
                if outcome == Outcome::Allocated {
                    let lines = phase.target.lines_per_request();
                    phase.allocated_total.fetch_add(lines, Ordering::Relaxed);
                    phase
                        .allocated_qty_total
                        .fetch_add(lines * line.qty.unsigned_abs(), Ordering::Relaxed);
                }
                recorder.record(latency, outcome);
            }
            recorder
        });
    }
    let mut total = Recorder::default();
    while let Some(worker) = workers.join_next().await {
        total.merge(worker.context("a load worker failed")?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_deterministic_unique_and_spread_over_the_skus() {
        let workload = Workload::new("t".into(), 100);
        let first = workload.line(7);
        let again = workload.line(7);
        assert_eq!(
            (first.orderid.as_str(), first.sku.as_str(), first.qty),
            (again.orderid.as_str(), again.sku.as_str(), again.qty)
        );
        let mut per_sku = std::collections::HashMap::new();
        let mut orderids = std::collections::HashSet::new();
        for seq in 0..10_000 {
            let line = workload.line(seq);
            assert!((1..=3).contains(&line.qty));
            assert!(orderids.insert(line.orderid));
            *per_sku.entry(line.sku).or_insert(0u32) += 1;
        }
        assert_eq!(per_sku.len(), 100);
        // Roughly uniform: 100 per SKU on average.
        assert!(per_sku.values().all(|&n| (50..=150).contains(&n)));
    }

    #[test]
    fn every_product_has_warehouse_stock_first() {
        let batches = Workload::new("t".into(), 2).batches();
        assert_eq!(batches.len(), 2 * BATCHES_PER_SKU);
        assert_eq!(batches[0].eta, None);
        assert_eq!(batches[0].sku, "LOAD-t-0000");
        assert_eq!(batches[3].reference, "LOAD-t-0001-b0");
    }
}
