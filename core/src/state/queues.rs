//! The pending jobs of every team, each team's in queue order (priority, then age, then id),
//! and how many of them are of each shape (what lets a cycle see that every job left in a
//! queue is of a shape that already failed, see `schedule/park.rs`).
//!
//! A team's queue stays, empty, once its last job leaves it: on a cluster with room most
//! queues empty and refill with every job, and rebuilding one each time (a map entry, a tree
//! node, a copy of the team's name) was a tenth of what submitting and placing a job cost in
//! the simulator. Equality looks only at non-empty queues, so a state rebuilt from a snapshot
//! (which keeps none) equals the live state it came from.

use crate::accounts::TeamNo;
use crate::ids::{JobId, TeamId};
use crate::job::{GangSpec, Job};
use crate::policy::service_level;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Order of pending jobs within a team: priority (high first), then age, then id (fields compare
/// in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    /// The job's priority, reversed: the highest first.
    pub priority: Reverse<i32>,
    /// When it was submitted.
    pub submitted_ms: u64,
    /// The job.
    pub id: JobId,
}

impl QueueKey {
    /// The key of `job`.
    pub fn of(job: &crate::job::Job) -> Self {
        Self { priority: Reverse(job.priority), submitted_ms: job.submitted_ms, id: job.id }
    }
}

/// What makes two pending jobs of one team alike to a scheduling cycle: the same gang, priority
/// and preemptibility give the same shape key there (`schedule::ShapeKey`), and a job with a
/// maximum runtime may be backfilled where one without may not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct JobShape {
    pub gang: GangSpec,
    pub priority: i32,
    pub preemptible: bool,
    pub bounded: bool,
}

impl JobShape {
    /// The shape of `job`.
    pub fn of(job: &Job) -> Self {
        Self {
            gang: job.spec.gang.clone(),
            priority: job.priority,
            preemptible: job.spec.preemptible,
            bounded: job.spec.max_runtime_ms.is_some(),
        }
    }
}

/// One team's pending jobs in queue order, and again per shape.
#[derive(Clone, Debug)]
struct TeamQueue {
    team: TeamId,
    jobs: BTreeSet<QueueKey>,
    shapes: BTreeMap<JobShape, ShapeQueue>,
}

/// A team's pending jobs of one shape, in queue order and in id (submission) order, with the
/// service each received (devices x ms, which stays put while a job waits): the global queues
/// (`QueueOrder::Fifo`, and `LeastAttained` by service level) go by id.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShapeQueue {
    keys: BTreeSet<QueueKey>,
    pub ids: BTreeMap<JobId, u64>,
    /// The jobs by service level (under `TeamQueues::levels`), then id; empty when no levels
    /// are set. A least-attained-service walk finds a level's next job here with one range
    /// query, instead of reading past the jobs of the other levels.
    pub leveled: BTreeSet<(usize, JobId)>,
}

impl PartialEq for ShapeQueue {
    /// The jobs; the level index is compared by the invariant check on its own.
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys && self.ids == other.ids
    }
}

impl Eq for ShapeQueue {}

impl ShapeQueue {
    fn insert(&mut self, key: QueueKey, attained: u64, levels: &[u64]) {
        self.keys.insert(key);
        self.ids.insert(key.id, attained);
        if !levels.is_empty() {
            self.leveled.insert((service_level(levels, attained), key.id));
        }
    }

    fn remove(&mut self, key: &QueueKey, levels: &[u64]) {
        self.keys.remove(key);
        if let Some(attained) = self.ids.remove(&key.id) {
            self.leveled.remove(&(service_level(levels, attained), key.id));
        }
    }

    fn index_levels(&mut self, levels: &[u64]) {
        self.leveled.clear();
        if !levels.is_empty() {
            self.leveled.extend(self.ids.iter().map(|(&id, &attained)| (service_level(levels, attained), id)));
        }
    }
}

/// Every team's queue, by the team's slot in the state's accounts (so that queueing a job
/// finds its team's queue by the job's hint, without a search by name), and the teams with a
/// queue in name order (what iterating and looking up by name go by).
#[derive(Clone, Debug, Default)]
pub struct TeamQueues {
    by_slot: Vec<Option<TeamQueue>>,
    /// Slots that have a queue, in team name order.
    order: Vec<TeamNo>,
    /// The least-attained-service thresholds (devices x seconds) the jobs of each shape are
    /// indexed by (`ShapeQueue::leveled`); none by default. A local tuning of the index, not part
    /// of the state: equality ignores it.
    levels: Vec<u64>,
}

