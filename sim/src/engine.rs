//! The event loop. Events live in a heap ordered by (virtual time, sequence); after all events
//! of one instant are handled, one scheduling cycle runs if anything changed, exactly as the
//! leader does: `schedule` on the state, then `apply(ApplyPlan)`. Agents are modelled as
//! obedient: a placed job starts at once, runs for its remaining duration, and a job told to stop
//! exits when its grace period ends (it checkpoints at the signal, so its work so far is kept;
//! the grace period is lost). A lost node loses the work of the jobs on it since they started.

use crate::check;
use crate::cluster::Cluster;
use crate::metrics::{JobRecord, Sample};
use crate::policy::{Placement, Policy};
use crate::trace::synthetic::subseed;
use crate::trace::TraceJob;
use crate::SimError;
use qm_core::schedule::{arrivals_inert, same_decisions_between};
use qm_core::{
    AcceleratorKind, Command, DeviceRequest, Effect, GangSpec, JobId, JobSpec, JobState, Outcome, PolicyConfig,
    PriorityClass, QueueOrder, QueueingStrategy, Scratch, State, StopReason, StopSignal, TeamId,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Node failures: each node fails after an exponential time with this mean, and comes back
/// after `repair_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureModel {
    /// Mean time between failures of one node.
    pub mtbf_s: f64,
    /// Time to repair.
    pub repair_s: f64,
}

/// The last cycle planned, when it decided nothing. A cycle after it, with nothing applied but
/// the submissions of `arrived`, decides nothing either when no rule that reads the time changes
/// its answer (`qm_core::schedule::same_decisions_between`) and, if it was inert (it looked at
/// every job and held nothing back), when the arrivals alone would stay pending
/// (`qm_core::schedule::arrivals_inert`); such a cycle is answered without walking the queue.
#[derive(Clone, Debug)]
struct Quiet {
    at_ms: u64,
    inert: bool,
    arrived: Vec<JobId>,
}

/// How to run a simulation.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The policy.
    pub policy: Policy,
    /// Node boundaries or a pool.
    pub placement: Placement,
    /// Seed of every random draw.
    pub seed: u64,
    /// A cycle also runs this often while jobs wait.
    pub interval_ms: u64,
    /// Grace period of every job.
    pub grace_ms: u64,
    /// Check the invariants after every event.
    pub check: bool,
    /// Node failures, if any.
    pub failures: Option<FailureModel>,
    /// Time between two samples of the time series.
    pub sample_ms: u64,
    /// Answer a cycle that provably decides nothing (see `Quiet`) without planning it;
    /// off only to check that this changes nothing.
    pub skip_quiet: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Default,
            placement: Placement::Nodes,
            seed: 1,
            interval_ms: 60_000,
            grace_ms: 30_000,
            check: false,
            failures: None,
            sample_ms: 3_600_000,
            skip_quiet: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    Finish(JobId, u32),
    Exit(JobId, u32),
    Tick,
    Fail(usize),
    Repair(usize),
}

/// A job's progress as the simulated agents see it.
#[derive(Clone, Debug, Default)]
struct Progress {
    remaining_ms: u64,
    started_ms: Option<u64>,
    signalled_ms: Option<u64>,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// One record per simulated job, in trace order.
    pub records: Vec<JobRecord>,
    /// Time series for the plots.
    pub samples: Vec<Sample>,
    /// The teams, in the order of `Sample::team_busy` (the state's own ids).
    pub teams: Vec<TeamId>,
    /// Each team's nominal quota, in devices summed over its flavors.
    pub nominal: Vec<u64>,
    /// Devices in the cluster.
    pub devices: u64,
    /// Events handled.
    pub events: u64,
    /// Scheduling cycles run.
    pub cycles: u64,
}

