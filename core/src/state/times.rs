//! The times the time-reading rules of a cycle look at, kept in order so that whether one falls
//! between two instants is a range query (see `schedule::same_decisions_between`, asked after
//! every event of a simulation): pending jobs by submission time (the reservation threshold
//! counts from it) and running jobs by start time (the minimum run time counts from it).
//!
//! The running jobs that may be preempted are kept per flavor and team too, in the order a
//! preemption search takes its candidates (`VictimKey`), so that a search reads the teams it
//! may take from and stops at its cap, instead of sorting every running job each cycle.

use crate::ids::{JobId, TeamId};
use crate::job::{Job, JobState};
use crate::resource::Flavor;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// The order of possible victims, cheapest first: lowest priority, then latest start, then id.
pub(crate) type VictimKey = (i32, Reverse<u64>, JobId);

/// Running jobs whose spec allows preemption, per flavor and team, cheapest first.
type Victims = BTreeMap<Flavor, BTreeMap<TeamId, BTreeSet<VictimKey>>>;

/// Pending jobs by submission time, running jobs by start time (latest first), and the running
/// jobs that may be preempted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Times {
    submitted: BTreeSet<(u64, JobId)>,
    started: BTreeSet<(Reverse<u64>, JobId)>,
    start_of: BTreeMap<JobId, Started>,
    victims: Victims,
}

/// What the indexes hold of a running job: its start, and where it is kept among the victims
/// (flavor, team, key), if its spec allows preemption.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Started {
    at: u64,
    victim: Option<(Flavor, TeamId, VictimKey)>,
}

/// The times `t` with `t + delay` in `(after, upto]`: `(t > lower, t <= upper)`, with no
/// lower bound when `after < delay`; `None` when no time qualifies.
fn shifted(after: u64, upto: u64, delay: u64) -> Option<(Option<u64>, u64)> {
    Some((after.checked_sub(delay), upto.checked_sub(delay)?))
}

impl Times {
    pub fn enqueue(&mut self, job: &Job) {
        self.submitted.insert((job.submitted_ms, job.id));
    }

    pub fn dequeue(&mut self, job: &Job) {
        self.submitted.remove(&(job.submitted_ms, job.id));
    }

    /// Refreshes a job's start, and its place among the victims, after it changed state: kept
    /// while it runs.
    pub fn track(&mut self, job: &Job) {
        if let Some(old) = self.start_of.remove(&job.id) {
            self.started.remove(&(Reverse(old.at), job.id));
            if let Some((flavor, team, key)) = old.victim {
                self.forget_victim(&flavor, &team, &key);
            }
        }
        let (JobState::Running, Some(at)) = (job.state, job.started_ms) else { return };
        self.started.insert((Reverse(at), job.id));
        let victim = match (&job.assignment, job.spec.preemptible) {
            (Some(a), true) => {
                let key = (job.priority, Reverse(at), job.id);
                let teams = self.victims.entry(a.flavor.clone()).or_default();
                teams.entry(job.spec.team.clone()).or_default().insert(key);
                Some((a.flavor.clone(), job.spec.team.clone(), key))
            }
            _ => None,
        };
        self.start_of.insert(job.id, Started { at, victim });
    }

    fn forget_victim(&mut self, flavor: &Flavor, team: &TeamId, key: &VictimKey) {
        let teams = self.victims.get_mut(flavor).expect("a tracked victim's flavor is kept");
        let keys = teams.get_mut(team).expect("a tracked victim's team is kept");
        keys.remove(key);
        if keys.is_empty() {
            teams.remove(team);
            if teams.is_empty() {
                self.victims.remove(flavor);
            }
        }
    }

