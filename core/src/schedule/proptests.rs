//! Property tests over random clusters, teams and command sequences: the invariants of
//! docs/design.md hold after every command, and apply is deterministic.

use crate::command::Command;
use crate::ids::{JobId, NodeId, TeamId};
use crate::job::{JobSpec, JobState};
use crate::plan::{Plan, PreemptionRule};
use crate::policy::PolicyConfig;
use crate::resource::Flavor;
use crate::schedule;
use crate::state::State;
use crate::team::FlavorQuota;
use crate::testkit::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const TEAMS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
pub(super) enum Op {
    Submit { team: usize, replicas: u32, count: u32, high: bool, preemptible: bool, bounded: bool },
    Cycle { advance_s: u64 },
    Finish(usize),
    Fail(usize),
    Cancel(usize),
    Lose(usize),
    Register(usize),
    Drain(usize),
    Uncordon(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..3u32, 1..9u32, any::<bool>(), prop::bool::weighted(0.8), prop::bool::weighted(0.2))
            .prop_map(|(team, replicas, count, high, preemptible, bounded)| {
                Op::Submit { team, replicas, count, high, preemptible, bounded }
            }),
        4 => (0..900u64).prop_map(|advance_s| Op::Cycle { advance_s }),
        2 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Lose),
        1 => any::<usize>().prop_map(Op::Register),
        1 => any::<usize>().prop_map(Op::Drain),
        1 => any::<usize>().prop_map(Op::Uncordon),
    ]
}

/// The GPU models of the generated nodes: every team has quota for both, and jobs take either.
const MODELS: [&str; 2] = [H100, L4];

#[derive(Clone, Debug)]
pub(super) struct World {
    /// Each node's GPUs and model (an index into `MODELS`).
    nodes: Vec<(u32, usize)>,
    quotas: Vec<(u32, Option<u32>, Option<u32>)>,
    pub ops: Vec<Op>,
}

pub(super) fn world() -> impl Strategy<Value = World> {
    let quota = (0..17u32, prop::option::of(0..9u32), prop::option::of(0..17u32));
    let node = (1..9u32, prop::bool::weighted(0.3).prop_map(usize::from));
    (prop::collection::vec(node, 1..6), prop::collection::vec(quota, 3), prop::collection::vec(op(), 1..60))
        .prop_map(|(nodes, quotas, ops)| World { nodes, quotas, ops })
}

fn setup(w: &World) -> State {
    let mut s = cluster(0, &[]);
    for (name, (nominal, borrowing, lending)) in TEAMS.iter().zip(&w.quotas) {
        let mut t = team(name, *nominal, *borrowing);
        let q = FlavorQuota {
            nominal: *nominal,
            borrowing_limit: *borrowing,
            lending_limit: lending.map(|l| l.min(*nominal)),
        };
        t.quotas.insert(h100(), q);
        let half = nominal / 2;
        t.quotas.insert(l4(), FlavorQuota { nominal: half, lending_limit: q.lending_limit.map(|l| l.min(half)), ..q });
        s.apply(Command::SetTeam { team: t }).unwrap();
    }
    for i in 0..w.nodes.len() {
        s.apply(Command::RegisterNode { node: world_node(w, i), at_ms: 0 }).unwrap();
    }
    s
}

fn world_node(w: &World, i: usize) -> crate::resource::NodeSpec {
    let (gpus, model) = w.nodes[i];
    node_of(&format!("n{i}"), gpus, MODELS[model], None)
}

fn pick(s: &State, i: usize, want: impl Fn(JobState) -> bool) -> Option<JobId> {
    let ids: Vec<JobId> = s.jobs().values().filter(|j| want(j.state)).map(|j| j.id).collect();
    (!ids.is_empty()).then(|| ids[i % ids.len()])
}

fn node_id(w: &World, i: usize) -> NodeId {
    NodeId::from(format!("n{}", i % w.nodes.len()))
}

/// Runs the ops; calls `check` after each command with the plan of the cycle, if any.
fn run(w: &World, check: impl FnMut(&State, &State, Option<&Plan>)) -> State {
    run_with(w, &PolicyConfig { min_runtime_ms: 60_000, ..PolicyConfig::default() }, check)
}

