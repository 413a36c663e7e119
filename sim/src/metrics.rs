//! What a run measured: one record per job, a time series, and the summary (`summary.json`).

use crate::engine::RunOutput;
use crate::teams::TeamLookup;
use crate::trace::TraceJob;
use qm_core::TeamId;
use serde::Serialize;

/// One job's life in the simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// Its line in the trace.
    pub line: usize,
    /// Its team.
    pub team: TeamId,
    /// GPUs.
    pub gpus: u32,
    /// Submission, ms.
    pub submit_ms: u64,
    /// Work, ms.
    pub duration_ms: u64,
    /// First start, ms.
    pub start_ms: Option<u64>,
    /// End, ms.
    pub end_ms: Option<u64>,
    /// Whether it ended by completing its work.
    pub completed: bool,
    /// Times preempted.
    pub preemptions: u32,
    /// GPU-ms held between a preemption signal and the exit.
    pub lost_to_preemption_gpu_ms: u64,
    /// GPU-ms of work lost with failed nodes.
    pub lost_to_failures_gpu_ms: u64,
}

impl JobRecord {
    /// The record of a job that has not arrived yet.
    pub fn new(j: &TraceJob) -> Self {
        Self {
            line: j.line,
            team: j.team.clone(),
            gpus: j.gpus,
            submit_ms: j.submit_ms,
            duration_ms: j.duration_ms,
            start_ms: None,
            end_ms: None,
            completed: false,
            preemptions: 0,
            lost_to_preemption_gpu_ms: 0,
            lost_to_failures_gpu_ms: 0,
        }
    }

    /// Wait before the first start, s.
    pub fn wait_s(&self) -> Option<f64> {
        self.start_ms.map(|s| (s - self.submit_ms) as f64 / 1000.0)
    }

    /// Job completion time (submit to end), s.
    pub fn jct_s(&self) -> Option<f64> {
        self.end_ms.filter(|_| self.completed).map(|e| (e - self.submit_ms) as f64 / 1000.0)
    }
}

/// The cluster at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When, ms.
    pub t_ms: u64,
    /// Devices held.
    pub busy: u64,
    /// Jobs waiting.
    pub queued: u64,
    /// Devices held per team, in `RunOutput::teams` order.
    pub team_busy: Vec<u32>,
}

/// One team's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamSummary {
    /// The team.
    pub team: String,
    /// Jobs simulated.
    pub jobs: usize,
    /// GPU-hours of work done.
    pub gpu_hours: f64,
    /// Share of all GPU-hours done.
    pub share: f64,
    /// Devices its nominal quota guarantees (over all flavors).
    pub nominal_devices: u64,
    /// Share of the cluster its nominal quota guarantees.
    pub nominal_share: f64,
    /// Mean wait, s.
    pub avg_wait_s: f64,
    /// 95th percentile wait, s.
    pub p95_wait_s: f64,
    /// Mean of duration / JCT over its completed jobs (1 = no waiting).
    pub speed: f64,
}

/// The summary of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The policy.
    pub policy: String,
    /// `nodes` or `pool`.
    pub placement: String,
    /// The seed.
    pub seed: u64,
    /// How the teams' quotas were set.
    pub teams_from: String,
    /// Jobs simulated.
    pub jobs: usize,
    /// Jobs that completed.
    pub jobs_completed: usize,
    /// Jobs left out because they can never fit the cluster.
    pub jobs_unfit: usize,
    /// Malformed trace lines skipped.
    pub lines_skipped: usize,
    /// Mean job completion time, s.
    pub avg_jct_s: f64,
    /// Median JCT, s.
    pub p50_jct_s: f64,
    /// 95th percentile JCT, s.
    pub p95_jct_s: f64,
    /// 99th percentile JCT, s.
    pub p99_jct_s: f64,
    /// Mean wait, s.
    pub avg_wait_s: f64,
    /// 95th percentile wait, s.
    pub p95_wait_s: f64,
    /// First submission to last end, s.
    pub makespan_s: f64,
    /// GPU-seconds of work over (devices x makespan).
    pub gpu_utilization: f64,
    /// Preemptions.
    pub preemptions: u64,
    /// GPU-hours held by jobs between their preemption signal and their exit.
    pub gpu_hours_lost_to_preemption: f64,
    /// GPU-hours of work lost with failed nodes.
    pub gpu_hours_lost_to_failures: f64,
    /// Jain's index over teams of their mean speed (duration / JCT of completed jobs, 1 when
    /// nobody waits): 1 when every team's jobs are slowed down alike.
    pub jain_fairness: f64,
    /// Per team.
    pub teams: Vec<TeamSummary>,
    /// Events handled.
    pub events: u64,
    /// Scheduling cycles run.
    pub cycles: u64,
}

