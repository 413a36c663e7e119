//! What the leader tells a node's agent and what the agent's reports mean, as functions of
//! the replicated state: the orders a node missed (reconciliation at registration), the order
//! an applied effect gives it, the command a replica's reported phase calls for, and the nodes
//! silent past their lease. The agent service (`agent.rs`) serves them over gRPC streams; the
//! deterministic simulation (`crate::dst`) calls them for its simulated agents.

use qm_core::{Command, Effect, Job, JobId, JobState, NodeId, NodeStatus, State};
use qm_proto::convert::{stop_reason_to, stop_signal_to};
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The replicas of each attempt that reported started, until all did.
pub type Started = BTreeMap<(JobId, u32), BTreeSet<u32>>;

/// A message down to an agent.
pub fn message(body: Down) -> SchedulerMessage {
    SchedulerMessage { body: Some(body) }
}

/// The port replica 0 of a job's attempt offers for the gang's rendezvous (`MASTER_PORT`): in
/// 29500..39500, spread by job and attempt so that gangs that share a first node rarely collide,
/// and the same on every replica of the gang.
pub fn rendezvous_port(job: JobId, attempt: u32) -> u32 {
    29_500 + ((job.0.wrapping_mul(7_919).wrapping_add(u64::from(attempt))) % 10_000) as u32
}

/// The ready nodes of `state` not heard from within `lease` at `now`, counting from `since`
/// (when this replica took the lead, so that agents have time to reconnect to it).
pub fn silent(
    state: &State,
    last_seen: &BTreeMap<NodeId, Instant>,
    since: Instant,
    now: Instant,
    lease: Duration,
) -> Vec<NodeId> {
    let fresh =
        |id: &NodeId| now.saturating_duration_since(last_seen.get(id).map_or(since, |t| (*t).max(since))) < lease;
    state
        .nodes()
        .iter()
        .filter(|(id, n)| n.status == NodeStatus::Ready && !fresh(id))
        .map(|(id, _)| id.clone())
        .collect()
}

/// The orders a node missed, and the commands that end the replicas it no longer runs.
pub fn missed(
    state: &State,
    node: &NodeId,
    running: Option<&[RunningReplica]>,
    at_ms: u64,
) -> (Vec<SchedulerMessage>, Vec<Command>) {
    let (mut out, mut ended) = (Vec::new(), Vec::new());
    let runs = |job: JobId, replica: u32, attempt: u32| {
        running.is_none_or(|rs| rs.iter().any(|r| r.job_id == job.0 && r.replica == replica && r.attempt == attempt))
    };
    for job in state.jobs().values() {
        let Some(a) = &job.assignment else { continue };
        for (i, r) in a.replicas.iter().enumerate().filter(|(_, r)| &r.node == node) {
            let (i, attempt) = (i as u32, Some(job.attempt));
            let here = runs(job.id, i, job.attempt);
            match job.state {
                JobState::Starting if running.is_none() || !here => {
                    out.push(start_order(state, job, i, &r.devices));
                }
                JobState::Running if !here => {
                    let message = "a replica was lost when its agent restarted".to_owned();
                    ended.push(Command::JobFailed { job: job.id, attempt, message, at_ms });
                }
                JobState::Stopping | JobState::Preempted if !here => {
                    ended.push(Command::JobFinished { job: job.id, attempt, at_ms });
                }
                JobState::Stopping | JobState::Preempted => {
                    out.push(stop_order(job, job.spec.stop_signal, job.spec.grace_ms, job.stop_reason));
                }
                _ => {}
            }
        }
    }
    for r in running.unwrap_or_default() {
        let placed = state.job(JobId(r.job_id)).is_some_and(|j| {
            j.attempt == r.attempt
                && j.assignment
                    .as_ref()
                    .is_some_and(|a| a.replicas.get(r.replica as usize).is_some_and(|x| &x.node == node))
        });
        if !placed {
            out.push(message(Down::Stop(StopJob {
                job_id: r.job_id,
                attempt: r.attempt,
                signal: StopSignal::Term as i32,
                grace_ms: 0,
                reason: qm_proto::v1::StopReason::Cancelled as i32,
            })));
        }
    }
    (out, ended)
}

