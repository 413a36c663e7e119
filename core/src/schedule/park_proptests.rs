//! Parking is an optimisation: on random clusters, teams and command sequences, under every
//! queue order and with small cycle budgets (so that the bounds bite), a cycle that jumps over
//! the jobs it passes decides what one that answers them one by one decides (and counts the
//! same), and what one that explains itself decides (which counts differently: with nothing
//! to explain, a cycle on a cluster with no device stops before walking).

use super::proptests::{run_with, world, Op, World};
use super::{plan_cycle, Scratch};
use crate::plan::Plan;
use crate::policy::{PolicyConfig, QueueOrder};
use crate::schedule;
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = PolicyConfig> {
    (0..4usize, 1..40u32, 1..6u32, 0..3u64).prop_map(|(order, max_jobs, max_placements, reserve)| {
        let order =
            [QueueOrder::FairShare, QueueOrder::Fifo, QueueOrder::LeastAttained, QueueOrder::ShortestFirst][order];
        PolicyConfig {
            order,
            las_preemption: order == QueueOrder::LeastAttained,
            // Low service levels, so that waiting jobs of every level meet in a queue.
            las_thresholds_device_s: vec![600, 6_000],
            max_jobs_per_cycle: max_jobs,
            max_placements_per_cycle: max_placements,
            reserve_after_ms: reserve * 1_800_000,
            min_runtime_ms: 60_000,
            explain: false,
            ..PolicyConfig::default()
        }
    })
}

/// The same decisions and counters; and, when the cycle was not cut short by its bounds, every
/// job counted once: looked at or parked.
fn same_plan(parked: &Plan, other: &Plan, policy: &PolicyConfig) -> Result<(), TestCaseError> {
    prop_assert_eq!(&parked.decisions, &other.decisions);
    let counts = |p: &Plan| {
        (p.stats.pending, p.stats.placed, p.stats.victims, p.stats.held, p.stats.blocked, p.stats.backfilled)
    };
    prop_assert_eq!(counts(parked), counts(other));
    let s = &parked.stats;
    let bounded =
        s.considered - s.cache_hits >= policy.max_jobs_per_cycle || s.placed >= policy.max_placements_per_cycle;
    if !bounded {
        prop_assert_eq!(s.considered + s.parked, other.stats.considered + other.stats.parked);
    }
    Ok(())
}

/// `world`, with jobs of three sizes only, so that shapes repeat and fail more than once.
fn alike_jobs() -> impl Strategy<Value = World> {
    world().prop_map(|mut w| {
        for op in &mut w.ops {
            if let Op::Submit { count, .. } = op {
                *count = [1, 4, 8][*count as usize % 3];
            }
        }
        w
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]
    #[test]
    fn parking_changes_no_decision(w in alike_jobs(), policy in policy()) {
        let mut failure = Ok(());
        let explaining = PolicyConfig { explain: true, ..policy.clone() };
        run_with(&w, &policy, |before, _, plan| {
            let Some(parked) = plan.filter(|_| failure.is_ok()) else { return };
            let one_by_one = plan_cycle(before, &policy, parked.at_ms, &mut Scratch::default(), false);
            let explained = schedule(before, &explaining, parked.at_ms);
            failure = same_plan(parked, &one_by_one, &policy).and_then(|_| {
                prop_assert_eq!(&parked.decisions, &explained.decisions);
                Ok(())
            });
        });
        failure?;
    }
}
