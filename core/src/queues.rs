//! The pending jobs of every team, each team's in queue order (priority, then age, then id).
//!
//! A team's queue stays, empty, once its last job leaves it: on a cluster with room most
//! queues empty and refill with every job, and rebuilding one each time (a map entry, a tree
//! node, a copy of the team's name) was a tenth of what submitting and placing a job cost in
//! the simulator. Equality looks only at non-empty queues, so a state rebuilt from a snapshot
//! (which keeps none) equals the live state it came from.

use crate::ids::{JobId, TeamId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Order of pending jobs within a team: priority (high first), then age, then id.
pub type QueueKey = (Reverse<i32>, u64, JobId);

/// Every team's queue.
#[derive(Clone, Debug, Default)]
pub struct TeamQueues(BTreeMap<TeamId, BTreeSet<QueueKey>>);

impl PartialEq for TeamQueues {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for TeamQueues {}

impl TeamQueues {
    /// The non-empty queues, in team order.
    pub fn iter(&self) -> impl Iterator<Item = (&TeamId, &BTreeSet<QueueKey>)> {
        self.0.iter().filter(|(_, q)| !q.is_empty())
    }

    /// A team's queue, if it has one.
    pub fn get(&self, team: &TeamId) -> Option<&BTreeSet<QueueKey>> {
        self.0.get(team)
    }

    /// Adds a job to its team's queue (the name is copied only for a team's first job);
    /// false if it was there already.
    pub(crate) fn insert(&mut self, team: &TeamId, key: QueueKey) -> bool {
        match self.0.get_mut(team) {
            Some(queue) => queue.insert(key),
            None => self.0.entry(team.clone()).or_default().insert(key),
        }
    }

    /// Takes a job out of its team's queue; false if it was not there.
    pub(crate) fn remove(&mut self, team: &TeamId, key: &QueueKey) -> bool {
        self.0.get_mut(team).is_some_and(|queue| queue.remove(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_that_emptied_are_not_part_of_equality() {
        let (a, b) = (TeamId::from("a"), TeamId::from("b"));
        let key = |id| (Reverse(0), 5, JobId(id));
        let mut live = TeamQueues::default();
        assert!(live.insert(&a, key(1)) && live.insert(&b, key(2)));
        assert!(!live.insert(&a, key(1)), "already queued");
        assert!(live.remove(&a, &key(1)) && !live.remove(&a, &key(1)));
        let mut rebuilt = TeamQueues::default();
        rebuilt.insert(&b, key(2));
        assert_eq!(live, rebuilt);
        assert_eq!(live.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(live.get(&a).is_some_and(BTreeSet::is_empty));
        rebuilt.insert(&a, key(3));
        assert_ne!(live, rebuilt);
    }
}
