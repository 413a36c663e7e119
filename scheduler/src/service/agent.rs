//! `AgentService.Session`: one stream per node agent, served by the leader only (a follower
//! answers `NotLeader` with the leader's address). Up: the agent registers its inventory
//! (proposed as `RegisterNode`), heartbeats (kept in memory with the devices' readings, never
//! logged) and reports replica phases (proposed as `JobStarted` once every replica of the attempt
//! started, `JobFinished` or `JobFailed` on exit, after a `RecordUsage` of the usage summary the
//! exit report carries). Down: the `Start` and `Stop` effects of applied commands for this node,
//! and on registration whatever the agent missed (reconciliation). A liveness task proposes
//! `NodeLost` for nodes silent longer than the lease.

use super::readings::Readings;
use super::{now_ms, status_of};
use crate::node::{Handle, NodeError};
use qm_core::{Command, DeviceUsage, Effect, Job, JobId, JobState, NodeId, NodeStatus};
use qm_proto::convert::{inventory_from, stop_reason_to, stop_signal_to, usage_from};
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_server::AgentService;
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::*;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Leader-local memory of the agents: when each node was last heard, which replicas of each
/// attempt reported started, and the open session of each node (to route its orders).
#[derive(Debug, Default)]
struct Agents {
    last_seen: BTreeMap<NodeId, Instant>,
    started: BTreeMap<(JobId, u32), BTreeSet<u32>>,
    sessions: BTreeMap<NodeId, (u64, mpsc::UnboundedSender<Routed>)>,
    next_session: u64,
}

/// What the dispatcher hands a session.
#[derive(Debug)]
enum Routed {
    /// An effect for the session's node.
    Effect(Effect),
    /// Effects were missed: resend what the node should be doing.
    Reconcile,
}

/// The agent service of one replica.
#[derive(Debug, Clone)]
pub struct AgentServer {
    node: Handle,
    agents: Arc<Mutex<Agents>>,
    heartbeat: Duration,
    readings: Readings,
}

/// The port replica 0 of a job's attempt offers for the gang's rendezvous (`MASTER_PORT`): in
/// 29500..39500, spread by job and attempt so that gangs that share a first node rarely collide,
/// and the same on every replica of the gang.
pub fn rendezvous_port(job: JobId, attempt: u32) -> u32 {
    29_500 + ((job.0.wrapping_mul(7_919).wrapping_add(u64::from(attempt))) % 10_000) as u32
}

type Orders = mpsc::Sender<Result<SchedulerMessage, Status>>;
type OrderStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

fn down(body: Down) -> Result<SchedulerMessage, Status> {
    Ok(SchedulerMessage { body: Some(body) })
}

