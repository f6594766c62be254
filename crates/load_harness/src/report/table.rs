//! The report as text tables on stdout: the phases of each concurrency
//! level, the summary, and the scale-out over instances.

use super::{Report, service_label};
use crate::stats::Summary;

/// Whole microseconds, or `-` where there is no figure.
pub fn micros(us: Option<f64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"))
}

fn row(backend: &str, concurrency: u32, phase: &str, s: &Summary, extra: &str) -> String {
    format!(
        "{backend:<9} {concurrency:>5}  {phase:<20} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}{extra}",
        s.per_second,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.non_2xx,
        s.failed + s.not_allocated,
        micros(s.cpu.client_us),
        micros(s.cpu.service_us),
        micros(s.cpu.database_us),
        micros(s.cpu.total_us),
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
        let conflicts = |count: u64| {
            if count > 0 {
                format!("  ({count} version conflicts retried)")
            } else {
                String::new()
            }
        };
        for level in &self.levels {
            for service in &level.service {
                println!(
                    "{}",
                    row(
                        backend,
                        level.concurrency,
                        &service_label(service.instances),
                        &service.summary,
                        &conflicts(service.conflict_retries.unwrap_or(0))
                    )
                );
            }
            for raw in &level.raw {
                let extra = conflicts(raw.conflicts);
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
            for example in level
                .service
                .iter()
                .flat_map(|s| s.summary.error_examples.iter())
                .chain(
                    level
                        .raw
                        .iter()
                        .flat_map(|r| r.summary.error_examples.iter()),
                )
            {
                println!("{:>17}e.g. {example}", "");
            }
        }

        println!();
        println!(
            "| backend | concurrency | service req/s | p50 ms | p99 ms | raw tx/s | p50 ms | p99 ms | service/raw | extra CPU µs/req |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for level in &self.levels {
            let Some(service) = level.service.first() else {
                continue;
            };
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
            let extra = micros(level.extra_cpu_us);
            println!(
                "| {backend} | {} | {:.0} | {:.2} | {:.2} | {raw_rate} | {raw_p50} | {raw_p99} | {ratio} | {extra} |",
                level.concurrency,
                service.summary.per_second,
                service.summary.p50_ms,
                service.summary.p99_ms,
            );
        }
        if self.settings.instances.len() > 1 {
            self.print_scale_out();
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

    /// The service with each number of instances: throughput, latency,
    /// failures, conflicts, CPU, and the ratios to one instance and to raw.
    fn print_scale_out(&self) {
        let backend = self.backend.name();
        let figure = |v: Option<f64>, decimals: usize| {
            v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
        };
        println!();
        println!(
            "| backend | concurrency | instances | req/s | p50 ms | p99 ms | non-2xx | errors | conflicts retried | service CPU us/req | total CPU us/req | vs fewest instances | service/raw |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for level in &self.levels {
            for service in &level.service {
                let s = &service.summary;
                println!(
                    "| {backend} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                    level.concurrency,
                    service.instances,
                    s.per_second,
                    s.p50_ms,
                    s.p99_ms,
                    s.non_2xx,
                    s.failed + s.not_allocated,
                    service
                        .conflict_retries
                        .map_or("-".to_owned(), |c| c.to_string()),
                    figure(s.cpu.service_us, 0),
                    figure(s.cpu.total_us, 0),
                    figure(service.scaling, 2),
                    figure(service.ratio, 2),
                );
            }
        }
    }
}
