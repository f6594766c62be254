//! `--plot`: throughput and p99 latency against concurrency, one line per
//! phase (the service with each number of instances, each raw variant),
//! and, when several instance counts ran, throughput against instances,
//! one line per concurrency; drawn with plotters into a PNG image.
//!
//! Text needs a TrueType font, read from a file at run time (plotters'
//! `ab_glyph` feature) rather than found through the system's font
//! libraries, which a build machine may not have.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Level, Report, service_label};
use crate::stats::Summary;

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

/// Labelled ticks on a concurrency axis, at most.
const CONCURRENCY_TICKS: usize = 10;

/// The size of one chart in pixels; the image has two or three side by side.
const CHART_SIZE: (u32, u32) = (700, 560);

/// One line of a chart: `(x, y)` points in increasing `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: its lines and what its axes show.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub caption: &'static str,
    pub x_label: &'static str,
    pub y_label: &'static str,
    /// At most this many labelled ticks on the x axis: few enough for whole
    /// numbers where only whole numbers make sense (instances).
    pub x_ticks: usize,
    /// Where the legend hides the least: latency rises to the right.
    pub legend: SeriesLabelPosition,
    /// Decimals in the y axis's labels.
    pub y_decimals: usize,
    pub lines: Vec<Line>,
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

/// Adds `(x, y)` to the line called `name`, which is created (after the
/// others) the first time.
fn add_point(lines: &mut Vec<Line>, name: String, point: (f64, f64)) {
    match lines.iter_mut().find(|line| line.name == name) {
        Some(line) => line.points.push(point),
        None => lines.push(Line {
            name,
            points: vec![point],
        }),
    }
}

