//! The job table. Ids are handed out by the state machine as 1, 2, 3..., so jobs live in a
//! vector indexed by id: a lookup is one memory access, where a B-tree of 100,000 large
//! records costs a cache miss per level (this was a quarter of a scheduling cycle). The
//! methods mirror `BTreeMap`'s so call sites read the same.

use crate::ids::JobId;
use crate::job::Job;
use serde::{Deserialize, Serialize};
use std::ops::Index;

/// Every job ever submitted, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobTable(Vec<Job>);

impl JobTable {
    fn slot(id: &JobId) -> Option<usize> {
        id.0.checked_sub(1).and_then(|i| usize::try_from(i).ok())
    }

    /// The job with this id.
    pub fn get(&self, id: &JobId) -> Option<&Job> {
        Self::slot(id).and_then(|i| self.0.get(i))
    }

    /// The job with this id, to change.
    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        Self::slot(id).and_then(|i| self.0.get_mut(i))
    }

    /// Whether the id was handed out.
    pub fn contains_key(&self, id: &JobId) -> bool {
        self.get(id).is_some()
    }

    /// Adds the next job; its id must be the next one.
    pub fn insert(&mut self, id: JobId, job: Job) {
        assert_eq!(id.0, self.0.len() as u64 + 1, "job ids are dense and handed out in order");
        self.0.push(job);
    }

    /// Jobs in id order.
    pub fn values(&self) -> std::slice::Iter<'_, Job> {
        self.0.iter()
    }

    /// Jobs with an id above `id`, in id order (a page of a listing starts here without
    /// walking the jobs before it).
    pub fn after(&self, id: JobId) -> std::slice::Iter<'_, Job> {
        let start = usize::try_from(id.0).map_or(self.0.len(), |i| i.min(self.0.len()));
        self.0[start..].iter()
    }

    /// Ids in order.
    pub fn keys(&self) -> impl Iterator<Item = JobId> + '_ {
        self.0.iter().map(|j| j.id)
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Index<&JobId> for JobTable {
    type Output = Job;

    fn index(&self, id: &JobId) -> &Job {
        self.get(id).expect("job ids in indexes exist in the table")
    }
}
