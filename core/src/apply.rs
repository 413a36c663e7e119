//! `State::apply`: the only way the state changes. Each command is checked in full before
//! anything is written, so a refused command leaves the state as it was.

use crate::accounts::TeamNo;
use crate::command::{Command, Effect, Outcome};
use crate::error::{ApplyError, FieldError};
use crate::ids::{JobId, NodeId, TeamId};
use crate::job::{counted, Job, JobSpec, JobState, StopReason};
use crate::layout::PositionHint;
use crate::limits::{validate_job_with, validate_node, validate_team, MAX_BATCH};
use crate::resource::{Health, Node, NodeSpec, NodeStatus};
use crate::state::{NodeLayout, State};
use crate::team::{PriorityClass, TeamSpec};
use crate::usage::AttemptRecord;
use std::collections::{BTreeMap, BTreeSet};

/// A job that passed the submission checks: the state's id of its team (which the job will
/// share), the team's slot in the accounts, and the job's priority.
struct Checked {
    team: TeamId,
    slot: TeamNo,
    priority: i32,
}

impl State {
    /// Applies one command. Deterministic: the same commands give the same state on every
    /// replica. On error nothing changed.
    pub fn apply(&mut self, command: Command) -> Result<Outcome, ApplyError> {
        let mut out = Outcome::default();
        self.apply_into(command, &mut out)?;
        Ok(out)
    }

    /// `apply`, writing what the command produced into `out` (emptied first), so a caller that
    /// applies many commands reuses its buffers. On error nothing changed and `out` is empty.
    pub fn apply_into(&mut self, command: Command, out: &mut Outcome) -> Result<(), ApplyError> {
        out.clear();
        let applied = self.dispatch(command, out);
        if applied.is_err() {
            out.clear();
        }
        applied
    }

    fn dispatch(&mut self, command: Command, out: &mut Outcome) -> Result<(), ApplyError> {
        match command {
            Command::RegisterNode { node, at_ms } => self.with_node_change(|s| s.register_node(node, at_ms, out))?,
            Command::NodeLost { node, at_ms } => self.with_node_change(|s| s.node_lost(&node, at_ms, out))?,
            Command::Submit { jobs, at_ms } => self.submit(jobs, at_ms, out)?,
            Command::Cancel { job, at_ms } => self.cancel(job, at_ms, out)?,
            Command::ApplyPlan { decisions, at_ms } => self.apply_plan(decisions, at_ms, out),
            Command::JobStarted { job, attempt, at_ms } => {
                self.check_attempt(job, attempt)?;
                self.job_started(job, at_ms, out)?
            }
            Command::JobFinished { job, attempt, at_ms } => {
                self.check_attempt(job, attempt)?;
                self.job_exited(job, at_ms, None, out)?
            }
            Command::JobFailed { job, attempt, message, at_ms } => {
                self.check_attempt(job, attempt)?;
                self.job_exited(job, at_ms, Some(message), out)?
            }
            Command::SetTeam { team } => self.set_team(team)?,
            Command::SetPriorityClass { class } => self.set_priority_class(class)?,
            Command::DeletePriorityClass { name } => self.delete_priority_class(&name)?,
            Command::Cordon { node, cordoned } => self.with_node_change(|s| s.cordon(&node, cordoned))?,
            Command::Drain { node } => self.with_node_change(|s| s.drain(&node, out))?,
            Command::RecordUsage { job, attempt, replica, devices } => {
                self.check_attempt(job, Some(attempt))?;
                self.record_usage(job, attempt, replica, devices)?
            }
            Command::SetIdlePolicy { team, policy } => self.set_idle_policy(team, policy)?,
            Command::MarkIdle { job, attempt, since_ms } => {
                self.check_attempt(job, Some(attempt))?;
                self.mark_idle(job, since_ms, out)?
            }
            Command::StopIdle { job, attempt } => {
                self.check_attempt(job, Some(attempt))?;
                self.stop_idle(job, out)?
            }
        }
        Ok(())
    }