    /// Pending jobs whose submission time plus `delay` falls in `(after, upto]`.
    pub fn submitted_crossing(&self, after: u64, upto: u64, delay: u64) -> impl Iterator<Item = JobId> + '_ {
        let last = JobId(u64::MAX);
        let range = shifted(after, upto, delay).map(|(lower, upper)| {
            let from = lower.map_or(Bound::Unbounded, |t| Bound::Excluded((t, last)));
            (from, Bound::Included((upper, last)))
        });
        range.into_iter().flat_map(|r| self.submitted.range(r)).map(|(_, id)| *id)
    }

    /// Running jobs whose start time plus `delay` falls in `(after, upto]`.
    pub fn started_crossing(&self, after: u64, upto: u64, delay: u64) -> impl Iterator<Item = JobId> + '_ {
        let first = JobId(0);
        let range = shifted(after, upto, delay).map(|(lower, upper)| {
            let to = lower.map_or(Bound::Unbounded, |t| Bound::Excluded((Reverse(t), first)));
            (Bound::Included((Reverse(upper), first)), to)
        });
        range.into_iter().flat_map(|r| self.started.range(r)).map(|(_, id)| *id)
    }

    /// The running jobs on `flavor` whose spec allows preemption, per team, cheapest first.
    pub fn victims(&self, flavor: &Flavor) -> impl Iterator<Item = (&TeamId, &BTreeSet<VictimKey>)> {
        self.victims.get(flavor).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{h100, job};

    fn at(id: u64, submitted: u64, started: Option<u64>) -> Job {
        let mut j = Job::submitted(JobId(id), job("a", 1, 1), 0, submitted);
        if let Some(s) = started {
            j.state = JobState::Running;
            j.started_ms = Some(s);
        }
        j
    }

    #[test]
    fn crossings_are_those_of_the_half_open_interval() {
        let mut t = Times::default();
        for j in [at(1, 100, None), at(2, 200, None), at(3, 200, None), at(4, 300, None)] {
            t.enqueue(&j);
        }
        let ids = |it: &mut dyn Iterator<Item = JobId>| it.map(|j| j.0).collect::<Vec<_>>();
        assert_eq!(ids(&mut t.submitted_crossing(1_100, 1_200, 1_000)), [2, 3], "(100, 200] after the delay");
        assert_eq!(ids(&mut t.submitted_crossing(0, 1_100, 1_000)), [1], "no lower bound before the delay");
        assert!(ids(&mut t.submitted_crossing(0, 999, 1_000)).is_empty());
        t.dequeue(&at(2, 200, None));
        assert_eq!(ids(&mut t.submitted_crossing(1_100, 1_300, 1_000)), [3, 4]);
        for j in [at(5, 0, Some(50)), at(6, 0, Some(60)), at(7, 0, Some(60))] {
            t.track(&j);
        }
        assert_eq!(ids(&mut t.started_crossing(50, 60, 0)), [6, 7]);
        assert_eq!(ids(&mut t.started_crossing(0, 100, 10)), [6, 7, 5], "latest first");
        t.track(&at(6, 0, None));
        assert_eq!(ids(&mut t.started_crossing(0, 100, 10)), [7, 5], "a job that stopped running leaves");
    }

    /// Job `id` of `team` with `priority`, running on an H100 since `start`.
    fn running(id: u64, team: &str, priority: i32, start: u64) -> Job {
        let mut j = at(id, 0, Some(start));
        j.spec = job(team, 1, 1);
        j.priority = priority;
        j.assignment = Some(crate::job::Assignment { flavor: h100(), replicas: Vec::new() });
        j
    }

    #[test]
    fn victims_are_kept_per_flavor_and_team_cheapest_first() {
        let mut t = Times::default();
        for j in [running(1, "a", 5, 10), running(2, "a", 0, 10), running(3, "a", 0, 30), running(4, "b", 0, 20)] {
            t.track(&j);
        }
        let mut guarded = running(5, "b", 0, 40);
        guarded.spec.preemptible = false;
        t.track(&guarded);
        let by_team = |t: &Times| -> Vec<(String, Vec<u64>)> {
            t.victims(&h100()).map(|(team, keys)| (team.to_string(), keys.iter().map(|k| k.2 .0).collect())).collect()
        };
        assert_eq!(by_team(&t), [("a".into(), vec![3, 2, 1]), ("b".into(), vec![4])], "lowest priority, latest first");
        t.track(&at(4, 0, None));
        t.track(&at(3, 0, None));
        assert_eq!(by_team(&t), [("a".to_string(), vec![2, 1])], "stopped jobs leave, and their empty team");
        let mut rebuilt = Times::default();
        for j in [running(1, "a", 5, 10), running(2, "a", 0, 10), guarded] {
            rebuilt.track(&j);
        }
        assert_eq!(t, rebuilt);
    }
}