/// The value at percentile `p` (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sorts times (waits, JCTs: never negative, never NaN), in linear time: a radix sort by the
/// bits (`radsort`), whose order on such values is `total_cmp`'s, and values equal under it are
/// the same bits, so the sequence is the one a comparison sort gives (the summary sorts every
/// job's times three times, the JCT plot once more).
pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    radsort::sort(&mut v);
    v
}

/// Jain's fairness index of `x`: (sum x)^2 / (n sum x^2).
pub fn jain(x: &[f64]) -> f64 {
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        return 1.0;
    }
    let s: f64 = x.iter().sum();
    s * s / (x.len() as f64 * sq)
}

/// Team `i`'s summary, from its records (`mine`).
fn team_summary(out: &RunOutput, i: usize, mine: &[&JobRecord], total_gpu_ms: f64) -> TeamSummary {
    let name = &out.teams[i];
    let work: f64 = mine.iter().filter(|r| r.completed).map(|r| r.duration_ms as f64 * f64::from(r.gpus)).sum();
    let waits = sorted(mine.iter().filter_map(|r| r.wait_s()).collect());
    let speeds: Vec<f64> =
        mine.iter().filter_map(|r| r.jct_s().map(|jct| (r.duration_ms as f64 / 1000.0) / jct.max(1e-9))).collect();
    TeamSummary {
        speed: mean(&speeds),
        team: name.to_string(),
        jobs: mine.len(),
        gpu_hours: work / 3_600_000.0,
        share: if total_gpu_ms > 0.0 { work / total_gpu_ms } else { 0.0 },
        nominal_devices: out.nominal[i],
        nominal_share: out.nominal[i] as f64 / out.devices.max(1) as f64,
        avg_wait_s: mean(&waits),
        p95_wait_s: percentile(&waits, 95.0),
    }
}

/// Summarizes a run. `header` carries the policy, placement, seed, team origin, unfit and
/// skipped counts.
pub fn summarize(out: &RunOutput, header: Summary) -> Summary {
    let records = &out.records;
    let jcts = sorted(records.iter().filter_map(JobRecord::jct_s).collect());
    let waits = sorted(records.iter().filter_map(JobRecord::wait_s).collect());
    let first = records.iter().map(|r| r.submit_ms).min().unwrap_or(0);
    let last = records.iter().filter_map(|r| r.end_ms).max().unwrap_or(first);
    let makespan_s = (last - first) as f64 / 1000.0;
    let work_ms: f64 = records.iter().filter(|r| r.completed).map(|r| r.duration_ms as f64 * f64::from(r.gpus)).sum();
    let mut by_team: Vec<Vec<&JobRecord>> = vec![Vec::new(); out.teams.len()];
    let mut lookup = TeamLookup::new(out.teams.iter().map(TeamId::as_str));
    for r in records {
        if let Some(t) = lookup.position(&r.team) {
            by_team[t].push(r);
        }
    }
    let teams: Vec<TeamSummary> =
        by_team.iter().enumerate().map(|(i, mine)| team_summary(out, i, mine, work_ms)).collect();
    let speeds: Vec<f64> = teams.iter().filter(|t| t.jobs > 0).map(|t| t.speed).collect();
    Summary {
        jobs: records.len(),
        jobs_completed: records.iter().filter(|r| r.completed).count(),
        avg_jct_s: mean(&jcts),
        p50_jct_s: percentile(&jcts, 50.0),
        p95_jct_s: percentile(&jcts, 95.0),
        p99_jct_s: percentile(&jcts, 99.0),
        avg_wait_s: mean(&waits),
        p95_wait_s: percentile(&waits, 95.0),
        makespan_s,
        gpu_utilization: if makespan_s > 0.0 { work_ms / 1000.0 / (out.devices as f64 * makespan_s) } else { 0.0 },
        preemptions: records.iter().map(|r| u64::from(r.preemptions)).sum(),
        gpu_hours_lost_to_preemption: records.iter().map(|r| r.lost_to_preemption_gpu_ms as f64).sum::<f64>()
            / 3_600_000.0,
        gpu_hours_lost_to_failures: records.iter().map(|r| r.lost_to_failures_gpu_ms as f64).sum::<f64>() / 3_600_000.0,
        jain_fairness: jain(&speeds),
        teams,
        events: out.events,
        cycles: out.cycles,
        ..header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    proptest::proptest! {
        #[test]
        fn times_sort_as_a_comparison_sort_orders_them(
            ms in proptest::collection::vec(proptest::prop_oneof![0u64..5, 0u64..u64::MAX >> 11], 0..300),
        ) {
            let times: Vec<f64> = ms.iter().map(|&m| m as f64 / 1000.0).collect();
            let mut expected = times.clone();
            expected.sort_by(f64::total_cmp);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&sorted(times)), bits(&expected));
        }
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[3.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-12);
    }
}
