//! Reservations and backfill over several cycles.

use crate::ids::JobId;
use crate::plan::{PendingReason, Plan};
use crate::policy::PolicyConfig;
use crate::testkit::*;

const HOUR: u64 = 3_600_000;

fn limited(devices: u32, max_ms: Option<u64>) -> crate::job::JobSpec {
    let mut j = job("vision", 1, devices);
    j.max_runtime_ms = max_ms;
    j
}

fn reserved(plan: &Plan, id: JobId) -> Option<(u32, Option<u64>)> {
    plan.reports.iter().find(|r| r.job == id).and_then(|r| match r.reason {
        PendingReason::Reserved { devices, starts_within_ms } => Some((devices, starts_within_ms)),
        _ => None,
    })
}

fn placed_on(plan: &Plan, id: JobId) -> Option<String> {
    let p = plan.decisions.placements.iter().find(|p| p.job == id)?;
    Some(p.assignment.replicas[0].node.to_string())
}

/// A job let in before a reservation starts does not move the reservation: the next cycles
/// keep it on the same node with the same start, and the reserved job starts then.
#[test]
fn backfill_never_delays_the_reservation() {
    let policy = PolicyConfig { explain: true, ..PolicyConfig::default() };
    let mut s = cluster(2, &[("vision", 32, None)]);
    let ends_at_6h = submit(&mut s, limited(5, Some(6 * HOUR)), 0);
    let open_ended = submit(&mut s, limited(8, None), 0);
    cycle(&mut s, &policy, 0);
    let wide = submit(&mut s, limited(8, None), 1);
    let small = submit(&mut s, limited(3, Some(HOUR)), 4 * HOUR);
    let at_4h = cycle(&mut s, &policy, 4 * HOUR + 1);
    let node = placed_on(&at_4h, small).expect("the one-hour job ends before the reservation starts");
    assert_eq!(reserved(&at_4h, wide), Some((3, Some(2 * HOUR - 1))), "{:?}", at_4h.reports);
    let held_by = s.job(ends_at_6h).and_then(|j| j.assignment.as_ref()).map(|a| a.replicas[0].node.to_string());
    assert_eq!(Some(&node), held_by.as_ref(), "on the node that frees soonest");
    let later = submit(&mut s, limited(3, Some(3 * HOUR)), 4 * HOUR + 2);
    let at_4h30 = cycle(&mut s, &policy, 4 * HOUR + HOUR / 2);
    assert_eq!(reserved(&at_4h30, wide), Some((0, Some(3 * HOUR / 2))), "same start after the backfill");
    assert_eq!(placed_on(&at_4h30, later), None, "a three-hour job would end after the reservation starts");
    for (id, at) in [(small, 5 * HOUR), (ends_at_6h, 6 * HOUR)] {
        s.apply(crate::Command::JobFinished { job: id, attempt: None, at_ms: at }).unwrap();
    }
    let at_6h = cycle(&mut s, &policy, 6 * HOUR);
    assert_eq!(placed_on(&at_6h, wide).as_deref(), Some(node.as_str()), "it starts where it was reserved");
    assert_eq!(state_of(&s, open_ended), crate::job::JobState::Running);
}
