//! `--history-plot`: the allocation-history benchmark's figures as a PNG.
//! `cargo bench -p allocation --bench allocation_history` leaves criterion's
//! estimates under `target/criterion/allocate_after_history/<backend>/<N>/`;
//! this draws allocation latency against the SKU's prior allocations, one
//! line per backend, and the same relative to no history (the target is
//! at most 1.2 at 100 000).

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::SeriesLabelPosition;
use serde::Deserialize;

use crate::plot::{Chart, Line};

/// The criterion group the benchmark measures in.
const GROUP: &str = "allocate_after_history";

/// What the plot reads of criterion's `estimates.json`: the slope of time
/// against iterations where criterion fitted one (what its report prints
/// as `time:`), else the mean.
#[derive(Debug, Deserialize)]
struct Estimates {
    mean: Estimate,
    slope: Option<Estimate>,
}

impl Estimates {
    fn per_iteration(&self) -> &Estimate {
        self.slope.as_ref().unwrap_or(&self.mean)
    }
}

#[derive(Debug, Deserialize)]
struct Estimate {
    /// Nanoseconds per iteration.
    point_estimate: f64,
}

/// Latency in µs by prior allocations, per backend, from `criterion_dir`.
pub fn read(criterion_dir: &Path) -> anyhow::Result<Vec<Line>> {
    let group = criterion_dir.join(GROUP);
    let backends = std::fs::read_dir(&group).with_context(|| {
        format!(
            "no allocation-history results in {}: run `cargo bench -p allocation --bench allocation_history` first",
            group.display()
        )
    })?;
    let mut lines = Vec::new();
    for backend in backends {
        let backend = backend?.path();
        let Some(name) = backend.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == "report" || !backend.is_dir() {
            continue; // criterion's own HTML report
        }
        let mut points = Vec::new();
        for level in std::fs::read_dir(&backend)? {
            let level = level?.path();
            let Some(history) = level
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<f64>().ok())
            else {
                continue;
            };
            let file = level.join("new").join("estimates.json");
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let estimates: Estimates = serde_json::from_str(&text)
                .with_context(|| format!("{} is not criterion's estimates", file.display()))?;
            points.push((history, estimates.per_iteration().point_estimate / 1_000.0));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            lines.push(Line {
                name: name.to_owned(),
                points,
            });
        }
    }
    if lines.is_empty() {
        bail!("no allocation-history results in {}", group.display());
    }
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(lines)
}

/// Latency against history, and relative to the first level (no history).
pub fn charts(latencies: Vec<Line>) -> Vec<Chart> {
    let relative = latencies
        .iter()
        .map(|line| {
            let base = line.points.first().map_or(1.0, |p| p.1);
            Line {
                name: line.name.clone(),
                points: line.points.iter().map(|&(x, y)| (x, y / base)).collect(),
            }
        })
        .collect();
    vec![
        Chart {
            caption: "Allocation latency",
            x_label: "prior allocations of the SKU",
            y_label: "µs per allocation",
            x_ticks: 6,
            legend: SeriesLabelPosition::UpperLeft,
            y_decimals: 0,
            lines: latencies,
        },
        Chart {
            caption: "Relative to no history (target: at most 1.2)",
            x_label: "prior allocations of the SKU",
            y_label: "latency / latency at 0",
            x_ticks: 6,
            legend: SeriesLabelPosition::LowerRight,
            y_decimals: 1,
            lines: relative,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_estimate(dir: &Path, backend: &str, history: u32, nanos: f64) {
        let level = dir
            .join(GROUP)
            .join(backend)
            .join(history.to_string())
            .join("new");
        std::fs::create_dir_all(&level).expect("directories");
        let json = format!(
            r#"{{"mean": {{"point_estimate": 1.0}}, "slope": {{"point_estimate": {nanos}}}}}"#
        );
        std::fs::write(level.join("estimates.json"), json).expect("estimates");
    }

    #[test]
    fn reads_each_backend_in_order_of_history() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_estimate(dir.path(), "sqlite", 100_000, 240_000.0);
        write_estimate(dir.path(), "sqlite", 0, 200_000.0);
        write_estimate(dir.path(), "memory", 0, 800.0);
        std::fs::create_dir_all(dir.path().join(GROUP).join("report")).expect("report dir");
        let lines = read(dir.path()).expect("read");
        assert_eq!(
            lines,
            vec![
                Line {
                    name: "memory".into(),
                    points: vec![(0.0, 0.8)]
                },
                Line {
                    name: "sqlite".into(),
                    points: vec![(0.0, 200.0), (100_000.0, 240.0)]
                },
            ]
        );
        let relative = &charts(lines)[1].lines[1];
        assert_eq!(relative.points, vec![(0.0, 1.0), (100_000.0, 1.2)]);
    }

    #[test]
    fn says_how_to_get_results_when_there_are_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = read(dir.path()).expect_err("nothing to read");
        assert!(format!("{error:#}").contains("cargo bench"), "{error:#}");
    }
}
