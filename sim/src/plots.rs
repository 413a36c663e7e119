//! SVG plots of runs (with `plotters`), each titled with what it shows and the policy, cluster
//! and trace it comes from: utilization and queue length over time; each team's share of the
//! cluster against its nominal share, one small panel per team; the JCT CDF of one or several
//! policies on a logarithmic time axis; and a sweep's p95 wait and utilization per step, one
//! panel per unit, with the wait target.

use crate::metrics::JobRecord;
use crate::{Report, SimError};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Where a plot's data comes from, for its title: `policy default | cluster X | trace Y`.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The cluster: a file name or `NxG`.
    pub cluster: String,
    /// The workload: the trace file's name.
    pub trace: String,
}

impl Context {
    fn title(&self, what: &str, policy: &str) -> String {
        format!("{what} | policy {policy} | cluster {} | trace {}", self.cluster, self.trace)
    }
}

/// One line of a plot.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Twenty distinguishable colours (Tableau 20, dark and light in turn).
const COLORS: [RGBColor; 20] = [
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
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) }
}

/// The smallest and largest x and the largest y of some points (x range never empty).
fn bounds<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (f64, f64, f64) {
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return (0.0, 1.0, 1.0);
    }
    (x0, if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > 0.0 { y1 } else { 1.0 })
}

/// A chart of lines over time (days) in one drawing area.
fn time_lines(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    path: &Path,
    title: &str,
    y: &str,
    series: &[Series],
) -> Result<(), SimError> {
    let (x0, x1, y1) = bounds(series.iter().flat_map(|s| s.points.iter()));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y1 * 1.05)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("days since the first submission")
        .y_desc(y)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, s) in series.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color(i).stroke_width(2)))
            .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

fn svg<'a>(path: &'a Path, size: (u32, u32)) -> Result<DrawingArea<SVGBackend<'a>, Shift>, SimError> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    Ok(root)
}

fn days(ms: u64) -> f64 {
    ms as f64 / 86_400_000.0
}

/// Writes `utilization.svg`, `queue.svg`, `team_share.svg` and `jct_cdf.svg` of one run.
pub fn run_plots(dir: &Path, report: &Report, ctx: &Context) -> Result<(), SimError> {
    let out = &report.output;
    let policy = &report.summary.policy;
    let devices = out.devices.max(1) as f64;
    let util = out.samples.iter().map(|s| (days(s.t_ms), s.busy as f64 / devices)).collect();
    let path = dir.join("utilization.svg");
    let root = svg(&path, (1000, 520))?;
    let title = ctx.title("Devices busy", policy);
    time_lines(&root, &path, &title, "busy / all devices", &[Series { name: "busy".into(), points: util }])?;
    root.present().map_err(|e| plot_err(&path, e))?;
    let queue = out.samples.iter().map(|s| (days(s.t_ms), s.queued as f64)).collect();
    let path = dir.join("queue.svg");
    let root = svg(&path, (1000, 520))?;
    time_lines(
        &root,
        &path,
        &ctx.title("Jobs waiting", policy),
        "jobs",
        &[Series { name: "queue".into(), points: queue }],
    )?;
    root.present().map_err(|e| plot_err(&path, e))?;
    team_share(&dir.join("team_share.svg"), report, ctx)?;
    jct_plot(&dir.join("jct_cdf.svg"), &[report], ctx)
}

