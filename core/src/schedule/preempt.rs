//! Preemption: a pure, bounded search on the cycle's scratch view (after Kueue): take the
//! cheapest eligible victims one by one until the preemptor fits, then give back every victim
//! that is not needed, most expensive first. The preemptor must end within its team's nominal
//! quota: nobody preempts in order to borrow.

use super::place::{Pick, Shape};
use super::Cycle;
use crate::ids::{JobId, TeamId};
use crate::job::{Job, JobState};
use crate::plan::{Preemption, PreemptionRule};
use crate::resource::Flavor;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// A chosen victim set and the devices the preemptor will take once they exit.
pub(crate) struct Found {
    pub victims: Vec<Preemption>,
    pub picks: Vec<Pick>,
}

/// The victims taken so far in one search.
struct Trial<'s> {
    chosen: Vec<&'s Job>,
}

impl<'s> Cycle<'s> {
    /// Running jobs of `flavor` that may be victims of `job`, cheapest first.
    fn candidates(&mut self, job: &Job, flavor: &Flavor) -> Vec<&'s Job> {
        let state = self.view.state;
        let (policy, now) = (self.policy, self.now_ms);
        let running = self.running.get_or_insert_with(|| {
            let mut by_flavor: BTreeMap<Flavor, Vec<JobId>> = BTreeMap::new();
            for j in state.jobs().values().filter(|j| j.state == JobState::Running) {
                if let Some(a) = &j.assignment {
                    by_flavor.entry(a.flavor.clone()).or_default().push(j.id);
                }
            }
            by_flavor
        });
        let mut out: Vec<&'s Job> = running
            .get(flavor)
            .into_iter()
            .flatten()
            .map(|id| &state.jobs()[id])
            .filter(|c| !self.victims.contains(&c.id) && c.preemptible_at(now, policy.min_runtime_ms))
            .filter(|c| {
                if c.spec.team == job.spec.team {
                    policy.within_team_preemption && c.priority < job.priority
                } else {
                    policy.reclaim
                }
            })
            .collect();
        out.sort_by_key(|c| (c.priority, Reverse(c.started_ms), c.id));
        out.truncate(self.policy.max_preemption_candidates as usize);
        out
    }

    /// Devices of `shape`'s flavor that the trial's victims hold, per node.
    fn freed(&self, trial: &Trial<'_>) -> BTreeMap<u32, u64> {
        let mut extra: BTreeMap<u32, u64> = BTreeMap::new();
        for v in &trial.chosen {
            for (n, m) in self.view.job_masks(v) {
                *extra.entry(n).or_default() |= m;
            }
        }
        extra
    }

    /// Devices of `team` freed by the trial's victims and by victims chosen earlier this cycle.
    fn removed(&self, trial: &Trial<'_>, team: &TeamId, flavor: &Flavor) -> u32 {
        let earlier = self.victim_devices.get(&(team.clone(), flavor.clone())).copied().unwrap_or(0);
        earlier + trial.chosen.iter().filter(|v| &v.spec.team == team).map(|v| v.spec.gang.total_devices()).sum::<u32>()
    }

    /// Where the preemptor would go if the trial's victims exited; `None` if it would not fit,
    /// or would not be within its nominal quota.
    fn fits(&self, job: &Job, flavor: &Flavor, shape: &Shape, base: &[u32], trial: &Trial<'_>) -> Option<Vec<Pick>> {
        let team = &job.spec.team;
        let nominal = self.view.team(team).quotas.get(flavor).map_or(0, |q| q.nominal);
        let kept = self.view.usage(team, flavor).saturating_sub(self.removed(trial, team, flavor));
        let after = u64::from(kept) + u64::from(shape.replicas) * u64::from(shape.count);
        if after > u64::from(nominal) {
            return None;
        }
        let extra = self.freed(trial);
        let mut nodes: Vec<u32> = base.iter().copied().chain(extra.keys().copied()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let avail = |n: u32, nv: &super::view::NodeView| {
            nv.free | nv.releasing | (extra.get(&n).copied().unwrap_or(0) & nv.healthy)
        };
        self.view.assign(shape, &nodes, self.policy.placement, avail)
    }

    /// Whether victim `c` of another team may be taken: its team holds more than its nominal,
    /// counting what it will hold once the victims chosen so far exit. Usage is the committed
    /// one: work placed in this very cycle is not running yet and cannot be a victim, so it
    /// must not make an older job look borrowed.
    fn reclaimable(&self, c: &Job, flavor: &Flavor, trial: &Trial<'_>) -> bool {
        let t = &c.spec.team;
        let nominal = self.view.team(t).quotas.get(flavor).map_or(0, |q| q.nominal);
        self.view.state.usage(t, flavor).saturating_sub(self.removed(trial, t, flavor)) > nominal
    }

    /// Searches a minimal set of whole gangs whose preemption makes room for `job` on `flavor`.
    pub(crate) fn preempt(&mut self, job: &Job, flavor: &Flavor, shape: &Shape, base: &[u32]) -> Result<Found, String> {
        let budget = self.policy.max_victims_per_cycle as usize;
        if self.victims.len() >= budget {
            return Err(format!("the cycle's victim budget ({budget}) is spent"));
        }
        let candidates = self.candidates(job, flavor);
        if candidates.is_empty() {
            return Err(format!("no running job of {flavor} may be preempted for it"));
        }
        let team = &job.spec.team;
        let own: u32 = candidates.iter().filter(|c| &c.spec.team == team).map(|c| c.spec.gang.total_devices()).sum();
        let empty = Trial { chosen: Vec::new() };
        let nominal = self.view.team(team).quotas.get(flavor).map_or(0, |q| q.nominal);
        let best = self.view.usage(team, flavor).saturating_sub(self.removed(&empty, team, flavor)).saturating_sub(own);
        if u64::from(best) + u64::from(job.spec.gang.total_devices()) > u64::from(nominal) {
            return Err(format!(
                "it would not fit the team's nominal of {nominal} even after preempting the team's own \
                 lower-priority jobs; nobody preempts in order to borrow"
            ));
        }
        let mut trial = empty;
        let mut picks = None;
        for c in &candidates {
            if self.victims.len() + trial.chosen.len() >= budget {
                break;
            }
            if c.spec.team != job.spec.team && !self.reclaimable(c, flavor, &trial) {
                continue;
            }
            trial.chosen.push(c);
            picks = self.fits(job, flavor, shape, base, &trial);
            if picks.is_some() {
                break;
            }
        }
        let Some(mut picks) = picks else {
            return Err(format!(
                "preempting all {} eligible job(s) of {flavor} would not make room within the team's nominal",
                trial.chosen.len()
            ));
        };
        for i in (0..trial.chosen.len()).rev() {
            let v = trial.chosen.remove(i);
            match self.fits(job, flavor, shape, base, &trial) {
                Some(p) => picks = p,
                None => trial.chosen.insert(i, v),
            }
        }
        let victims = trial
            .chosen
            .iter()
            .map(|v| Preemption {
                victim: v.id,
                preemptor: job.id,
                rule: if v.spec.team == job.spec.team { PreemptionRule::WithinTeam } else { PreemptionRule::Reclaim },
            })
            .collect();
        for v in &trial.chosen {
            let key = (v.spec.team.clone(), flavor.clone());
            *self.victim_devices.entry(key).or_default() += v.spec.gang.total_devices();
            self.victims.insert(v.id);
            self.view.add_releasing(v);
        }
        Ok(Found { victims, picks })
    }
}