    fn register_node(&mut self, spec: NodeSpec, at_ms: u64, out: &mut Outcome) -> Result<(), ApplyError> {
        validate_node(&spec).map_err(|e| e.within("node"))?;
        let id = spec.id.clone();
        let Some(old) = self.data.nodes.get(&id) else {
            let node = Node { spec, status: NodeStatus::Ready, cordoned: false, draining: false, registered_ms: at_ms };
            self.data.nodes_mut().insert(id.clone(), node);
            self.reset_alloc(&id);
            self.add_capacity(&id, 1);
            return Ok(());
        };
        let vanished: BTreeSet<JobId> = old
            .spec
            .devices
            .iter()
            .zip(&self.allocs[&id].holders)
            .filter(|(d, _)| !spec.devices.iter().any(|n| n.id == d.id && n.flavor() == d.flavor()))
            .filter_map(|(_, h)| *h)
            .collect();
        for job in vanished {
            self.stop_effects(job, StopReason::DeviceUnhealthy, out);
            self.exit(job, at_ms, Some(format!("a device on node {id} disappeared")), out);
        }
        let old = &self.data.nodes[&id];
        let kept: BTreeMap<_, _> =
            old.spec.devices.iter().zip(&self.allocs[&id].holders).map(|(d, h)| (d.id.clone(), *h)).collect();
        self.add_capacity(&id, -1);
        let holders: Vec<Option<JobId>> = spec.devices.iter().map(|d| kept.get(&d.id).copied().flatten()).collect();
        let sick: BTreeSet<JobId> = spec
            .devices
            .iter()
            .zip(&holders)
            .filter(|(d, _)| d.health == Health::Unhealthy)
            .filter_map(|(_, h)| *h)
            .collect();
        let alloc = self.allocs.get_mut(&id).expect("alloc exists for every node");
        alloc.held = holders.iter().enumerate().filter(|(_, h)| h.is_some()).fold(0, |m, (i, _)| m | 1 << i);
        alloc.holders = holders;
        alloc.layout = NodeLayout::of(&spec);
        let node = self.data.nodes_mut().get_mut(&id).expect("checked above");
        node.spec = spec;
        node.status = NodeStatus::Ready;
        node.registered_ms = at_ms;
        self.sync_schedulable(&id);
        self.add_capacity(&id, 1);
        self.stop_on_unhealthy(sick, out);
        Ok(())
    }

    /// Stops the running jobs that hold a device now unhealthy: they get their signal and grace
    /// period and are requeued once they exit, without counting a failure.
    fn stop_on_unhealthy(&mut self, jobs: BTreeSet<JobId>, out: &mut Outcome) {
        for job in jobs {
            if matches!(self.data.jobs[&job].state, JobState::Starting | JobState::Running) {
                self.order_stop(job, StopReason::DeviceUnhealthy, JobState::Stopping, out);
            }
        }
    }

    fn jobs_on(&self, node: &NodeId) -> BTreeSet<JobId> {
        self.allocs.get(node).map(|a| a.holders.iter().flatten().copied().collect()).unwrap_or_default()
    }

    fn node_lost(&mut self, node: &NodeId, at_ms: u64, out: &mut Outcome) -> Result<(), ApplyError> {
        if !self.data.nodes.contains_key(node) {
            return Err(ApplyError::UnknownNode(node.clone()));
        }
        self.add_capacity(node, -1);
        self.data.nodes_mut().get_mut(node).expect("checked above").status = NodeStatus::Lost;
        self.sync_schedulable(node);
        for id in self.jobs_on(node) {
            let job = &self.data.jobs[&id];
            let elsewhere = job.assignment.as_ref().is_some_and(|a| a.replicas.iter().any(|r| &r.node != node));
            if elsewhere && matches!(job.state, JobState::Starting | JobState::Running) {
                self.order_stop(id, StopReason::NodeLost, JobState::Stopping, out);
                out.effects.retain(|e| !matches!(e, Effect::Stop { node: n, .. } if n == node));
            } else {
                self.exit(id, at_ms, Some(format!("node {node} was lost")), out);
            }
        }
        Ok(())
    }

