//! The discrete-event simulator (`qm sim`): replays real or synthetic workloads through the
//! production policy (`qm_core::schedule` and `State::apply`, the code the replicas run) in
//! virtual time, seeded, with the invariants checked after every event in tests.
//!
//! Module map:
//! - [`trace`]: readers for Philly, Tiresias, Gavel and SWF traces, and the synthetic generator.
//! - [`cluster`]: `--cluster NxG` or a cluster file (node pools, teams, policy knobs).
//! - [`policy`]: the production policy and the baselines; node or pool placement.
//! - [`engine`]: the event loop.
//! - `check` (private): the invariants checked after every event.
//! - [`metrics`]: per-job records, the time series, the summary.
//! - [`output`]: `jobs.csv`, `summary.json`, the summary table, the comparison table.
//! - [`plots`]: the SVG plots.
//! - `teams` (private): a job's team among the run's names, remembered per shared name.

pub mod cluster;
pub mod engine;
pub mod metrics;
pub mod output;
pub mod plots;
pub mod policy;
pub mod trace;

mod check;
mod teams;

use cluster::Cluster;
use engine::{RunConfig, RunOutput, Sim};
use metrics::{summarize, Summary};
use std::collections::BTreeSet;
use teams::TeamLookup;
use thiserror::Error;
use trace::TraceJob;

/// Why a simulation could not run or stopped.
#[derive(Debug, Error)]
pub enum SimError {
    /// A trace line is malformed.
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    /// The cluster, teams or options are wrong.
    #[error("{0}")]
    Config(String),
    /// The trace names a team the cluster file does not have.
    #[error("trace line {line}: team {team:?} is not in the cluster file's teams")]
    UnknownTeam {
        /// The team.
        team: String,
        /// The first line naming it.
        line: usize,
    },
    /// The state machine refused a command the simulator built (a bug).
    #[error("the state machine refused a simulated command: {0}")]
    Apply(#[from] qm_core::ApplyError),
    /// An invariant broke (a bug); the seed reproduces it.
    #[error("invariant broken at t = {at_ms} ms (seed {seed}): {reason}")]
    Invariant {
        /// What broke.
        reason: String,
        /// When, virtual ms.
        at_ms: u64,
        /// The seed of the run.
        seed: u64,
    },
    /// Writing outputs failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A job left out of a run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    /// The trace job.
    pub job: TraceJob,
    /// Why it can never run.
    pub reason: String,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The summary.
    pub summary: Summary,
    /// Records, time series, counters.
    pub output: RunOutput,
    /// Jobs that can never fit.
    pub unfit: Vec<Unfit>,
}

/// Why a job can never run on this cluster, if it cannot. `room[c]` is how many replicas of `c`
/// devices the whole cluster holds (computed once per run, not once per job).
fn unfit_reason(
    job: &TraceJob,
    room: &[u64],
    per_node: u32,
    config: &RunConfig,
    ceilings: &[u64],
    lookup: &mut TeamLookup,
) -> Option<String> {
    let (replicas, count) = config.placement.gang(job.gpus, per_node);
    let room = room.get(count as usize).copied().unwrap_or(0);
    if u64::from(replicas) > room {
        return Some(format!(
            "{} GPUs as {replicas} x {count}: the cluster holds at most {room} such replicas",
            job.gpus
        ));
    }
    let ceiling = ceilings[lookup.position(&job.team)?];
    (u64::from(job.gpus) > ceiling)
        .then(|| format!("{} GPUs: above team {}'s nominal + borrowing limit ({ceiling})", job.gpus, job.team))
}

/// The teams of `jobs`, in name order, each once.
pub fn team_names(jobs: &[TraceJob]) -> Vec<String> {
    teams::distinct(jobs.iter().map(|j| &j.team))
}

/// Simulates `jobs` on `cluster`. `skipped` is the number of malformed lines left out upstream;
/// `progress` hears (jobs ended, jobs) now and then.
pub fn simulate(
    cluster: &Cluster,
    jobs: Vec<TraceJob>,
    skipped: usize,
    config: &RunConfig,
    progress: impl FnMut(u64, u64),
) -> Result<Report, SimError> {
    let names = team_names(&jobs);
    if !cluster.teams.is_empty() {
        let known: BTreeSet<&str> = cluster.teams.iter().map(|t| t.name.as_str()).collect();
        if let Some(j) = jobs.iter().find(|j| !known.contains(j.team.as_str())) {
            return Err(SimError::UnknownTeam { team: j.team.to_string(), line: j.line });
        }
    }
    let teams = cluster.teams_for(&names);
    // Each team's most devices of any flavor (nominal + borrowing), in the order of `teams`.
    let ceilings: Vec<u64> = teams
        .iter()
        .map(|t| t.quotas.values().map(|q| q.ceiling().min(u64::from(u32::MAX))).max().unwrap_or(0))
        .collect();
    let mut lookup = TeamLookup::new(teams.iter().map(|t| t.name.as_str()));
    let per_node = cluster.max_devices_per_node();
    let room: Vec<u64> = (0..=u64::from(per_node))
        .map(|c| if c == 0 { 0 } else { cluster.nodes.iter().map(|(n, _)| n.devices.len() as u64 / c).sum() })
        .collect();
    let (mut fit, mut unfit) = (Vec::with_capacity(jobs.len()), Vec::new());
    for job in jobs {
        match unfit_reason(&job, &room, per_node, config, &ceilings, &mut lookup) {
            None => fit.push(job),
            Some(reason) => unfit.push(Unfit { job, reason }),
        }
    }
    let output = Sim::new(cluster, &fit, teams, config)?.run(progress)?;
    let teams_from = if cluster.teams.is_empty() {
        format!(
            "equal shares: {} team(s) found in the trace, nominal = cluster / teams, borrowing unlimited, weight 1",
            names.len()
        )
    } else {
        "the cluster file".to_owned()
    };
    let header = Summary {
        policy: config.policy.to_string(),
        placement: format!("{:?}", config.placement).to_lowercase(),
        seed: config.seed,
        teams_from,
        jobs: 0,
        jobs_completed: 0,
        jobs_unfit: unfit.len(),
        lines_skipped: skipped,
        avg_jct_s: 0.0,
        p50_jct_s: 0.0,
        p95_jct_s: 0.0,
        p99_jct_s: 0.0,
        avg_wait_s: 0.0,
        p95_wait_s: 0.0,
        makespan_s: 0.0,
        gpu_utilization: 0.0,
        preemptions: 0,
        gpu_hours_lost_to_preemption: 0.0,
        gpu_hours_lost_to_failures: 0.0,
        jain_fairness: 0.0,
        teams: vec![],
        events: 0,
        cycles: 0,
    };
    Ok(Report { summary: summarize(&output, header), output, unfit })
}
