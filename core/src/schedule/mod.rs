//! `schedule`: one scheduling cycle, a pure function of a state snapshot, the policy and the
//! time. The leader, the simulator and the benchmarks all call it.
//!
//! A cycle: build a scratch view (`view.rs`); walk the pending jobs in queue order (`queue.rs`);
//! for each, try its acceptable flavors in preference order: quota admission (`quota.rs`), then
//! placement on free devices (`place.rs`); if none fits, wait for devices that stopping jobs
//! are releasing, or search for victims (`preempt.rs`), or, for a job that waited long enough,
//! reserve the nodes it needs, and let in later jobs that end before the reservation starts
//! (`reserve.rs`). Jobs of a shape that failed are answered
//! from a per-cycle cache: capacity only shrinks within a cycle, so the answer stands; a cycle
//! that explains nothing jumps over them (`park.rs`; the global queues by submission shape by
//! shape, `streams.rs`).

mod overlay;
mod park;
mod place;
mod preempt;
mod queue;
mod quiet;
mod reserve;
mod streams;
mod view;

use crate::ids::JobId;
use crate::job::{Assignment, GangSpec, Job, ReplicaAssignment};
use crate::layout::PositionHint;
use crate::plan::{AttemptOutcome, FlavorAttempt, PendingReason, Placement, PlacementReport, Plan, QuotaDenial};
use crate::policy::{PolicyConfig, QueueOrder, QueueingStrategy};
use crate::quota::Admission;
use crate::resource::Flavor;
use crate::state::nodes;
use crate::state::State;
use place::{Pick, Shape};
pub use quiet::{arrivals_inert, same_decisions_between};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
pub use view::Scratch;
use view::{FlavorIx, View};

/// Runs one scheduling cycle at `now_ms`: what to start, whom to preempt, which jobs ran past
/// their maximum runtime, and why each job looked at stays pending.
pub fn schedule(state: &State, policy: &PolicyConfig, now_ms: u64) -> Plan {
    schedule_with(state, policy, now_ms, &mut Scratch::default())
}

/// `schedule`, with buffers kept between cycles by a caller that runs many (the plan is the
/// same; only allocations are saved).
pub fn schedule_with(state: &State, policy: &PolicyConfig, now_ms: u64, scratch: &mut Scratch) -> Plan {
    plan_cycle(state, policy, now_ms, scratch, true)
}

/// `schedule_with`; with `parking` off, the jobs passed over are answered one by one (what a
/// cycle that explains itself does), which decides the same.
fn plan_cycle(state: &State, policy: &PolicyConfig, now_ms: u64, scratch: &mut Scratch, parking: bool) -> Plan {
    if let Some(blocked) = nothing_to_do(state, policy) {
        let mut plan = Plan { at_ms: now_ms, ..Plan::default() };
        plan.decisions.expired = state.expired(now_ms).collect();
        plan.stats.pending = blocked;
        plan.stats.blocked = blocked;
        return plan;
    }
    let mut cycle = Cycle::new(state, policy, now_ms, scratch);
    cycle.parking = parking;
    cycle.plan.decisions.expired = state.expired(now_ms).collect();
    cycle.run();
    cycle.plan
}

/// Whether a cycle provably can place nothing, checked before the view is built (what makes
/// cycles cheap for a leader or a simulator whose cluster is full): no pending job; or, when
/// no explanations are asked for, no device at all (no node registered yet); or no preemption and no free device; or no
/// preemption and a strict global queue whose head needs more devices than are free in its
/// flavors. Returns the number of pending jobs then.
fn nothing_to_do(state: &State, policy: &PolicyConfig) -> Option<u32> {
    let pending = state.pending_count() as u32;
    if pending == 0 || (!policy.explain && state.capacity().values().all(|&c| c == 0)) {
        return Some(pending);
    }
    let las = policy.las_preemption && policy.order == QueueOrder::LeastAttained;
    if policy.reclaim || policy.within_team_preemption || las {
        return None;
    }
    if state.none_free() {
        return Some(pending);
    }
    let head = match (policy.queueing, policy.order) {
        (QueueingStrategy::StrictFifo, QueueOrder::Fifo) => state.fifo().first(),
        (QueueingStrategy::StrictFifo, QueueOrder::ShortestFirst) => state.shortest().first().map(|k| k.2),
        _ => None,
    }?;
    let job = &state.jobs()[&head];
    (u64::from(job.spec.gang.total_devices()) > state.free_for(job)?).then_some(pending)
}

