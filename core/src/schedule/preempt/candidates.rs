//! Gathering a search's candidates from the state's index of running jobs that may be preempted
//! (`Times::victims`: per flavor and team, cheapest first): only the teams a search may take
//! from are read, merged in the order of the index, and reading stops at the cap. A cycle no
//! longer lists and sorts every running job.

use super::{Candidate, Cycle};
use crate::ids::JobId;
use crate::job::Job;
use crate::schedule::view::FlavorIx;
use crate::state::times::VictimKey;
use crate::state::State;
use std::cell::OnceCell;
use std::cmp::Reverse;
use std::collections::{btree_set, BTreeSet};
use std::iter::Peekable;
use std::ops::Bound;
use std::rc::Rc;

/// The running jobs of some teams that may be preempted now, with their team rows, cheapest
/// first across the teams.
struct Preemptible<'s> {
    state: &'s State,
    teams: Vec<(usize, Peekable<OldEnough<'s>>)>,
}

impl<'s> Iterator for Preemptible<'s> {
    type Item = (usize, &'s Job);

    fn next(&mut self) -> Option<Self::Item> {
        let heads = self.teams.iter_mut().enumerate().filter_map(|(i, (_, keys))| keys.peek().map(|k| (*k, i)));
        let (_, i) = heads.min()?;
        let (row, keys) = &mut self.teams[i];
        let (_, _, id) = keys.next().expect("peeked");
        Some((*row, &self.state.jobs()[&id]))
    }
}

/// The keys of one team's index whose job started at or before `cutoff` (it ran its minimum run
/// time) and whose priority is below a bound, in order. Within a priority the index holds the
/// latest starts first, so the jobs still too young to preempt are a prefix of each priority's
/// keys: the walk jumps over it with one range query per priority instead of reading every
/// young job.
struct OldEnough<'s> {
    keys: &'s BTreeSet<VictimKey>,
    range: btree_set::Range<'s, VictimKey>,
    /// The first key of the priority bound (excluded).
    end: Bound<VictimKey>,
    /// `None`: no job has run its minimum run time yet.
    cutoff: Option<u64>,
}

impl<'s> OldEnough<'s> {
    /// The keys of jobs old enough at `now_ms`, of a priority below `below` if given.
    fn new(keys: &'s BTreeSet<VictimKey>, now_ms: u64, min_runtime_ms: u64, below: Option<i32>) -> Self {
        let end = below.map_or(Bound::Unbounded, |p| Bound::Excluded((p, Reverse(u64::MAX), JobId(0))));
        OldEnough { keys, range: keys.range((Bound::Unbounded, end)), end, cutoff: now_ms.checked_sub(min_runtime_ms) }
    }
}

impl Iterator for OldEnough<'_> {
    type Item = VictimKey;

    fn next(&mut self) -> Option<VictimKey> {
        let cutoff = self.cutoff?;
        loop {
            let &(priority, Reverse(started), id) = self.range.next()?;
            if started <= cutoff {
                return Some((priority, Reverse(started), id));
            }
            self.range = self.keys.range((Bound::Included((priority, Reverse(cutoff), JobId(0))), self.end));
        }
    }
}