/// The order to start replica `replica` of `job` on `devices`, with where the gang meets
/// (pure: callers hold the state's lock once, never twice, which could deadlock behind a
/// waiting writer).
pub fn start_order(state: &qm_core::State, job: &Job, replica: u32, devices: &[qm_core::DeviceId]) -> SchedulerMessage {
    let first = job.assignment.as_ref().and_then(|a| a.replicas.first());
    let host = first
        .and_then(|r| state.nodes().get(&r.node))
        .and_then(|n| n.spec.labels.get(qm_core::resource::ADDRESS_LABEL))
        .map_or_else(String::new, |a| a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h).to_owned());
    message(Down::Start(StartReplica {
        job_id: job.id.0,
        replica,
        attempt: job.attempt,
        devices: devices.iter().map(|d| d.0.to_string()).collect(),
        command: job.spec.command.clone(),
        env: job.spec.env.clone().into_iter().collect(),
        cpu_millis: job.spec.gang.cpu_millis,
        mem_mib: job.spec.gang.mem_mib,
        replicas: job.spec.gang.replicas,
        kind: qm_proto::convert::kind_to(job.spec.gang.devices.kind) as i32,
        rendezvous_host: host,
        rendezvous_port: rendezvous_port(job.id, job.attempt),
        job_name: job.spec.name.clone(),
        team: job.spec.team.as_str().to_owned(),
    }))
}

/// The order to stop `job`'s current attempt.
pub fn stop_order(
    job: &Job,
    signal: qm_core::StopSignal,
    grace_ms: u64,
    reason: Option<qm_core::StopReason>,
) -> SchedulerMessage {
    message(Down::Stop(StopJob {
        job_id: job.id.0,
        attempt: job.attempt,
        signal: stop_signal_to(signal) as i32,
        grace_ms,
        reason: reason.map_or(0, |r| stop_reason_to(r) as i32),
    }))
}

/// The order an applied effect gives `node`, if it is for it.
pub fn order_for(state: &State, node: &NodeId, effect: Effect) -> Option<SchedulerMessage> {
    match effect {
        Effect::Start { job, replica, node: n, devices } if &n == node => {
            Some(start_order(state, state.job(job)?, replica, &devices))
        }
        Effect::Stop { job, node: n, signal, grace_ms, reason } if &n == node => {
            Some(stop_order(state.job(job)?, signal, grace_ms, Some(reason)))
        }
        _ => None,
    }
}

/// Turns a replica's phase into a command, if it calls for one.
pub fn phase_command(
    state: &State,
    started: &mut Started,
    node: &NodeId,
    s: &ReplicaStatus,
    at_ms: u64,
) -> Option<Command> {
    let job = state.job(JobId(s.job_id))?;
    let here = job.assignment.as_ref()?.replicas.get(s.replica as usize).is_some_and(|r| &r.node == node);
    if job.attempt != s.attempt || !here {
        return None;
    }
    let id = job.id;
    match ReplicaPhase::try_from(s.phase).ok()? {
        ReplicaPhase::Started if job.state == JobState::Starting => {
            let replicas = job.spec.gang.replicas;
            let set = started.entry((id, s.attempt)).or_default();
            set.insert(s.replica);
            (set.len() as u32 >= replicas).then(|| {
                started.remove(&(id, s.attempt));
                Command::JobStarted { job: id, attempt: Some(s.attempt), at_ms }
            })
        }
        ReplicaPhase::Exited if s.exit_code == 0 || matches!(job.state, JobState::Stopping | JobState::Preempted) => {
            Some(Command::JobFinished { job: id, attempt: Some(s.attempt), at_ms })
        }
        ReplicaPhase::Exited | ReplicaPhase::FailedToStart => {
            let message = match (s.signal, s.message.is_empty()) {
                (Some(sig), _) => format!("replica {} killed by signal {sig}", s.replica),
                (None, false) => format!("replica {}: {}", s.replica, s.message),
                (None, true) => format!("replica {} exited with code {}", s.replica, s.exit_code),
            };
            Some(Command::JobFailed { job: id, attempt: Some(s.attempt), message, at_ms })
        }
        _ => None,
    }
}
