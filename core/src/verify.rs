//! Plan, then apply: `apply` re-checks every decision of a plan against the state it lands on
//! and refuses the stale ones with a typed reason (as Nomad's plan applier does). The leader
//! plans on a snapshot; by the time the plan commits, jobs may have been cancelled, nodes lost,
//! quotas changed.

use crate::command::{Effect, Outcome, Rejection};
use crate::ids::{DeviceId, JobId, NodeId};
use crate::job::{counted, JobState, ReplicaAssignment, StopReason};
use crate::layout::PositionHint;
use crate::plan::{Decisions, Placement, Preemption, PreemptionRule, QuotaDenial};
use crate::resource::Flavor;
use crate::state::{NodeAlloc, State};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thiserror::Error;

/// Why a decision of a plan no longer holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    /// No such job.
    #[error("job does not exist")]
    UnknownJob,
    /// The plan names the job twice.
    #[error("the plan names this job twice")]
    Duplicate,
    /// The job is not in the state the decision needs.
    #[error("job is {0:?}")]
    WrongState(JobState),
    /// The job's team does not accept this flavor (any more).
    #[error("flavor {0} is not acceptable for the job's team and request")]
    FlavorNotAcceptable(Flavor),
    /// The assignment has the wrong number of replicas or devices.
    #[error("assignment shape does not match the gang: {0}")]
    WrongShape(String),
    /// No such node.
    #[error("node {0} does not exist")]
    UnknownNode(NodeId),
    /// The node is lost, cordoned or draining.
    #[error("node {0} is not schedulable")]
    NodeNotSchedulable(NodeId),
    /// The device is not on the node, or not of the flavor.
    #[error("device {1} on node {0} is missing or of another flavor")]
    WrongDevice(NodeId, DeviceId),
    /// The device is unhealthy.
    #[error("device {1} on node {0} is unhealthy")]
    DeviceUnhealthy(NodeId, DeviceId),
    /// Another job holds the device, or the assignment uses it twice.
    #[error("device {1} on node {0} is taken")]
    DeviceTaken(NodeId, DeviceId),
    /// The node lacks CPU or memory.
    #[error("node {0} lacks CPU or memory for the replicas")]
    HostResources(NodeId),
    /// Quota no longer admits it.
    #[error("quota: {0:?}")]
    Quota(QuotaDenial),
    /// The victim may not be preempted by this rule.
    #[error("preemption not allowed: {0}")]
    PreemptionNotAllowed(String),
    /// The job has not run past its maximum runtime.
    #[error("job has not reached its maximum runtime")]
    NotExpired,
}

/// Re-checks a plan's decisions against `state`, as `apply` would, without changing it.
pub fn verify(decisions: &Decisions, state: &State, at_ms: u64) -> Vec<Rejection> {
    let mut scratch = state.clone();
    let mut out = Outcome::default();
    scratch.apply_plan(decisions.clone(), at_ms, &mut out);
    out.rejected
}

impl State {
    pub(crate) fn apply_plan(&mut self, decisions: Decisions, at_ms: u64, out: &mut Outcome) {
        // A plan of one decision (most of them) cannot name a job twice: no set to fill.
        let single = decisions.expired.len() + decisions.preemptions.len() + decisions.placements.len() == 1;
        let mut seen = (!single).then(BTreeSet::new);
        let mut reject = |job: JobId, out: &mut Outcome| {
            let fresh = seen.as_mut().is_none_or(|seen| seen.insert(job));
            if !fresh {
                out.rejected.push(Rejection { job, reason: StaleReason::Duplicate });
            }
            !fresh
        };
        for &id in &decisions.expired {
            if reject(id, out) {
                continue;
            }
            match self.check_expired(id, at_ms) {
                Ok(()) => self.order_stop(id, StopReason::MaxRuntime, JobState::Stopping, out),
                Err(reason) => out.rejected.push(Rejection { job: id, reason }),
            }
        }
        for p in &decisions.preemptions {
            if reject(p.victim, out) {
                continue;
            }
            match self.check_preemption(p) {
                Ok(()) => {
                    self.order_stop(p.victim, StopReason::Preempted, JobState::Preempted, out);
                    let victim = self.data.jobs.get_mut(&p.victim).expect("checked");
                    victim.preemptions += 1;
                    victim.message = format!("preempted ({:?}) for job {}", p.rule, p.preemptor).into();
                }
                Err(reason) => out.rejected.push(Rejection { job: p.victim, reason }),
            }
        }
        for mut p in decisions.placements {
            if reject(p.job, out) {
                continue;
            }
            match self.check_placement(&mut p) {
                Ok(()) => self.commit_placement(p, at_ms, out),
                Err(reason) => out.rejected.push(Rejection { job: p.job, reason }),
            }
        }
    }