/// Jobs alike in everything admission, placement and preemption look at: in one cycle, a job
/// with the key of a job that failed fails alike, so its failure is reused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeKey {
    team: usize,
    flavors: Vec<FlavorIx>,
    replicas: u32,
    count: u32,
    cpu: u64,
    mem: u64,
    priority: i32,
    preemptible: bool,
}

impl ShapeKey {
    fn new(team: usize, flavors: &[FlavorIx], gang: &GangSpec, priority: i32, preemptible: bool) -> Self {
        ShapeKey {
            team,
            flavors: flavors.to_vec(),
            replicas: gang.replicas,
            count: gang.devices.count,
            cpu: gang.cpu_millis,
            mem: gang.mem_mib,
            priority,
            preemptible,
        }
    }
}

/// What a failed shape got, reused for the jobs of the same shape.
struct Failure {
    attempts: Vec<FlavorAttempt>,
    preemption: Option<String>,
}

/// What happened to one job in this cycle.
enum Verdict {
    Placed,
    Preempting(u32),
    Waiting,
    Unschedulable(Rc<Failure>),
    /// Unschedulable, and devices were reserved for it.
    Reserved(Rc<Failure>, reserve::Reservation),
}

/// A cycle's memos are built at their first entry (`None` until then): a cycle that only
/// places, as most of a simulated run's do, builds and drops no map.
pub(crate) struct Cycle<'s> {
    view: View<'s>,
    policy: &'s PolicyConfig,
    now_ms: u64,
    plan: Plan,
    failed: Option<BTreeMap<ShapeKey, Rc<Failure>>>,
    /// Shapes that did not fit the free devices: whoever asks, they will not fit this cycle.
    unfit: Option<BTreeMap<Shape, AttemptOutcome>>,
    victims: Option<BTreeSet<JobId>>,
    /// Devices per (team row, flavor) that this cycle's victims will give back.
    victim_devices: Option<BTreeMap<(usize, FlavorIx), u32>>,
    /// Each candidate's slot in `candidate_masks`, by job.
    candidate_slots: BTreeMap<JobId, usize>,
    /// The device masks of the candidates, by their slot, filled when asked.
    candidate_masks: Vec<preempt::LazyMasks>,
    /// Per flavor, the state's index of running jobs that may be preempted, per team row
    /// (allocated at a cycle's first search).
    victim_teams: OnceCell<Box<[preempt::VictimTeams<'s>]>>,
    /// Every running job of a flavor that may be preempted, for least-attained-service searches.
    las_running: BTreeMap<FlavorIx, Rc<[(usize, &'s Job)]>>,
    /// Least-attained-service candidates per (flavor, service level), until a victim is taken.
    las_candidates: BTreeMap<(FlavorIx, usize), Rc<[preempt::Candidate<'s>]>>,
    /// The devices a list of candidates holds, per node, for the last list a search asked.
    all_freed: Option<preempt::AllFreed<'s>>,
    preemption_attempts: u32,
    /// Devices held back for the reservations made so far.
    held: Vec<reserve::Held>,
    /// Whether the walk may park teams whose jobs left all failed (`park.rs`); off only to
    /// check that parking changes no decision.
    parking: bool,
}

impl<'s> Cycle<'s> {
    fn new(state: &'s State, policy: &'s PolicyConfig, now_ms: u64, scratch: &'s mut Scratch) -> Self {
        Cycle {
            view: View::build(state, scratch),
            victim_teams: OnceCell::new(),
            policy,
            now_ms,
            plan: Plan { at_ms: now_ms, ..Plan::default() },
            failed: None,
            unfit: None,
            victims: None,
            victim_devices: None,
            candidate_slots: BTreeMap::new(),
            candidate_masks: Vec::new(),
            las_running: BTreeMap::new(),
            las_candidates: BTreeMap::new(),
            all_freed: None,
            preemption_attempts: 0,
            held: Vec::new(),
            parking: true,
        }
    }

    fn key(job: &Job, t: usize, flavors: &[FlavorIx]) -> ShapeKey {
        ShapeKey::new(t, flavors, &job.spec.gang, job.priority, job.spec.preemptible)
    }

    /// Whether the least-attained-service preemption rule is on.
    fn las(&self) -> bool {
        self.policy.las_preemption && self.policy.order == crate::policy::QueueOrder::LeastAttained
    }

    fn shape(&self, job: &Job, f: FlavorIx) -> Shape {
        let g = &job.spec.gang;
        let one_rack = self.policy.rack_placement == crate::policy::RackPlacement::Required
            && g.replicas > 1
            && self.view.rack_count() > 0;
        Shape { flavor: f, replicas: g.replicas, count: g.devices.count, cpu: g.cpu_millis, mem: g.mem_mib, one_rack }
    }

    /// Looks at one job of team row `t`, which accepts `flavors`: place it, or find it room, or
    /// say why not.
    fn try_job(&mut self, job: &'s Job, t: usize, flavors: &[FlavorIx]) -> Verdict {
        // The key is built only once a shape failed: most jobs are placed at their first look.
        let cached = self.failed.as_ref().and_then(|failed| failed.get(&Self::key(job, t, flavors)));
        if let Some(f) = cached.map(Rc::clone) {
            self.plan.stats.cache_hits += 1;
            if self.may_backfill(job) && self.backfill(job, t, &self.nominal_first(job, t, flavors)) {
                return Verdict::Placed;
            }
            return Verdict::Unschedulable(f);
        }
        let mut attempts = Vec::new();
        let ordered = self.nominal_first(job, t, flavors);
        for &f in ordered.iter() {
            match self.try_flavor(job, t, f) {
                Ok(()) => return Verdict::Placed,
                Err(outcome) => attempts.push(FlavorAttempt { flavor: self.view.flavors[f.ix()].clone(), outcome }),
            }
        }
        if self.may_backfill(job) && self.backfill(job, t, &ordered) {
            return Verdict::Placed;
        }
        let mut preemption = None;
        for &f in ordered.iter() {
            match self.make_room(job, t, f) {
                Ok(v) => return v,
                Err(why) => preemption = preemption.or(why),
            }
        }
        let failure = Rc::new(Failure { attempts, preemption });
        self.failed.get_or_insert_default().insert(Self::key(job, t, flavors), Rc::clone(&failure));
        match self.reserve_for_waiting(job, t, &ordered, &failure) {
            Some(reservation) => Verdict::Reserved(failure, reservation),
            None => Verdict::Unschedulable(failure),
        }
    }

    /// The flavors to try, in order. A job that names models tries them in its order; one that
    /// names none tries first the flavors where it fits its team's nominal, then those where it
    /// would borrow, each in flavor order: it never borrows another team's devices while its
    /// own guaranteed ones are idle.
    fn nominal_first<'f>(&self, job: &Job, t: usize, flavors: &'f [FlavorIx]) -> Cow<'f, [FlavorIx]> {
        if !job.spec.gang.devices.models.is_empty() || flavors.len() < 2 {
            return Cow::Borrowed(flavors);
        }
        let total = job.spec.gang.total_devices();
        let borrows = |f: &FlavorIx| {
            let nominal = self.view.quota(t, *f).map_or(0, |q| q.nominal);
            u64::from(self.view.usage(t, *f)) + u64::from(total) > u64::from(nominal)
        };
        let mut ordered = flavors.to_vec();
        ordered.sort_by_key(borrows);
        Cow::Owned(ordered)
    }

    /// Whether quota admits the job on flavor `f` now. A job that may not be preempted may not
    /// borrow: its loan could never be paid back.
    fn admit(&self, job: &Job, t: usize, f: FlavorIx) -> Result<Admission, QuotaDenial> {
        let q = self.view.quota(t, f).expect("acceptable flavors have quota");
        let (usage, request) = (self.view.usage(t, f), job.spec.gang.total_devices());
        let admission = self.view.ledgers[f.ix()].admit(&q, usage, request, self.policy.borrowing)?;
        if admission == Admission::Borrowing && !job.spec.preemptible {
            return Err(QuotaDenial::NotPreemptible { usage, request, nominal: q.nominal });
        }
        Ok(admission)
    }

    /// Quota, then placement on free devices, for one flavor.
    fn try_flavor(&mut self, job: &Job, t: usize, f: FlavorIx) -> Result<(), AttemptOutcome> {
        self.admit(job, t, f).map_err(AttemptOutcome::Quota)?;
        let shape = self.shape(job, f);
        if let Some(outcome) = self.unfit.as_ref().and_then(|unfit| unfit.get(&shape)) {
            return Err(outcome.clone());
        }
        if self.place(job, t, &shape) {
            return Ok(());
        }
        let (counts, never) = if self.policy.explain {
            self.view.filter_counts(&shape)
        } else {
            (Default::default(), self.view.never_fits(&shape))
        };
        let outcome = if never { AttemptOutcome::NeverFits(counts) } else { AttemptOutcome::NoFit(counts) };
        self.unfit.get_or_insert_default().insert(shape, outcome.clone());
        Err(outcome)
    }

    /// Places the job on free devices of the shape's flavor if it fits there, with the
    /// scratch's buffers; true if it did.
    fn place(&mut self, job: &Job, t: usize, shape: &Shape) -> bool {
        let (policy, f) = (self.policy, shape.flavor);
        let mut placing = std::mem::take(&mut *self.view.placing);
        let mut candidates = std::mem::take(&mut placing.candidates);
        self.view.fast_candidates(shape, policy.placement, policy.candidate_nodes, &mut candidates);
        let fits = self.view.assign(shape, &candidates, policy.placement, |_, n| n.free, &mut placing);
        placing.candidates = candidates;
        if fits {
            self.view.commit(shape, &placing.picks);
            self.view.charge(t, f, job.spec.gang.total_devices());
            let assignment = self.assignment(f, &placing.picks);
            self.plan.decisions.placements.push(Placement { job: job.id, assignment });
        }
        *self.view.placing = placing;
        fits
    }

    fn assignment(&self, f: FlavorIx, picks: &[Pick]) -> Assignment {
        let replicas = picks
            .iter()
            .map(|p| ReplicaAssignment {
                node: self.view.node_ids[p.node as usize].clone(),
                devices: self.view.device_list(p.node, p.mask),
                position: PositionHint(Some(p.node)),
            })
            .collect();
        Assignment { flavor: self.view.flavors[f.ix()].clone(), replicas }
    }

    /// Nodes with any free device of the shape's flavor, and nodes with releasing devices.
    pub(crate) fn partial_nodes(&self, shape: &Shape) -> Vec<u32> {
        let f = shape.flavor;
        let mut nodes: Vec<u32> =
            (1..self.view.bucket_count(f)).flat_map(|k| self.view.bucket(f, k)).copied().collect();
        nodes.extend(&self.view.releasing_nodes);
        // Sorted runs (the state keeps each bucket sorted): the stable sort merges them.
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// When free devices are not enough: wait for devices being released, or preempt.
    /// `Err(Some(why))` says why preemption could not help.
    fn make_room(&mut self, job: &Job, t: usize, f: FlavorIx) -> Result<Verdict, Option<String>> {
        let shape = self.shape(job, f);
        if self.admit(job, t, f).is_ok() && !self.view.releasing_nodes.is_empty() {
            let base = self.partial_nodes(&shape);
            let picks = self.view.picks(&shape, &base, self.policy.placement, |_, n| n.free | n.releasing);
            if let Some(picks) = picks {
                self.reserve(job, t, &shape, &picks);
                return Ok(Verdict::Waiting);
            }
        }
        if !(self.policy.reclaim || self.policy.within_team_preemption || self.las()) {
            return Err(None);
        }
        let found = self.preempt(job, t, &shape).map_err(Some)?;
        let n = found.victims.len() as u32;
        self.plan.stats.victims += n;
        self.plan.decisions.preemptions.extend(found.victims);
        self.reserve(job, t, &shape, &found.picks);
        Ok(Verdict::Preempting(n))
    }

    /// Holds devices for a job that will start once others exit, so that no one else takes them
    /// in this cycle.
    fn reserve(&mut self, job: &Job, t: usize, shape: &Shape, picks: &[Pick]) {
        self.view.commit(shape, picks);
        self.view.charge(t, shape.flavor, job.spec.gang.total_devices());
    }

    fn report(&mut self, job: &Job, position: u32, reason: PendingReason, failure: Option<Rc<Failure>>) {
        if !self.policy.explain {
            return;
        }
        let (attempts, preemption) = failure.map(|f| (f.attempts.clone(), f.preemption.clone())).unwrap_or_default();
        let attempts = if attempts.is_empty() && matches!(reason, PendingReason::Unschedulable) {
            vec![FlavorAttempt {
                flavor: Flavor::new(job.spec.gang.devices.kind, "*"),
                outcome: AttemptOutcome::Quota(QuotaDenial::NoQuota),
            }]
        } else {
            attempts
        };
        self.plan.reports.push(PlacementReport {
            job: job.id,
            team: job.spec.team.clone(),
            position,
            reason,
            attempts,
            preemption,
        });
    }
}

#[cfg(test)]
mod backfill_tests;
#[cfg(test)]
mod park_proptests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod victim_proptests;
