//! Gathering a search's candidates from the state's index of running jobs that may be preempted
//! (`Times::victims`: per flavor and team, cheapest first): only the teams a search may take
//! from are read, merged in the order of the index, and reading stops at the cap. A cycle no
//! longer lists and sorts every running job.

use super::{Candidate, Cycle};
use crate::job::Job;
use crate::schedule::view::FlavorIx;
use crate::state::times::VictimKey;
use crate::state::State;
use std::cell::OnceCell;
use std::collections::btree_set;
use std::iter::Peekable;
use std::rc::Rc;

/// The running jobs of some teams that may be preempted now, with their team rows, cheapest
/// first across the teams.
struct Preemptible<'s> {
    state: &'s State,
    teams: Vec<(usize, Peekable<btree_set::Iter<'s, VictimKey>>)>,
    now_ms: u64,
    min_runtime_ms: u64,
}

impl<'s> Iterator for Preemptible<'s> {
    type Item = (usize, &'s Job);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let heads = self.teams.iter_mut().enumerate().filter_map(|(i, (_, keys))| keys.peek().map(|k| (**k, i)));
            let (_, i) = heads.min()?;
            let (row, keys) = &mut self.teams[i];
            let (_, _, id) = *keys.next().expect("peeked");
            let job = &self.state.jobs()[&id];
            if job.preemptible_at(self.now_ms, self.min_runtime_ms) {
                return Some((*row, job));
            }
        }
    }
}

impl<'s> Cycle<'s> {
    /// The running jobs of flavor `f` that may be preempted now, of the team rows that `take`
    /// accepts, cheapest first.
    fn preemptible(&self, f: FlavorIx, take: impl Fn(usize) -> bool) -> Preemptible<'s> {
        let state = self.view.state;
        let teams = state
            .times
            .victims(&self.view.flavors[f.ix()])
            .filter_map(|(team, keys)| Some((self.view.team_row(state.accounts.team(team)?)?, keys)))
            .filter(|&(row, _)| take(row))
            .map(|(row, keys)| (row, keys.iter().peekable()))
            .collect();
        Preemptible { state, teams, now_ms: self.now_ms, min_runtime_ms: self.policy.min_runtime_ms }
    }

    /// Every running job of flavor `f` that may be preempted now, of every team, cheapest
    /// first: what least-attained-service searches filter by level; read once per cycle.
    fn running_on(&mut self, f: FlavorIx) -> Rc<[(usize, &'s Job)]> {
        if let Some(all) = self.las_running.get(&f) {
            return Rc::clone(all);
        }
        let all: Rc<[_]> = self.preemptible(f, |_| true).collect();
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
            let reclaim = self.preemptible(f, |row| row != t && policy.reclaim && lender(row));
            let own = self
                .preemptible(f, |row| row == t && policy.within_team_preemption)
                .take_while(|(_, j)| j.priority < job.priority);
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
        self.preemptible(f, |row| row == t)
            .take_while(|(_, j)| j.priority < job.priority)
            .filter(|(_, j)| !self.taken(j))
            .map(|(_, j)| j.spec.gang.total_devices())
            .sum()
    }
}
