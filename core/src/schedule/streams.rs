//! The global queues by submission (`QueueOrder::Fifo`, and `LeastAttained`, which is the
//! FIFO of each service level in turn, lowest first) walked shape by shape, when the cycle
//! parks (see `park.rs`).
//!
//! The state keeps each team's pending jobs of each shape in id order (`TeamQueues::shape_ids`),
//! so the global queue is the merge of those streams: the next job is the smallest id at the
//! heads of the streams whose shape has not failed (at the walk's level: the state indexes
//! each stream by level too, when told the thresholds, `State::index_service_levels`; without
//! that index the walk reads past the other levels' jobs). Once a job's examination fails its
//! shape, the stream is dropped, and the rest of its jobs are parked without a look: a walk costs
//! the jobs it examines and places, not the length of the queue. The decisions are those of
//! the walk that answers every job (`Cycle::walk_global`): a job of a failed shape, without a
//! maximum runtime, is answered from the cache of failures and changes nothing.

use super::park::Look;
use super::Cycle;
use crate::accounts::TeamNo;
use crate::ids::JobId;
use crate::job::Job;
use crate::queues::{JobShape, ShapeQueue};
use std::ops::Bound;

/// One team's pending jobs of one shape, as the walk meets them.
struct Stream<'s> {
    team: TeamNo,
    row: usize,
    shape: &'s JobShape,
    /// The jobs in id order, with the service each attained, and by level.
    jobs: &'s ShapeQueue,
    /// Whether `jobs.leveled` indexes the walk's levels.
    indexed: bool,
    /// The last job taken at the walk's level.
    after: Option<JobId>,
    /// The next job at the walk's level, once looked for (`Some(None)`: there is none).
    head: Option<Option<JobId>>,
    /// Its shape failed in this cycle: its jobs are parked.
    failed: bool,
}

impl<'s> Stream<'s> {
    fn new(team: TeamNo, row: usize, shape: &'s JobShape, jobs: &'s ShapeQueue, indexed: bool) -> Self {
        Self { team, row, shape, jobs, indexed, after: None, head: None, failed: false }
    }

    /// The next job at `level` (`level_of` gives the level of a service), found the first
    /// time it is asked: a range query of the level index, or a read of the jobs in id order.
    fn head(&mut self, level: usize, level_of: impl Fn(u64) -> usize) -> Option<JobId> {
        let (jobs, after, indexed) = (self.jobs, self.after, self.indexed);
        *self.head.get_or_insert_with(|| {
            if indexed {
                let from = after.map_or(Bound::Included((level, JobId(0))), |id| Bound::Excluded((level, id)));
                let next = jobs.leveled.range((from, Bound::Unbounded)).next();
                return next.filter(|(l, _)| *l == level).map(|&(_, id)| id);
            }
            let mut ids = jobs.ids.range((after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded));
            ids.find(|(_, &attained)| level_of(attained) == level).map(|(&id, _)| id)
        })
    }

    /// Takes the head, `id`.
    fn take(&mut self, id: JobId) {
        self.after = Some(id);
        self.head = None;
    }

    /// Starts the walk of another level.
    fn restart(&mut self) {
        self.after = None;
        self.head = None;
    }
}

impl<'s> Cycle<'s> {
    /// Walks the global queue by submission, each service level in turn when `las`, within the
    /// cycle's bounds; the jobs of failed shapes are parked.
    pub(super) fn walk_shapes(&mut self, las: bool) {
        let (state, policy) = (self.view.state, self.policy);
        let queues = state.queues();
        let indexed = las && !queues.levels().is_empty() && queues.levels() == policy.las_thresholds_device_s;
        let mut streams = Vec::new();
        for (team, _, _) in queues.slots() {
            let Some(row) = self.view.team_row(team) else { continue };
            let shapes = queues.shape_ids(team);
            streams.extend(shapes.map(|(shape, jobs)| Stream::new(team, row, shape, jobs, indexed)));
        }
        let queued: usize = streams.iter().map(|s| s.jobs.ids.len()).sum();
        let level_of = |attained: u64| if las { policy.las_level(attained) } else { 0 };
        let levels = if las { policy.las_thresholds_device_s.len() + 1 } else { 1 };
        let mut position = 0u32;
        for level in 0..levels {
            streams.iter_mut().for_each(Stream::restart);
            while let Some((id, i)) = streams
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| !s.failed)
                .filter_map(|(i, s)| s.head(level, level_of).map(|id| (id, i)))
                .min()
            {
                if self.bounded() {
                    return;
                }
                let (team, row) = (streams[i].team, streams[i].row);
                streams[i].take(id);
                if !self.look_at(&state.jobs()[&id], team, row, position, &mut streams) {
                    return;
                }
                position += 1;
            }
        }
        self.plan.stats.parked = queued as u32 - self.plan.stats.considered;
    }

    /// Considers `job` of team slot `team` (row `row`); when its examination failed a shape,
    /// drops the team's streams of the shapes that failed. False when the queue stops here.
    fn look_at(&mut self, job: &'s Job, team: TeamNo, row: usize, position: u32, streams: &mut [Stream<'_>]) -> bool {
        let flavors = self.view.acceptable(row, &job.spec.gang.devices);
        let before = self.plan.stats;
        if !self.consider(job, row, &flavors, position) {
            return false;
        }
        if self.look(&before) == Look::Examined {
            for s in streams.iter_mut().filter(|s| s.team == team && !s.failed) {
                s.failed = self.shape_failed(s.row, s.shape);
            }
        }
        true
    }
}
