//! The times the time-reading rules of a cycle look at, kept in order so that whether one falls
//! between two instants is a range query (see `schedule::same_decisions_between`, asked after
//! every event of a simulation): pending jobs by submission time (the reservation threshold
//! counts from it) and running jobs by start time (the minimum run time counts from it).

use crate::ids::JobId;
use crate::job::{Job, JobState};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Pending jobs by submission time, running jobs by start time (latest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Times {
    submitted: BTreeSet<(u64, JobId)>,
    started: BTreeSet<(Reverse<u64>, JobId)>,
    start_of: BTreeMap<JobId, u64>,
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

    /// Refreshes a job's start after it changed state: kept while it runs.
    pub fn track(&mut self, job: &Job) {
        if let Some(old) = self.start_of.remove(&job.id) {
            self.started.remove(&(Reverse(old), job.id));
        }
        if let (JobState::Running, Some(s)) = (job.state, job.started_ms) {
            self.started.insert((Reverse(s), job.id));
            self.start_of.insert(job.id, s);
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

    /// Running jobs with a start time, latest first (by id among equals).
    pub fn running_by_start(&self) -> impl Iterator<Item = JobId> + '_ {
        self.started.iter().map(|(_, id)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::job;

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
        assert_eq!(ids(&mut t.running_by_start()), [7, 5], "a job that stopped running leaves");
    }
}
