//! Quiet cycles: a cycle is a pure function of the state, the policy and the time, and only a
//! few rules read the time. When none of them changes its answer between two times, a cycle at
//! the later one decides what a cycle at the earlier one decided on the same state: a caller that
//! applied nothing since a cycle that decided nothing (the simulator's periodic cycles on a full
//! cluster) may skip the walk of the queue.
//!
//! The rules that read the time: maximum runtimes running out; the minimum run time that
//! protects a young job from preemption; least-attained-service levels, which grow while jobs
//! run; the wait after which a job gets a reservation; and backfill, which compares a job's
//! maximum runtime with a reservation's start. Backfill needs no check of its own: with no
//! deadline and no reservation threshold passed in between, the reservations and their starts
//! are the same at both times (every known end lies after both), and a job that did not end
//! before a start at the earlier time ends later still at the later one.

use super::{Cycle, Scratch, Verdict};
use crate::ids::JobId;
use crate::policy::{PolicyConfig, QueueOrder};
use crate::state::State;

/// Whether a cycle at `now_ms` decides what a cycle at `last_ms` (earlier) decided, on the
/// same `state`: no rule that reads the time can change its answer in between. False when in
/// doubt.
pub fn same_decisions_between(state: &State, policy: &PolicyConfig, last_ms: u64, now_ms: u64) -> bool {
    if now_ms < last_ms
        || (policy.las_preemption && policy.order == QueueOrder::LeastAttained)
        || state.expired(now_ms).next().is_some()
    {
        return false;
    }
    let times = &state.times;
    if (policy.reclaim || policy.within_team_preemption)
        && times.started_crossing(last_ms, now_ms, policy.min_runtime_ms).any(|id| state.jobs()[&id].spec.preemptible)
    {
        return false;
    }
    times.submitted_crossing(last_ms, now_ms, policy.reserve_after_ms).next().is_none()
}

