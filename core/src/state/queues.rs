//! The pending jobs of every team, each team's in queue order (priority, then age, then id).
//!
//! A team's queue stays, empty, once its last job leaves it: on a cluster with room most
//! queues empty and refill with every job, and rebuilding one each time (a map entry, a tree
//! node, a copy of the team's name) was a tenth of what submitting and placing a job cost in
//! the simulator. Equality looks only at non-empty queues, so a state rebuilt from a snapshot
//! (which keeps none) equals the live state it came from.

use crate::accounts::TeamNo;
use crate::ids::{JobId, TeamId};
use std::cmp::Reverse;
use std::collections::BTreeSet;

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

/// Every team's queue, by the team's slot in the state's accounts (so that queueing a job
/// finds its team's queue by the job's hint, without a search by name), and the teams with a
/// queue in name order (what iterating and looking up by name go by).
#[derive(Clone, Debug, Default)]
pub struct TeamQueues {
    by_slot: Vec<Option<(TeamId, BTreeSet<QueueKey>)>>,
    /// Slots that have a queue, in team name order.
    order: Vec<TeamNo>,
}

impl PartialEq for TeamQueues {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for TeamQueues {}

impl TeamQueues {
    fn at(&self, t: TeamNo) -> Option<&(TeamId, BTreeSet<QueueKey>)> {
        self.by_slot.get(t.ix()).and_then(Option::as_ref)
    }

    /// The team of a slot in `order`.
    fn name(&self, t: TeamNo) -> &TeamId {
        &self.at(t).expect("ordered slots have queues").0
    }

    /// The non-empty queues, in team order.
    pub fn iter(&self) -> impl Iterator<Item = (&TeamId, &BTreeSet<QueueKey>)> {
        self.slots().map(|(_, id, q)| (id, q))
    }

    /// The non-empty queues with their teams' slots, in team order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (TeamNo, &TeamId, &BTreeSet<QueueKey>)> {
        let queues = self.order.iter().filter_map(|&t| self.at(t).map(|(id, q)| (t, id, q)));
        queues.filter(|(_, _, q)| !q.is_empty())
    }

    /// A team's queue, if it has one.
    pub fn get(&self, team: &TeamId) -> Option<&BTreeSet<QueueKey>> {
        let i = self.order.binary_search_by(|&t| self.name(t).cmp(team)).ok()?;
        self.at(self.order[i]).map(|(_, q)| q)
    }

    /// Adds a job to the queue of `team`, whose slot is `t` (the name is copied only for a
    /// team's first job); false if it was there already.
    pub(crate) fn insert(&mut self, t: TeamNo, team: &TeamId, key: QueueKey) -> bool {
        if self.at(t).is_none() {
            let i = self.order.partition_point(|&s| self.name(s) < team);
            self.order.insert(i, t);
            if self.by_slot.len() <= t.ix() {
                self.by_slot.resize_with(t.ix() + 1, || None);
            }
            self.by_slot[t.ix()] = Some((team.clone(), BTreeSet::new()));
        }
        self.by_slot[t.ix()].as_mut().expect("just ensured").1.insert(key)
    }

    /// Takes a job out of the queue of team slot `t`; false if it was not there.
    pub(crate) fn remove(&mut self, t: TeamNo, key: &QueueKey) -> bool {
        self.by_slot.get_mut(t.ix()).and_then(Option::as_mut).is_some_and(|(_, queue)| queue.remove(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_that_emptied_are_not_part_of_equality() {
        let (a, b) = (TeamId::from("a"), TeamId::from("b"));
        let key = |id| QueueKey { priority: Reverse(0), submitted_ms: 5, id: JobId(id) };
        let mut live = TeamQueues::default();
        assert!(live.insert(TeamNo(0), &a, key(1)) && live.insert(TeamNo(1), &b, key(2)));
        assert!(!live.insert(TeamNo(0), &a, key(1)), "already queued");
        assert!(live.remove(TeamNo(0), &key(1)) && !live.remove(TeamNo(0), &key(1)));
        let mut rebuilt = TeamQueues::default();
        rebuilt.insert(TeamNo(3), &b, key(2));
        assert_eq!(live, rebuilt, "slots differ, the queues are the same");
        assert_eq!(live.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(live.get(&a).is_some_and(BTreeSet::is_empty));
        rebuilt.insert(TeamNo(0), &a, key(3));
        assert_ne!(live, rebuilt);
    }

    #[test]
    fn queues_go_in_name_order_whatever_their_slots() {
        let key = |id| QueueKey { priority: Reverse(0), submitted_ms: 5, id: JobId(id) };
        let mut q = TeamQueues::default();
        for (t, name) in [(2, "c"), (0, "a"), (5, "b")] {
            q.insert(TeamNo(t), &TeamId::from(name), key(u64::from(t)));
        }
        assert_eq!(q.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(q.get(&TeamId::from("b")).map(BTreeSet::len), Some(1));
        assert!(q.get(&TeamId::from("d")).is_none());
    }
}
