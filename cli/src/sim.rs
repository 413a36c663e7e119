//! `qm sim run | compare | sweep`: replay a workload through the production policy and the
//! baselines, and write tables, `summary.json`, `jobs.csv` and SVG plots.

use crate::out::say;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use qm_sim::cluster::Cluster;
use qm_sim::engine::{FailureModel, RunConfig};
use qm_sim::metrics::Summary;
use qm_sim::policy::{Placement, Policy};
use qm_sim::trace::synthetic::Synthetic;
use qm_sim::trace::{self, Format, TraceJob};
use qm_sim::{output, plots, Report};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The simulator's commands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// One policy on one cluster and one workload.
    Run {
        #[command(flatten)]
        common: Common,
        /// default (the production policy), strict-fifo, backfill, sjf or las.
        #[arg(long, default_value = "default")]
        policy: String,
    },
    /// Several policies on the same workload: one table side by side and shared plots.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Policies to compare (repeat the flag); all of them when absent.
        #[arg(long)]
        policy: Vec<String>,
        #[command(flatten)]
        threads: Threads,
    },
    /// Vary a node pool's size or a team's nominal quota over a range; report p95 wait and
    /// utilization per step, and plot them.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// The policy.
        #[arg(long, default_value = "default")]
        policy: String,
        /// `pool:NAME=FROM..TO[:STEP]` (an `NxG` cluster's pool is `node`) or
        /// `quota:TEAM=FROM..TO[:STEP]`.
        #[arg(long)]
        vary: String,
        /// The p95 wait the planner aims at, in hours: drawn on the plot, and the table marks
        /// the steps that meet it.
        #[arg(long, default_value_t = 1.0)]
        target_p95_wait_h: f64,
        #[command(flatten)]
        threads: Threads,
    },
}

/// How many of a command's runs go at once.
#[derive(Debug, Args)]
pub struct Threads {
    /// Runs at once, one per thread; as many as this machine has CPUs when absent. The outputs
    /// do not depend on it.
    #[arg(long)]
    threads: Option<NonZeroUsize>,
}

/// What every simulator command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// `NxG` (N nodes of G GPUs) or a cluster file (TOML: pools, optional teams and policy).
    #[arg(long)]
    cluster: String,
    /// The workload: a trace file, or a synthetic spec (TOML) with `--format synthetic`.
    #[arg(long)]
    trace: PathBuf,
    /// philly, tiresias, gavel, swf or synthetic.
    #[arg(long)]
    format: String,
    /// Replay only these teams' jobs (repeat the flag).
    #[arg(long)]
    team: Vec<String>,
    /// nodes (real node boundaries) or pool (free GPUs counted cluster-wide).
    #[arg(long, default_value = "nodes")]
    placement: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for summary.json, jobs.csv and the plots.
    #[arg(long)]
    out: PathBuf,
    /// Skip malformed trace lines (they are counted) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// A scheduling cycle also runs this often while jobs wait, in seconds.
    #[arg(long, default_value_t = 60)]
    interval_s: u64,
    /// Grace period of preempted jobs, in seconds.
    #[arg(long, default_value_t = 30)]
    grace_s: u64,
    /// Mean time between failures of one node, in seconds; no failures when absent.
    #[arg(long)]
    mtbf_s: Option<f64>,
    /// Time to repair a failed node, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    repair_s: f64,
    /// Check the invariants after every event (slower).
    #[arg(long)]
    check: bool,
    /// Print the summaries as JSON (as in summary.json) instead of tables.
    #[arg(long)]
    json: bool,
}

struct Loaded {
    cluster: Cluster,
    jobs: Vec<TraceJob>,
    skipped: usize,
    placement: Placement,
}

