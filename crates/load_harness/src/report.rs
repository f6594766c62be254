//! The results of a run: printed as tables for people (`table`), and
//! written as JSON (`--output`) for the docs to be regenerated from.

mod table;

pub use table::micros;

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
    /// The largest peak resident memory (`VmHWM`) of a service process the
    /// harness started, over the whole run (Linux).
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
    /// Each instance's pool (the instances of a phase add up).
    pub max_connections: u32,
    /// Service instances on one database, one service phase per value.
    pub instances: Vec<u32>,
    pub raw_variants: Vec<RawVariant>,
    pub debug_build: bool,
}

/// One concurrency level: the service (with each number of instances),
/// each raw variant, and the ratios.
#[derive(Debug, Serialize)]
pub struct Level {
    pub concurrency: u32,
    /// One per `--instances` value, fewest instances first.
    pub service: Vec<ServiceResult>,
    pub raw: Vec<RawResult>,
    /// The first service result's requests/s (one instance by default)
    /// divided by the baseline raw transactions/s (`minimal` when it ran,
    /// else the first raw variant).
    pub ratio: Option<f64>,
    pub ratio_baseline: Option<RawVariant>,
    /// CPU microseconds per request that the first service result's path
    /// (HTTP client, service, database) spends beyond the baseline raw
    /// transaction's (its client and database): the cost of the HTTP hop
    /// and the service's layers. Unlike the ratio, it does not move with
    /// how fast the machine runs the database's share of the work, so it
    /// compares runs on different machines.
    pub extra_cpu_us: Option<f64>,
}

/// The service, with `instances` processes on one database, at one
/// concurrency.
#[derive(Debug, Serialize)]
pub struct ServiceResult {
    pub instances: u32,
    #[serde(flatten)]
    pub summary: Summary,
    /// Commands the instances' buses ran again after a version conflict
    /// (`allocation_version_conflict_retries_total` from their `/metrics`,
    /// summed); `None` when it could not be scraped.
    pub conflict_retries: Option<u64>,
    /// Requests/s divided by that of the fewest instances measured (1 by
    /// default) at the same concurrency.
    pub scaling: Option<f64>,
    /// Requests/s divided by the baseline raw transactions/s.
    pub ratio: Option<f64>,
}

/// What one service phase measured at one concurrency, before the ratios.
#[derive(Debug)]
pub struct ServiceMeasure {
    pub instances: u32,
    pub summary: Summary,
    pub conflict_retries: Option<u64>,
}

/// The name of the service phase with `instances` processes: the single
/// instance keeps the name it has always had.
pub fn service_name(instances: u32) -> String {
    if instances == 1 {
        "service".to_owned()
    } else {
        format!("service x{instances}")
    }
}

/// The service phase's label in tables: its name and what it drives.
pub fn service_label(instances: u32) -> String {
    format!("{} (HTTP)", service_name(instances))
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
    /// `service`: fewest instances first.
    pub fn new(concurrency: u32, service: Vec<ServiceMeasure>, raw: Vec<RawResult>) -> Self {
        let baseline = raw
            .iter()
            .find(|r| r.variant == RawVariant::Minimal)
            .or_else(|| raw.first());
        let divide = |rate: f64, by: f64| (by > 0.0).then(|| rate / by);
        let raw_rate = baseline.map_or(0.0, |b| b.summary.per_second);
        let fewest_rate = service.first().map_or(0.0, |s| s.summary.per_second);
        let service: Vec<ServiceResult> = service
            .into_iter()
            .map(|measure| ServiceResult {
                scaling: divide(measure.summary.per_second, fewest_rate),
                ratio: divide(measure.summary.per_second, raw_rate),
                instances: measure.instances,
                summary: measure.summary,
                conflict_retries: measure.conflict_retries,
            })
            .collect();
        let extra_cpu_us = service
            .first()
            .and_then(|s| s.summary.cpu.total_us)
            .zip(baseline.and_then(|b| b.summary.cpu.total_us))
            .map(|(service, raw)| service - raw);
        Self {
            concurrency,
            ratio: service.first().and_then(|s| s.ratio),
            ratio_baseline: baseline.map(|b| b.variant),
            extra_cpu_us,
            service,
            raw,
        }
    }

    /// Requests that did not end in an allocation, in every phase.
    pub fn failures(&self) -> u64 {
        self.service
            .iter()
            .map(|s| s.summary.unsuccessful())
            .chain(self.raw.iter().map(|r| r.summary.unsuccessful()))
            .sum()
    }
}

impl Consistency {
    /// Judges a phase's database: exactly the allocations (and units) it
    /// answered, each with its read-model row, no batch oversold or out of
    /// step with its lines. `unrelayed`: nothing publishes this phase's
    /// outbox, so every message must still be there; otherwise the relay
    /// may have published (and deleted) any number of them.
    pub fn judge(
        phase: String,
        expected_allocations: u64,
        expected_quantity: u64,
        contents: Contents,
        unrelayed: bool,
    ) -> Self {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (allocations, quantity) = (as_i64(expected_allocations), as_i64(expected_quantity));
        let ok = contents.allocations == allocations
            && contents.view_rows == allocations
            && contents.allocated_qty_in_lines == quantity
            && contents.allocated_qty_in_batches == quantity
            && contents.over_allocated_batches == 0
            && contents.batches_off_their_lines == 0
            && contents.allocations_missing_from_view == 0
            && if unrelayed {
                contents.outbox_rows == allocations
            } else {
                contents.outbox_rows <= allocations
            };
        Self {
            phase,
            expected_allocations,
            expected_quantity,
            contents,
            ok,
        }
    }
}