/// `run` under `policy`.
pub(super) fn run_with(
    w: &World,
    policy: &PolicyConfig,
    mut check: impl FnMut(&State, &State, Option<&Plan>),
) -> State {
    let mut s = setup(w);
    let mut now = 0u64;
    for op in &w.ops {
        let before = s.clone();
        let mut plan = None;
        let cmd = match op {
            Op::Submit { team, replicas, count, high, preemptible, bounded } => {
                let mut spec: JobSpec = job(TEAMS[*team], *replicas, *count);
                spec.preemptible = *preemptible;
                spec.max_runtime_ms = bounded.then_some(1_800_000);
                spec.priority_class = Some(if *high { "high" } else { "low" }.into());
                Some(Command::Submit { jobs: vec![spec], at_ms: now })
            }
            Op::Cycle { advance_s } => {
                now += advance_s * 1000;
                let p = schedule(&s, policy, now);
                let cmd = Command::ApplyPlan { decisions: p.decisions.clone(), at_ms: now };
                plan = Some(p);
                Some(cmd)
            }
            Op::Finish(i) => {
                pick(&s, *i, JobState::holds_devices).map(|job| Command::JobFinished { job, attempt: None, at_ms: now })
            }
            Op::Fail(i) => pick(&s, *i, JobState::holds_devices).map(|job| Command::JobFailed {
                job,
                attempt: None,
                message: "x".into(),
                at_ms: now,
            }),
            Op::Cancel(i) => pick(&s, *i, |st| !st.is_terminal()).map(|job| Command::Cancel { job, at_ms: now }),
            Op::Lose(i) => Some(Command::NodeLost { node: node_id(w, *i), at_ms: now }),
            Op::Register(i) => Some(Command::RegisterNode { node: world_node(w, i % w.nodes.len()), at_ms: now }),
            Op::Drain(i) => Some(Command::Drain { node: node_id(w, *i) }),
            Op::Uncordon(i) => Some(Command::Cordon { node: node_id(w, *i), cordoned: false }),
        };
        if let Some(cmd) = cmd {
            s.apply(cmd).expect("generated commands are valid");
        }
        if plan.is_some() {
            let starting: Vec<JobId> =
                s.jobs().values().filter(|j| j.state == JobState::Starting).map(|j| j.id).collect();
            for job in starting {
                s.apply(Command::JobStarted { job, attempt: None, at_ms: now }).unwrap();
            }
        }
        check(&before, &s, plan.as_ref());
    }
    s
}

/// The state's own invariants, and the policy's: non-preemptible jobs never borrow.
fn check_state(s: &State) -> Result<(), TestCaseError> {
    s.check_invariants().map_err(TestCaseError::fail)?;
    let mut pinned: BTreeMap<(TeamId, Flavor), u32> = BTreeMap::new();
    for j in s.jobs().values().filter(|j| j.state.holds_devices() && !j.spec.preemptible) {
        let f = j.assignment.as_ref().expect("holds devices").flavor.clone();
        *pinned.entry((j.spec.team.clone(), f)).or_default() += j.spec.gang.total_devices();
    }
    for (name, t) in s.teams() {
        for (f, q) in &t.quotas {
            let held = pinned.get(&(name.clone(), f.clone())).copied().unwrap_or(0);
            prop_assert!(held <= q.nominal, "team {name}'s non-preemptible jobs hold {held} of {f}: they borrow");
        }
    }
    Ok(())
}

