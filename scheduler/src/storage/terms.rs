//! The terms of the log's entries, kept in memory as runs (a term changes only at elections),
//! so that `Storage::term`, which raft-rs calls several times per round, does not read and
//! decode a whole entry from sled to learn one number. Entries stored before the replica
//! started are not covered; their terms are read from the store.

/// Terms of the stored entries from `from` to the last one.
#[derive(Debug, Default)]
pub(super) struct Terms {
    /// First index covered; below it, the store is asked.
    from: u64,
    /// (first index, term) of each run of entries of one term, ascending, covering `from` to
    /// the last stored entry.
    runs: Vec<(u64, u64)>,
}

impl Terms {
    /// Nothing covered: the next entry stored will be `next`.
    pub fn starting_at(next: u64) -> Self {
        Self { from: next, runs: Vec::new() }
    }

    /// The term of entry `index`, when covered (the caller checks it is stored).
    pub fn get(&self, index: u64) -> Option<u64> {
        if index < self.from {
            return None;
        }
        let after = self.runs.partition_point(|&(start, _)| start <= index);
        after.checked_sub(1).map(|i| self.runs[i].1)
    }

    /// Entries stored from the first of `entries` (index, term, consecutive) on, replacing
    /// any stored at or after it.
    pub fn store(&mut self, entries: impl IntoIterator<Item = (u64, u64)>) {
        let mut entries = entries.into_iter().peekable();
        let Some(&(first, _)) = entries.peek() else { return };
        if first < self.from {
            self.from = first;
            self.runs.clear();
        } else {
            let keep = self.runs.partition_point(|&(start, _)| start < first);
            self.runs.truncate(keep);
        }
        for (index, term) in entries {
            if self.runs.last().is_none_or(|&(_, t)| t != term) {
                self.runs.push((index, term));
            }
        }
    }

    /// Entries below `first` were compacted away.
    pub fn compact(&mut self, first: u64) {
        let covering = self.runs.partition_point(|&(start, _)| start <= first);
        if covering > 1 {
            self.runs.drain(..covering - 1);
        }
        self.from = self.from.max(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        /// Store `len` entries from `back` before the end, the term rising by `bump`.
        Store {
            back: u64,
            len: u64,
            bump: u64,
        },
        Compact {
            ahead: u64,
        },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4u64, 1..6u64, 0..2u64).prop_map(|(back, len, bump)| Op::Store { back, len, bump }),
            1 => (0..6u64).prop_map(|ahead| Op::Compact { ahead }),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Whatever is stored, replaced, compacted or forgotten at a restart, a covered index
        /// has the term the log holds, and every index stored since the restart is covered.
        #[test]
        fn covered_terms_are_the_logs(ops in proptest::collection::vec(op(), 1..40)) {
            let mut log: BTreeMap<u64, u64> = BTreeMap::new();
            let (mut first, mut term, mut since) = (1u64, 1u64, 1u64);
            let mut terms = Terms::starting_at(1);
            for op in ops {
                let next = log.keys().next_back().map_or(first, |l| l + 1);
                match op {
                    Op::Store { back, len, bump } => {
                        let at = next.saturating_sub(back).max(first);
                        log.split_off(&at);
                        term += bump;
                        let new: Vec<(u64, u64)> = (at..at + len).map(|i| (i, term)).collect();
                        log.extend(new.iter().copied());
                        since = since.min(at);
                        terms.store(new);
                    }
                    Op::Compact { ahead } => {
                        first = (first + ahead).min(next);
                        log = log.split_off(&first);
                        terms.compact(first);
                    }
                    Op::Restart => {
                        since = next;
                        terms = Terms::starting_at(next);
                    }
                }
                for (&index, &t) in &log {
                    let got = terms.get(index);
                    prop_assert!(got.is_none_or(|g| g == t), "index {index}: {got:?} for {t}");
                    prop_assert!(index < since || got.is_some(), "index {index} not covered");
                }
            }
        }
    }

    #[test]
    fn runs_split_where_the_term_changes_and_are_cut_by_a_replacement() {
        let mut t = Terms::starting_at(1);
        t.store([(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(t.runs, vec![(1, 1), (3, 2)]);
        t.store([(4, 3), (5, 3)]);
        assert_eq!(t.runs, vec![(1, 1), (3, 2), (4, 3)]);
        t.store([(3, 4)]);
        assert_eq!((t.get(2), t.get(3)), (Some(1), Some(4)));
        t.compact(3);
        assert_eq!((t.get(2), t.get(3), t.runs.len()), (None, Some(4), 1));
    }
}
