//! Preemption: a pure, bounded search on the cycle's scratch view (after Kueue): take the
//! cheapest eligible victims one by one until the preemptor fits, then give back every victim
//! that is not needed, most expensive first, until no victim can be left out. The preemptor
//! must end within its team's nominal quota (nobody preempts in order to borrow), or, when all
//! its victims are its own team's, at no more than the team holds now (a team that borrows may
//! still put its priorities in order, as long as it borrows no more).

mod candidates;
mod exact;

use super::place::{Pick, Shape};
use super::view::{FlavorIx, NodeView};
use super::Cycle;
use crate::job::Job;
use crate::plan::{Preemption, PreemptionRule};
use crate::state::times::VictimKey;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A chosen victim set and the devices the preemptor will take once they exit.
pub(crate) struct Found {
    pub victims: Vec<Preemption>,
    pub picks: Vec<Pick>,
}

/// A candidate's device masks per node index, worked out when a search first asks.
pub(crate) type LazyMasks = OnceCell<Box<[(u32, u64)]>>;

/// The running jobs of a flavor that may be preempted, per team row (the state's index),
/// looked up when a search first asks.
pub(crate) type VictimTeams<'s> = OnceCell<Vec<(usize, &'s BTreeSet<VictimKey>)>>;

/// A list of candidates, and the devices they hold, per node (node index, mask).
pub(crate) type AllFreed<'s> = (Rc<[Candidate<'s>]>, Rc<BTreeMap<u32, u64>>);

/// A possible victim, its team row, and its slot in the cycle's `candidate_masks`: the devices
/// it holds (node index, mask), worked out the first time a search asks (most candidates of a
/// cycle are never asked).
#[derive(Clone)]
pub(crate) struct Candidate<'s> {
    job: &'s Job,
    team: usize,
    slot: usize,
}

/// The victims taken so far in one search.
#[derive(Default)]
struct Trial<'s> {
    chosen: Vec<Candidate<'s>>,
}

impl<'s> Cycle<'s> {
    /// The devices candidate `c` holds, per node index.
    fn masks(&self, c: &Candidate<'_>) -> &[(u32, u64)] {
        self.candidate_masks[c.slot].get_or_init(|| self.view.job_masks(c.job).into())
    }

    /// Victims chosen so far in this cycle.
    fn victim_count(&self) -> usize {
        self.victims.as_ref().map_or(0, |v| v.len())
    }