impl<'s> Cycle<'s> {
    /// The running jobs of flavor `f` that may be preempted now, of the team rows that `take`
    /// accepts, of a priority below `below` if given, cheapest first.
    fn preemptible(&self, f: FlavorIx, take: impl Fn(usize) -> bool, below: Option<i32>) -> Preemptible<'s> {
        let state = self.view.state;
        let teams = self
            .victim_teams(f)
            .iter()
            .filter(|&&(row, _)| take(row))
            .map(|&(row, keys)| (row, OldEnough::new(keys, self.now_ms, self.policy.min_runtime_ms, below).peekable()))
            .collect();
        Preemptible { state, teams }
    }

    /// The state's index of running jobs that may be preempted on flavor `f`, per team row,
    /// looked up once per cycle (finding a team's row goes by its name).
    fn victim_teams(&self, f: FlavorIx) -> &[(usize, &'s BTreeSet<VictimKey>)] {
        let state = self.view.state;
        let flavors = self.victim_teams.get_or_init(|| self.view.flavors.iter().map(|_| OnceCell::new()).collect());
        flavors[f.ix()].get_or_init(|| {
            let teams = state.times.victims(&self.view.flavors[f.ix()]);
            teams.filter_map(|(team, keys)| Some((self.view.team_row(state.accounts.team(team)?)?, keys))).collect()
        })
    }

    /// Every running job of flavor `f` that may be preempted now, of every team, cheapest
    /// first: what least-attained-service searches filter by level; read once per cycle.
    fn running_on(&mut self, f: FlavorIx) -> Rc<[(usize, &'s Job)]> {
        if let Some(all) = self.las_running.get(&f) {
            return Rc::clone(all);
        }
        let all: Rc<[_]> = self.preemptible(f, |_| true, None).collect();
        self.las_running.insert(f, Rc::clone(&all));
        all
    }

    /// Whether a victim set of this cycle holds `job`.
    fn taken(&self, job: &Job) -> bool {
        self.victims.as_ref().is_some_and(|v| v.contains(&job.id))
    }

    /// Running jobs of flavor `f` that may be victims of `job` (of team row `t`), at most
    /// `max_preemption_candidates` of them. Under least attained service, the running jobs of a
    /// higher service level than the job's (the same for every job of its level until a victim
    /// is taken, so kept for the cycle until then). Under the quota rules, first the jobs of
    /// other teams that hold more than their nominal (taking one pays back a loan), then the
    /// team's own lower-priority jobs; cheapest first within each. Jobs that can never be
    /// victims are left out before the cap, so that they cannot crowd out those that can.
    pub(super) fn candidates(&mut self, job: &Job, t: usize, f: FlavorIx) -> Rc<[Candidate<'s>]> {
        let policy = self.policy;
        let limit = policy.max_preemption_candidates as usize;
        let (las, now) = (self.las(), self.now_ms);
        let level = policy.las_level(job.attained_at(now));
        if las {
            if let Some(found) = self.las_candidates.get(&(f, level)) {
                return Rc::clone(found);
            }
        }
        let found: Vec<(usize, &'s Job)> = if las {
            let higher = |j: &Job| policy.las_level(j.attained_at(now)) > level;
            let all = self.running_on(f);
            all.iter().filter(|(_, j)| !self.taken(j) && higher(j)).take(limit).copied().collect()
        } else {
            let lender = |row: usize| self.kept(row, f, &super::Trial::default()) > self.nominal(row, f);
            let reclaim = self.preemptible(f, |row| row != t && policy.reclaim && lender(row), None);
            let own = self.preemptible(f, |row| row == t && policy.within_team_preemption, Some(job.priority));
            reclaim.chain(own).filter(|(_, j)| !self.taken(j)).take(limit).collect()
        };
        let found: Rc<[Candidate<'s>]> = found.into_iter().map(|(team, job)| self.candidate(team, job)).collect();
        if las {
            self.las_candidates.insert((f, level), Rc::clone(&found));
        }
        found
    }

    /// Candidate `job` of team row `team`, with its slot for its device masks.
    fn candidate(&mut self, team: usize, job: &'s Job) -> Candidate<'s> {
        let masks = &mut self.candidate_masks;
        let slot = *self.candidate_slots.entry(job.id).or_insert_with(|| {
            masks.push(OnceCell::new());
            masks.len() - 1
        });
        Candidate { job, team, slot }
    }

    /// Devices of every preemptible running job of team row `t` on `f` with a lower priority
    /// than `job` that no victim set of this cycle holds: at least what its own candidates hold,
    /// so a job that does not fit its nominal even with these fails before its candidates are
    /// gathered.
    pub(super) fn own_lower(&self, job: &Job, t: usize, f: FlavorIx) -> u32 {
        if !self.policy.within_team_preemption {
            return 0;
        }
        self.preemptible(f, |row| row == t, Some(job.priority))
            .filter(|(_, j)| !self.taken(j))
            .map(|(_, j)| j.spec.gang.total_devices())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Jumping over each priority's young jobs yields exactly the jobs that ran their
        /// minimum run time, below the priority bound, in the index's order.
        #[test]
        fn the_jump_over_young_jobs_keeps_exactly_the_old_enough(
            jobs in prop::collection::vec((-2..3i32, 0..100u64), 0..40),
            now in 0..150u64,
            min_runtime in 0..60u64,
            below in prop::option::of(-3..4i32),
        ) {
            let keys: BTreeSet<VictimKey> =
                jobs.iter().enumerate().map(|(i, &(p, s))| (p, Reverse(s), JobId(i as u64))).collect();
            let expected: Vec<VictimKey> = keys
                .iter()
                .filter(|(p, Reverse(s), _)| s.saturating_add(min_runtime) <= now && below.is_none_or(|b| *p < b))
                .copied()
                .collect();
            prop_assert_eq!(OldEnough::new(&keys, now, min_runtime, below).collect::<Vec<_>>(), expected);
        }
    }
}
