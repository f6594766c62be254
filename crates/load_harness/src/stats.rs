//! Statistics of one measured phase: how many requests ended how, how long
//! they took in total, and their latency percentiles.
//!
//! Every latency is kept (a few hundred thousand `u64` at most), so the
//! percentiles are exact, by the nearest-rank method: no histogram buckets,
//! no interpolation, and no extra dependency.

use std::time::Duration;

use serde::Serialize;

use crate::cpu::CpuPerRequest;

/// How one allocation ended, as the load driver counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allocated to a batch (HTTP 2xx with a `batchref`, or a committed
    /// transaction).
    Allocated,
    /// Answered successfully but without a batch: out of stock, or (raw SQL)
    /// the line was already allocated. Should never happen in this harness.
    NotAllocated,
    /// HTTP answered with this non-2xx status.
    Status(u16),
    /// No answer: a transport error, or a database error in the raw phase.
    Failed(String),
}

/// What the workers of one slice (or several slices, merged) recorded.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// Latency of every finished request, in nanoseconds.
    latencies_ns: Vec<u64>,
    pub allocated: u64,
    pub not_allocated: u64,
    pub non_2xx: u64,
    pub failed: u64,
    /// Wall-clock time the slices took, summed.
    pub elapsed: Duration,
    /// A few error messages, to show the user what went wrong.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 5;

impl Recorder {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            latencies_ns: Vec::with_capacity(capacity),
            ..Self::default()
        }
    }

    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        match outcome {
            Outcome::Allocated => self.allocated += 1,
            Outcome::NotAllocated => self.not_allocated += 1,
            Outcome::Status(status) => {
                self.non_2xx += 1;
                self.example(format!("HTTP status {status}"));
            }
            Outcome::Failed(message) => {
                self.failed += 1;
                self.example(message);
            }
        }
    }

    fn example(&mut self, message: String) {
        if self.examples.len() < MAX_EXAMPLES && !self.examples.contains(&message) {
            self.examples.push(message);
        }
    }

    /// Adds another recorder's requests (another worker, another slice).
    /// Elapsed times add up: slices run one after the other.
    pub fn merge(&mut self, other: Recorder) {
        self.latencies_ns.extend(other.latencies_ns);
        self.allocated += other.allocated;
        self.not_allocated += other.not_allocated;
        self.non_2xx += other.non_2xx;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        for example in other.examples {
            self.example(example);
        }
    }

    pub fn requests(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// The figures the report shows, with the CPU time `usage` measured
    /// over the same slices.
    pub fn summary_with_cpu(self, usage: &crate::cpu::Usage) -> Summary {
        let mut summary = self.summary();
        summary.cpu = usage.per_request(summary.requests);
        summary
    }

    /// The figures the report shows.
    pub fn summary(mut self) -> Summary {
        self.latencies_ns.sort_unstable();
        let requests = self.requests();
        let seconds = self.elapsed.as_secs_f64();
        let per_second = if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        };
        let sum: u128 = self.latencies_ns.iter().map(|&ns| u128::from(ns)).sum();
        let mean_ns = if requests == 0 {
            0
        } else {
            u64::try_from(sum / u128::from(requests)).unwrap_or(u64::MAX)
        };
        Summary {
            requests,
            allocated: self.allocated,
            not_allocated: self.not_allocated,
            non_2xx: self.non_2xx,
            failed: self.failed,
            elapsed_s: seconds,
            per_second,
            mean_ms: ms(mean_ns),
            p50_ms: ms(percentile(&self.latencies_ns, 50.0)),
            p90_ms: ms(percentile(&self.latencies_ns, 90.0)),
            p99_ms: ms(percentile(&self.latencies_ns, 99.0)),
            max_ms: ms(self.latencies_ns.last().copied().unwrap_or(0)),
            cpu: CpuPerRequest::default(),
            error_examples: self.examples,
        }
    }
}

/// One phase's figures at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub allocated: u64,
    /// Answered without a batch (out of stock); 0 in a sound run.
    pub not_allocated: u64,
    /// HTTP answers outside 2xx (always 0 for raw SQL).
    pub non_2xx: u64,
    /// Transport or database errors.
    pub failed: u64,
    pub elapsed_s: f64,
    /// Requests (HTTP) or transactions (raw SQL) per second.
    pub per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time per request, by process (filled in by the caller).
    pub cpu: CpuPerRequest,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_examples: Vec<String>,
}

impl Summary {
    /// Requests that did not end in an allocation.
    pub fn unsuccessful(&self) -> u64 {
        self.not_allocated + self.non_2xx + self.failed
    }
}

/// The nearest-rank percentile of sorted values: the smallest value such
/// that at least `p` percent of the values are less than or equal to it.
/// 0 for no values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let p = p.clamp(0.0, 100.0);
    // rank is 1-based; ceil(p/100 * n), at least 1.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&values, 0.0), 1);
        // 10 values: p99 is the largest, p50 the fifth.
        let ten: Vec<u64> = (1..=10).map(|v| v * 10).collect();
        assert_eq!(percentile(&ten, 50.0), 50);
        assert_eq!(percentile(&ten, 99.0), 100);
        assert_eq!(percentile(&ten, 90.0), 90);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn summary_counts_outcomes_and_rates_over_summed_time() {
        let mut first = Recorder::default();
        for ms in 1..=3 {
            first.record(Duration::from_millis(ms), Outcome::Allocated);
        }
        first.elapsed = Duration::from_secs(1);
        let mut second = Recorder::default();
        second.record(Duration::from_millis(10), Outcome::Status(503));
        second.record(Duration::from_millis(4), Outcome::Failed("boom".into()));
        second.record(Duration::from_millis(5), Outcome::Failed("boom".into()));
        second.record(Duration::from_millis(6), Outcome::NotAllocated);
        second.elapsed = Duration::from_secs(1);
        first.merge(second);

        let summary = first.summary();
        assert_eq!(summary.requests, 7);
        assert_eq!(summary.allocated, 3);
        assert_eq!((summary.non_2xx, summary.failed), (1, 2));
        assert_eq!(summary.not_allocated, 1);
        assert_eq!(summary.unsuccessful(), 4);
        assert!((summary.per_second - 3.5).abs() < 1e-9);
        // 1 2 3 4 5 6 10 ms: the median is 4, p99 and max are 10.
        assert!((summary.p50_ms - 4.0).abs() < 1e-9);
        assert!((summary.p99_ms - 10.0).abs() < 1e-9);
        assert!((summary.max_ms - 10.0).abs() < 1e-9);
        // Nanosecond resolution.
        assert!((summary.mean_ms - 31.0 / 7.0).abs() < 1e-5);
        assert_eq!(summary.error_examples, vec!["HTTP status 503", "boom"]);
    }

    #[test]
    fn an_empty_phase_has_zero_figures() {
        let summary = Recorder::default().summary();
        assert_eq!(summary.requests, 0);
        assert_eq!(summary.per_second, 0.0);
        assert_eq!(summary.p99_ms, 0.0);
    }
}