    fn check_expired(&self, id: JobId, at_ms: u64) -> Result<(), StaleReason> {
        let job = self.job(id).ok_or(StaleReason::UnknownJob)?;
        if job.state != JobState::Running {
            return Err(StaleReason::WrongState(job.state));
        }
        match (job.started_ms, job.spec.max_runtime_ms) {
            (Some(s), Some(max)) if s.saturating_add(max) <= at_ms => Ok(()),
            _ => Err(StaleReason::NotExpired),
        }
    }

    fn check_preemption(&self, p: &Preemption) -> Result<(), StaleReason> {
        let victim = self.job(p.victim).ok_or(StaleReason::UnknownJob)?;
        let preemptor = self.job(p.preemptor).ok_or(StaleReason::UnknownJob)?;
        let deny = |why: &str| Err(StaleReason::PreemptionNotAllowed(why.to_owned()));
        if victim.state != JobState::Running {
            return Err(StaleReason::WrongState(victim.state));
        }
        if preemptor.state != JobState::Pending {
            return deny("the preemptor is no longer pending");
        }
        if !victim.spec.preemptible {
            return deny("the victim is not preemptible");
        }
        let same_team = victim.spec.team == preemptor.spec.team;
        match p.rule {
            PreemptionRule::WithinTeam if !same_team => deny("within-team preemption across teams"),
            PreemptionRule::WithinTeam if victim.priority >= preemptor.priority => {
                deny("the victim's priority is not lower")
            }
            PreemptionRule::Reclaim if same_team => deny("reclaim within one team"),
            PreemptionRule::Reclaim => {
                let a = victim.assignment.as_ref().expect("running jobs have an assignment");
                let nominal = self
                    .data
                    .teams
                    .get(&victim.spec.team)
                    .and_then(|t| t.quotas.get(&a.flavor))
                    .map_or(0, |q| q.nominal);
                if self.team_usage(victim, &a.flavor) <= nominal {
                    return deny("the victim's team is within its nominal quota");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks a placement against the state; on success every replica's position hint holds
    /// its node's position, found here (a plan that came through Raft carries none).
    fn check_placement(&self, p: &mut Placement) -> Result<(), StaleReason> {
        let job = self.job(p.job).ok_or(StaleReason::UnknownJob)?;
        if job.state != JobState::Pending {
            return Err(StaleReason::WrongState(job.state));
        }
        let a = &mut p.assignment;
        // Every job's team is set, so it has a slot; the flavor has one if a team has quota for it.
        let t = self.accounts.team_of(job).expect("every job's team has a slot");
        let request = &job.spec.gang.devices;
        let quota = self.accounts.flavor(&a.flavor).and_then(|f| Some((f, self.accounts.quota_for(t, f, request)?)));
        let Some((f, q)) = quota else {
            return Err(StaleReason::FlavorNotAcceptable(a.flavor.clone()));
        };
        let gang = &job.spec.gang;
        if a.replicas.len() != gang.replicas as usize {
            return Err(StaleReason::WrongShape(format!(
                "{} replicas, the gang has {}",
                a.replicas.len(),
                gang.replicas
            )));
        }
        let shape = |r: &ReplicaAssignment| {
            if r.devices.len() == gang.devices.count as usize {
                return Ok(());
            }
            Err(StaleReason::WrongShape(format!(
                "{} devices in a replica, the gang asks {}",
                r.devices.len(),
                gang.devices.count
            )))
        };
        if let [r] = a.replicas.as_mut_slice() {
            // One replica (most jobs): nothing to add up per node.
            shape(r)?;
            let (at, alloc) = self.schedulable_alloc(r)?;
            check_replica_devices(alloc, &r.node, &r.devices, &a.flavor, 0)?;
            self.check_host(at, alloc, gang.cpu_millis, gang.mem_mib)?;
            r.position = PositionHint(Some(at as u32));
        } else {
            // Per node position: its allocation, the CPU and memory the replicas there take,
            // and the devices they use.
            let mut host: BTreeMap<usize, (&NodeAlloc, u64, u64, u64)> = BTreeMap::new();
            for r in &mut a.replicas {
                shape(r)?;
                let (at, alloc) = self.schedulable_alloc(r)?;
                r.position = PositionHint(Some(at as u32));
                let e = host.entry(at).or_insert((alloc, 0, 0, 0));
                e.3 |= check_replica_devices(alloc, &r.node, &r.devices, &a.flavor, e.3)?;
                e.1 += gang.cpu_millis;
                e.2 += gang.mem_mib;
            }
            for (at, (alloc, cpu, mem, _)) in host {
                self.check_host(at, alloc, cpu, mem)?;
            }
        }
        let ledger = self.slot_ledger(f);
        ledger
            .admit(&q, self.accounts.held_at(t, f), gang.total_devices(), true)
            .map(|_| ())
            .map_err(StaleReason::Quota)
    }

    /// Whether the node at `at` has `cpu` and `mem` more to give.
    fn check_host(&self, at: usize, alloc: &NodeAlloc, cpu: u64, mem: u64) -> Result<(), StaleReason> {
        if alloc.cpu_used + cpu > alloc.layout.cpu_millis || alloc.mem_used + mem > alloc.layout.mem_mib {
            return Err(StaleReason::HostResources(self.allocs.ids()[at].clone()));
        }
        Ok(())
    }

    /// A replica's node position and allocation, if the node exists and takes new work.
    fn schedulable_alloc(&self, r: &ReplicaAssignment) -> Result<(usize, &NodeAlloc), StaleReason> {
        let node = &r.node;
        let at = self.allocs.locate(node, r.position).ok_or_else(|| StaleReason::UnknownNode(node.clone()))?;
        let alloc = self.allocs.at(at);
        if !alloc.schedulable {
            return Err(StaleReason::NodeNotSchedulable(node.clone()));
        }
        Ok((at, alloc))
    }

    /// Places the job; `hold` charges its team and keeps the quota totals up to date. The
    /// assignment kept in the job names the state's own node ids, with the positions its
    /// verification found as hints, so that freeing it later looks no node up by name (also
    /// for a plan that came through Raft, which carries no hints).
    fn commit_placement(&mut self, p: Placement, at_ms: u64, out: &mut Outcome) {
        let id = p.job;
        let mut assignment = p.assignment;
        for r in &mut assignment.replicas {
            let at = r.position.0.expect("verification found every node") as usize;
            let own = &self.allocs.ids()[at];
            if !std::sync::Arc::ptr_eq(&own.0, &r.node.0) {
                r.node = own.clone();
            }
        }
        self.dequeue(id);
        let job = self.data.jobs.get_mut(&id).expect("checked");
        job.state = JobState::Starting;
        job.placed_ms = Some(at_ms);
        job.attempt += 1;
        let n = assignment.replicas.len() as u64;
        job.message = counted(n, "placed on 1 node(s), starting", || format!("placed on {n} node(s), starting"));
        for (i, r) in assignment.replicas.iter().enumerate() {
            out.effects.push(Effect::Start {
                job: id,
                replica: i as u32,
                node: r.node.clone(),
                devices: Arc::clone(&r.devices),
            });
        }
        job.assignment = Some(assignment);
        self.hold(id);
        out.changed.push((id, JobState::Starting));
    }
}

/// Checks one replica's devices on its node, given the devices earlier replicas of the plan
/// took there (`used`); returns the devices it takes, as a mask.
fn check_replica_devices(
    alloc: &NodeAlloc,
    node: &NodeId,
    devices: &[DeviceId],
    flavor: &Flavor,
    mut used: u64,
) -> Result<u64, StaleReason> {
    let layout = &alloc.layout;
    let of_flavor = layout.flavor_mask(flavor);
    let mut taken = 0u64;
    for d in devices {
        let bit = layout.device_index(d).map_or(0, |i| 1u64 << i);
        if bit & of_flavor == 0 {
            return Err(StaleReason::WrongDevice(node.clone(), d.clone()));
        }
        if bit & layout.healthy == 0 {
            return Err(StaleReason::DeviceUnhealthy(node.clone(), d.clone()));
        }
        if alloc.held & bit != 0 || used & bit != 0 {
            return Err(StaleReason::DeviceTaken(node.clone(), d.clone()));
        }
        used |= bit;
        taken |= bit;
    }
    Ok(taken)
}