impl PartialEq for TeamQueues {
    /// The non-empty queues, with their jobs per shape (which a consistent queue implies, so
    /// that the invariant check sees an index that drifted).
    fn eq(&self, other: &Self) -> bool {
        fn queues(q: &TeamQueues) -> Vec<&TeamQueue> {
            q.order.iter().filter_map(|&t| q.at(t)).filter(|q| !q.jobs.is_empty()).collect()
        }
        let (a, b) = (queues(self), queues(other));
        a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| x.team == y.team && x.jobs == y.jobs && x.shapes == y.shapes)
    }
}

impl Eq for TeamQueues {}

impl TeamQueues {
    fn at(&self, t: TeamNo) -> Option<&TeamQueue> {
        self.by_slot.get(t.ix()).and_then(Option::as_ref)
    }

    /// The team of a slot in `order`.
    fn name(&self, t: TeamNo) -> &TeamId {
        &self.at(t).expect("ordered slots have queues").team
    }

    /// The non-empty queues, in team order.
    pub fn iter(&self) -> impl Iterator<Item = (&TeamId, &BTreeSet<QueueKey>)> {
        self.slots().map(|(_, id, q)| (id, q))
    }

    /// The non-empty queues with their teams' slots, in team order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (TeamNo, &TeamId, &BTreeSet<QueueKey>)> {
        let queues = self.order.iter().filter_map(|&t| self.at(t).map(|q| (t, &q.team, &q.jobs)));
        queues.filter(|(_, _, q)| !q.is_empty())
    }

    /// A team's queue, if it has one.
    pub fn get(&self, team: &TeamId) -> Option<&BTreeSet<QueueKey>> {
        let i = self.order.binary_search_by(|&t| self.name(t).cmp(team)).ok()?;
        self.at(self.order[i]).map(|q| &q.jobs)
    }

    /// The shapes of the pending jobs of team slot `t`, with how many jobs each.
    pub(crate) fn shapes(&self, t: TeamNo) -> impl Iterator<Item = (&JobShape, u32)> {
        self.shape_queues(t).map(|(s, q)| (s, q.len() as u32))
    }

    /// The shapes of the pending jobs of team slot `t`, each with its jobs in queue order.
    pub(crate) fn shape_queues(&self, t: TeamNo) -> impl Iterator<Item = (&JobShape, &BTreeSet<QueueKey>)> {
        self.at(t).into_iter().flat_map(|q| q.shapes.iter().map(|(s, q)| (s, &q.keys)))
    }

    /// The shapes of the pending jobs of team slot `t`, each with its jobs in id order and the
    /// service each attained (and by level, when levels are set).
    pub(crate) fn shape_ids(&self, t: TeamNo) -> impl Iterator<Item = (&JobShape, &ShapeQueue)> {
        self.at(t).into_iter().flat_map(|q| q.shapes.iter())
    }

    /// The thresholds the jobs are indexed by, per shape, as service levels.
    pub(crate) fn levels(&self) -> &[u64] {
        &self.levels
    }

    /// Indexes every shape's jobs by service level under `thresholds` (devices x seconds); none
    /// drops the index.
    pub(crate) fn index_levels(&mut self, thresholds: &[u64]) {
        self.levels = thresholds.to_vec();
        for queue in self.by_slot.iter_mut().flatten() {
            queue.shapes.values_mut().for_each(|q| q.index_levels(thresholds));
        }
    }

    /// Whether every shape's level index holds what `index_levels` would build.
    pub(crate) fn levels_consistent(&self) -> bool {
        self.by_slot.iter().flatten().flat_map(|q| q.shapes.values()).all(|q| {
            let mut fresh = q.clone();
            fresh.index_levels(&self.levels);
            fresh.leveled == q.leveled
        })
    }

    /// Pending jobs of team slot `t` of `shape`.
    pub(crate) fn shape_count(&self, t: TeamNo, shape: &JobShape) -> u32 {
        self.at(t).and_then(|q| q.shapes.get(shape)).map_or(0, |q| q.keys.len() as u32)
    }

    /// Adds `job` to the queue of its team, whose slot is `t` (the name is copied only for a
    /// team's first job); false if it was there already.
    pub(crate) fn insert(&mut self, t: TeamNo, job: &Job) -> bool {
        let team = &job.spec.team;
        if self.at(t).is_none() {
            let i = self.order.partition_point(|&s| self.name(s) < team);
            self.order.insert(i, t);
            if self.by_slot.len() <= t.ix() {
                self.by_slot.resize_with(t.ix() + 1, || None);
            }
            let queue = TeamQueue { team: team.clone(), jobs: BTreeSet::new(), shapes: BTreeMap::new() };
            self.by_slot[t.ix()] = Some(queue);
        }
        let queue = self.by_slot[t.ix()].as_mut().expect("just ensured");
        let key = QueueKey::of(job);
        let added = queue.jobs.insert(key);
        if added {
            let shape = queue.shapes.entry(JobShape::of(job)).or_default();
            shape.insert(key, job.attained_device_ms, &self.levels);
        }
        added
    }

    /// Takes `job` out of the queue of team slot `t`; false if it was not there.
    pub(crate) fn remove(&mut self, t: TeamNo, job: &Job) -> bool {
        let Some(queue) = self.by_slot.get_mut(t.ix()).and_then(Option::as_mut) else { return false };
        let key = QueueKey::of(job);
        if !queue.jobs.remove(&key) {
            return false;
        }
        let shape = JobShape::of(job);
        if let Some(jobs) = queue.shapes.get_mut(&shape) {
            jobs.remove(&key, &self.levels);
            if jobs.keys.is_empty() {
                queue.shapes.remove(&shape);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::job;

    /// Job `id` of `team`, submitted at 5 ms, with `count` devices.
    fn queued(team: &str, id: u64, count: u32) -> Job {
        Job::submitted(JobId(id), job(team, 1, count), 0, 5)
    }

    #[test]
    fn queues_that_emptied_are_not_part_of_equality() {
        let mut live = TeamQueues::default();
        assert!(live.insert(TeamNo(0), &queued("a", 1, 1)) && live.insert(TeamNo(1), &queued("b", 2, 1)));
        assert!(!live.insert(TeamNo(0), &queued("a", 1, 1)), "already queued");
        assert!(live.remove(TeamNo(0), &queued("a", 1, 1)) && !live.remove(TeamNo(0), &queued("a", 1, 1)));
        let mut rebuilt = TeamQueues::default();
        rebuilt.insert(TeamNo(3), &queued("b", 2, 1));
        assert_eq!(live, rebuilt, "slots differ, the queues are the same");
        assert_eq!(live.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(live.get(&TeamId::from("a")).is_some_and(BTreeSet::is_empty));
        rebuilt.insert(TeamNo(0), &queued("a", 3, 1));
        assert_ne!(live, rebuilt);
    }

    #[test]
    fn queues_go_in_name_order_whatever_their_slots() {
        let mut q = TeamQueues::default();
        for (t, name) in [(2, "c"), (0, "a"), (5, "b")] {
            q.insert(TeamNo(t), &queued(name, u64::from(t), 1));
        }
        assert_eq!(q.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(q.get(&TeamId::from("b")).map(BTreeSet::len), Some(1));
        assert!(q.get(&TeamId::from("d")).is_none());
    }

    /// Each shape is counted while a job of it is queued, and forgotten with its last job.
    #[test]
    fn shapes_are_counted_as_jobs_come_and_go() {
        let mut q = TeamQueues::default();
        let (one, two, eight) = (queued("a", 1, 1), queued("a", 2, 1), queued("a", 3, 8));
        for j in [&one, &two, &eight] {
            q.insert(TeamNo(0), j);
        }
        q.insert(TeamNo(0), &one);
        let counts = |q: &TeamQueues| q.shapes(TeamNo(0)).map(|(s, n)| (s.gang.devices.count, n)).collect::<Vec<_>>();
        assert_eq!(counts(&q), [(1, 2), (8, 1)], "a job queued twice counts once");
        q.remove(TeamNo(0), &eight);
        q.remove(TeamNo(0), &eight);
        q.remove(TeamNo(0), &one);
        assert_eq!(counts(&q), [(1, 1)]);
        assert_eq!(q.shapes(TeamNo(7)).count(), 0, "a team with no queue has no shapes");
    }
}