fn load(c: &Common) -> Result<Loaded> {
    let cluster = Cluster::load(&c.cluster).map_err(anyhow::Error::msg).context("--cluster")?;
    let capacity = cluster.capacity();
    let devices = |f: &qm_core::Flavor| u64::from(capacity.get(f).copied().unwrap_or(0));
    for (flavor, nominal, capacity) in qm_core::quota::overcommitted(&cluster.teams, devices) {
        eprintln!("qm: warning: {}", qm_core::render::overcommitted(&flavor, nominal, capacity));
    }
    let placement: Placement = c.placement.parse().map_err(anyhow::Error::msg).context("--placement")?;
    let (mut jobs, skipped) = if c.format == "synthetic" {
        let text = std::fs::read_to_string(&c.trace).with_context(|| format!("reading {}", c.trace.display()))?;
        let spec: Synthetic = toml::from_str(&text).with_context(|| format!("parsing {}", c.trace.display()))?;
        (spec.generate(c.seed).map_err(anyhow::Error::msg).with_context(|| c.trace.display().to_string())?, 0)
    } else {
        let format: Format = c.format.parse().map_err(anyhow::Error::msg).context("--format")?;
        let t = trace::read(&c.trace, format, c.skip_bad)?;
        for bad in t.skipped.iter().take(5) {
            eprintln!("qm: skipped {bad}");
        }
        (t.jobs, t.skipped.len())
    };
    if !c.team.is_empty() {
        let known: BTreeSet<&str> = jobs.iter().map(|j| j.team.as_str()).collect();
        if let Some(missing) = c.team.iter().find(|t| !known.contains(t.as_str())) {
            bail!("--team {missing}: no job of that team in {}", c.trace.display());
        }
        jobs.retain(|j| c.team.iter().any(|t| t.as_str() == j.team.as_str()));
        jobs = trace::rebase(jobs);
    }
    if jobs.is_empty() {
        bail!("{}: no jobs to simulate", c.trace.display());
    }
    Ok(Loaded { cluster, jobs, skipped, placement })
}

fn config(c: &Common, policy: Policy, placement: Placement) -> RunConfig {
    RunConfig {
        policy,
        placement,
        seed: c.seed,
        interval_ms: c.interval_s.max(1) * 1000,
        grace_ms: c.grace_s * 1000,
        check: c.check,
        failures: c.mtbf_s.map(|mtbf_s| FailureModel { mtbf_s, repair_s: c.repair_s }),
        ..RunConfig::default()
    }
}

/// A progress bar that appears on `bars` (the terminal's, when there is one) once a run has
/// taken a second.
fn progress(label: &str, bars: &MultiProgress) -> impl FnMut(u64, u64) {
    let started = Instant::now();
    let bar = ProgressBar::hidden();
    let (terminal, mut shown) = (std::io::stderr().is_terminal(), false);
    let (label, bars) = (label.to_owned(), bars.clone());
    move |done, total| {
        if terminal && !shown && started.elapsed() > Duration::from_secs(1) {
            shown = true;
            bars.add(bar.clone());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} jobs ended").expect("valid template"),
            );
            bar.set_message(label.clone());
        }
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn simulate(l: &Loaded, cluster: &Cluster, config: &RunConfig, label: &str, bars: &MultiProgress) -> Result<Report> {
    let report = qm_sim::simulate(cluster, l.jobs.clone(), l.skipped, config, progress(label, bars));
    report.map_err(|e| match e {
        qm_sim::SimError::Invariant { .. } => {
            let args: Vec<String> = std::env::args().collect();
            anyhow::anyhow!("{e}\nreproduce with: {} --check --seed {}", args.join(" "), config.seed)
        }
        e => e.into(),
    })
}

/// `run` on every item, `threads` at a time, with the results in item order. Of several
/// errors, the first in item order is returned, so what is reported does not depend on timing.
fn each<T: Sync, R: Send>(
    items: &[T],
    threads: &Threads,
    run: impl Fn(&T) -> Result<R> + Send + Sync,
) -> Result<Vec<R>> {
    let cpus = || std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let threads = threads.threads.map_or_else(cpus, NonZeroUsize::get).min(items.len()).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("starting the run threads")?;
    pool.install(|| items.par_iter().map(run).collect::<Vec<_>>()).into_iter().collect()
}

