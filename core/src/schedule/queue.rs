//! Queue order. Within a team: priority, then submission time (the state keeps each team's
//! queue sorted). Across teams, the next job is the team head with the smallest key:
//! 1. demand that fits the team's nominal before demand that must borrow;
//! 2. among borrowers, the lowest weighted dominant share (borrowed devices over capacity, per
//!    flavor, the largest, divided by the team's weight);
//! 3. then age, then job id.
//!
//! A team's key is recomputed after each of its jobs, since only its own usage moved.

use super::view::FlavorIx;
use super::{Cycle, Verdict};
use crate::ids::JobId;
use crate::job::Job;
use crate::plan::PendingReason;
use crate::policy::QueueingStrategy;
use crate::quota::borrowed;
use crate::state::QueueKey;
use std::cmp::Reverse;
use std::collections::btree_set;
use std::collections::BinaryHeap;

/// Order key of a team's head job: (borrowing?, weighted share, submitted, id, team slot).
type HeadKey = (bool, u64, u64, JobId, usize);

struct TeamCursor<'s> {
    row: usize,
    /// The job at the head of the queue and the flavors it accepts.
    head: Option<(&'s Job, Vec<FlavorIx>)>,
    jobs: btree_set::Iter<'s, QueueKey>,
    blocked_by: Option<JobId>,
}

impl<'s> Cycle<'s> {
    /// Weighted dominant share of a team's borrowing, in millionths.
    fn share(&self, t: usize) -> u64 {
        let row = &self.view.teams[t];
        let dominant = row
            .quota
            .iter()
            .zip(&row.usage)
            .zip(&self.view.ledgers)
            .filter_map(|((q, used), ledger)| q.map(|q| borrowed(&q, *used) * 1_000_000 / ledger.capacity.max(1)))
            .max()
            .unwrap_or(0);
        dominant * 1000 / u64::from(row.spec.weight_milli.max(1))
    }

    /// Whether the job fits its team's nominal for some acceptable flavor.
    fn within_nominal(&self, job: &Job, t: usize, flavors: &[FlavorIx]) -> bool {
        let row = &self.view.teams[t];
        let total = u64::from(job.spec.gang.total_devices());
        flavors.iter().any(|&f| {
            let nominal = row.quota[f as usize].map_or(0, |q| q.nominal);
            u64::from(row.usage[f as usize]) + total <= u64::from(nominal)
        })
    }

    fn head_key(&self, cursor: &mut TeamCursor<'s>, slot: usize) -> Option<HeadKey> {
        let &(_, submitted, id) = cursor.jobs.next()?;
        let job = &self.view.state.jobs()[&id];
        cursor.head = Some((job, self.view.acceptable(cursor.row, &job.spec.gang.devices)));
        let flavors = &cursor.head.as_ref().expect("just set").1;
        let borrowing = !self.within_nominal(job, cursor.row, flavors);
        let share = if borrowing { self.share(cursor.row) } else { 0 };
        Some((borrowing, share, submitted, id, slot))
    }

    /// Walks the pending jobs in queue order within the cycle's bounds.
    pub(crate) fn run(&mut self) {
        let state = self.view.state;
        self.plan.stats.pending = state.pending_count() as u32;
        let mut cursors: Vec<TeamCursor<'s>> = state
            .queues()
            .iter()
            .filter_map(|(team, q)| {
                Some(TeamCursor { row: self.view.team_ix(team)?, head: None, jobs: q.iter(), blocked_by: None })
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(cursors.len());
        for (slot, cursor) in cursors.iter_mut().enumerate() {
            if let Some(k) = self.head_key(cursor, slot) {
                heap.push(Reverse(k));
            }
        }
        let mut position = 0u32;
        while let Some(Reverse((_, _, _, id, slot))) = heap.pop() {
            if self.plan.stats.considered >= self.policy.max_jobs_per_cycle
                || self.plan.stats.placed >= self.policy.max_placements_per_cycle
            {
                break;
            }
            let (job, flavors) = cursors[slot].head.take().expect("a queued team has a head");
            debug_assert_eq!(job.id, id);
            self.plan.stats.considered += 1;
            self.consider(job, &flavors, &mut cursors[slot], position);
            position += 1;
            if let Some(k) = self.head_key(&mut cursors[slot], slot) {
                heap.push(Reverse(k));
            }
        }
    }

    fn consider(&mut self, job: &'s Job, flavors: &[FlavorIx], cursor: &mut TeamCursor<'s>, position: u32) {
        if let Some(blocker) = cursor.blocked_by {
            self.report(job, position, PendingReason::BlockedByEarlierJob(blocker), None);
            return;
        }
        let verdict = self.try_job(job, cursor.row, flavors);
        let strict = self.policy.queueing == QueueingStrategy::StrictFifo;
        match verdict {
            Verdict::Placed => {
                self.plan.stats.placed += 1;
                return;
            }
            Verdict::Preempting(victims) => self.report(job, position, PendingReason::Preempting { victims }, None),
            Verdict::Waiting => self.report(job, position, PendingReason::WaitingForRelease, None),
            Verdict::Unschedulable(f) => self.report(job, position, PendingReason::Unschedulable, Some(f)),
        }
        if strict {
            cursor.blocked_by = Some(job.id);
        }
    }
}
