//! Queue order. With `QueueOrder::FairShare` (the default, the order of docs/design.md): within a team,
//! priority, then submission time (the state keeps each team's queue sorted); across teams, the
//! next job is the team head with the smallest key:
//! 1. demand that fits the team's nominal before demand that must borrow;
//! 2. among borrowers, the lowest weighted dominant share (borrowed devices over capacity, per
//!    flavor, the largest, divided by the team's weight);
//! 3. then age, then job id.
//!
//! A team's key is recomputed after each of its jobs, since only its own usage moved. Every team
//! gets its turn: a team that used its fair part of the cycle's `max_jobs_per_cycle` (the
//! budget over the teams with pending jobs) waits until every other team had its turn, so ten
//! thousand jobs of one team that cannot run do not hide another team's jobs from the cycle.
//! The other orders (the simulator's baselines) put every pending job in one global queue.
//!
//! Strict FIFO stops a queue (a team's, or the global one) at its first job that is not placed;
//! the jobs behind it are counted as blocked and get no report of their own.

use super::park::{Look, Parking, ShapeCursor};
use super::view::FlavorIx;
use super::{Cycle, Verdict};
use crate::accounts::TeamNo;
use crate::ids::JobId;
use crate::job::Job;
use crate::plan::PendingReason;
use crate::policy::{QueueOrder, QueueingStrategy};
use crate::quota::borrowed;
use crate::state::QueueKey;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::btree_set;
use std::collections::BinaryHeap;

/// Order key of a team's head job; teams are served smallest key first (fields compare in
/// order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeadKey {
    /// Whether the job must borrow (within-nominal demand goes first).
    borrowing: bool,
    /// The team's weighted dominant share of borrowing, in millionths (0 within nominal).
    share: u64,
    /// When the job was submitted.
    submitted: u64,
    /// The job.
    id: JobId,
    /// The team's cursor.
    slot: usize,
}

struct TeamCursor<'s> {
    team: TeamNo,
    row: usize,
    /// The job at the head of the queue and the flavors it accepts.
    head: Option<(&'s Job, Cow<'s, [FlavorIx]>)>,
    /// The team's queue, walked job by job.
    jobs: btree_set::Iter<'s, QueueKey>,
    /// Where the team stands when the walk jumps over parked jobs instead.
    shapes: ShapeCursor,
}

impl<'s> Cycle<'s> {
    /// Weighted dominant share of a team's borrowing, in millionths.
    fn share(&self, t: usize) -> u64 {
        let dominant = self
            .view
            .quota_row(t)
            .iter()
            .zip(self.view.usage_row(t))
            .zip(self.view.ledgers.iter())
            .filter_map(|((q, used), ledger)| q.map(|q| borrowed(&q, *used) * 1_000_000 / ledger.capacity.max(1)))
            .max()
            .unwrap_or(0);
        dominant * 1000 / u64::from(self.view.weights[t].max(1))
    }

    /// Whether the job fits its team's nominal for some acceptable flavor.
    fn within_nominal(&self, job: &Job, t: usize, flavors: &[FlavorIx]) -> bool {
        let total = u64::from(job.spec.gang.total_devices());
        flavors.iter().any(|&f| {
            let nominal = self.view.quota(t, f).map_or(0, |q| q.nominal);
            u64::from(self.view.usage(t, f)) + total <= u64::from(nominal)
        })
    }

    /// Makes the team's next job that is not passed over its head, and returns its key; a
    /// walk that does not park answers the jobs passed over on the way (each at the next
    /// position).
    fn next_head(&mut self, cursor: &mut TeamCursor<'s>, slot: usize, position: &mut u32) -> Option<HeadKey> {
        let parks = self.parks();
        loop {
            if self.bounded() {
                return None;
            }
            let QueueKey { submitted_ms: submitted, id, .. } = if parks {
                self.next_unparked(&mut cursor.shapes, cursor.team, cursor.row)?
            } else {
                *cursor.jobs.next()?
            };
            let job = &self.view.state.jobs()[&id];
            let flavors = self.view.acceptable(cursor.row, &job.spec.gang.devices);
            if !parks && self.passed_over(job, cursor.row, &flavors) {
                self.consider(job, cursor.row, &flavors, *position);
                *position += 1;
                continue;
            }
            let borrowing = !self.within_nominal(job, cursor.row, &flavors);
            let share = if borrowing { self.share(cursor.row) } else { 0 };
            cursor.head = Some((job, flavors));
            return Some(HeadKey { borrowing, share, submitted, id, slot });
        }
    }

    /// Whether the cycle examined or placed all it may: jobs answered from the cache of
    /// failed shapes are not examined.
    pub(super) fn bounded(&self) -> bool {
        self.plan.stats.considered - self.plan.stats.cache_hits >= self.policy.max_jobs_per_cycle
            || self.plan.stats.placed >= self.policy.max_placements_per_cycle
    }

    /// Walks the pending jobs in queue order within the cycle's bounds.
    pub(crate) fn run(&mut self) {
        self.plan.stats.pending = self.view.state.pending_count() as u32;
        match self.policy.order {
            QueueOrder::FairShare => self.run_fair(),
            order => self.run_global(order),
        }
    }