impl AgentServer {
    /// Serves `node`; agents heartbeat every `heartbeat`, and their readings go to `readings`.
    pub fn new(node: Handle, heartbeat: Duration, readings: Readings) -> Self {
        Self { node, agents: Arc::default(), heartbeat, readings }
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leading(&self) -> bool {
        let s = self.node.status();
        s.leader == s.id
    }

    fn leader_address(&self) -> String {
        let leader = self.node.status().leader;
        self.node.fsm().members.get(&leader).cloned().unwrap_or_default()
    }

    /// Proposes `NodeLost` for every ready node not heard from within `lease` (counting from
    /// when this replica took the lead, so agents have time to reconnect to it). Runs until
    /// the node stops.
    pub async fn liveness(self, lease: Duration) {
        let mut leading_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(lease / 4).await;
            if self.node.status().fatal.is_some() {
                return;
            }
            if !self.leading() {
                leading_since = None;
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            let silent: Vec<NodeId> = {
                let fsm = self.node.fsm();
                let agents = self.agents();
                let fresh = |id: &NodeId| agents.last_seen.get(id).map_or(since, |t| (*t).max(since)).elapsed() < lease;
                fsm.state
                    .nodes()
                    .iter()
                    .filter(|(id, n)| n.status == NodeStatus::Ready && !fresh(id))
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for node in silent {
                tracing::warn!(node = %node, "no heartbeat within the lease; the node is lost");
                if let Err(e) = self.node.propose(Command::NodeLost { node, at_ms: now_ms() }, None).await {
                    tracing::warn!("could not mark a node lost: {e}");
                }
            }
        }
    }

    /// Routes each applied effect to the session of its node: one task for all sessions, so
    /// that an effect costs one lookup, not a wake-up of every session. Runs until the node
    /// stops.
    pub async fn dispatch(self) {
        let mut effects = self.node.subscribe_effects();
        loop {
            match effects.recv().await {
                Ok(effect) => {
                    let node = match &effect {
                        Effect::Start { node, .. } | Effect::Stop { node, .. } => node.clone(),
                    };
                    if let Some((_, tx)) = self.agents().sessions.get(&node) {
                        let _ = tx.send(Routed::Effect(effect));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for (_, tx) in self.agents().sessions.values() {
                        let _ = tx.send(Routed::Reconcile);
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Opens the routing of a node's orders; returns the session's number and its receiver.
    fn open_session(&self, node: &NodeId) -> (u64, mpsc::UnboundedReceiver<Routed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut agents = self.agents();
        agents.next_session += 1;
        let id = agents.next_session;
        agents.sessions.insert(node.clone(), (id, tx));
        (id, rx)
    }

    fn close_session(&self, node: &NodeId, session: u64) {
        let mut agents = self.agents();
        if agents.sessions.get(node).is_some_and(|(id, _)| *id == session) {
            agents.sessions.remove(node);
        }
    }

    /// Validates a registration's inventory.
    fn registering(r: &Register) -> Result<qm_core::NodeSpec, Status> {
        let inventory = r.inventory.as_ref().ok_or_else(|| Status::invalid_argument("register.inventory: required"))?;
        inventory_from(inventory).map_err(|e| Status::invalid_argument(format!("register.inventory.{e}")))
    }

    async fn register(&self, r: Register, orders: &Orders) -> Result<NodeId, Status> {
        let spec = Self::registering(&r)?;
        let id = spec.id.clone();
        self.node.propose(Command::RegisterNode { node: spec, at_ms: now_ms() }, None).await.map_err(status_of)?;
        self.agents().last_seen.insert(id.clone(), Instant::now());
        let interval = self.heartbeat.as_millis() as u64;
        let _ = orders.send(down(Down::Registered(Registered { heartbeat_interval_ms: interval }))).await;
        let mut seqs = Vec::new();
        for s in &r.unrecorded {
            if self.record(&id, s).await && s.seq != 0 {
                seqs.push(s.seq);
            }
        }
        if !seqs.is_empty() {
            let _ = orders.send(down(Down::Recorded(Recorded { seqs }))).await;
        }
        self.reconcile(&id, Some(&r.running), orders).await;
        Ok(id)
    }

    /// Sends what the agent missed: starts of placed replicas it does not run, stops of jobs
    /// told to stop, and stops for replicas it runs that the state does not place there. With
    /// the replicas the agent runs (at registration, after its unrecorded reports), a replica
    /// the state has running that the agent does not run was lost, and one told to stop has
    /// stopped; without (effects were missed), only the orders are sent again.
    async fn reconcile(&self, node: &NodeId, running: Option<&[RunningReplica]>, orders: &Orders) {
        let (out, ended) = self.missed(node, running);
        for order in out {
            let _ = orders.send(order).await;
        }
        for command in ended {
            let _ = self.node.propose(command, None).await;
        }
    }

    /// The orders a node missed, and the commands that end the replicas it no longer runs.
    fn missed(
        &self,
        node: &NodeId,
        running: Option<&[RunningReplica]>,
    ) -> (Vec<Result<SchedulerMessage, Status>>, Vec<Command>) {
        let (mut out, mut ended) = (Vec::new(), Vec::new());
        let fsm = self.node.fsm();
        let runs = |job: JobId, replica: u32, attempt: u32| {
            running
                .is_none_or(|rs| rs.iter().any(|r| r.job_id == job.0 && r.replica == replica && r.attempt == attempt))
        };
        let at_ms = now_ms();
        for job in fsm.state.jobs().values() {
            let Some(a) = &job.assignment else { continue };
            for (i, r) in a.replicas.iter().enumerate().filter(|(_, r)| &r.node == node) {
                let (i, attempt) = (i as u32, Some(job.attempt));
                let here = runs(job.id, i, job.attempt);
                match job.state {
                    JobState::Starting if running.is_none() || !here => {
                        out.push(Self::start_order(&fsm.state, job, i, &r.devices));
                    }
                    JobState::Running if !here => {
                        let message = "a replica was lost when its agent restarted".to_owned();
                        ended.push(Command::JobFailed { job: job.id, attempt, message, at_ms });
                    }
                    JobState::Stopping | JobState::Preempted if !here => {
                        ended.push(Command::JobFinished { job: job.id, attempt, at_ms });
                    }
                    JobState::Stopping | JobState::Preempted => {
                        out.push(Self::stop_order(job, job.spec.stop_signal, job.spec.grace_ms, job.stop_reason));
                    }
                    _ => {}
                }
            }
        }
        for r in running.unwrap_or_default() {
            let placed = fsm.state.job(JobId(r.job_id)).is_some_and(|j| {
                j.attempt == r.attempt
                    && j.assignment
                        .as_ref()
                        .is_some_and(|a| a.replicas.get(r.replica as usize).is_some_and(|x| &x.node == node))
            });
            if !placed {
                out.push(down(Down::Stop(StopJob {
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
    fn start_order(
        state: &qm_core::State,
        job: &Job,
        replica: u32,
        devices: &[qm_core::DeviceId],
    ) -> Result<SchedulerMessage, Status> {
        let first = job.assignment.as_ref().and_then(|a| a.replicas.first());
        let host = first
            .and_then(|r| state.nodes().get(&r.node))
            .and_then(|n| n.spec.labels.get(qm_core::resource::ADDRESS_LABEL))
            .map_or_else(String::new, |a| a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h).to_owned());
        down(Down::Start(StartReplica {
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
    fn stop_order(
        job: &Job,
        signal: qm_core::StopSignal,
        grace_ms: u64,
        reason: Option<qm_core::StopReason>,
    ) -> Result<SchedulerMessage, Status> {
        down(Down::Stop(StopJob {
            job_id: job.id.0,
            attempt: job.attempt,
            signal: stop_signal_to(signal) as i32,
            grace_ms,
            reason: reason.map_or(0, |r| stop_reason_to(r) as i32),
        }))
    }

    fn order_for(&self, node: &NodeId, effect: Effect) -> Option<Result<SchedulerMessage, Status>> {
        let fsm = self.node.fsm();
        match effect {
            Effect::Start { job, replica, node: n, devices } if &n == node => {
                Some(Self::start_order(&fsm.state, fsm.state.job(job)?, replica, &devices))
            }
            Effect::Stop { job, node: n, signal, grace_ms, reason } if &n == node => {
                Some(Self::stop_order(fsm.state.job(job)?, signal, grace_ms, Some(reason)))
            }
            _ => None,
        }
    }

    /// The usage summary an exit report carries, as a command, when there is one and it is about
    /// the job's current attempt (a report that breaks the rules is logged and dropped: the exit
    /// it came with still counts).
    fn usage_command(&self, node: &NodeId, s: &ReplicaStatus) -> Option<Command> {
        if s.usage.is_empty() || s.phase != ReplicaPhase::Exited as i32 {
            return None;
        }
        let current = self.node.fsm().state.job(JobId(s.job_id)).map(|j| j.attempt);
        if current != Some(s.attempt) {
            return None;
        }
        let devices: Vec<DeviceUsage> = s.usage.iter().map(|u| usage_from(u, node)).collect();
        if let Err(e) = qm_core::usage::validate_usage(&devices) {
            tracing::warn!(job = s.job_id, node = %node, "a usage report was dropped: usage.{e}");
            return None;
        }
        Some(Command::RecordUsage { job: JobId(s.job_id), attempt: s.attempt, replica: s.replica, devices })
    }

    /// Records a replica's report and, once it is, acknowledges it if the agent numbered it.
    async fn on_report(&self, node: &NodeId, s: &ReplicaStatus, orders: &Orders) {
        if self.record(node, s).await && s.seq != 0 {
            let _ = orders.send(down(Down::Recorded(Recorded { seqs: vec![s.seq] }))).await;
        }
    }

    /// Records a replica's report: its usage, then its phase. True once both are decided
    /// (applied, or refused as stale); false when this replica could not get them committed
    /// (the agent sends the report again, to whichever replica leads then).
    async fn record(&self, node: &NodeId, s: &ReplicaStatus) -> bool {
        if let Some(command) = self.usage_command(node, s) {
            if !self.decided(command, s, "usage").await {
                return false;
            }
        }
        match self.phase_command(node, s) {
            Some(command) => self.decided(command, s, "phase").await,
            None => true,
        }
    }

    /// Proposes a command a report calls for; true unless it could not be committed.
    async fn decided(&self, command: Command, s: &ReplicaStatus, what: &str) -> bool {
        match self.node.propose(command, None).await {
            Ok(_) => true,
            Err(NodeError::Rejected(e)) => {
                tracing::info!(job = s.job_id, attempt = s.attempt, "a replica's {what} was stale: {e}");
                true
            }
            Err(e) => {
                tracing::warn!(job = s.job_id, attempt = s.attempt, "could not record a replica's {what}: {e}");
                false
            }
        }
    }

    /// Turns a replica's phase into a command, if it calls for one.
    fn phase_command(&self, node: &NodeId, s: &ReplicaStatus) -> Option<Command> {
        let fsm = self.node.fsm();
        let job = fsm.state.job(JobId(s.job_id))?;
        let here = job.assignment.as_ref()?.replicas.get(s.replica as usize).is_some_and(|r| &r.node == node);
        if job.attempt != s.attempt || !here {
            return None;
        }
        let at_ms = now_ms();
        let id = job.id;
        match ReplicaPhase::try_from(s.phase).ok()? {
            ReplicaPhase::Started if job.state == JobState::Starting => {
                let replicas = job.spec.gang.replicas;
                let mut agents = self.agents();
                let set = agents.started.entry((id, s.attempt)).or_default();
                set.insert(s.replica);
                (set.len() as u32 >= replicas).then(|| {
                    agents.started.remove(&(id, s.attempt));
                    Command::JobStarted { job: id, attempt: Some(s.attempt), at_ms }
                })
            }
            ReplicaPhase::Exited
                if s.exit_code == 0 || matches!(job.state, JobState::Stopping | JobState::Preempted) =>
            {
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

    /// Serves one registered agent until it hangs up or this replica stops leading.
    async fn serve(
        self,
        node: NodeId,
        session: u64,
        mut inbound: Streaming<AgentMessage>,
        mut routed: mpsc::UnboundedReceiver<Routed>,
        orders: Orders,
    ) {
        let mut check = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.on_message(&node, m, &orders).await,
                    _ => break,
                },
                r = routed.recv() => match r {
                    Some(Routed::Effect(e)) => if let Some(order) = self.order_for(&node, e) {
                        if orders.send(order).await.is_err() { break; }
                    },
                    Some(Routed::Reconcile) => self.reconcile(&node, None, &orders).await,
                    None => break,
                },
                _ = check.tick() => if !self.leading() {
                    let _ = orders.send(down(Down::NotLeader(NotLeader { leader_address: self.leader_address() }))).await;
                    break;
                },
            }
        }
        self.close_session(&node, session);
    }

    async fn on_message(&self, node: &NodeId, m: AgentMessage, orders: &Orders) {
        self.agents().last_seen.insert(node.clone(), Instant::now());
        match m.body {
            Some(Up::Heartbeat(h)) => self.readings.put(node, h.telemetry),
            None => {}
            Some(Up::Register(r)) => {
                if let Err(e) = self.register(r, orders).await {
                    let _ = orders.send(Err(e)).await;
                }
            }
            Some(Up::Inventory(inv)) => match inventory_from(&inv) {
                Ok(spec) if &spec.id == node => {
                    let _ = self.node.propose(Command::RegisterNode { node: spec, at_ms: now_ms() }, None).await;
                }
                Ok(_) => {
                    let _ =
                        orders.send(Err(Status::invalid_argument("inventory.name: a session serves one node"))).await;
                }
                Err(e) => {
                    let _ = orders.send(Err(Status::invalid_argument(format!("inventory.{e}")))).await;
                }
            },
            Some(Up::Status(s)) => self.on_report(node, &s, orders).await,
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentServer {
    type SessionStream = OrderStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (orders, rx) = mpsc::channel(1024);
        if !self.leading() {
            let _ = orders.send(down(Down::NotLeader(NotLeader { leader_address: self.leader_address() }))).await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("body: the stream ended before register"))?;
        let Some(Up::Register(r)) = first.body else {
            return Err(Status::invalid_argument("body: the first message must be register"));
        };
        let (session, routed) = self.open_session(&Self::registering(&r)?.id);
        let node = match self.register(r, &orders).await {
            Ok(node) => node,
            Err(e) => {
                self.agents().sessions.retain(|_, (id, _)| *id != session);
                return Err(e);
            }
        };
        tokio::spawn(self.clone().serve(node, session, inbound, routed, orders));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
