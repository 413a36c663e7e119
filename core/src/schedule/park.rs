//! Parked jobs: the walk of a long queue costs what can still change, not its length.
//!
//! Within a cycle, a job of a shape that already failed is answered from the cache of failures
//! (`Cycle::try_job`): it stays pending and changes nothing, unless it may be backfilled (it has
//! a maximum runtime). Such a job is passed over: it takes no turn in the order between teams
//! (a team's head is its first job whose shape has not failed), and it is not examined, so it
//! does not count towards `max_jobs_per_cycle`. That is the policy (under strict FIFO, where a
//! failure stops the queue, nothing is passed over).
//!
//! The walk jumps over passed jobs instead of answering them one by one: the state keeps each
//! team's pending jobs per shape too (`TeamQueues::shape_queues`), so a team's next head is
//! the first job after its last one among its shapes that have not failed, a look at a few
//! shapes. The jobs jumped over are counted as parked (`CycleStats::parked`). The global
//! orders (the simulator's baselines) keep one queue for all teams; there, the jobs of a team
//! whose every shape left failed are passed over with a look at their team, and the walk ends
//! once every team is so.
//!
//! When the cycle explains itself (every job gets its report and position), or to check that
//! parking changes nothing, passed jobs are answered one by one instead: the same decisions.

use super::view::FlavorIx;
use super::{Cycle, ShapeKey};
use crate::accounts::TeamNo;
use crate::job::Job;
use crate::policy::QueueingStrategy;
use crate::queues::JobShape;
use crate::state::QueueKey;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Where a team's walk stands when it jumps over parked jobs.
#[derive(Default)]
pub(super) struct ShapeCursor {
    /// The last job taken.
    after: Option<QueueKey>,
    /// Per shape of the team (in the state's order): whether it failed in this cycle.
    failed: Vec<bool>,
    /// Failures the cycle had when `failed` was brought up to date.
    failures: usize,
    /// Per shape: its first job after `after`, once looked up (`Some(None)`: it has none). Only
    /// the shape of the job taken moves on; the others' stay their next.
    next: Vec<Option<Option<QueueKey>>>,
}

/// What became of a job the walk looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    Placed,
    /// Answered from the cache of failed shapes.
    Cached,
    /// Anything else: its shape failed just now, or it preempts, waits or holds a reservation.
    Examined,
}

/// What a global walk looked at, per team slot; and which teams are parked (every job they
/// have left is passed over).
#[derive(Default)]
pub(super) struct Parking {
    /// Per team slot: jobs looked at, per shape and in all.
    seen: BTreeMap<TeamNo, (BTreeMap<JobShape, u32>, u32)>,
    /// Teams whose jobs left are all parked.
    parked: Vec<TeamNo>,
}

impl Parking {
    /// Whether team slot `t` is parked.
    pub fn is_parked(&self, t: TeamNo) -> bool {
        self.parked.contains(&t)
    }

    /// Notes that the walk passed over a job of parked team slot `t`.
    pub fn pass(&mut self, t: TeamNo) {
        self.seen.entry(t).or_default().1 += 1;
    }

    fn seen(&self, t: TeamNo, shape: &JobShape) -> u32 {
        self.seen.get(&t).and_then(|(shapes, _)| shapes.get(shape)).copied().unwrap_or(0)
    }
}

impl Cycle<'_> {
    /// Whether jobs of failed shapes are passed over: not under strict FIFO.
    pub(super) fn passes(&self) -> bool {
        self.policy.queueing == QueueingStrategy::BestEffortFifo
    }

    /// Whether this cycle jumps over passed jobs rather than answering them one by one: it
    /// explains nothing.
    pub(super) fn parks(&self) -> bool {
        self.parking && !self.policy.explain && self.passes()
    }

    /// Whether a job of `shape` of team row `row` is passed over: its shape failed in this
    /// cycle, and it may not be backfilled.
    pub(super) fn shape_failed(&self, row: usize, shape: &JobShape) -> bool {
        let flavors = self.view.acceptable(row, &shape.gang.devices);
        let key = ShapeKey::new(row, &flavors, &shape.gang, shape.priority, shape.preemptible);
        !shape.bounded && self.failed.as_ref().is_some_and(|f| f.contains_key(&key))
    }

    /// Whether `job` (of team row `row`, accepting `flavors`) is passed over.
    pub(super) fn passed_over(&self, job: &Job, row: usize, flavors: &[FlavorIx]) -> bool {
        self.passes()
            && job.spec.max_runtime_ms.is_none()
            && self.failed.as_ref().is_some_and(|f| f.contains_key(&Self::key(job, row, flavors)))
    }

    /// The next job of team slot `t` (row `row`) after the cursor's last that is not passed
    /// over; moves the cursor to it.
    pub(super) fn next_unparked(&self, cursor: &mut ShapeCursor, t: TeamNo, row: usize) -> Option<QueueKey> {
        let shapes = self.view.state.queues();
        let failures = self.failed.as_ref().map_or(0, BTreeMap::len);
        if cursor.failed.is_empty() || cursor.failures != failures {
            let known = std::mem::take(&mut cursor.failed);
            cursor.failed = shapes
                .shape_queues(t)
                .enumerate()
                .map(|(i, (shape, _))| known.get(i).copied().unwrap_or(false) || self.shape_failed(row, shape))
                .collect();
            cursor.failures = failures;
        }
        cursor.next.resize(cursor.failed.len(), None);
        let after = cursor.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let (mut best, mut from) = (None, 0);
        let live = shapes.shape_queues(t).zip(&cursor.failed).enumerate().filter(|(_, (_, failed))| !**failed);
        for (i, ((_, jobs), _)) in live {
            let next = *cursor.next[i].get_or_insert_with(|| jobs.range((after, Bound::Unbounded)).next().copied());
            if next.is_some() && (best.is_none() || next < best) {
                (best, from) = (next, i);
            }
        }
        if best.is_some() {
            cursor.after = best;
            cursor.next[from] = None;
        }
        best
    }

    /// Notes that the walk looked at `job` of team slot `t` (row `row`) and what became of it;
    /// true if that parked the team. Whether a team is parked changes only when one of its
    /// shapes fails (its job was examined) or its last job of a shape is looked at, so only
    /// then are its shapes looked at.
    pub(super) fn after_look(&self, parking: &mut Parking, t: TeamNo, row: usize, job: &Job, look: Look) -> bool {
        let (shapes, all) = parking.seen.entry(t).or_default();
        let shape = JobShape::of(job);
        let queued = self.view.state.queues().shape_count(t, &shape);
        let seen = shapes.entry(shape).or_default();
        *seen += 1;
        *all += 1;
        if look != Look::Examined && *seen < queued {
            return false;
        }
        let mut left = self.view.state.queues().shapes(t).filter(|(shape, n)| *n > parking.seen(t, shape));
        let parked = left.all(|(shape, _)| self.shape_failed(row, shape));
        if parked {
            parking.parked.push(t);
        }
        parked
    }

    /// Jobs of team slot `t` the walk has not looked at.
    pub(super) fn left(&self, parking: &Parking, t: TeamNo) -> u32 {
        let queued: u32 = self.view.state.queues().shapes(t).map(|(_, n)| n).sum();
        queued - parking.seen.get(&t).map_or(0, |(_, all)| *all)
    }
}