    fn run_fair(&mut self) {
        let state = self.view.state;
        let mut cursors: Vec<TeamCursor<'s>> = state
            .queues()
            .slots()
            .filter_map(|(team, _, q)| {
                let row = self.view.team_row(team)?;
                Some(TeamCursor { team, row, head: None, jobs: q.iter(), shapes: ShapeCursor::default() })
            })
            .collect();
        let queued: usize = cursors.iter().map(|c| c.jobs.len()).sum();
        let mut position = 0u32;
        let mut heap = BinaryHeap::with_capacity(cursors.len());
        for (slot, cursor) in cursors.iter_mut().enumerate() {
            if let Some(k) = self.next_head(cursor, slot, &mut position) {
                heap.push(Reverse(k));
            }
        }
        let fair = (self.policy.max_jobs_per_cycle / (heap.len() as u32).max(1)).max(1);
        let mut looked = vec![0u32; cursors.len()];
        let mut deferred = Vec::new();
        while let Some(Reverse(key)) = heap.pop().or_else(|| {
            heap.extend(deferred.drain(..));
            heap.pop()
        }) {
            let slot = key.slot;
            if self.bounded() {
                break;
            }
            if looked[slot] == fair {
                looked[slot] += 1;
                deferred.push(Reverse(key));
                continue;
            }
            looked[slot] = looked[slot].saturating_add(1);
            let cursor = &mut cursors[slot];
            let (job, flavors) = cursor.head.take().expect("a queued team has a head");
            if !self.consider(job, cursor.row, &flavors, position) {
                self.plan.stats.blocked += cursor.jobs.len() as u32;
                continue;
            }
            position += 1;
            if let Some(k) = self.next_head(&mut cursors[slot], slot, &mut position) {
                heap.push(Reverse(k));
            }
        }
        if self.parks() && !self.bounded() {
            self.plan.stats.parked = queued as u32 - self.plan.stats.considered;
        }
    }

    /// Walks one global queue (kept sorted by the state) lazily; least-attained-service walks
    /// the FIFO once per service level, lowest first (FIFO within a level).
    fn run_global(&mut self, order: QueueOrder) {
        let state = self.view.state;
        match order {
            QueueOrder::Fifo | QueueOrder::LeastAttained if self.parks() => {
                self.walk_shapes(order == QueueOrder::LeastAttained);
            }
            QueueOrder::ShortestFirst => self.walk_global(state.shortest().iter().map(|k| k.2), state.shortest().len()),
            QueueOrder::LeastAttained => {
                // Each level's jobs in FIFO order, lowest level first, found lazily: a walk
                // that stops early reads no further (a sort would read and order them all).
                let (policy, fifo) = (self.policy, state.fifo());
                let level = move |id: &JobId| policy.las_level(state.jobs()[id].attained_device_ms);
                let levels = 0..=policy.las_thresholds_device_s.len();
                let ids = levels.flat_map(move |l| fifo.iter().filter(move |id| level(id) == l));
                self.walk_global(ids, fifo.len());
            }
            _ => self.walk_global(state.fifo().iter(), state.fifo().len()),
        }
    }

    /// Considers the jobs of a global queue in order, until the bounds or a strict FIFO stop;
    /// passes over the jobs of parked teams, and stops once every team is parked.
    fn walk_global(&mut self, ids: impl Iterator<Item = JobId>, total: usize) {
        let state = self.view.state;
        let teams: Vec<TeamNo> =
            state.queues().slots().filter(|(t, _, _)| self.view.team_row(*t).is_some()).map(|(t, ..)| t).collect();
        let mut parking = self.parks().then(Parking::default);
        let mut live = teams.len();
        for (position, id) in ids.enumerate() {
            if self.bounded() {
                break;
            }
            let job = &state.jobs()[&id];
            let Some(row) = self.view.team_of(job) else { continue };
            let t = state.accounts.team_of(job).expect("a team with a row has a slot");
            if let Some(p) = parking.as_mut().filter(|p| p.is_parked(t)) {
                p.pass(t);
                self.plan.stats.parked += 1;
                continue;
            }
            let flavors = self.view.acceptable(row, &job.spec.gang.devices);
            let before = self.plan.stats;
            if !self.consider(job, row, &flavors, position as u32) {
                self.plan.stats.blocked += (total - position - 1) as u32;
                break;
            }
            let Some(p) = parking.as_mut() else { continue };
            if self.after_look(p, t, row, job, self.look(&before)) || self.left(p, t) == 0 {
                live -= 1;
            }
            if live == 0 {
                self.plan.stats.parked += teams.iter().map(|&t| self.left(p, t)).sum::<u32>();
                break;
            }
        }
    }

    /// What became of the job just looked at, from the counters before the look.
    pub(super) fn look(&self, before: &crate::plan::CycleStats) -> Look {
        let now = &self.plan.stats;
        if now.placed > before.placed {
            Look::Placed
        } else if now.cache_hits > before.cache_hits {
            Look::Cached
        } else {
            Look::Examined
        }
    }

    /// Looks at one job and reports it if it stays pending. Returns false when strict FIFO
    /// stops its queue here.
    pub(super) fn consider(&mut self, job: &'s Job, row: usize, flavors: &[FlavorIx], position: u32) -> bool {
        self.plan.stats.considered += 1;
        match self.try_job(job, row, flavors) {
            Verdict::Placed => {
                self.plan.stats.placed += 1;
                return true;
            }
            Verdict::Preempting(victims) => self.report(job, position, PendingReason::Preempting { victims }, None),
            Verdict::Waiting => {
                self.plan.stats.held += 1;
                self.report(job, position, PendingReason::WaitingForRelease, None);
            }
            Verdict::Unschedulable(f) => self.report(job, position, PendingReason::Unschedulable, Some(f)),
            Verdict::Reserved(f, r) => {
                self.plan.stats.held += 1;
                let reason = PendingReason::Reserved {
                    devices: r.devices,
                    starts_within_ms: r.start_ms.map(|s| s - self.now_ms),
                };
                self.report(job, position, reason, Some(f));
            }
        }
        self.policy.queueing != QueueingStrategy::StrictFifo
    }
}
