//! SVG plots of runs (with `plotters`): utilization, queue length and per-team busy devices over
//! time, the JCT CDF of one or several policies, and a sweep's p95 wait and utilization per step.

use crate::metrics::JobRecord;
use crate::{Report, SimError};
use plotters::prelude::*;
use std::path::Path;

/// One line of a plot.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) }
}

/// Draws lines into an SVG file.
fn lines(path: &Path, title: &str, x: &str, y: &str, series: &[Series]) -> Result<(), SimError> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, 1e-9f64, 1e-9f64);
    for &(px, py) in all {
        x0 = x0.min(px);
        x1 = x1.max(px);
        y1 = y1.max(py);
    }
    let x0 = if x0.is_finite() && x0 < x1 { x0 } else { 0.0 };
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1 + (x1 - x0) * 0.02, 0.0..y1 * 1.05)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc(x).y_desc(y).draw().map_err(|e| plot_err(path, e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(s.name.clone())
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 18, ly)], color.stroke_width(2)));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

fn days(ms: u64) -> f64 {
    ms as f64 / 86_400_000.0
}

/// The empirical CDF of the JCTs of completed jobs, in hours.
fn jct_cdf(records: &[JobRecord]) -> Vec<(f64, f64)> {
    let jct = crate::metrics::sorted(records.iter().filter_map(JobRecord::jct_s).map(|s| s / 3600.0).collect());
    let n = jct.len().max(1) as f64;
    let step = (jct.len() / 500).max(1);
    jct.iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == jct.len())
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

/// Writes `utilization.svg`, `queue.svg`, `team_busy.svg` and `jct_cdf.svg` of one run.
pub fn run_plots(dir: &Path, report: &Report) -> Result<(), SimError> {
    let out = &report.output;
    let devices = out.devices.max(1) as f64;
    let util = out.samples.iter().map(|s| (days(s.t_ms), s.busy as f64 / devices)).collect();
    lines(
        &dir.join("utilization.svg"),
        "GPU utilization",
        "days",
        "busy / all GPUs",
        &[Series { name: "utilization".into(), points: util }],
    )?;
    let queue = out.samples.iter().map(|s| (days(s.t_ms), s.queued as f64)).collect();
    lines(&dir.join("queue.svg"), "Jobs waiting", "days", "jobs", &[Series { name: "queue".into(), points: queue }])?;
    let teams: Vec<Series> = out
        .teams
        .iter()
        .enumerate()
        .map(|(i, name)| Series {
            name: name.to_string(),
            points: out.samples.iter().map(|s| (days(s.t_ms), f64::from(s.team_busy[i]) / devices)).collect(),
        })
        .collect();
    lines(&dir.join("team_share.svg"), "Share of the cluster per team", "days", "share of all GPUs", &teams)?;
    jct_plot(&dir.join("jct_cdf.svg"), &[report])
}

/// The JCT CDF of several runs, one line per policy.
pub fn jct_plot(path: &Path, reports: &[&Report]) -> Result<(), SimError> {
    let series: Vec<Series> =
        reports.iter().map(|r| Series { name: r.summary.policy.clone(), points: jct_cdf(&r.output.records) }).collect();
    lines(path, "Job completion time (CDF)", "JCT (hours)", "fraction of jobs", &series)
}

/// A sweep's p95 wait (hours) and utilization per step.
pub fn sweep_plot(path: &Path, what: &str, steps: &[(f64, f64, f64)]) -> Result<(), SimError> {
    let wait = Series { name: "p95 wait (h)".into(), points: steps.iter().map(|&(x, w, _)| (x, w / 3600.0)).collect() };
    let util =
        Series { name: "utilization x 10".into(), points: steps.iter().map(|&(x, _, u)| (x, u * 10.0)).collect() };
    lines(path, &format!("Sweep of {what}"), what, "p95 wait (h) / utilization x 10", &[wait, util])
}