    fn submit(&mut self, jobs: Vec<JobSpec>, at_ms: u64, out: &mut Outcome) -> Result<(), ApplyError> {
        if jobs.len() > MAX_BATCH {
            return Err(
                FieldError::new("jobs", format!("{} jobs, more than {MAX_BATCH} in one batch", jobs.len())).into()
            );
        }
        if jobs.len() == 1 {
            // One job (most submissions): no list of checked jobs to build.
            let checked = self.check_submission(&jobs[0], 0)?;
            let spec = jobs.into_iter().next().expect("one job");
            self.admit(spec, checked, at_ms, out);
            return Ok(());
        }
        let checked = jobs
            .iter()
            .enumerate()
            .map(|(i, spec)| self.check_submission(spec, i))
            .collect::<Result<Vec<Checked>, ApplyError>>()?;
        for (spec, checked) in jobs.into_iter().zip(checked) {
            self.admit(spec, checked, at_ms, out);
        }
        Ok(())
    }

    /// Queues a checked job under the next id, with its team's id shared with the state.
    fn admit(&mut self, mut spec: JobSpec, checked: Checked, at_ms: u64, out: &mut Outcome) {
        spec.team = checked.team;
        self.data.next_job += 1;
        let id = JobId(self.data.next_job);
        let mut job = Job::submitted(id, spec, checked.priority, at_ms);
        job.team_slot = PositionHint(Some(checked.slot.0));
        self.data.jobs.insert(id, job);
        self.enqueue(id);
        out.submitted.push(id);
        out.changed.push((id, JobState::Pending));
    }

    /// Checks job `i` of a submission against the rules and the state. The field name
    /// (`jobs[i]`) is written only for an error. The team is found in the accounts, which give
    /// every team set a slot (and no other team one) and remember the flavors it has quota for.
    fn check_submission(&self, spec: &JobSpec, i: usize) -> Result<Checked, ApplyError> {
        let field = || format!("jobs[{i}]");
        let slot = self.accounts.team(&spec.team);
        validate_job_with(spec, slot.is_some()).map_err(|e| e.within(&field()))?;
        let slot = slot
            .ok_or_else(|| ApplyError::UnknownTeam { field: format!("{}.team", field()), team: spec.team.clone() })?;
        debug_assert!(self.data.teams.contains_key(&spec.team), "the accounts know only the teams set");
        if !self.accounts.accepts_any(slot, &spec.gang.devices) {
            return Err(self.no_quota_for(spec, &field()));
        }
        let priority = match &spec.priority_class {
            None => 0,
            Some(name) => self.data.classes.get(name).map(|c| c.value).ok_or_else(|| {
                ApplyError::UnknownPriorityClass { field: format!("{}.priority_class", field()), class: name.clone() }
            })?,
        };
        Ok(Checked { team: self.accounts.team_id(slot).clone(), slot, priority })
    }

    /// The refusal of a request that no flavor of the team's quota matches, with the flavors
    /// the team and the cluster have, so that the user can pick one.
    #[cold]
    fn no_quota_for(&self, spec: &JobSpec, field: &str) -> ApplyError {
        let req = &spec.gang.devices;
        let team_flavors = self
            .data
            .teams
            .get(&spec.team)
            .map_or_else(Vec::new, |t| t.quotas.keys().map(ToString::to_string).collect());
        let cluster_flavors = self.capacity().iter().map(|(f, n)| format!("{f} ({n} devices)")).collect();
        ApplyError::NoQuotaForRequest {
            field: format!("{field}.gang.devices"),
            team: spec.team.clone(),
            request: format!(
                "{}/{}",
                req.kind,
                if req.models.is_empty() { "*".to_owned() } else { req.models.join("|") }
            ),
            team_flavors,
            cluster_flavors,
        }
    }

    // These two match rather than `ok_or`: an error built eagerly is dropped on every call
    // that finds its job, and `ApplyError`'s drop is a call (measured: 64 instructions a job).
    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, ApplyError> {
        match self.data.jobs.get_mut(&id) {
            Some(job) => Ok(job),
            None => Err(ApplyError::UnknownJob(id)),
        }
    }

    /// The job, to read: unlike `job_mut`, copies no chunk of the job table that a snapshot
    /// still shares.
    fn job_ref(&self, id: JobId) -> Result<&Job, ApplyError> {
        match self.data.jobs.get(&id) {
            Some(job) => Ok(job),
            None => Err(ApplyError::UnknownJob(id)),
        }
    }