impl SimCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Self::Run { common, .. } | Self::Compare { common, .. } | Self::Sweep { common, .. } => common.json,
        }
    }
}

/// Runs `qm sim ...`; `--json` prints what the tables say as JSON instead (summaries as in
/// `summary.json`), and nothing else.
pub fn run(cmd: &SimCommand) -> Result<()> {
    let json = cmd.json();
    match cmd {
        SimCommand::Run { common, policy } => {
            let policy: Policy = policy.parse().map_err(anyhow::Error::msg).context("--policy")?;
            let l = load(common)?;
            let report =
                simulate(&l, &l.cluster, &config(common, policy, l.placement), policy.name(), &MultiProgress::new())?;
            write_one(&common.out, &report, common)?;
            if json {
                return print_json(&report.summary);
            }
            crate::out::write(format_args!("{}", output::table(&report.summary)));
            print_unfit(&report);
            say!("wrote {}", common.out.display());
            Ok(())
        }
        SimCommand::Compare { common, policy, threads } => compare(common, policy, threads, json),
        SimCommand::Sweep { common, policy, vary, threads, target_p95_wait_h } => {
            sweep(common, policy, vary, threads, *target_p95_wait_h, json)
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn write_one(dir: &Path, report: &Report, common: &Common) -> Result<()> {
    output::write_run(dir, report)?;
    plots::run_plots(dir, report, &plot_context(common))?;
    Ok(())
}

/// What the plots' titles say of the inputs: the cluster and the trace by file name.
fn plot_context(c: &Common) -> plots::Context {
    let name = |s: &str| Path::new(s).file_name().map_or_else(|| s.to_owned(), |n| n.to_string_lossy().into_owned());
    plots::Context { cluster: name(&c.cluster), trace: name(&c.trace.to_string_lossy()) }
}

fn print_unfit(report: &Report) {
    for u in report.unfit.iter().take(5) {
        say!("never fits, left out: trace line {} (team {}): {}", u.job.line, u.job.team, u.reason);
    }
    if report.unfit.len() > 5 {
        say!("... and {} more (see jobs.csv)", report.unfit.len() - 5);
    }
}

fn compare(common: &Common, names: &[String], threads: &Threads, json: bool) -> Result<()> {
    let policies: Vec<Policy> = if names.is_empty() {
        Policy::ALL.to_vec()
    } else {
        names.iter().map(|p| p.parse().map_err(anyhow::Error::msg).context("--policy")).collect::<Result<_>>()?
    };
    let l = load(common)?;
    let bars = MultiProgress::new();
    let reports = each(&policies, threads, |&p| {
        let report = simulate(&l, &l.cluster, &config(common, p, l.placement), p.name(), &bars)?;
        write_one(&common.out.join(p.name()), &report, common)?;
        Ok(report)
    })?;
    let refs: Vec<&Report> = reports.iter().collect();
    plots::jct_plot(&common.out.join("jct_cdf.svg"), &refs, &plot_context(common))?;
    let summaries: Vec<_> = reports.iter().map(|r| r.summary.clone()).collect();
    let table = output::comparison(&summaries);
    std::fs::write(common.out.join("comparison.txt"), &table).context("writing comparison.txt")?;
    if json {
        return print_json(&summaries);
    }
    crate::out::write(format_args!("{table}"));
    say!("wrote {}", common.out.display());
    Ok(())
}

/// A parsed `--vary`.
struct Vary {
    kind: String,
    name: String,
    steps: Vec<u32>,
}

fn parse_vary(spec: &str) -> Result<Vary> {
    let bad = || anyhow::anyhow!("--vary {spec:?}: expected pool:NAME=FROM..TO[:STEP] or quota:TEAM=FROM..TO[:STEP]");
    let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
    let (name, range) = rest.split_once('=').ok_or_else(bad)?;
    let (range, step) = range.split_once(':').unwrap_or((range, "1"));
    let (from, to) = range.split_once("..").ok_or_else(bad)?;
    let (from, to, step): (u32, u32, u32) =
        (from.parse().map_err(|_| bad())?, to.parse().map_err(|_| bad())?, step.parse().map_err(|_| bad())?);
    if !matches!(kind, "pool" | "quota") || step == 0 || from > to || (to - from) / step >= 100 {
        bail!("--vary {spec:?}: kind pool or quota, FROM <= TO, STEP >= 1, at most 100 steps");
    }
    Ok(Vary { kind: kind.to_owned(), name: name.to_owned(), steps: (from..=to).step_by(step as usize).collect() })
}

/// One step of a sweep, as `--json` prints it.
#[derive(Serialize)]
struct Step<'a> {
    vary: &'a str,
    name: &'a str,
    step: u32,
    summary: &'a Summary,
}

fn sweep(common: &Common, policy: &str, vary: &str, threads: &Threads, target_wait_h: f64, json: bool) -> Result<()> {
    if !(target_wait_h.is_finite() && target_wait_h >= 0.0) {
        bail!("--target-p95-wait-h: {target_wait_h} is not a number of hours");
    }
    let policy: Policy = policy.parse().map_err(anyhow::Error::msg).context("--policy")?;
    let v = parse_vary(vary)?;
    let l = load(common)?;
    let teams = qm_sim::team_names(&l.jobs);
    let bars = MultiProgress::new();
    let summaries = each(&v.steps, threads, |&step| {
        let cluster = match v.kind.as_str() {
            "pool" => l.cluster.with_pool_size(&v.name, step),
            _ => l.cluster.with_nominal(&teams, &v.name, step),
        }
        .map_err(anyhow::Error::msg)
        .context("--vary")?;
        let label = format!("{} {step}", v.kind);
        let report = simulate(&l, &cluster, &config(common, policy, l.placement), &label, &bars)?;
        output::write_run(&common.out.join(format!("{}-{step}", v.kind)), &report)?;
        Ok(report.summary)
    })?;
    let mut table = format!(
        "{:>8} {:>10} {:>14} {:>12} {:>10}  meets p95 wait <= {target_wait_h} h\n",
        v.kind, "completed", "p95 wait (h)", "avg JCT (h)", "util"
    );
    let mut rows = Vec::new();
    for (&step, s) in v.steps.iter().zip(&summaries) {
        table += &format!(
            "{step:>8} {:>10} {:>14.2} {:>12.2} {:>10.3}  {}\n",
            s.jobs_completed,
            s.p95_wait_s / 3600.0,
            s.avg_jct_s / 3600.0,
            s.gpu_utilization,
            if s.p95_wait_s <= target_wait_h * 3600.0 { "yes" } else { "no" }
        );
        rows.push((step, s.p95_wait_s, s.gpu_utilization));
    }
    std::fs::create_dir_all(&common.out)?;
    let what = match v.kind.as_str() {
        "pool" => format!("nodes in pool {}", v.name),
        _ => format!("nominal quota of team {}", v.name),
    };
    let plot = common.out.join("sweep.svg");
    plots::sweep_plot(&plot, &what, policy.name(), &rows, target_wait_h, &plot_context(common))?;
    std::fs::write(common.out.join("sweep.txt"), &table)?;
    if json {
        let steps = v.steps.iter().zip(&summaries);
        let (vary, name) = (v.kind.as_str(), v.name.as_str());
        return print_json(&steps.map(|(&step, summary)| Step { vary, name, step, summary }).collect::<Vec<_>>());
    }
    crate::out::write(format_args!("{table}"));
    say!("wrote {}", common.out.display());
    Ok(())
}
