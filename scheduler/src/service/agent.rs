//! `AgentService.Session`: one stream per node agent, served by the leader only (a follower
//! answers `NotLeader` with the leader's address). Up: the agent registers its inventory
//! (proposed as `RegisterNode`), heartbeats (kept in memory with the devices' readings, never
//! logged) and reports replica phases (proposed as `JobStarted` once every replica of the attempt
//! started, `JobFinished` or `JobFailed` on exit, after a `RecordUsage` of the usage summary the
//! exit report carries). Down: the `Start` and `Stop` effects of applied commands for this node,
//! and on registration whatever the agent missed (reconciliation). A liveness task proposes
//! `NodeLost` for nodes silent longer than the lease.

use super::admission::Admission;
use super::readings::Readings;
use super::sessions;
use super::{now_ms, status_of};
use crate::access::Caller;
use crate::audit::Asker;
use crate::codec::Op;
use crate::node::{Handle, NodeError};
use qm_core::{Command, DeviceUsage, Effect, JobId, NodeId};
use qm_proto::convert::{inventory_from, usage_from};
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
    admission: Arc<Admission>,
}

type Orders = mpsc::Sender<Result<SchedulerMessage, Status>>;
type OrderStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

fn down(body: Down) -> Result<SchedulerMessage, Status> {
    Ok(sessions::message(body))
}

impl AgentServer {
    /// Serves `node`; agents heartbeat every `heartbeat`, and their readings go to `readings`.
    pub fn new(node: Handle, heartbeat: Duration, readings: Readings, admission: Arc<Admission>) -> Self {
        Self { node, agents: Arc::default(), heartbeat, readings, admission }
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
            let silent =
                sessions::silent(&self.node.fsm().state, &self.agents().last_seen, since, Instant::now(), lease);
            for node in silent {
                tracing::warn!(node = %node, "no heartbeat within the lease; the node is lost");
                self.readings.forget(&node);
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

    /// Registers the node of `r`; `asker`, the caller that opened the session, goes into the
    /// audit trail (a registration again within the session does not).
    async fn register(&self, r: Register, orders: &Orders, asker: Option<Asker>) -> Result<NodeId, Status> {
        let spec = Self::registering(&r)?;
        self.admission.node(&self.node.fsm(), &spec)?;
        let id = spec.id.clone();
        let register = Op::Core(Command::RegisterNode { node: spec, at_ms: now_ms() });
        self.node.propose_as(asker, register, None).await.map_err(status_of)?;
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
        let (out, ended) = sessions::missed(&self.node.fsm().state, node, running, now_ms());
        for order in out {
            let _ = orders.send(Ok(order)).await;
        }
        for command in ended {
            let _ = self.node.propose(command, None).await;
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

    fn order_for(&self, node: &NodeId, effect: Effect) -> Option<SchedulerMessage> {
        sessions::order_for(&self.node.fsm().state, node, effect)
    }

    fn phase_command(&self, node: &NodeId, s: &ReplicaStatus) -> Option<Command> {
        let state = &self.node.fsm().state;
        sessions::phase_command(state, &mut self.agents().started, node, s, now_ms())
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

    /// Serves one registered agent until it hangs up, this replica stops leading, or the
    /// caller's token is revoked (checked after each event).
    async fn serve(
        self,
        caller: Arc<Caller>,
        node: NodeId,
        session: u64,
        mut inbound: Streaming<AgentMessage>,
        mut routed: mpsc::UnboundedReceiver<Routed>,
        orders: Orders,
    ) {
        let mut check = tokio::time::interval(self.heartbeat);
        loop {
            if let Err(revoked) = caller.current(&self.node) {
                let _ = orders.send(Err(revoked)).await;
                break;
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.on_message(&node, m, &orders).await,
                    _ => break,
                },
                r = routed.recv() => match r {
                    Some(Routed::Effect(e)) => if let Some(order) = self.order_for(&node, e) {
                        if orders.send(Ok(order)).await.is_err() { break; }
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
            Some(Up::Heartbeat(h)) => self.readings.put(node, h.telemetry, now_ms()),
            None => {}
            Some(Up::Register(r)) => {
                let result = match Self::registering(&r) {
                    Ok(spec) if &spec.id != node => {
                        Err(Status::invalid_argument("register.inventory.name: a session serves one node"))
                    }
                    Ok(_) => self.register(r, orders, None).await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
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
        let caller = Caller::of(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("body: the stream ended before register"))?;
        let Some(Up::Register(r)) = first.body else {
            return Err(Status::invalid_argument("body: the first message must be register"));
        };
        let id = Self::registering(&r)?.id;
        caller.must_be_node(&id.0)?;
        let (session, routed) = self.open_session(&id);
        let node = match self.register(r, &orders, Some(caller.asker())).await {
            Ok(node) => node,
            Err(e) => {
                self.agents().sessions.retain(|_, (id, _)| *id != session);
                return Err(e);
            }
        };
        tokio::spawn(self.clone().serve(caller, node, session, inbound, routed, orders));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