    fn cancel(&mut self, id: JobId, at_ms: u64, out: &mut Outcome) -> Result<(), ApplyError> {
        let job = self.job_mut(id)?;
        match job.state {
            JobState::Pending => {
                self.dequeue(id);
                let job = self.job_mut(id)?;
                job.state = JobState::Cancelled;
                job.finished_ms = Some(at_ms);
                job.message = "cancelled while pending".into();
                out.changed.push((id, JobState::Cancelled));
            }
            JobState::Starting | JobState::Running => {
                self.order_stop(id, StopReason::Cancelled, JobState::Stopping, out)
            }
            JobState::Preempted | JobState::Stopping => {
                job.state = JobState::Stopping;
                job.stop_reason = Some(StopReason::Cancelled);
                job.message = "cancelled while stopping".into();
                self.track(id);
                out.changed.push((id, JobState::Stopping));
            }
            // Cancelling a cancelled job changes nothing and is not refused, so that a client
            // may send a cancel again when its connection failed before the answer came (the
            // first may have been applied).
            JobState::Cancelled => {}
            state => return Err(ApplyError::WrongState { job: id, state, action: "cancel" }),
        }
        Ok(())
    }

    /// Tells a job holding devices to stop, and the agents of each replica to signal it.
    pub(crate) fn order_stop(&mut self, id: JobId, reason: StopReason, state: JobState, out: &mut Outcome) {
        let job = self.data.jobs.get_mut(&id).expect("caller checked the job exists");
        job.state = state;
        job.stop_reason = Some(reason);
        job.message = format!("told to stop: {reason:?}").into();
        self.stop_effects(id, reason, out);
        self.track(id);
        out.changed.push((id, state));
    }

    /// The orders that stop a job's replicas, one per node of its assignment.
    fn stop_effects(&self, id: JobId, reason: StopReason, out: &mut Outcome) {
        let job = &self.data.jobs[&id];
        let nodes: BTreeSet<&NodeId> = job.assignment.iter().flat_map(|a| a.replicas.iter().map(|r| &r.node)).collect();
        for node in nodes {
            let (signal, grace_ms) = (job.spec.stop_signal, job.spec.grace_ms);
            out.effects.push(Effect::Stop { job: id, node: node.clone(), signal, grace_ms, reason });
        }
    }

    fn job_started(&mut self, id: JobId, at_ms: u64, out: &mut Outcome) -> Result<(), ApplyError> {
        let job = self.job_mut(id)?;
        if job.state != JobState::Starting {
            return Err(ApplyError::WrongState { job: id, state: job.state, action: "mark started" });
        }
        job.state = JobState::Running;
        job.started_ms = Some(at_ms);
        let attempt = job.attempt;
        job.message = counted(attempt, "running (attempt 1)", || format!("running (attempt {attempt})"));
        self.track(id);
        out.changed.push((id, JobState::Running));
        Ok(())
    }

    /// Refuses a report about an attempt other than the job's current one (a late exit of a
    /// preempted attempt must not end the attempt that replaced it).
    fn check_attempt(&self, id: JobId, attempt: Option<u32>) -> Result<(), ApplyError> {
        let current = self.job_ref(id)?.attempt;
        match attempt {
            Some(a) if a != current => Err(ApplyError::StaleAttempt { job: id, attempt: a, current }),
            _ => Ok(()),
        }
    }

    fn job_exited(
        &mut self,
        id: JobId,
        at_ms: u64,
        failure: Option<String>,
        out: &mut Outcome,
    ) -> Result<(), ApplyError> {
        let job = self.job_ref(id)?;
        if !job.state.holds_devices() {
            return Err(ApplyError::WrongState { job: id, state: job.state, action: "mark exited" });
        }
        self.exit(id, at_ms, failure, out);
        Ok(())
    }

