//! Property tests of the victim sets, against a brute-force oracle: on random clusters, with one
//! job waiting, every chosen victim set is minimal (no victim can be left out and the preemptor
//! still fit), and a reclaim pushes a victim's team under its nominal only when no victim set
//! that keeps every victim team at its nominal exists.

use crate::command::Command;
use crate::ids::{JobId, TeamId};
use crate::job::JobState;
use crate::plan::Plan;
use crate::policy::PolicyConfig;
use crate::resource::Flavor;
use crate::schedule;
use crate::state::State;
use crate::testkit::{cluster, cycle as testkit_cycle, job};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The state with only what runs: pending jobs cancelled, stopping jobs gone.
fn settle(mut s: State, now: u64) -> State {
    let ids: Vec<(JobId, JobState)> = s.jobs().values().map(|j| (j.id, j.state)).collect();
    for (job, state) in ids {
        let cmd = match state {
            JobState::Pending => Command::Cancel { job, at_ms: now },
            JobState::Preempted | JobState::Stopping => Command::JobFinished { job, attempt: None, at_ms: now },
            _ => continue,
        };
        s.apply(cmd).unwrap();
    }
    s
}

/// Whether `id`, the only pending job, is placed once the jobs of `set` have exited, without
/// preemption and without borrowing (the search lets nobody preempt in order to borrow).
fn fits_after(s: &State, set: &[JobId], id: JobId, now: u64) -> bool {
    let mut s = s.clone();
    for &job in set {
        s.apply(Command::JobFinished { job, attempt: None, at_ms: now }).unwrap();
    }
    let policy =
        PolicyConfig { reclaim: false, within_team_preemption: false, borrowing: false, ..PolicyConfig::default() };
    schedule(&s, &policy, now).decisions.placements.iter().any(|p| p.job == id)
}

/// Devices each team holds of `flavor` once the jobs of `set` have exited.
fn kept(s: &State, set: &[JobId], flavor: &Flavor) -> BTreeMap<TeamId, u32> {
    let mut out: BTreeMap<TeamId, u32> = s.teams().keys().map(|t| (t.clone(), s.usage(t, flavor))).collect();
    for id in set {
        let j = s.job(*id).unwrap();
        *out.get_mut(&j.spec.team).unwrap() -= j.spec.gang.total_devices();
    }
    out
}

/// Whether every team of another team's victim in `set` keeps at least its nominal.
fn keeps_nominal(s: &State, set: &[JobId], flavor: &Flavor, preemptor_team: &TeamId) -> bool {
    let kept = kept(s, set, flavor);
    set.iter()
        .map(|id| &s.job(*id).unwrap().spec.team)
        .filter(|t| *t != preemptor_team)
        .all(|t| kept[t] >= s.teams()[t].quotas[flavor].nominal)
}

/// The running jobs of `flavor` the rules allow as victims of a job of `team` at `priority`:
/// other teams' jobs while their team borrows, and the team's own lower-priority jobs.
fn eligible(s: &State, flavor: &Flavor, team: &TeamId, priority: i32) -> Vec<JobId> {
    s.jobs()
        .values()
        .filter(|j| j.state == JobState::Running && j.spec.preemptible)
        .filter(|j| j.assignment.as_ref().is_some_and(|a| &a.flavor == flavor))
        .filter(|j| {
            let t = &j.spec.team;
            if t == team {
                j.priority < priority
            } else {
                s.usage(t, flavor) > s.teams()[t].quotas[flavor].nominal
            }
        })
        .map(|j| j.id)
        .collect()
}

/// Whether some subset of `eligible` makes room and keeps every victim team at its nominal.
fn a_kinder_set_exists(s: &State, eligible: &[JobId], id: JobId, flavor: &Flavor, now: u64) -> bool {
    let team = &s.job(id).unwrap().spec.team;
    (1u32..1 << eligible.len()).any(|bits| {
        let set: Vec<JobId> = (0..eligible.len()).filter(|i| bits >> i & 1 == 1).map(|i| eligible[i]).collect();
        keeps_nominal(s, &set, flavor, team) && fits_after(s, &set, id, now)
    })
}

fn check(s: &State, plan: &Plan, id: JobId, now: u64) -> Result<(), TestCaseError> {
    let set: Vec<JobId> = plan.decisions.preemptions.iter().map(|p| p.victim).collect();
    let Some(first) = set.first() else { return Ok(()) };
    let flavor = s.job(*first).unwrap().assignment.as_ref().unwrap().flavor.clone();
    let job = s.job(id).unwrap();
    let own_only = set.iter().all(|v| s.job(*v).unwrap().spec.team == job.spec.team);
    if !own_only {
        prop_assert!(fits_after(s, &set, id, now), "victims {set:?} do not make room for job {id}");
    }
    for (i, v) in set.iter().enumerate() {
        let fewer: Vec<JobId> = set.iter().enumerate().filter(|&(k, _)| k != i).map(|(_, x)| *x).collect();
        prop_assert!(!fits_after(s, &fewer, id, now), "victim {v} of {set:?} is not needed");
    }
    let pool = eligible(s, &flavor, &job.spec.team, job.priority);
    if pool.len() <= 8 && !keeps_nominal(s, &set, &flavor, &job.spec.team) {
        prop_assert!(
            !a_kinder_set_exists(s, &pool, id, &flavor, now),
            "victims {set:?} push a team under its nominal, though a set among {pool:?} would not"
        );
    }
    Ok(())
}

const TEAMS: [&str; 3] = ["a", "b", "c"];

/// A full cluster: 1 to 4 nodes of 8 GPUs, three teams with random nominals, and random jobs
/// placed in submission order, borrowing where the nominal does not cover them.
fn filled(nodes: usize, nominals: &[u32], jobs: &[(usize, u32, u32, bool)]) -> State {
    let teams: Vec<(&str, u32, Option<u32>)> = TEAMS.iter().zip(nominals).map(|(t, n)| (*t, *n, None)).collect();
    let mut s = cluster(nodes, &teams);
    for &(team, replicas, count, high) in jobs {
        let mut spec = job(TEAMS[team], replicas, count);
        spec.priority_class = Some(if high { "high" } else { "low" }.into());
        s.apply(Command::Submit { jobs: vec![spec], at_ms: 0 }).unwrap();
    }
    let fill = PolicyConfig { reclaim: false, within_team_preemption: false, ..PolicyConfig::default() };
    testkit_cycle(&mut s, &fill, 0);
    settle(s, 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn victim_sets_are_minimal_and_spare_nominals(
        nodes in 1..4usize,
        nominals in prop::collection::vec(0..17u32, 3),
        jobs in prop::collection::vec((0..3usize, 1..3u32, 2..9u32, any::<bool>()), 4..20),
        team in 0..3usize, replicas in 1..3u32, count in 2..9u32, high in any::<bool>(),
    ) {
        let now = 3_600_000;
        let mut s = filled(nodes, &nominals, &jobs);
        let mut spec = job(TEAMS[team], replicas, count);
        spec.priority_class = Some(if high { "high" } else { "low" }.into());
        let id = s.apply(Command::Submit { jobs: vec![spec], at_ms: now }).unwrap().submitted[0];
        let plan = schedule(&s, &PolicyConfig::default(), now);
        check(&s, &plan, id, now)?;
    }
}