    /// Devices the victims hold, per node.
    fn freed(&self, victims: &[Candidate<'_>]) -> BTreeMap<u32, u64> {
        let mut extra: BTreeMap<u32, u64> = BTreeMap::new();
        for v in victims {
            for &(n, m) in self.masks(v) {
                *extra.entry(n).or_default() |= m;
            }
        }
        extra
    }

    /// Devices of team row `t` freed by the trial's victims and by victims chosen earlier.
    fn removed(&self, trial: &Trial<'_>, t: usize, f: FlavorIx) -> u32 {
        let earlier = self.victim_devices.as_ref().and_then(|d| d.get(&(t, f))).copied().unwrap_or(0);
        earlier + trial.chosen.iter().filter(|v| v.team == t).map(|v| v.job.spec.gang.total_devices()).sum::<u32>()
    }

    fn nominal(&self, t: usize, f: FlavorIx) -> u32 {
        self.view.quota(t, f).map_or(0, |q| q.nominal)
    }

    /// The most team row `t` may hold on `f` once the preemptor runs: its nominal, or, when
    /// every victim is its own, what it will hold once the victims chosen before this search
    /// exit (it then borrows no more than it does).
    fn ceiling(&self, t: usize, f: FlavorIx, own_only: bool) -> u64 {
        let nominal = self.nominal(t, f);
        let settled = self.view.usage(t, f).saturating_sub(self.removed(&Trial::default(), t, f));
        u64::from(if own_only { nominal.max(settled) } else { nominal })
    }

    /// Where the preemptor would go if the trial's victims exited; `None` if it would not fit,
    /// or would not be within its nominal quota.
    fn fits(&self, t: usize, shape: &Shape, base: &[u32], trial: &Trial<'_>) -> Option<Vec<Pick>> {
        self.fits_freeing(t, shape, base, trial, &self.freed(&trial.chosen))
    }

    /// `fits`, given the devices the trial's victims hold (`freed`), which a search that adds
    /// victims one by one keeps up to date.
    fn fits_freeing(
        &self,
        t: usize,
        shape: &Shape,
        base: &[u32],
        trial: &Trial<'_>,
        extra: &BTreeMap<u32, u64>,
    ) -> Option<Vec<Pick>> {
        let f = shape.flavor;
        let kept = self.view.usage(t, f).saturating_sub(self.removed(trial, t, f));
        let after = u64::from(kept) + u64::from(shape.replicas) * u64::from(shape.count);
        if !self.las() && after > self.ceiling(t, f, trial.chosen.iter().all(|v| v.team == t)) {
            return None;
        }
        let mut nodes: Vec<u32> = base.iter().copied().chain(extra.keys().copied()).collect();
        // Two sorted runs: the stable sort merges them in one pass.
        nodes.sort();
        nodes.dedup();
        let avail = |n: u32, nv: &NodeView| nv.free | nv.releasing | (extra.get(&n).copied().unwrap_or(0) & nv.healthy);
        self.view.picks(shape, &nodes, self.policy.placement, avail)
    }

    /// Whether victim `c` of another team may be taken: its team holds more than its nominal,
    /// counting what it will hold once the victims chosen so far exit; with `keep_nominal`, it
    /// must still hold at least its nominal once `c` exits too. Usage is the committed one: work
    /// placed in this very cycle is not running yet and cannot be a victim, so it must not make
    /// an older job look borrowed.
    fn reclaimable(&self, c: &Candidate<'_>, f: FlavorIx, trial: &Trial<'_>, keep_nominal: bool) -> bool {
        let kept = self.kept(c.team, f, trial);
        let nominal = self.nominal(c.team, f);
        kept > nominal && (!keep_nominal || kept.saturating_sub(c.job.spec.gang.total_devices()) >= nominal)
    }

    /// What team row `t` holds on `f`, committed, once the trial's victims and those chosen
    /// before exit.
    fn kept(&self, t: usize, f: FlavorIx, trial: &Trial<'_>) -> u32 {
        self.view.committed_usage(t, f).saturating_sub(self.removed(trial, t, f))
    }

    /// Searches a minimal set of whole gangs whose preemption makes room for `job` (of team row
    /// `t`) on the shape's flavor.
    pub(crate) fn preempt(&mut self, job: &Job, t: usize, shape: &Shape) -> Result<Found, String> {
        let f = shape.flavor;
        let budget = self.policy.max_victims_per_cycle as usize;
        if self.victim_count() >= budget {
            return Err(format!("the cycle's victim budget ({budget}) is spent"));
        }
        if !self.las() && !self.could_fit_nominal(job, t, f, self.own_lower(job, t, f)) {
            return Err(self.over_nominal(t, f));
        }
        let candidates = self.candidates(job, t, f);
        let own: u32 = candidates.iter().filter(|c| c.team == t).map(|c| c.job.spec.gang.total_devices()).sum();
        if !self.las() && !self.could_fit_nominal(job, t, f, own) {
            return Err(self.over_nominal(t, f));
        }
        if candidates.is_empty() {
            return Err(self.none_preemptible(job, t, f));
        }
        if self.preemption_attempts >= self.policy.max_preemption_attempts_per_cycle {
            return Err("the cycle's preemption search budget is spent".to_owned());
        }
        self.preemption_attempts += 1;
        let base = self.partial_nodes(shape);
        if !self.policy.explain && self.out_of_reach(shape, &base, &candidates) {
            return Err("preempting every candidate would not make room".to_owned());
        }
        let room = budget - self.victim_count();
        let (trial, picks) = self
            .search(t, shape, &base, &candidates, budget, true)
            .or_else(|why| self.exact_search(t, shape, &base, &candidates, room).ok_or(why))
            .or_else(|_| self.search(t, shape, &base, &candidates, budget, false))?;
        Ok(self.take_victims(job, t, f, trial, picks))
    }

    /// Whether `job` (of team row `t`) would fit the most its team may hold on `f` if `own`
    /// devices of the team's own jobs were preempted: nobody preempts in order to borrow.
    fn could_fit_nominal(&self, job: &Job, t: usize, f: FlavorIx, own: u32) -> bool {
        let best = self.view.usage(t, f).saturating_sub(self.removed(&Trial::default(), t, f) + own);
        u64::from(best) + u64::from(job.spec.gang.total_devices()) <= self.ceiling(t, f, true)
    }

    fn over_nominal(&self, t: usize, f: FlavorIx) -> String {
        format!(
            "it would not fit the team's nominal of {} even after preempting the team's own lower-priority jobs; \
             nobody preempts in order to borrow",
            self.nominal(t, f)
        )
    }

    /// Whether no set of `candidates` could make room: even with all of them gone, the nodes
    /// (`base` and theirs) could not hold the shape's replicas by their devices, CPU and
    /// memory. Every search tries subsets of the candidates, and placement asks more than this
    /// count (locality, racks), so they would all fail; this says so without trying. What the
    /// candidates free is kept for the next search with the same list (least attained service
    /// shares one per service level).
    fn out_of_reach(&mut self, shape: &Shape, base: &[u32], candidates: &Rc<[Candidate<'s>]>) -> bool {
        let freed = match &self.all_freed {
            Some((list, freed)) if Rc::ptr_eq(list, candidates) => Rc::clone(freed),
            _ => {
                let freed = Rc::new(self.freed(candidates));
                self.all_freed = Some((Rc::clone(candidates), Rc::clone(&freed)));
                freed
            }
        };
        let mut room = Room::new(self, shape, base);
        for (&n, &m) in freed.iter() {
            room.set(self, shape, n, m);
        }
        !room.may_fit(shape)
    }

    /// Why no running job may be preempted for `job`: none would qualify, or those that would
    /// are still within their minimum run time (named, with when the first is free).
    fn none_preemptible(&self, job: &Job, t: usize, f: FlavorIx) -> String {
        let (state, policy, now) = (self.view.state, self.policy, self.now_ms);
        let flavor = &self.view.flavors[f.ix()];
        if !policy.explain {
            return format!("no running job of {flavor} may be preempted for it");
        }
        let qualifies = |j: &Job| match self.view.team_of(j) {
            Some(team) if team == t => policy.within_team_preemption && j.priority < job.priority,
            Some(team) => policy.reclaim && state.usage(&j.spec.team, flavor) > self.nominal(team, f),
            None => false,
        };
        let free_at: Vec<u64> = state
            .running()
            .iter()
            .map(|id| &state.jobs()[&id])
            .filter(|j| j.spec.preemptible && j.assignment.as_ref().is_some_and(|a| &a.flavor == flavor))
            .filter(|j| !j.preemptible_at(now, policy.min_runtime_ms) && qualifies(j))
            .filter_map(|j| j.started_ms.map(|s| s.saturating_add(policy.min_runtime_ms)))
            .collect();
        match free_at.iter().min() {
            Some(first) => format!(
                "no running job of {flavor} may be preempted for it yet: {} that could be ran less than the minimum \
                 run time ({} s); the first may be preempted in {} s",
                free_at.len(),
                policy.min_runtime_ms / 1000,
                first.saturating_sub(now).div_ceil(1000)
            ),
            None => format!("no running job of {flavor} may be preempted for it"),
        }
    }

    /// Adds the cheapest candidates until the preemptor fits, then gives back the unneeded. With
    /// `keep_nominal`, no victim may leave its team under its nominal (the first search; being
    /// greedy, it can spend a team's overage on a victim that does not help and then pass over
    /// one that would, so for a few candidates the exact search follows it). The last search,
    /// only when those found no room, allows it, so that a team's guarantee is not held hostage
    /// by another team's large borrowing job.
    fn search(
        &self,
        t: usize,
        shape: &Shape,
        base: &[u32],
        candidates: &[Candidate<'s>],
        budget: usize,
        keep_nominal: bool,
    ) -> Result<(Trial<'s>, Vec<Pick>), String> {
        let mut trial = Trial::default();
        let mut picks = None;
        let mut extra = BTreeMap::new();
        let mut room = Room::new(self, shape, base);
        for c in candidates {
            if self.victim_count() + trial.chosen.len() >= budget {
                break;
            }
            if !self.las() && c.team != t && !self.reclaimable(c, shape.flavor, &trial, keep_nominal) {
                continue;
            }
            trial.chosen.push(c.clone());
            for &(n, m) in self.masks(c) {
                *extra.entry(n).or_default() |= m;
            }
            room.free(self, shape, self.masks(c));
            picks = room.may_fit(shape).then(|| self.fits_freeing(t, shape, base, &trial, &extra)).flatten();
            if picks.is_some() {
                break;
            }
        }
        let Some(mut picks) = picks else {
            let flavor = &self.view.flavors[shape.flavor.ix()];
            return Err(format!(
                "preempting all {} eligible job(s) of {flavor} would not make room within the team's nominal",
                trial.chosen.len()
            ));
        };
        // Give back, most expensive first, every victim the others make unneeded; again until a
        // pass gives back none (a victim given back can make another unneeded: the team's own
        // victims alone may let it stay above its nominal). Then no victim can be left out.
        loop {
            let before = trial.chosen.len();
            for i in (0..trial.chosen.len()).rev() {
                let v = trial.chosen.remove(i);
                match self.fits(t, shape, base, &trial) {
                    Some(p) => picks = p,
                    None => trial.chosen.insert(i, v),
                }
            }
            if trial.chosen.len() == before {
                return Ok((trial, picks));
            }
        }
    }

    fn take_victims(&mut self, job: &Job, t: usize, f: FlavorIx, trial: Trial<'s>, picks: Vec<Pick>) -> Found {
        let victims = trial
            .chosen
            .iter()
            .map(|v| Preemption {
                victim: v.job.id,
                preemptor: job.id,
                rule: match (self.las(), v.team == t) {
                    (true, _) => PreemptionRule::LeastAttained,
                    (false, true) => PreemptionRule::WithinTeam,
                    (false, false) => PreemptionRule::Reclaim,
                },
            })
            .collect();
        self.las_candidates.clear();
        for v in &trial.chosen {
            *self.victim_devices.get_or_insert_default().entry((v.team, f)).or_default() +=
                v.job.spec.gang.total_devices();
            self.victims.get_or_insert_default().insert(v.job.id);
            self.view.add_releasing(v.job);
        }
        Found { victims, picks }
    }
}

/// How many of a shape's replicas some nodes could hold by their devices, CPU and memory, with
/// the devices of the victims so far freed: what a placement needs at least (it asks more:
/// locality, racks), kept up to date victim by victim for less than a placement costs.
struct Room<'b> {
    /// The nodes with free or releasing devices of the shape's flavor, sorted.
    base: &'b [u32],
    /// Per node a victim touched: the devices its victims free, and the replicas it could hold.
    nodes: BTreeMap<u32, (u64, u32)>,
    total: u64,
}

impl<'b> Room<'b> {
    /// The room on `base`, the nodes with free or releasing devices of the shape's flavor
    /// (sorted).
    fn new(cycle: &Cycle<'_>, shape: &Shape, base: &'b [u32]) -> Self {
        let total = base.iter().map(|&n| u64::from(Self::fit(cycle, shape, n, 0))).sum();
        Room { base, nodes: BTreeMap::new(), total }
    }

    /// Frees the devices of a victim (node index, mask).
    fn free(&mut self, cycle: &Cycle<'_>, shape: &Shape, masks: &[(u32, u64)]) {
        for &(n, m) in masks {
            let freed = self.nodes.get(&n).map_or(0, |&(freed, _)| freed) | m;
            self.set(cycle, shape, n, freed);
        }
    }

    /// Replicas node `n` could hold with `freed` devices freed.
    fn fit(cycle: &Cycle<'_>, shape: &Shape, n: u32, freed: u64) -> u32 {
        let nv = cycle.view.node(n);
        let avail = (nv.free | nv.releasing | (freed & nv.healthy)) & cycle.view.mask_of(n, shape.flavor);
        super::place::replicas_fit(shape, avail.count_ones(), nv.cpu_free, nv.mem_free)
    }

    fn set(&mut self, cycle: &Cycle<'_>, shape: &Shape, n: u32, freed: u64) {
        let fit = Self::fit(cycle, shape, n, freed);
        let before = match self.nodes.insert(n, (freed, fit)) {
            Some((_, before)) => before,
            None if self.base.binary_search(&n).is_ok() => Self::fit(cycle, shape, n, 0),
            None => 0,
        };
        self.total = self.total - u64::from(before) + u64::from(fit);
    }

    /// Whether the shape's replicas could fit by this count.
    fn may_fit(&self, shape: &Shape) -> bool {
        self.total >= u64::from(shape.replicas)
    }
}