impl Report {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("cannot serialise the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write --output {}", path.display()))
    }
}

#[cfg(test)]
impl Report {
    /// A report of `levels` on PostgreSQL, with one to three instances.
    pub fn example(levels: Vec<Level>) -> Self {
        Self {
            backend: Backend::Postgres,
            cpus: 2,
            finished_unix_s: 0,
            settings: Settings {
                started_service: true,
                service_binary: None,
                service_url: String::new(),
                service_log_level: None,
                requests_per_phase: Some(1000),
                duration_per_phase_s: None,
                warmup_requests: 0,
                rounds: 1,
                skus: 100,
                batches_per_sku: 3,
                max_connections: 10,
                instances: vec![1, 2, 3],
                raw_variants: vec![RawVariant::Minimal],
                debug_build: false,
            },
            levels,
            consistency: Vec::new(),
            service_peak_rss_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;

    fn summary_at(per_second: u64) -> Summary {
        let mut recorder = Recorder::default();
        for _ in 0..per_second {
            recorder.record(
                std::time::Duration::from_millis(1),
                crate::stats::Outcome::Allocated,
            );
        }
        recorder.elapsed = std::time::Duration::from_secs(1);
        recorder.summary()
    }

    fn measure(instances: u32, per_second: u64) -> ServiceMeasure {
        ServiceMeasure {
            instances,
            summary: summary_at(per_second),
            conflict_retries: Some(u64::from(instances) - 1),
        }
    }

    fn costing(mut summary: Summary, total_us: f64) -> Summary {
        summary.cpu.total_us = Some(total_us);
        summary
    }

    #[test]
    fn instances_are_compared_with_the_fewest_and_with_raw() {
        let raw = vec![
            RawResult {
                variant: RawVariant::ServiceSql,
                summary: summary_at(50),
                conflicts: 0,
            },
            RawResult {
                variant: RawVariant::Minimal,
                summary: summary_at(400),
                conflicts: 0,
            },
        ];
        let level = Level::new(8, vec![measure(1, 200), measure(2, 300)], raw);
        assert_eq!(level.ratio_baseline, Some(RawVariant::Minimal));
        assert_eq!(level.ratio, Some(0.5));
        let figures: Vec<_> = level
            .service
            .iter()
            .map(|s| (s.instances, s.scaling, s.ratio, s.conflict_retries))
            .collect();
        assert_eq!(
            figures,
            vec![
                (1, Some(1.0), Some(0.5), Some(0)),
                (2, Some(1.5), Some(0.75), Some(1))
            ]
        );
        assert_eq!(level.failures(), 0);
        // Nothing to divide by: no ratio rather than infinity.
        let idle = Level::new(8, vec![measure(1, 0), measure(2, 10)], Vec::new());
        assert_eq!(idle.service[1].scaling, None);
        assert_eq!(idle.ratio, None);
    }

    #[test]
    fn the_service_paths_extra_cpu_is_taken_against_the_baseline() {
        let raw = vec![
            RawResult {
                variant: RawVariant::Book,
                summary: costing(summary_at(500), 400.0),
                conflicts: 0,
            },
            RawResult {
                variant: RawVariant::Minimal,
                summary: costing(summary_at(400), 500.0),
                conflicts: 0,
            },
        ];
        let mut one = measure(1, 300);
        one.summary = costing(one.summary, 700.0);
        let mut two = measure(2, 350);
        two.summary = costing(two.summary, 900.0);
        let level = Level::new(8, vec![one, two], raw);
        assert_eq!(level.extra_cpu_us, Some(200.0));
        // CPU not measured on either side: no figure.
        let unmeasured = Level::new(8, vec![measure(1, 300)], Vec::new());
        assert_eq!(unmeasured.extra_cpu_us, None);
    }

    #[test]
    fn single_instance_phases_keep_their_name() {
        assert_eq!(service_label(1), "service (HTTP)");
        assert_eq!(service_label(3), "service x3 (HTTP)");
    }

    fn contents(allocations: i64, quantity: i64, outbox_rows: i64) -> Contents {
        Contents {
            allocations,
            view_rows: allocations,
            allocated_qty_in_lines: quantity,
            allocated_qty_in_batches: quantity,
            outbox_rows,
            over_allocated_batches: 0,
            batches_off_their_lines: 0,
            allocations_missing_from_view: 0,
        }
    }

    #[test]
    fn a_database_must_hold_exactly_what_was_answered() {
        let judge = |contents: Contents, unrelayed: bool| {
            Consistency::judge("p".into(), 10, 20, contents, unrelayed).ok
        };
        assert!(judge(contents(10, 20, 10), true));
        // The relay may have published some of the service's messages.
        assert!(judge(contents(10, 20, 3), false));
        assert!(!judge(contents(10, 20, 3), true));
        assert!(!judge(contents(11, 20, 10), true));
        assert!(!judge(contents(10, 21, 10), true));
        for broken in [
            Contents {
                view_rows: 9,
                ..contents(10, 20, 10)
            },
            Contents {
                over_allocated_batches: 1,
                ..contents(10, 20, 10)
            },
            Contents {
                batches_off_their_lines: 1,
                ..contents(10, 20, 10)
            },
            Contents {
                allocations_missing_from_view: 1,
                ..contents(10, 20, 10)
            },
            Contents {
                allocated_qty_in_batches: 19,
                ..contents(10, 20, 10)
            },
        ] {
            assert!(!judge(broken, true), "{broken:?}");
        }
    }
}
