//! The exact search for a victim set that keeps every victim team at its nominal, for small
//! candidate lists, tried when the greedy search found none: every subset, fewest
//! victims first, then cheapest (the candidates are sorted cheapest first, so subsets compare by
//! their positions). The first that makes room is minimal: with a victim left out, a smaller
//! subset would have made room and come first.

use super::{Candidate, Trial};
use crate::schedule::place::{Pick, Shape};
use crate::schedule::view::FlavorIx;
use crate::schedule::Cycle;
use std::collections::BTreeSet;

/// The most candidates the exact search takes (2^10 - 1 subsets at most).
pub(super) const EXACT_MAX: usize = 10;

impl<'s> Cycle<'s> {
    /// A victim set among `candidates` (at most `EXACT_MAX`) that makes room for the shape
    /// for team row `t` and leaves every other victim team at or above its nominal, if any.
    pub(super) fn exact_search(
        &self,
        t: usize,
        shape: &Shape,
        base: &[u32],
        candidates: &[Candidate<'s>],
        room: usize,
    ) -> Option<(Trial<'s>, Vec<Pick>)> {
        if candidates.len() > EXACT_MAX {
            return None;
        }
        let mut subsets: Vec<u32> = (1u32..1 << candidates.len()).filter(|s| s.count_ones() as usize <= room).collect();
        subsets.sort_by_cached_key(|&s| (s.count_ones(), positions(s)));
        subsets.into_iter().find_map(|s| {
            let trial = Trial { chosen: positions(s).into_iter().map(|i| candidates[i].clone()).collect() };
            if !self.keeps_nominals(t, shape.flavor, &trial) {
                return None;
            }
            self.fits(t, shape, base, &trial).map(|picks| (trial, picks))
        })
    }

    /// Whether every team but `t` with a victim in the trial keeps at least its nominal once
    /// the trial's victims and the cycle's earlier ones exit (counted on committed usage, as
    /// `reclaimable` does).
    fn keeps_nominals(&self, t: usize, f: FlavorIx, trial: &Trial<'_>) -> bool {
        let teams: BTreeSet<usize> = trial.chosen.iter().map(|v| v.team).filter(|&row| row != t).collect();
        teams.into_iter().all(|row| {
            let committed = self.view.committed_usage(row, f);
            committed.saturating_sub(self.removed(trial, row, f)) >= self.nominal(row, f)
        })
    }
}

/// The positions of the set bits of `s`, lowest first.
fn positions(s: u32) -> Vec<usize> {
    (0..32).filter(|i| s >> i & 1 == 1).collect()
}