pub(crate) struct Sim<'a> {
    pub state: State,
    policy: PolicyConfig,
    config: &'a RunConfig,
    cluster: &'a Cluster,
    jobs: &'a [TraceJob],
    /// Events other than arrivals, by (time, sequence).
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Trace indexes by (submission time, index): the arrivals, which are known up front, kept
    /// out of the heap. They take sequence numbers 1..=n, before every other event, so an
    /// arrival goes first among events of its instant, as it did when it sat in the heap.
    arrivals: Vec<usize>,
    next_arrival: usize,
    pub now: u64,
    dirty: bool,
    tick_pending: bool,
    /// The last cycle planned, if it decided nothing and nothing but arrivals happened since.
    quiet: Option<Quiet>,
    /// Trace index of each job id (ids are handed out in arrival order).
    pub trace_of: Vec<usize>,
    progress: Vec<Progress>,
    pub out: RunOutput,
    /// The scheduler's buffers, kept between cycles.
    scratch: Scratch,
    /// Outcome buffers, kept between commands: one for the command being followed up, one for
    /// the starts that follow-up applies.
    outcome: Outcome,
    started: Outcome,
    failures: Option<(StdRng, Exp<f64>)>,
    next_sample: u64,
    /// Jobs that reached a terminal state; the run ends when all have (node failures and ticks
    /// would go on forever).
    ended: usize,
    /// The most devices of one node, for mapping jobs to gangs.
    per_node: u32,
}

/// Trace indexes in arrival order: by submission time, then position in the trace.
fn arrival_order(jobs: &[TraceJob]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (jobs[i].submit_ms, i));
    order
}

