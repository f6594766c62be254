//! `--plot`: throughput and p99 latency against concurrency, one line per
//! phase (the service with each number of instances, each raw variant),
//! drawn with plotters into a PNG image.
//!
//! Text needs a TrueType font, read from a file at run time (plotters'
//! `ab_glyph` feature) rather than found through the system's font
//! libraries, which a build machine may not have.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Level, Report, service_label};

/// Where the usual sans-serif fonts live (Debian and Ubuntu, Fedora, Arch,
/// macOS), first found wins.
const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Line colours, told apart easily (Tableau 10); reused past ten lines.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One of the two charts: which figure of the points it shows.
#[derive(Debug, Clone, Copy)]
struct Chart {
    caption: &'static str,
    y_label: &'static str,
    value: fn(&Point) -> f64,
}

const CHARTS: [Chart; 2] = [
    Chart {
        caption: "Throughput",
        y_label: "requests (or transactions) / s",
        value: |p| p.per_second,
    },
    Chart {
        caption: "Latency",
        y_label: "p99 latency, ms",
        value: |p| p.p99_ms,
    },
];

/// The image's size in pixels: two charts side by side.
const SIZE: (u32, u32) = (1400, 560);

/// One line of a chart: a phase's figures at each concurrency, in
/// increasing concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub concurrency: u32,
    pub per_second: f64,
    pub p99_ms: f64,
}

/// Reads `explicit` (or the first usual font found) and registers it as
/// plotters' `sans-serif`. Called before the run, so that a missing font
/// fails at once rather than after minutes of load.
pub fn register_font(explicit: Option<&Path>) -> anyhow::Result<()> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .with_context(|| {
                format!(
                    "--plot needs a TrueType font and none of {} exists: pass --plot-font FILE.ttf \
                     (or install one, e.g. apt-get install fonts-dejavu-core)",
                    FONT_CANDIDATES.join(", ")
                )
            })?,
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read the font {}", path.display()))?;
    // plotters keeps fonts for the life of the process; one font, once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a TrueType or OpenType font", path.display()))
}

/// The lines to draw: each service phase (by instance count), then each
/// raw variant, in the order the report lists them.
pub fn series(levels: &[Level]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    let mut add = |name: String, point: Point| match series.iter_mut().find(|s| s.name == name) {
        Some(line) => line.points.push(point),
        None => series.push(Series {
            name,
            points: vec![point],
        }),
    };
    for level in levels {
        let point = |summary: &crate::stats::Summary| Point {
            concurrency: level.concurrency,
            per_second: summary.per_second,
            p99_ms: summary.p99_ms,
        };
        for service in &level.service {
            add(service_label(service.instances), point(&service.summary));
        }
        for raw in &level.raw {
            add(raw.variant.label().to_owned(), point(&raw.summary));
        }
    }
    for line in &mut series {
        line.points.sort_by_key(|p| p.concurrency);
    }
    series
}

/// The x axis: from 0 to a little past the highest concurrency.
fn concurrency_range(series: &[Series]) -> std::ops::Range<f64> {
    let highest = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.concurrency)
        .max()
        .unwrap_or(1);
    0.0..f64::from(highest) * 1.08
}

/// A y axis from 0 to a little past the highest value (1 when all are 0).
fn value_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let highest = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    0.0..if highest > 0.0 { highest * 1.12 } else { 1.0 }
}

/// Draws the report's throughput and p99 latency charts into `path`.
pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
    let lines = series(&report.levels);
    if lines.is_empty() {
        bail!("nothing to plot");
    }
    let fail = |error: &dyn std::fmt::Display| anyhow!("cannot draw {}: {error}", path.display());
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = format!(
        "POST /allocate on {}: {} SKUs, {} cores shared by harness, service and database",
        report.backend.name(),
        report.settings.skus,
        report.cpus
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let x_range = concurrency_range(&lines);
    for (
        area,
        Chart {
            caption,
            y_label,
            value,
        },
    ) in [left, right].iter().zip(CHARTS)
    {
        let y_range = value_range(lines.iter().flat_map(|s| s.points.iter().map(value)));
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone(), y_range)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("concurrent clients")
            .y_desc(y_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| fail(&e))?;
        for (index, line) in lines.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .map(|p| (f64::from(p.concurrency), value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(line.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|point| Circle::new(point, 4, color.filled())),
                )
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::RawVariant;
    use crate::report::{RawResult, ServiceMeasure};
    use crate::stats::{Outcome, Recorder, Summary};

    /// A summary of `requests` allocations in one second, each taking
    /// `latency_ms`.
    fn summary(requests: u64, latency_ms: u64) -> Summary {
        let mut recorder = Recorder::default();
        for _ in 0..requests {
            recorder.record(
                std::time::Duration::from_millis(latency_ms),
                Outcome::Allocated,
            );
        }
        recorder.elapsed = std::time::Duration::from_secs(1);
        recorder.summary()
    }

    fn level(concurrency: u32, services: &[(u32, u64)], raw: u64) -> Level {
        let service = services
            .iter()
            .map(|&(instances, rate)| ServiceMeasure {
                instances,
                summary: summary(rate, 2),
                conflict_retries: Some(0),
            })
            .collect();
        let raw = vec![RawResult {
            variant: RawVariant::Minimal,
            summary: summary(raw, 1),
            conflicts: 0,
        }];
        Level::new(concurrency, service, raw)
    }

    #[test]
    fn one_line_per_phase_in_increasing_concurrency() {
        // Concurrency given as 32,8: the lines still go left to right.
        let levels = [
            level(32, &[(1, 300), (2, 500)], 400),
            level(8, &[(1, 100), (2, 150)], 200),
        ];
        let lines = series(&levels);
        let names: Vec<&str> = lines.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["service (HTTP)", "service x2 (HTTP)", "raw minimal"]
        );
        let rates = |line: &Series| -> Vec<(u32, f64)> {
            line.points
                .iter()
                .map(|p| (p.concurrency, p.per_second))
                .collect()
        };
        assert_eq!(rates(&lines[1]), vec![(8, 150.0), (32, 500.0)]);
        assert_eq!(rates(&lines[2]), vec![(8, 200.0), (32, 400.0)]);
        assert_eq!(lines[0].points[0].p99_ms, 2.0);
    }

    #[test]
    fn axes_start_at_zero_and_leave_room_above_the_highest_value() {
        let lines = series(&[level(32, &[(1, 300)], 400)]);
        let x = concurrency_range(&lines);
        assert_eq!(x.start, 0.0);
        assert!(x.end > 32.0);
        let y = value_range([100.0, 400.0, f64::NAN].into_iter());
        assert_eq!(y.start, 0.0);
        assert!(y.end > 400.0 && y.end < 500.0);
        assert_eq!(value_range(std::iter::empty()), 0.0..1.0);
    }

    #[test]
    fn the_plot_is_a_png_image() {
        if register_font(None).is_err() {
            eprintln!("skipped: no usual TrueType font on this machine");
            return;
        }
        let report = Report::example(vec![
            level(8, &[(1, 100), (2, 150), (3, 170)], 200),
            level(32, &[(1, 300), (2, 500), (3, 560)], 400),
        ]);
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().join("scale.png");
        draw(&path, &report).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    }
}