/// One small panel per team: its share of all devices over time (filled) and its nominal share
/// (dashed), on the panel's own scale, so that small teams stay readable.
fn team_share(path: &Path, report: &Report, ctx: &Context) -> Result<(), SimError> {
    let out = &report.output;
    let devices = out.devices.max(1) as f64;
    let n = out.teams.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let root = svg(path, (1400, 80 + 230 * rows as u32))?;
    let title = ctx.title("Share of all devices per team (dashed: nominal)", &report.summary.policy);
    let root = root.titled(&title, ("sans-serif", 20)).map_err(|e| plot_err(path, e))?;
    let x1 = out.samples.last().map_or(1.0, |s| days(s.t_ms).max(1e-3));
    for (i, (area, team)) in root.split_evenly((rows, cols)).iter().zip(&out.teams).enumerate() {
        let share: Vec<(f64, f64)> =
            out.samples.iter().map(|s| (days(s.t_ms), f64::from(s.team_busy[i]) / devices)).collect();
        let nominal = out.nominal.get(i).map_or(0.0, |&d| d as f64 / devices);
        let top = share.iter().map(|p| p.1).fold(nominal, f64::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{team}: nominal {} devices ({:.1}%)",
                    out.nominal.get(i).copied().unwrap_or(0),
                    nominal * 100.0
                ),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x1, 0.0..top)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_labels(4)
            .y_labels(4)
            .y_label_formatter(&|v| {
                if top < 0.03 {
                    format!("{:.1}%", v * 100.0)
                } else {
                    format!("{:.0}%", v * 100.0)
                }
            })
            .x_label_formatter(&|v| format!("{v:.0}d"))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        let c = color(i);
        chart
            .draw_series(AreaSeries::new(share, 0.0, c.mix(0.35)).border_style(c.stroke_width(1)))
            .map_err(|e| plot_err(path, e))?;
        let dashed = DashedLineSeries::new([(0.0, nominal), (x1, nominal)], 6, 4, BLACK.stroke_width(1));
        chart.draw_series(dashed).map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// A time in seconds in the unit that suits it: `45s`, `12min`, `3.5h`, `2d`.
fn human_time(s: f64) -> String {
    let (v, unit) = match s {
        s if s < 60.0 => (s, "s"),
        s if s < 3600.0 => (s / 60.0, "min"),
        s if s < 86_400.0 => (s / 3600.0, "h"),
        s => (s / 86_400.0, "d"),
    };
    if v < 10.0 && v.fract() > 0.05 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

/// Round times for a logarithmic axis up to `top` seconds: 1 s, 10 s, 1 min, 10 min, 1 h,
/// 10 h, 1 d, 10 d, 100 d.
fn time_ticks(top: f64) -> Vec<f64> {
    [1.0, 10.0, 60.0, 600.0, 3600.0, 36_000.0, 86_400.0, 864_000.0, 8_640_000.0]
        .into_iter()
        .filter(|&t| t <= top)
        .collect()
}

/// The empirical CDF of the JCTs of completed jobs, in seconds (at least one).
fn jct_cdf(records: &[JobRecord]) -> Vec<(f64, f64)> {
    let jct = crate::metrics::sorted(records.iter().filter_map(JobRecord::jct_s).map(|s| s.max(1.0)).collect());
    let n = jct.len().max(1) as f64;
    let step = (jct.len() / 500).max(1);
    jct.iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == jct.len())
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

/// The JCT CDF of several runs, one line per policy, on a logarithmic time axis (JCTs span
/// seconds to weeks).
pub fn jct_plot(path: &Path, reports: &[&Report], ctx: &Context) -> Result<(), SimError> {
    let series: Vec<Series> =
        reports.iter().map(|r| Series { name: r.summary.policy.clone(), points: jct_cdf(&r.output.records) }).collect();
    let policies: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    let (_, x1, _) = bounds(series.iter().flat_map(|s| s.points.iter()));
    let root = svg(path, (1000, 560))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(ctx.title("Job completion time (CDF)", &policies.join(", ")), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..x1 * 1.5).log_scale().with_key_points(time_ticks(x1 * 1.5)), 0.0..1.0)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("job completion time (log scale)")
        .y_desc("fraction of completed jobs")
        .x_label_formatter(&|v| human_time(*v))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(s.name.clone())
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 18, ly)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// One step of a sweep: the value varied, the p95 wait in seconds, the utilization.
pub type SweepPoint = (u32, f64, f64);

/// A sweep's p95 wait (hours, with the target) and utilization per step, one panel each, with
/// a marker on every step and the steps as integer ticks.
pub fn sweep_plot(
    path: &Path,
    what: &str,
    policy: &str,
    steps: &[SweepPoint],
    target_wait_h: f64,
    ctx: &Context,
) -> Result<(), SimError> {
    let root = svg(path, (1000, 760))?;
    let root = root
        .titled(&ctx.title(&format!("Sweep of {what}"), policy), ("sans-serif", 18))
        .map_err(|e| plot_err(path, e))?;
    let panels = root.split_evenly((2, 1));
    let (lo, hi) = (steps.iter().map(|s| s.0).min().unwrap_or(0), steps.iter().map(|s| s.0).max().unwrap_or(1));
    let pad = ((hi - lo) / 20).max(1);
    let x = lo.saturating_sub(pad)..hi + pad;
    let wait: Vec<(u32, f64)> = steps.iter().map(|&(s, w, _)| (s, w / 3600.0)).collect();
    let util: Vec<(u32, f64)> = steps.iter().map(|&(s, _, u)| (s, u)).collect();
    let wait_top = wait.iter().map(|p| p.1).fold(target_wait_h, f64::max) * 1.15;
    let panel = |area: &DrawingArea<SVGBackend<'_>, Shift>,
                 y: &str,
                 top: f64,
                 points: &[(u32, f64)],
                 c: RGBColor,
                 target: Option<f64>|
     -> Result<(), SimError> {
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x.clone(), 0.0..top.max(1e-6))
            .map_err(|e| plot_err(path, e))?;
        let ticks = (hi - lo + 2 * pad + 1).min(12) as usize;
        chart
            .configure_mesh()
            .x_desc(what)
            .y_desc(y)
            .x_labels(ticks)
            .x_label_formatter(&|v| v.to_string())
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2))).map_err(|e| plot_err(path, e))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, c.filled()))).map_err(|e| plot_err(path, e))?;
        if let Some(t) = target {
            let line = DashedLineSeries::new([(x.start, t), (x.end, t)], 8, 5, RED.stroke_width(2));
            chart
                .draw_series(line)
                .map_err(|e| plot_err(path, e))?
                .label(format!("target p95 wait {}", human_time(t * 3600.0)))
                .legend(|(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 18, ly)], RED.stroke_width(2)));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        Ok(())
    };
    panel(&panels[0], "p95 wait (hours)", wait_top, &wait, color(0), Some(target_wait_h))?;
    panel(&panels[1], "device utilization", 1.0, &util, color(1), None)?;
    root.present().map_err(|e| plot_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::human_time;

    #[test]
    fn times_read_in_the_unit_that_suits_them() {
        let cases = [
            (1.0, "1s"),
            (100.0, "1.7min"),
            (1000.0, "17min"),
            (10_000.0, "2.8h"),
            (1e5, "1.2d"),
            (1e6, "12d"),
            (60.0, "1min"),
            (86_400.0, "1d"),
        ];
        for (s, want) in cases {
            assert_eq!(human_time(s), want, "{s} s");
        }
    }
}
