//! A set of job ids as a bitset over the dense ids (the job table hands them out as 1, 2, 3...,
//! so bit `id` of the words is the job): adding, removing and testing a job is one word, where
//! the B-trees it replaced searched and rebalanced on every state change of every job (about 4%
//! of a simulated job's cost, strict FIFO on Philly). Iteration goes in id order, skipping
//! empty words: 64 ids per word, so a walk over a table of 100,000 jobs reads 1,563 words. The
//! set keeps the position of its lowest non-empty word, so finding its first job (the head of
//! the global FIFO, every cycle) does not walk the words of jobs that left long ago.

use crate::ids::JobId;

/// Job ids, in id order.
#[derive(Clone, Debug, Default)]
pub struct JobSet {
    words: Vec<u64>,
    len: usize,
    /// Every word below this one is empty; it is non-empty itself unless it is `words.len()`.
    low: usize,
}

impl PartialEq for JobSet {
    /// Equal when they hold the same ids (the words past the last one may differ).
    fn eq(&self, other: &Self) -> bool {
        let (short, long) = if self.words.len() <= other.words.len() { (self, other) } else { (other, self) };
        self.len == other.len
            && long.words[..short.words.len()] == short.words[..]
            && long.words[short.words.len()..].iter().all(|&w| w == 0)
    }
}

impl Eq for JobSet {}

impl JobSet {
    fn at(id: JobId) -> (usize, u64) {
        let bit = usize::try_from(id.0).expect("job ids index the job table");
        (bit / 64, 1 << (bit % 64))
    }

    /// Adds a job; false if it was there.
    pub fn insert(&mut self, id: JobId) -> bool {
        let (w, bit) = Self::at(id);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.low = if self.len == 0 { w } else { self.low.min(w) };
        self.words[w] |= bit;
        self.len += usize::from(fresh);
        fresh
    }

    /// Takes a job out; false if it was not there.
    pub fn remove(&mut self, id: JobId) -> bool {
        let (w, bit) = Self::at(id);
        let Some(word) = self.words.get_mut(w) else { return false };
        let found = *word & bit != 0;
        *word &= !bit;
        self.len -= usize::from(found);
        while self.words.get(self.low) == Some(&0) {
            self.low += 1;
        }
        found
    }

    /// The lowest id in the set.
    pub fn first(&self) -> Option<JobId> {
        let word = *self.words.get(self.low)?;
        Some(JobId(self.low as u64 * 64 + u64::from(word.trailing_zeros())))
    }

    /// Whether the job is in the set.
    pub fn contains(&self, id: JobId) -> bool {
        let (w, bit) = Self::at(id);
        self.words.get(w).is_some_and(|word| word & bit != 0)
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The jobs in id order.
    pub fn iter(&self) -> impl Iterator<Item = JobId> + '_ {
        let words = self.words.iter().enumerate().skip(self.low);
        words.filter(|(_, w)| **w != 0).flat_map(|(i, &w)| {
            let base = i as u64 * 64;
            Bits(w).map(move |b| JobId(base + u64::from(b)))
        })
    }
}

impl FromIterator<JobId> for JobSet {
    fn from_iter<I: IntoIterator<Item = JobId>>(ids: I) -> Self {
        let mut set = Self::default();
        for id in ids {
            set.insert(id);
        }
        set
    }
}

/// The set bits of a word, lowest first.
struct Bits(u64);

impl Iterator for Bits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Any sequence of inserts and removes leaves the set, its length, its answers and its
        /// order as a `BTreeSet` of the same ids would have them.
        #[test]
        fn behaves_as_an_ordered_set(ops in prop::collection::vec((any::<bool>(), 1u64..300), 0..200)) {
            let (mut set, mut reference) = (JobSet::default(), BTreeSet::new());
            for (add, id) in ops {
                let id = JobId(id);
                let changed = if add { set.insert(id) } else { set.remove(id) };
                let expected = if add { reference.insert(id) } else { reference.remove(&id) };
                prop_assert_eq!(changed, expected);
                prop_assert_eq!(set.contains(id), reference.contains(&id));
            }
            prop_assert_eq!(set.len(), reference.len());
            prop_assert_eq!(set.is_empty(), reference.is_empty());
            prop_assert_eq!(set.first(), reference.first().copied());
            prop_assert!(set.iter().eq(reference.iter().copied()));
        }
    }

    #[test]
    fn equal_by_members_whatever_was_grown() {
        let (mut a, mut b) = (JobSet::default(), JobSet::default());
        a.insert(JobId(3));
        b.insert(JobId(3));
        b.insert(JobId(700));
        assert_ne!(a, b);
        assert_ne!(b, a);
        b.remove(JobId(700));
        assert_eq!(a, b, "a set grown to 11 words and emptied back equals one of 1 word");
        assert_eq!(b, a);
        a.insert(JobId(4));
        assert_ne!(a, b, "same length of words, other members");
    }
}