/// Every reclaim victim's team is above nominal, counting earlier victims of the same plan.
fn check_reclaims(before: &State, plan: &Plan) -> Result<(), TestCaseError> {
    let mut given_back: BTreeMap<(TeamId, Flavor), u32> = BTreeMap::new();
    for p in &plan.decisions.preemptions {
        let v = before.job(p.victim).unwrap();
        let f = v.assignment.as_ref().unwrap().flavor.clone();
        let key = (v.spec.team.clone(), f.clone());
        let nominal = before.teams()[&v.spec.team].quotas[&f].nominal;
        let usage = before.usage(&v.spec.team, &f) - given_back.get(&key).copied().unwrap_or(0);
        if p.rule == PreemptionRule::Reclaim {
            prop_assert!(
                usage > nominal,
                "job {} of team {} preempted at usage {usage} <= nominal {nominal}",
                v.id,
                v.spec.team
            );
        }
        let preemptor = before.job(p.preemptor).unwrap();
        if p.rule == PreemptionRule::WithinTeam {
            prop_assert_eq!(&v.spec.team, &preemptor.spec.team);
            prop_assert!(v.priority < preemptor.priority, "job {} preempted its equal {}", preemptor.id, v.id);
        }
        prop_assert!(v.spec.preemptible);
        *given_back.entry(key).or_default() += v.spec.gang.total_devices();
    }
    Ok(())
}

proptest! {
    #[test]
    fn invariants_hold_after_every_command(w in world()) {
        let mut failure = Ok(());
        run(&w, |before, after, plan| {
            if failure.is_ok() {
                failure = check_state(after).and_then(|_| plan.map_or(Ok(()), |p| check_reclaims(before, p)));
            }
        });
        failure?;
    }

    #[test]
    fn the_same_commands_give_the_same_state(w in world()) {
        let (a, b) = (run(&w, |_, _, _| {}), run(&w, |_, _, _| {}));
        prop_assert_eq!(a.hash(), b.hash());
        prop_assert!(State::from_bytes(&a.to_bytes()).unwrap() == a, "snapshot round trip is the identity");
    }

    #[test]
    fn a_job_that_fits_its_unused_nominal_gets_room(w in world(), team in 0..3usize, high in any::<bool>()) {
        let mut s = run(&w, |_, _, _| {});
        let name = TeamId(TEAMS[team].into());
        let q = s.teams()[&name].quotas[&h100()];
        prop_assume!(s.usage(&name, &h100()) < q.nominal);
        let mut spec = job(TEAMS[team], 1, 1);
        spec.priority_class = Some(if high { "high" } else { "low" }.into());
        let now = 10 * 3_600_000;
        let id = s.apply(Command::Submit { jobs: vec![spec], at_ms: now }).unwrap().submitted[0];
        // The H100s, where the job fits its nominal (it may go to an L4 as well).
        let free = s.free(&h100()) > 0;
        let reclaimable = s.jobs().values().any(|j| {
            j.state == JobState::Running && j.spec.preemptible && j.spec.team != name
                && j.assignment.as_ref().unwrap().flavor == h100()
                && s.usage(&j.spec.team, &h100()) > s.teams()[&j.spec.team].quotas[&h100()].nominal
                && j.assignment.as_ref().unwrap().replicas.iter().any(|r| s.nodes()[&r.node].schedulable())
        });
        let plan = schedule(&s, &PolicyConfig { max_jobs_per_cycle: 100_000, ..PolicyConfig::default() }, now);
        let placed = plan.decisions.placements.iter().any(|p| p.job == id);
        let room = plan.decisions.preemptions.iter().any(|p| p.preemptor == id)
            || plan.reports.iter().any(|r| r.job == id && r.reason == crate::plan::PendingReason::WaitingForRelease);
        if free || reclaimable {
            prop_assert!(placed || room || earlier_took_it(&plan, id), "job {id} fits its nominal but got {:?}", plan.reports.iter().find(|r| r.job == id));
        }
    }
}

/// Jobs ahead of the new one in queue order may take the free device, the victims or the
/// devices being released first, or hold free devices in a reservation (for work within its
/// own team's nominal); the property asks that the capacity went to somebody.
fn earlier_took_it(plan: &Plan, id: JobId) -> bool {
    use crate::plan::PendingReason::{Preempting, Reserved, WaitingForRelease};
    plan.decisions.placements.iter().any(|p| p.job != id)
        || plan
            .reports
            .iter()
            .any(|r| r.job != id && matches!(r.reason, Preempting { .. } | WaitingForRelease | Reserved { .. }))
}