fn sorted_by_x(mut lines: Vec<Line>) -> Vec<Line> {
    for line in &mut lines {
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// A figure of every phase against concurrency: one line per service phase
/// (by instance count), then one per raw variant, as the report lists them.
fn by_concurrency(levels: &[Level], figure: fn(&Summary) -> f64) -> Vec<Line> {
    let mut lines = Vec::new();
    for level in levels {
        let x = f64::from(level.concurrency);
        for service in &level.service {
            let name = service_label(service.instances);
            add_point(&mut lines, name, (x, figure(&service.summary)));
        }
        for raw in &level.raw {
            let name = raw.variant.label().to_owned();
            add_point(&mut lines, name, (x, figure(&raw.summary)));
        }
    }
    sorted_by_x(lines)
}

/// The service's requests/s against its number of instances, one line per
/// concurrency.
fn by_instances(levels: &[Level]) -> Vec<Line> {
    let mut lines = Vec::new();
    for level in levels {
        for service in &level.service {
            let name = format!("{} clients", level.concurrency);
            let point = (f64::from(service.instances), service.summary.per_second);
            add_point(&mut lines, name, point);
        }
    }
    sorted_by_x(lines)
}

/// The charts for `levels`: throughput and p99 latency against
/// concurrency, and throughput against instances when more than one
/// instance count was measured.
pub fn charts(levels: &[Level]) -> Vec<Chart> {
    let mut charts = vec![
        Chart {
            caption: "Throughput",
            x_label: "concurrent clients",
            y_label: "requests (or transactions) / s",
            x_ticks: CONCURRENCY_TICKS,
            legend: SeriesLabelPosition::LowerRight,
            y_decimals: 0,
            lines: by_concurrency(levels, |s| s.per_second),
        },
        Chart {
            caption: "Latency",
            x_label: "concurrent clients",
            y_label: "p99 latency, ms",
            x_ticks: CONCURRENCY_TICKS,
            legend: SeriesLabelPosition::UpperLeft,
            y_decimals: 0,
            lines: by_concurrency(levels, |s| s.p99_ms),
        },
    ];
    let instance_counts: Vec<u32> = levels
        .first()
        .map(|level| level.service.iter().map(|s| s.instances).collect())
        .unwrap_or_default();
    if instance_counts.len() > 1 {
        let most = instance_counts.iter().copied().max().unwrap_or(1);
        charts.push(Chart {
            caption: "Scale-out: the service on one database",
            x_label: "service instances",
            y_label: "requests / s",
            x_ticks: usize::try_from(most).unwrap_or(1) + 1,
            legend: SeriesLabelPosition::LowerRight,
            y_decimals: 0,
            lines: by_instances(levels),
        });
    }
    charts
}

/// An axis from 0 to a little past the highest value (1 when all are 0).
fn axis_range(values: impl Iterator<Item = f64>, room: f64) -> std::ops::Range<f64> {
    let highest = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    0.0..if highest > 0.0 { highest * room } else { 1.0 }
}

/// Draws the report's charts side by side into `path`.
pub fn draw(path: &Path, report: &Report) -> anyhow::Result<()> {
    let title = format!(
        "POST /allocate on {}: {} SKU{}, {} cores shared by harness, service and database",
        report.backend.name(),
        report.settings.skus,
        if report.settings.skus == 1 { "" } else { "s" },
        report.cpus
    );
    draw_charts(path, &title, &charts(&report.levels))
}

/// Draws `charts` side by side under `title` into `path`.
pub fn draw_charts(path: &Path, title: &str, charts: &[Chart]) -> anyhow::Result<()> {
    if charts.iter().all(|chart| chart.lines.is_empty()) {
        bail!("nothing to plot");
    }
    let fail = |error: &dyn std::fmt::Display| anyhow!("cannot draw {}: {error}", path.display());
    let width = CHART_SIZE.0 * u32::try_from(charts.len()).unwrap_or(1);
    let root = BitMapBackend::new(path, (width, CHART_SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| fail(&e))?;
    let areas = root.split_evenly((1, charts.len()));
    for (area, chart) in areas.iter().zip(charts) {
        draw_chart(area, chart).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawError<'a> = DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

fn draw_chart<'a>(area: &Area<'a>, chart: &Chart) -> Result<(), DrawError<'a>> {
    let points = || chart.lines.iter().flat_map(|line| line.points.iter());
    let x_range = axis_range(points().map(|p| p.0), 1.08);
    let y_range = axis_range(points().map(|p| p.1), 1.12);
    let mut plot = ChartBuilder::on(area)
        .caption(chart.caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    plot.configure_mesh()
        .light_line_style(WHITE)
        .x_labels(chart.x_ticks)
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.*}", chart.y_decimals))
        .draw()?;
    for (index, line) in chart.lines.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        plot.draw_series(LineSeries::new(
            line.points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(line.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        plot.draw_series(
            line.points
                .iter()
                .map(|&point| Circle::new(point, 4, color.filled())),
        )?;
    }
    plot.configure_series_labels()
        .position(chart.legend.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
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

    fn names(chart: &Chart) -> Vec<&str> {
        chart.lines.iter().map(|line| line.name.as_str()).collect()
    }

    #[test]
    fn one_line_per_phase_in_increasing_concurrency() {
        // Concurrency given as 32,8: the lines still go left to right.
        let levels = [
            level(32, &[(1, 300), (2, 500)], 400),
            level(8, &[(1, 100), (2, 150)], 200),
        ];
        let charts = charts(&levels);
        let throughput = &charts[0];
        assert_eq!(
            names(throughput),
            ["service (HTTP)", "service x2 (HTTP)", "raw minimal"]
        );
        assert_eq!(
            throughput.lines[1].points,
            vec![(8.0, 150.0), (32.0, 500.0)]
        );
        assert_eq!(
            throughput.lines[2].points,
            vec![(8.0, 200.0), (32.0, 400.0)]
        );
        let latency = &charts[1];
        assert_eq!(latency.lines[0].points, vec![(8.0, 2.0), (32.0, 2.0)]);
        assert_eq!(latency.lines[2].points, vec![(8.0, 1.0), (32.0, 1.0)]);
    }

    #[test]
    fn several_instance_counts_add_a_scale_out_chart() {
        let levels = [
            level(8, &[(1, 100), (2, 150), (3, 170)], 200),
            level(32, &[(1, 300), (2, 500), (3, 560)], 400),
        ];
        let charts = charts(&levels);
        assert_eq!(charts.len(), 3);
        let scale_out = &charts[2];
        assert_eq!(scale_out.x_label, "service instances");
        // 0, 1, 2, 3: whole instances only.
        assert_eq!(scale_out.x_ticks, 4);
        assert_eq!(names(scale_out), ["8 clients", "32 clients"]);
        assert_eq!(
            scale_out.lines[1].points,
            vec![(1.0, 300.0), (2.0, 500.0), (3.0, 560.0)]
        );
        // One instance count: nothing to scale, two charts.
        assert_eq!(super::charts(&[level(8, &[(1, 100)], 200)]).len(), 2);
    }

    #[test]
    fn axes_start_at_zero_and_leave_room_above_the_highest_value() {
        let y = axis_range([100.0, 400.0, f64::NAN].into_iter(), 1.12);
        assert_eq!(y.start, 0.0);
        assert!(y.end > 400.0 && y.end < 500.0);
        assert_eq!(axis_range(std::iter::empty(), 1.12), 0.0..1.0);
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