    /// A job holding devices exited (or was lost): free its devices and decide what is next.
    pub(crate) fn exit(&mut self, id: JobId, at_ms: u64, failure: Option<String>, out: &mut Outcome) {
        self.release(id);
        let job = self.data.jobs.get_mut(&id).expect("caller checked the job exists");
        job.attained_device_ms = job.attained_at(at_ms);
        if !self.forget_attempts {
            record_attempt(job, at_ms);
        }
        let next = match (job.state, job.stop_reason) {
            (JobState::Preempted, _)
            | (_, Some(StopReason::Drained | StopReason::Preempted | StopReason::DeviceUnhealthy | StopReason::Idle)) => {
                JobState::Pending
            }
            (_, Some(StopReason::Cancelled)) => JobState::Cancelled,
            (_, Some(StopReason::MaxRuntime)) => JobState::Failed,
            (_, Some(StopReason::NodeLost)) => count_failure(job),
            (_, None) if failure.is_some() => count_failure(job),
            (_, None) => JobState::Succeeded,
        };
        job.message = match (failure, next) {
            (Some(msg), _) => msg.into(),
            (None, JobState::Succeeded) => "succeeded".into(),
            (None, _) => format!("stopped ({:?})", job.stop_reason).into(),
        };
        job.state = next;
        job.assignment = None;
        job.stop_reason = None;
        job.idle_since_ms = None;
        job.placed_ms = None;
        job.started_ms = None;
        if next.is_terminal() {
            job.finished_ms = Some(at_ms);
        } else {
            self.enqueue(id);
        }
        self.track(id);
        out.changed.push((id, next));
    }

    fn set_team(&mut self, team: TeamSpec) -> Result<(), ApplyError> {
        validate_team(&team).map_err(|e| e.within(&format!("team[{:?}]", team.name.as_str())))?;
        self.accounts.open(&team);
        self.data.teams.insert(team.name.clone(), team);
        self.quotas_changed();
        Ok(())
    }

    fn set_priority_class(&mut self, class: PriorityClass) -> Result<(), ApplyError> {
        if class.name.trim().is_empty() {
            return Err(FieldError::new("class.name", "must not be empty").into());
        }
        self.data.classes.insert(class.name.clone(), class);
        Ok(())
    }

    fn delete_priority_class(&mut self, name: &str) -> Result<(), ApplyError> {
        match self.data.classes.remove(name) {
            Some(_) => Ok(()),
            None => Err(ApplyError::UnknownPriorityClass { field: "name".into(), class: name.to_owned() }),
        }
    }

    fn node_mut_checked(&mut self, node: &NodeId) -> Result<(), ApplyError> {
        if self.data.nodes.contains_key(node) {
            Ok(())
        } else {
            Err(ApplyError::UnknownNode(node.clone()))
        }
    }

    fn cordon(&mut self, node: &NodeId, cordoned: bool) -> Result<(), ApplyError> {
        self.node_mut_checked(node)?;
        self.add_capacity(node, -1);
        let n = self.data.nodes_mut().get_mut(node).expect("checked above");
        n.cordoned = cordoned;
        if !cordoned {
            n.draining = false;
        }
        self.sync_schedulable(node);
        self.add_capacity(node, 1);
        Ok(())
    }

    fn drain(&mut self, node: &NodeId, out: &mut Outcome) -> Result<(), ApplyError> {
        self.node_mut_checked(node)?;
        self.add_capacity(node, -1);
        let n = self.data.nodes_mut().get_mut(node).expect("checked above");
        n.cordoned = true;
        n.draining = true;
        self.sync_schedulable(node);
        for id in self.jobs_on(node) {
            if matches!(self.data.jobs[&id].state, JobState::Starting | JobState::Running) {
                self.order_stop(id, StopReason::Drained, JobState::Stopping, out);
            }
        }
        Ok(())
    }
}

/// Keeps the attempt that ends at `at_ms` on the job's record, if it ran.
fn record_attempt(job: &mut Job, at_ms: u64) {
    let (Some(started_ms), Some(a)) = (job.started_ms, &job.assignment) else { return };
    let utilization = job.usage.as_ref().filter(|u| u.attempt == job.attempt).map_or((0, 0), |u| u.utilization());
    let devices = a.replicas.iter().map(|r| r.devices.len() as u32).sum();
    let record = AttemptRecord {
        attempt: job.attempt,
        started_ms,
        ended_ms: at_ms,
        devices,
        flavor: a.flavor.clone(),
        utilization,
    };
    // Exactly one more: a first push would reserve room for four, and most jobs run once.
    job.attempts.reserve_exact(1);
    job.attempts.push(record);
}

/// Counts a failure; the job requeues until it passes its retry limit.
fn count_failure(job: &mut Job) -> JobState {
    job.failures += 1;
    if job.failures > job.spec.max_retries {
        JobState::Failed
    } else {
        JobState::Pending
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
