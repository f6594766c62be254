//! The results of a run: printed as tables for people, and written as JSON
//! (`--output`) for the docs to be regenerated from.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::database::{Backend, Contents};
use crate::raw::RawVariant;
use crate::stats::Summary;

/// Everything a run measured, and how.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: Backend,
    /// Cores the harness saw; the service and the database share them.
    pub cpus: usize,
    /// `seconds since the epoch` when the run ended.
    pub finished_unix_s: u64,
    pub settings: Settings,
    pub levels: Vec<Level>,
    pub consistency: Vec<Consistency>,
    /// The service process's peak resident memory over the whole run
    /// (`VmHWM`), when the harness started it on Linux.
    pub service_peak_rss_bytes: Option<u64>,
}

/// The run's flags, as they were understood.
#[derive(Debug, Serialize)]
pub struct Settings {
    /// The harness started the service (false with `--url`).
    pub started_service: bool,
    pub service_binary: Option<String>,
    pub service_url: String,
    pub service_log_level: Option<String>,
    pub requests_per_phase: Option<u64>,
    pub duration_per_phase_s: Option<f64>,
    pub warmup_requests: u64,
    pub rounds: u32,
    pub skus: u32,
    pub batches_per_sku: usize,
    pub max_connections: u32,
    pub raw_variants: Vec<RawVariant>,
    pub debug_build: bool,
}

/// One concurrency level: the service, each raw variant, and the ratio.
#[derive(Debug, Serialize)]
pub struct Level {
    pub concurrency: u32,
    pub service: Summary,
    pub raw: Vec<RawResult>,
    /// Service requests/s divided by the baseline raw transactions/s
    /// (`minimal` when it ran, else the first raw variant).
    pub ratio: Option<f64>,
    pub ratio_baseline: Option<RawVariant>,
}

#[derive(Debug, Serialize)]
pub struct RawResult {
    pub variant: RawVariant,
    #[serde(flatten)]
    pub summary: Summary,
    /// Version conflicts retried (the `service-sql*` variants only).
    pub conflicts: u64,
}

/// Whether a phase's database holds exactly the allocations it answered.
#[derive(Debug, Serialize)]
pub struct Consistency {
    pub phase: String,
    pub expected_allocations: u64,
    pub expected_quantity: u64,
    pub contents: Contents,
    pub ok: bool,
}

impl Level {
    pub fn new(concurrency: u32, service: Summary, raw: Vec<RawResult>) -> Self {
        let baseline = raw
            .iter()
            .find(|r| r.variant == RawVariant::Minimal)
            .or_else(|| raw.first());
        let ratio = baseline
            .filter(|b| b.summary.per_second > 0.0)
            .map(|b| service.per_second / b.summary.per_second);
        Self {
            concurrency,
            ratio_baseline: baseline.map(|b| b.variant),
            service,
            raw,
            ratio,
        }
    }
}

fn row(backend: &str, concurrency: u32, phase: &str, s: &Summary, extra: &str) -> String {
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    format!(
        "{backend:<9} {concurrency:>5}  {phase:<20} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}{extra}",
        s.per_second,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.non_2xx,
        s.failed + s.not_allocated,
        us(s.cpu.client_us),
        us(s.cpu.service_us),
        us(s.cpu.database_us),
        us(s.cpu.total_us),
    )
}

impl Report {
    /// The per-phase table and the summary table.
    pub fn print(&self) {
        let backend = self.backend.name();
        println!();
        println!("{:>91}", "CPU us per request");
        println!(
            "{:<9} {:>5}  {:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "backend",
            "conc",
            "phase",
            "per sec",
            "p50 ms",
            "p99 ms",
            "max ms",
            "non-2xx",
            "errors",
            "client",
            "service",
            "db",
            "total"
        );
        for level in &self.levels {
            println!(
                "{}",
                row(
                    backend,
                    level.concurrency,
                    "service (HTTP)",
                    &level.service,
                    ""
                )
            );
            for raw in &level.raw {
                let extra = if raw.conflicts > 0 {
                    format!("  ({} version conflicts retried)", raw.conflicts)
                } else {
                    String::new()
                };
                println!(
                    "{}",
                    row(
                        backend,
                        level.concurrency,
                        raw.variant.label(),
                        &raw.summary,
                        &extra
                    )
                );
            }
            for example in level.service.error_examples.iter().chain(
                level
                    .raw
                    .iter()
                    .flat_map(|r| r.summary.error_examples.iter()),
            ) {
                println!("{:>17}e.g. {example}", "");
            }
        }

        println!();
        println!(
            "| backend | concurrency | service req/s | p50 ms | p99 ms | raw tx/s | p50 ms | p99 ms | service/raw |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for level in &self.levels {
            let baseline = level
                .raw
                .iter()
                .find(|r| Some(r.variant) == level.ratio_baseline);
            let (raw_rate, raw_p50, raw_p99) =
                baseline.map_or(("-".to_owned(), "-".to_owned(), "-".to_owned()), |b| {
                    (
                        format!("{:.0}", b.summary.per_second),
                        format!("{:.2}", b.summary.p50_ms),
                        format!("{:.2}", b.summary.p99_ms),
                    )
                });
            let ratio = level.ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
            println!(
                "| {backend} | {} | {:.0} | {:.2} | {:.2} | {raw_rate} | {raw_p50} | {raw_p99} | {ratio} |",
                level.concurrency,
                level.service.per_second,
                level.service.p50_ms,
                level.service.p99_ms,
            );
        }

        if let Some(bytes) = self.service_peak_rss_bytes {
            println!(
                "service peak RSS: {:.1} MiB",
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
        for check in &self.consistency {
            if check.ok {
                println!(
                    "consistency {}: ok ({} allocations, {} units, {} messages not yet relayed)",
                    check.phase,
                    check.expected_allocations,
                    check.expected_quantity,
                    check.contents.outbox_rows
                );
            } else {
                println!(
                    "consistency {}: MISMATCH: answered {} allocations of {} units, database holds {:?}",
                    check.phase,
                    check.expected_allocations,
                    check.expected_quantity,
                    check.contents
                );
            }
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("cannot serialise the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write --output {}", path.display()))
    }
}