/// Whether the jobs `arrived` since an inert cycle (`Plan::is_inert`) on this state, with
/// nothing but their submissions applied since, leave a cycle at `now_ms` deciding nothing, given
/// `same_decisions_between` holds since that cycle. The jobs the inert cycle looked at see the
/// same devices and usage whatever comes before them, as long as what comes before decides
/// nothing and holds nothing back; so only the arrivals need looking at, each in a cycle of its
/// own (its own search budgets: in the whole cycle it has these or fewer, and fewer only fails
/// sooner). False when any would be placed, preempt, wait for released devices or get a
/// reservation.
pub fn arrivals_inert(
    state: &State,
    policy: &PolicyConfig,
    now_ms: u64,
    arrived: &[JobId],
    scratch: &mut Scratch,
) -> bool {
    arrived.iter().all(|id| {
        let Some(job) = state.job(*id).filter(|j| j.state == crate::job::JobState::Pending) else { return true };
        let mut cycle = Cycle::new(state, policy, now_ms, scratch);
        let Some(row) = cycle.view.team_of(job) else { return false };
        let flavors = cycle.view.acceptable(row, &job.spec.gang.devices);
        matches!(cycle.try_job(job, row, &flavors), Verdict::Unschedulable(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::job::JobState;
    use crate::state::State;
    use crate::testkit::*;
    use proptest::prelude::*;

    /// Jobs (team, replicas, devices, high priority, maximum runtime in seconds) submitted
    /// together, then the seconds to the next round.
    type Round = (Vec<(usize, u32, u32, bool, Option<u64>)>, u64);

    /// Rounds of jobs submitted and placed without
    /// preemption, `advance_s` apart, so that jobs start at different times and some borrow;
    /// then the default policy's cycles until one decides nothing. Returns the state and the
    /// time of that cycle.
    fn quiet_state(nodes: usize, nominals: &[u32], rounds: &[Round]) -> (State, u64) {
        const TEAMS: [&str; 3] = ["a", "b", "c"];
        let teams: Vec<(&str, u32, Option<u32>)> = TEAMS.iter().zip(nominals).map(|(t, n)| (*t, *n, None)).collect();
        let mut s = cluster(nodes, &teams);
        let fill = PolicyConfig { reclaim: false, within_team_preemption: false, ..PolicyConfig::default() };
        let mut now = 0;
        for (jobs, advance_s) in rounds {
            now += advance_s * 1000;
            for &(team, replicas, count, high, max_s) in jobs {
                let mut spec = job(TEAMS[team], replicas, count);
                spec.max_runtime_ms = max_s.map(|s| s * 1000);
                spec.priority_class = Some(if high { "high" } else { "low" }.into());
                submit(&mut s, spec, now);
            }
            cycle(&mut s, &fill, now);
        }
        let policy = PolicyConfig::default();
        for _ in 0..8 {
            if crate::schedule(&s, &policy, now).decisions.is_empty() {
                break;
            }
            now += 1;
            let plan = crate::schedule(&s, &policy, now);
            s.apply(Command::ApplyPlan { decisions: plan.decisions, at_ms: now }).unwrap();
            let exited: Vec<_> = s
                .jobs()
                .values()
                .filter(|j| j.state.holds_devices() && j.state != JobState::Running && j.state != JobState::Starting)
                .map(|j| j.id)
                .collect();
            for job in exited {
                s.apply(Command::JobFinished { job, attempt: None, at_ms: now }).unwrap();
            }
            let starting: Vec<_> = s.jobs().values().filter(|j| j.state == JobState::Starting).map(|j| j.id).collect();
            for job in starting {
                s.apply(Command::JobStarted { job, attempt: None, at_ms: now }).unwrap();
            }
        }
        (s, now)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// On random clusters brought to a cycle that decides nothing, a later cycle that the
        /// predicate calls alike decides nothing either.
        #[test]
        fn alike_cycles_decide_alike(
            nodes in 1..4usize,
            nominals in prop::collection::vec(0..17u32, 3),
            rounds in prop::collection::vec((prop::collection::vec(
                (0..3usize, 1..3u32, 1..9u32, any::<bool>(), prop::option::of(600..40_000u64)), 1..6), 0..20_000u64), 1..5),
            later_s in 1..20_000u64,
        ) {
            let policy = PolicyConfig::default();
            let (s, last) = quiet_state(nodes, &nominals, &rounds);
            prop_assume!(crate::schedule(&s, &policy, last).decisions.is_empty());
            let now = last + later_s * 1000;
            if same_decisions_between(&s, &policy, last, now) {
                prop_assert!(crate::schedule(&s, &policy, now).decisions.is_empty(), "decisions appeared by {}", now);
            }
        }
    }

    /// A job protected by the minimum run time becomes a victim once it is over: the cycles
    /// before and after are not alike.
    #[test]
    fn the_minimum_run_time_running_out_is_a_change() {
        let policy = PolicyConfig::default();
        let mut s = cluster(1, &[("vision", 0, None), ("nlp", 8, None)]);
        submit(&mut s, job("vision", 1, 8), 0);
        cycle(&mut s, &policy, 0);
        submit(&mut s, job("nlp", 1, 8), 1);
        let before = crate::schedule(&s, &policy, 2);
        assert!(before.decisions.is_empty(), "the borrower is protected");
        assert!(same_decisions_between(&s, &policy, 2, policy.min_runtime_ms - 1));
        assert!(!same_decisions_between(&s, &policy, 2, policy.min_runtime_ms));
        assert_eq!(crate::schedule(&s, &policy, policy.min_runtime_ms).decisions.preemptions.len(), 1);
    }

    /// A maximum runtime running out is a decision (the job is stopped), and so a change
    /// (the job may not be preempted, so that its minimum run time is no change).
    #[test]
    fn a_maximum_runtime_running_out_is_a_change() {
        let policy = PolicyConfig::default();
        let mut s = cluster(1, &[("vision", 8, None)]);
        let mut spec = job("vision", 1, 8);
        spec.max_runtime_ms = Some(3_600_000);
        spec.preemptible = false;
        submit(&mut s, spec, 0);
        cycle(&mut s, &policy, 0);
        assert!(crate::schedule(&s, &policy, 1).decisions.is_empty());
        assert!(same_decisions_between(&s, &policy, 1, 3_599_999));
        assert!(!same_decisions_between(&s, &policy, 1, 3_600_000));
        assert_eq!(crate::schedule(&s, &policy, 3_600_000).decisions.expired.len(), 1);
    }

    /// Least-attained-service levels grow with time: no two times are alike under them.
    #[test]
    fn least_attained_service_is_never_alike() {
        let las = PolicyConfig { order: QueueOrder::LeastAttained, las_preemption: true, ..PolicyConfig::default() };
        let s = cluster(1, &[("vision", 8, None)]);
        assert!(!same_decisions_between(&s, &las, 1, 2));
        assert!(same_decisions_between(&s, &PolicyConfig::default(), 1, 2));
    }

    /// After an inert cycle on a full node, an arrival that cannot run either leaves the next
    /// cycle deciding nothing; one that fits the free devices, or may preempt, does not.
    #[test]
    fn only_the_arrivals_are_looked_at() {
        let policy = PolicyConfig::default();
        let mut s = cluster(1, &[("vision", 8, None)]);
        submit(&mut s, job("vision", 1, 6), 0);
        cycle(&mut s, &policy, 0);
        submit(&mut s, job("vision", 1, 4), 1);
        let plan = crate::schedule(&s, &policy, 2);
        assert!(plan.is_inert(), "{:?}", plan.stats);
        let mut scratch = Scratch::default();
        let too_big = submit(&mut s, job("vision", 1, 3), 3);
        assert!(arrivals_inert(&s, &policy, 4, &[too_big], &mut scratch));
        let fits = submit(&mut s, job("vision", 1, 2), 5);
        assert!(!arrivals_inert(&s, &policy, 6, &[too_big, fits], &mut scratch));
        let mut urgent = job("vision", 1, 8);
        urgent.priority_class = Some("high".into());
        let urgent = submit(&mut s, urgent, 7);
        assert!(!arrivals_inert(&s, &policy, policy.min_runtime_ms, &[urgent], &mut scratch), "it preempts");
    }
}