impl<'a> Sim<'a> {
    pub fn new(
        cluster: &'a Cluster,
        jobs: &'a [TraceJob],
        teams: Vec<qm_core::TeamSpec>,
        config: &'a RunConfig,
    ) -> Result<Self, SimError> {
        let mut state = State::new();
        state.forget_attempts();
        state.apply(Command::SetPriorityClass { class: PriorityClass { name: "default".into(), value: 0 } })?;
        let devices: u64 = cluster.capacity().values().map(|&c| u64::from(c)).sum();
        let nominal = teams.iter().map(|t| t.quotas.values().map(|q| u64::from(q.nominal)).sum()).collect();
        let names = teams.iter().map(|t| t.name.clone()).collect();
        for team in teams {
            state.apply(Command::SetTeam { team })?;
        }
        for (node, cordoned) in &cluster.nodes {
            state.apply(Command::RegisterNode { node: node.clone(), at_ms: 0 })?;
            if *cordoned {
                state.apply(Command::Cordon { node: node.id.clone(), cordoned: true })?;
            }
        }
        let failures = match config.failures {
            Some(f) => Some((
                StdRng::seed_from_u64(subseed(config.seed, 10)),
                Exp::new(1.0 / f.mtbf_s).map_err(|e| SimError::Config(format!("--mtbf-s: {e}")))?,
            )),
            None => None,
        };
        let mut sim = Self {
            state,
            policy: config.policy.config(&cluster.policy),
            config,
            cluster,
            jobs,
            heap: BinaryHeap::new(),
            seq: jobs.len() as u64,
            arrivals: arrival_order(jobs),
            next_arrival: 0,
            now: 0,
            dirty: false,
            tick_pending: false,
            quiet: None,
            trace_of: Vec::with_capacity(jobs.len()),
            progress: Vec::with_capacity(jobs.len()),
            out: RunOutput { teams: names, nominal, devices, ..RunOutput::default() },
            scratch: Scratch::default(),
            outcome: Outcome::default(),
            started: Outcome::default(),
            failures,
            next_sample: 0,
            ended: 0,
            per_node: cluster.max_devices_per_node(),
        };
        sim.out.records = jobs.iter().map(JobRecord::new).collect();
        if sim.policy.las_preemption && sim.policy.order == qm_core::policy::QueueOrder::LeastAttained {
            sim.state.index_service_levels(&sim.policy.las_thresholds_device_s);
        }
        for n in 0..cluster.nodes.len() {
            sim.schedule_failure(n);
        }
        Ok(sim)
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, e)));
    }

    fn schedule_failure(&mut self, node: usize) {
        if let Some((rng, exp)) = &mut self.failures {
            let after = (exp.sample(rng) * 1000.0) as u64;
            let at = self.now + after.max(1);
            self.push(at, Event::Fail(node));
        }
    }

    /// Runs to the end; `progress` is told the share of events handled.
    pub fn run(mut self, mut progress: impl FnMut(u64, u64)) -> Result<RunOutput, SimError> {
        let total = self.jobs.len() as u64;
        while self.ended < self.jobs.len() {
            let Some((at, event)) = self.next_event() else { break };
            self.now = at;
            self.sample_until(at);
            self.handle(event)?;
            self.out.events += 1;
            let instant_done = self.next_time().is_none_or(|next| next != at);
            if instant_done && self.dirty {
                self.cycle()?;
            }
            if self.config.check {
                check::invariants(&self).map_err(|reason| SimError::Invariant {
                    reason,
                    at_ms: at,
                    seed: self.config.seed,
                })?;
            }
            if self.out.events % 4096 == 0 {
                progress(self.ended as u64, total);
            }
        }
        self.sample(self.now);
        Ok(self.out)
    }

    /// When the next arrival is due.
    fn arrival_time(&self) -> Option<u64> {
        self.arrivals.get(self.next_arrival).map(|&i| self.jobs[i].submit_ms)
    }

    /// When the next event of any kind is due.
    fn next_time(&self) -> Option<u64> {
        let queued = self.heap.peek().map(|Reverse((at, _, _))| *at);
        match (self.arrival_time(), queued) {
            (Some(a), Some(q)) => Some(a.min(q)),
            (a, q) => a.or(q),
        }
    }

    /// The next event: the next arrival if it is due no later than the heap's first event.
    fn next_event(&mut self) -> Option<(u64, Event)> {
        let queued = self.heap.peek().map(|Reverse((at, _, _))| *at);
        match self.arrival_time() {
            Some(a) if queued.is_none_or(|q| a <= q) => {
                let i = self.arrivals[self.next_arrival];
                self.next_arrival += 1;
                Some((a, Event::Arrive(i)))
            }
            _ => self.heap.pop().map(|Reverse((at, _, event))| (at, event)),
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Tick | Event::Arrive(_) => {}
            _ => self.quiet = None,
        }
        match event {
            Event::Arrive(i) => self.arrive(i)?,
            Event::Finish(job, attempt) => self.finish(job, attempt)?,
            Event::Exit(job, attempt) => self.exit(job, attempt)?,
            Event::Tick => {
                self.tick_pending = false;
                self.dirty = true;
            }
            Event::Fail(n) => self.fail(n)?,
            Event::Repair(n) => self.repair(n)?,
        }
        Ok(())
    }

    fn spec(&self, j: &TraceJob) -> JobSpec {
        let (replicas, count) = self.config.placement.gang(j.gpus, self.per_node);
        let estimate = if self.config.policy == Policy::Sjf { Some(j.duration_ms) } else { j.estimate_ms };
        let mut name = String::with_capacity(16);
        name.push_str("line-");
        name.push_str(itoa::Buffer::new().format(j.line));
        JobSpec {
            name,
            team: j.team.clone(),
            priority_class: None,
            gang: GangSpec {
                replicas,
                devices: DeviceRequest { kind: AcceleratorKind::Gpu, models: vec![], count },
                cpu_millis: 0,
                mem_mib: 0,
            },
            command: vec![],
            env: Default::default(),
            max_runtime_ms: None,
            preemptible: true,
            stop_signal: StopSignal::Term,
            grace_ms: self.config.grace_ms,
            max_retries: qm_core::limits::MAX_RETRIES,
            runtime_estimate_ms: estimate,
        }
    }

    /// Whether a cycle can place a job that just arrived: not behind a stuck head of the one
    /// global strict FIFO queue (nothing but a freed device moves that queue).
    fn arrival_matters(&self) -> bool {
        let strict_global =
            self.policy.queueing == QueueingStrategy::StrictFifo && self.policy.order != QueueOrder::FairShare;
        !strict_global || self.state.pending_count() == 1
    }

    fn arrive(&mut self, i: usize) -> Result<(), SimError> {
        let spec = self.spec(&self.jobs[i]);
        self.state.apply_into(Command::Submit { jobs: vec![spec], at_ms: self.now }, &mut self.outcome)?;
        debug_assert_eq!(self.outcome.submitted[0].0 as usize, self.trace_of.len() + 1);
        self.trace_of.push(i);
        self.progress.push(Progress { remaining_ms: self.jobs[i].duration_ms, ..Progress::default() });
        self.dirty |= self.arrival_matters();
        let id = self.outcome.submitted[0];
        match &mut self.quiet {
            Some(q) if q.inert => q.arrived.push(id),
            _ => self.quiet = None,
        }
        Ok(())
    }

    fn slot(job: JobId) -> usize {
        job.0 as usize - 1
    }

    fn finish(&mut self, job: JobId, attempt: u32) -> Result<(), SimError> {
        let j = self.state.job(job).expect("simulated jobs exist");
        if j.attempt != attempt || j.state != JobState::Running {
            return Ok(());
        }
        self.apply_absorbing(Command::JobFinished { job, attempt: None, at_ms: self.now })
    }

    fn exit(&mut self, job: JobId, attempt: u32) -> Result<(), SimError> {
        let j = self.state.job(job).expect("simulated jobs exist");
        if j.attempt != attempt || !matches!(j.state, JobState::Preempted | JobState::Stopping) {
            return Ok(());
        }
        self.apply_absorbing(Command::JobFinished { job, attempt: None, at_ms: self.now })
    }

    /// Applies a command into the kept outcome buffer and follows up on what it did. Only the
    /// two lists the follow-up reads are taken out of the buffer (and put back, keeping their
    /// room): replacing the whole buffer cost a drop of an empty one per command.
    fn apply_absorbing(&mut self, command: Command) -> Result<(), SimError> {
        let applied = self.state.apply_into(command, &mut self.outcome);
        if applied.is_ok() {
            let effects = std::mem::take(&mut self.outcome.effects);
            let changed = std::mem::take(&mut self.outcome.changed);
            self.absorb(&effects, &changed);
            self.outcome.effects = effects;
            self.outcome.changed = changed;
        }
        Ok(applied?)
    }

    fn fail(&mut self, n: usize) -> Result<(), SimError> {
        let node = self.cluster.nodes[n].0.id.clone();
        self.apply_absorbing(Command::NodeLost { node, at_ms: self.now })?;
        let repair = (self.config.failures.map_or(0.0, |f| f.repair_s) * 1000.0) as u64;
        self.push(self.now + repair.max(1), Event::Repair(n));
        Ok(())
    }

    fn repair(&mut self, n: usize) -> Result<(), SimError> {
        let node = self.cluster.nodes[n].0.clone();
        self.state.apply_into(Command::RegisterNode { node, at_ms: self.now }, &mut self.outcome)?;
        self.dirty = true;
        self.schedule_failure(n);
        Ok(())
    }

    fn cycle(&mut self) -> Result<(), SimError> {
        self.dirty = false;
        self.out.cycles += 1;
        if !(self.config.skip_quiet && self.still_quiet()) {
            self.run_cycle()?;
        }
        let preempts = self.policy.reclaim || self.policy.within_team_preemption || self.policy.las_preemption;
        if preempts && self.state.pending_count() > 0 && !self.tick_pending {
            self.tick_pending = true;
            self.push(self.now + self.config.interval_ms, Event::Tick);
        }
        Ok(())
    }

    /// Whether a cycle now provably decides nothing (see `Quiet`); the arrivals it checked are
    /// known to change nothing from then on.
    fn still_quiet(&mut self) -> bool {
        let (state, policy, now) = (&self.state, &self.policy, self.now);
        let Some(q) = &mut self.quiet else { return false };
        let quiet = same_decisions_between(state, policy, q.at_ms, now)
            && arrivals_inert(state, policy, now, &q.arrived, &mut self.scratch);
        q.arrived.clear();
        quiet
    }

    /// Plans a cycle and applies its decisions.
    fn run_cycle(&mut self) -> Result<(), SimError> {
        let plan = qm_core::schedule_with(&self.state, &self.policy, self.now, &mut self.scratch);
        let inert = plan.is_inert();
        self.quiet = plan.decisions.is_empty().then(|| Quiet { at_ms: self.now, inert, arrived: Vec::new() });
        if !plan.decisions.is_empty() {
            self.apply_absorbing(Command::ApplyPlan { decisions: plan.decisions, at_ms: self.now })?;
            if let Some(r) = self.outcome.rejected.first() {
                return Err(SimError::Invariant {
                    reason: format!("a fresh plan was rejected: job {}: {}", r.job, r.reason),
                    at_ms: self.now,
                    seed: self.config.seed,
                });
            }
        }
        Ok(())
    }

    /// Follows up on what a command did: start the placed jobs, time the exits of the stopped
    /// ones, and account the work of jobs that went back to the queue or ended.
    fn absorb(&mut self, effects: &[Effect], changed: &[(JobId, JobState)]) {
        // A job stopped on several nodes has a stop order per node; it exits once.
        let mut stopped: Vec<JobId> = Vec::new();
        for e in effects {
            match e {
                Effect::Start { job, replica: 0, .. } => self.start(*job),
                Effect::Stop { job, grace_ms, reason, .. } if !stopped.contains(job) => {
                    stopped.push(*job);
                    self.stop(*job, *grace_ms, *reason)
                }
                _ => {}
            }
        }
        for &(job, state) in changed {
            match state {
                JobState::Pending => self.requeued(job),
                s if s.is_terminal() => self.ended(job, s),
                _ => {}
            }
        }
    }

    fn start(&mut self, job: JobId) {
        self.state
            .apply_into(Command::JobStarted { job, attempt: None, at_ms: self.now }, &mut self.started)
            .expect("a placed job can start");
        debug_assert!(self.started.effects.is_empty());
        let p = &mut self.progress[Self::slot(job)];
        p.started_ms = Some(self.now);
        p.signalled_ms = None;
        let end = self.now + p.remaining_ms.max(1);
        let record = &mut self.out.records[self.trace_of[Self::slot(job)]];
        record.start_ms.get_or_insert(self.now);
        let attempt = self.state.job(job).expect("exists").attempt;
        self.push(end, Event::Finish(job, attempt));
    }

    fn stop(&mut self, job: JobId, grace_ms: u64, reason: StopReason) {
        let slot = Self::slot(job);
        self.progress[slot].signalled_ms = Some(self.now);
        if reason == StopReason::Preempted {
            self.out.records[self.trace_of[slot]].preemptions += 1;
        }
        let attempt = self.state.job(job).expect("exists").attempt;
        self.push(self.now + grace_ms, Event::Exit(job, attempt));
    }

    fn requeued(&mut self, job: JobId) {
        let slot = Self::slot(job);
        let gpus = u64::from(self.jobs[self.trace_of[slot]].gpus);
        let p = &mut self.progress[slot];
        let Some(started) = p.started_ms.take() else { return };
        let record = &mut self.out.records[self.trace_of[slot]];
        match p.signalled_ms.take() {
            Some(signal) => {
                p.remaining_ms = p.remaining_ms.saturating_sub(signal - started).max(1000);
                record.lost_to_preemption_gpu_ms += (self.now - signal) * gpus;
            }
            None => record.lost_to_failures_gpu_ms += (self.now - started) * gpus,
        }
        self.dirty = true;
    }

    fn ended(&mut self, job: JobId, state: JobState) {
        let slot = Self::slot(job);
        let record = &mut self.out.records[self.trace_of[slot]];
        record.end_ms = Some(self.now);
        record.completed = state == JobState::Succeeded;
        self.ended += 1;
        self.progress[slot].started_ms = None;
        self.dirty = true;
    }

    fn sample_until(&mut self, at: u64) {
        while self.next_sample <= at {
            let t = self.next_sample;
            self.sample(t);
            self.next_sample += self.config.sample_ms.max(1);
        }
    }

    fn sample(&mut self, t: u64) {
        let team_busy: Vec<u32> = self.out.teams.iter().map(|id| self.state.team_held(id)).collect();
        let busy = team_busy.iter().map(|&b| u64::from(b)).sum();
        self.out.samples.push(Sample { t_ms: t, busy, queued: self.state.pending_count() as u64, team_busy });
    }

    /// Jobs that have arrived.
    pub fn arrived(&self) -> usize {
        self.trace_of.len()
    }
}
