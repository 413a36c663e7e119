//! The job table. Ids are handed out by the state machine as 1, 2, 3..., so jobs live in
//! fixed-size chunks indexed by id: a lookup is two memory accesses, where a B-tree of 100,000
//! large records costs a cache miss per level (this was a quarter of a scheduling cycle).
//! Chunks are shared (`Arc`) and copied on write, so a clone of the table, which a replica
//! takes for every snapshot, costs one pointer per chunk instead of a copy of every job; after
//! it, the first change to a chunk copies that chunk only. The methods mirror `BTreeMap`'s so
//! call sites read the same.

use crate::ids::JobId;
use crate::job::Job;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::Index;
use std::sync::Arc;

/// Jobs per chunk: small enough that copying one on write is cheap, large enough that the
/// chunk list of a million jobs stays short.
const CHUNK: usize = 1024;

/// Every job ever submitted, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobTable {
    chunks: Vec<Arc<Vec<Job>>>,
    len: usize,
}

impl JobTable {
    fn slot(id: &JobId) -> Option<usize> {
        id.0.checked_sub(1).and_then(|i| usize::try_from(i).ok())
    }

    /// The job with this id.
    pub fn get(&self, id: &JobId) -> Option<&Job> {
        let i = Self::slot(id)?;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The job with this id, to change (copies its chunk first if a clone shares it).
    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        let i = Self::slot(id).filter(|i| *i < self.len)?;
        Arc::make_mut(&mut self.chunks[i / CHUNK]).get_mut(i % CHUNK)
    }

    /// Whether the id was handed out.
    pub fn contains_key(&self, id: &JobId) -> bool {
        self.get(id).is_some()
    }

    /// Adds the next job; its id must be the next one.
    pub fn insert(&mut self, id: JobId, job: Job) {
        assert_eq!(id.0, self.len as u64 + 1, "job ids are dense and handed out in order");
        self.push(job);
    }

    fn push(&mut self, job: Job) {
        if self.len % CHUNK == 0 {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk with room was just ensured");
        Arc::make_mut(last).push(job);
        self.len += 1;
    }

    /// Jobs in id order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Job> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Jobs with an id above `id`, in id order (a page of a listing starts here without
    /// walking the jobs before it).
    pub fn after(&self, id: JobId) -> impl Iterator<Item = &Job> + '_ {
        let start = usize::try_from(id.0).map_or(self.len, |i| i.min(self.len));
        let (first, skip) = (start / CHUNK, start % CHUNK);
        self.chunks.iter().skip(first).flat_map(|c| c.iter()).skip(skip)
    }

    /// Ids in order.
    pub fn keys(&self) -> impl Iterator<Item = JobId> + '_ {
        self.values().map(|j| j.id)
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromIterator<Job> for JobTable {
    /// Chunks jobs given in id order (as a snapshot holds them).
    fn from_iter<I: IntoIterator<Item = Job>>(jobs: I) -> Self {
        let mut table = Self::default();
        for job in jobs {
            table.push(job);
        }
        table
    }
}

/// Encoded as one sequence of jobs in id order, as the flat table was: the chunking is not
/// part of the snapshot format.
impl Serialize for JobTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for job in self.values() {
            seq.serialize_element(job)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for JobTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Job>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl Index<&JobId> for JobTable {
    type Output = Job;

    fn index(&self, id: &JobId) -> &Job {
        self.get(id).expect("job ids in indexes exist in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn job(id: u64) -> Job {
        Job::submitted(JobId(id), testkit::job("t", 1, 1), 0, id)
    }

    fn table(n: u64) -> JobTable {
        (1..=n).map(job).collect()
    }

    #[test]
    fn a_clone_keeps_its_jobs_when_the_original_changes() {
        let mut live = table(2 * CHUNK as u64 + 5);
        let cut = live.clone();
        live.get_mut(&JobId(3)).unwrap().spec.name = "renamed".into();
        live.insert(JobId(2 * CHUNK as u64 + 6), job(2 * CHUNK as u64 + 6));
        assert_eq!(cut[&JobId(3)].spec.name, testkit::job("t", 1, 1).name);
        assert_eq!(live[&JobId(3)].spec.name, "renamed");
        assert_eq!((cut.len(), live.len()), (2 * CHUNK + 5, 2 * CHUNK + 6));
        assert!(Arc::ptr_eq(&cut.chunks[1], &live.chunks[1]), "untouched chunks stay shared");
        assert!(!Arc::ptr_eq(&cut.chunks[0], &live.chunks[0]), "the changed chunk was copied");
    }

    #[test]
    fn encodes_as_the_flat_sequence_of_jobs() {
        let t = table(CHUNK as u64 + 3);
        let flat: Vec<Job> = t.values().cloned().collect();
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&flat).unwrap());
        assert_eq!(postcard::from_bytes::<JobTable>(&bytes).unwrap(), t);
    }

    #[test]
    fn pages_start_after_the_id_across_chunks() {
        let t = table(CHUNK as u64 + 3);
        let ids = |after: u64| t.after(JobId(after)).map(|j| j.id.0).collect::<Vec<_>>();
        assert_eq!(ids(CHUNK as u64 + 1), vec![CHUNK as u64 + 2, CHUNK as u64 + 3]);
        assert_eq!(ids(CHUNK as u64 - 1), vec![CHUNK as u64, CHUNK as u64 + 1, CHUNK as u64 + 2, CHUNK as u64 + 3]);
        assert!(ids(u64::MAX).is_empty());
        assert!(t.get(&JobId(0)).is_none() && t.get(&JobId(CHUNK as u64 + 4)).is_none());
    }
}
