//! Simulated node agents, and the leader's side of their sessions. An agent opens a session
//! with the replica that leads, registers its node (the state's reconciliation tells it what
//! it missed: `service::sessions::missed`), follows the orders of applied effects
//! (`sessions::order_for`), runs each replica for the time its command names, and reports
//! started and exited replicas until the leader records them (`sessions::phase_command`).
//! The leader keeps, as the agent service does, when it last heard each node, and declares
//! nodes silent past the lease lost (`sessions::silent`); it runs the scheduling cycle
//! (`leader::Planner`) and proposes each plan, one at a time.

use super::world::World;
use crate::leader::{LeaderConfig, Planner};
use crate::node::{Handle, Input, NodeError};
use crate::service::sessions::{self, Started};
use qm_core::{AcceleratorKind, Command, Device, DeviceId, Effect, Health, NodeId, NodeSpec, Outcome};
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::{ReplicaPhase, ReplicaStatus, RunningReplica, SchedulerMessage, StartReplica};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

/// Silence after which the leader declares a node lost, in ms.
const LEASE_MS: u64 = 2_000;
/// Time between an agent's heartbeats, in ms.
const HEARTBEAT_MS: u64 = 200;
/// How long an agent waits on a replica that does not answer before it opens a session with
/// another (the agent's HTTP/2 keepalive), in ms.
const KEEPALIVE_MS: u64 = 500;
/// Time between scheduling cycles, in ms.
const CYCLE_MS: u64 = 20;

type Answer = oneshot::Receiver<Result<Outcome, NodeError>>;

/// A replica an agent runs: on which devices, when it starts and when it ends (brought
/// forward when it is told to stop).
struct Run {
    devices: Vec<String>,
    ends_at: u64,
    started_at: u64,
    reported_started: bool,
}

/// A report waiting to be recorded, and its proposal in flight.
struct Report {
    status: ReplicaStatus,
    answer: Option<Answer>,
}

/// An agent's session with the replica that led when it opened.
struct Session {
    replica: u64,
    effects: broadcast::Receiver<Effect>,
    registering: Option<Answer>,
    next_heartbeat: u64,
    /// Since when its replica has not answered (paused).
    unanswered_since: Option<u64>,
}

struct Agent {
    node: NodeId,
    devices: u32,
    session: Option<Session>,
    connect_at: u64,
    /// Cut off from the cluster until then.
    silent_until: u64,
    runs: BTreeMap<(u64, u32, u32), Run>,
    /// Starts waiting for their devices, in the order they came.
    waiting: Vec<StartReplica>,
    reports: Vec<Report>,
}

/// What the leading replica keeps in memory about agents (lost when it crashes).
#[derive(Default)]
struct LeaderMemory {
    since: Option<u64>,
    last_seen: BTreeMap<NodeId, u64>,
    started: Started,
    planner: Option<Planner>,
    plan: Option<Answer>,
    next_cycle: u64,
    next_liveness: u64,
}

/// The agents and the leaders' memories of them.
pub(super) struct Agents {
    list: Vec<Agent>,
    memory: BTreeMap<u64, LeaderMemory>,
}

impl Agents {
    /// `n` agents of `devices` GPUs each.
    pub fn new(n: usize, devices: u32) -> Self {
        let list = (0..n)
            .map(|i| Agent {
                node: NodeId::from(format!("node-{i}")),
                devices,
                session: None,
                connect_at: 0,
                silent_until: 0,
                runs: BTreeMap::new(),
                waiting: Vec::new(),
                reports: Vec::new(),
            })
            .collect();
        Self { list, memory: BTreeMap::new() }
    }

    /// How many agents there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Cuts agent `i` off from the cluster until `until`.
    pub fn silence(&mut self, i: usize, until: u64) {
        self.list[i].silent_until = until;
        self.list[i].session = None;
    }

    /// Restarts agent `i`: its replicas are gone, and so are its unsent reports.
    pub fn restart(&mut self, i: usize) {
        let a = &mut self.list[i];
        a.session = None;
        a.runs.clear();
        a.waiting.clear();
        a.reports.clear();
    }

    /// A replica crashed: its memory of agents is gone.
    pub fn forget(&mut self, replica: u64) {
        self.memory.remove(&replica);
    }

    /// Whether every agent has a session and every report was recorded.
    pub fn settled(&self) -> bool {
        self.list.iter().all(|a| a.session.as_ref().is_some_and(|s| s.registering.is_none()) && a.reports.is_empty())
    }
}

fn spec(node: &NodeId, devices: u32) -> NodeSpec {
    let devices = (0..devices)
        .map(|i| Device {
            id: DeviceId::from(format!("{node}-gpu{i}")),
            kind: AcceleratorKind::Gpu,
            vendor: "nvidia".into(),
            model: crate::testing::MODEL.into(),
            memory_mib: 81_559,
            health: Health::Healthy,
            numa_node: None,
            pci_bus_id: None,
            interconnect_group: None,
        })
        .collect();
    NodeSpec { id: node.clone(), labels: BTreeMap::new(), devices, cpu_millis: 64_000, mem_mib: 512_000 }
}

fn propose(h: &Handle, command: Command) -> Answer {
    let (reply, rx) = oneshot::channel();
    let _ =
        h.inbox().send(Input::Propose { op: crate::codec::Op::Core(command), request_id: None, asker: None, reply });
    rx
}

/// A running, unpaused replica's handle.
fn serving(w: &World, replica: u64) -> Option<Handle> {
    let r = w.replicas.get(&replica)?;
    (r.paused_until <= w.now).then(|| r.handle().cloned()).flatten()
}

/// One step of every agent and of the leader's side.
pub(super) fn act(w: &mut World) {
    lead(w);
    for i in 0..w.agents.list.len() {
        run_replicas(w, i);
        session(w, i);
    }
}

/// The leader's duties: liveness and the scheduling cycle.
fn lead(w: &mut World) {
    let up: Vec<u64> = w.replicas.iter().filter(|(_, r)| r.node.is_some()).map(|(id, _)| *id).collect();
    w.agents.memory.retain(|id, _| up.contains(id));
    let Some(leader) = w.leader() else { return };
    let Some(h) = serving(w, leader) else { return };
    let (now, base) = (w.now, w.base_instant());
    let memory = w.agents.memory.entry(leader).or_default();
    let since = *memory.since.get_or_insert(now);
    if now >= memory.next_liveness {
        memory.next_liveness = now + LEASE_MS / 4;
        let last_seen = memory.last_seen.iter().map(|(n, t)| (n.clone(), base + Duration::from_millis(*t))).collect();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let lost = sessions::silent(&h.fsm().state, &last_seen, at(since), at(now), Duration::from_millis(LEASE_MS));
        for node in lost {
            w.report.trace.push(format!("{now:>6} node {node} is silent past its lease: lost"));
            drop(propose(&h, Command::NodeLost { node, at_ms: now }));
        }
    }
    let memory = w.agents.memory.get_mut(&leader).expect("just made");
    if let Some(rx) = memory.plan.as_mut() {
        if matches!(rx.try_recv(), Err(TryRecvError::Empty)) {
            return;
        }
        memory.plan = None;
    }
    if now >= memory.next_cycle {
        memory.next_cycle = now + CYCLE_MS;
        let planner = memory.planner.get_or_insert_with(|| Planner::new(LeaderConfig::default().policy));
        if let Some(command) = planner.plan(&h.fsm(), now) {
            memory.plan = Some(propose(&h, command));
        }
    }
}

/// The agent's replicas that start or exit now, reported.
fn run_replicas(w: &mut World, i: usize) {
    let now = w.now;
    let a = &mut w.agents.list[i];
    for ((job, replica, attempt), run) in a.runs.iter_mut() {
        if !run.reported_started && now >= run.started_at {
            run.reported_started = true;
            let status =
                ReplicaStatus { job_id: *job, replica: *replica, attempt: *attempt, ..ReplicaStatus::default() };
            let status = ReplicaStatus { phase: ReplicaPhase::Started as i32, ..status };
            a.reports.push(Report { status, answer: None });
        }
    }
    let ended: Vec<(u64, u32, u32)> = a.runs.iter().filter(|(_, r)| r.ends_at <= now).map(|(k, _)| *k).collect();
    for key in ended {
        a.runs.remove(&key);
        a.reports.push(Report { status: exited(key), answer: None });
        w.report.finished += 1;
    }
    while let Some(at) = w.agents.list[i].waiting.iter().position(|o| !held(&w.agents.list[i], &o.devices)) {
        let order = w.agents.list[i].waiting.remove(at);
        start_run(w, i, order);
    }
}

/// The agent's session: open it with the leader, register, follow orders, heartbeat, report.
fn session(w: &mut World, i: usize) {
    let now = w.now;
    if w.agents.list[i].silent_until > now {
        return;
    }
    let open = w.agents.list[i].session.as_ref().map(|s| (s.replica, s.unanswered_since));
    let leads = |r: u64| serving(w, r).is_some_and(|h| h.status().leader == r);
    match open {
        Some((r, _)) if leads(r) => w.agents.list[i].session.as_mut().expect("open").unanswered_since = None,
        Some((r, since)) if paused(w, r) && since.is_none_or(|t| now - t < KEEPALIVE_MS) => {
            w.agents.list[i].session.as_mut().expect("open").unanswered_since = Some(since.unwrap_or(now));
        }
        Some(_) => {
            w.agents.list[i].session = None;
            w.agents.list[i].connect_at = now + 50;
        }
        None => {}
    }
    if w.agents.list[i].session.is_none() {
        if now >= w.agents.list[i].connect_at {
            connect(w, i);
        }
        return;
    }
    let replica = w.agents.list[i].session.as_ref().map_or(0, |s| s.replica);
    let Some(h) = serving(w, replica) else { return };
    if !registered(w, i, &h) {
        return;
    }
    let node = w.agents.list[i].node.clone();
    let s = w.agents.list[i].session.as_mut().expect("open");
    if now >= s.next_heartbeat {
        s.next_heartbeat = now + HEARTBEAT_MS;
        w.agents.memory.entry(replica).or_default().last_seen.insert(node.clone(), now);
    }
    loop {
        let s = w.agents.list[i].session.as_mut().expect("open");
        match s.effects.try_recv() {
            Ok(effect) => {
                let order = sessions::order_for(&h.fsm().state, &node, effect);
                if let Some(order) = order {
                    obey(w, i, order);
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => reconcile(w, i, &h, false),
            Err(_) => break,
        }
    }
    report(w, i, &h);
}

fn paused(w: &World, r: u64) -> bool {
    w.replicas.get(&r).is_some_and(|x| x.paused_until > w.now)
}

/// Opens a session with the replica that leads, and registers.
fn connect(w: &mut World, i: usize) {
    let Some(leader) = w.leader() else { return };
    let Some(h) = serving(w, leader) else { return };
    let a = &mut w.agents.list[i];
    let command = Command::RegisterNode { node: spec(&a.node, a.devices), at_ms: w.now };
    let effects = h.subscribe_effects();
    let registering = Some(propose(&h, command));
    a.session = Some(Session { replica: leader, effects, registering, next_heartbeat: 0, unanswered_since: None });
}

/// Whether the session's registration was applied; once it is, reconciles.
fn registered(w: &mut World, i: usize, h: &Handle) -> bool {
    let (node, now) = (w.agents.list[i].node.clone(), w.now);
    let s = w.agents.list[i].session.as_mut().expect("open");
    let Some(rx) = s.registering.as_mut() else { return true };
    match rx.try_recv() {
        Err(TryRecvError::Empty) => false,
        Ok(Ok(_)) => {
            s.registering = None;
            w.agents.memory.entry(s.replica).or_default().last_seen.insert(node, now);
            reconcile(w, i, h, true);
            true
        }
        Ok(Err(_)) | Err(TryRecvError::Closed) => {
            w.agents.list[i].session = None;
            w.agents.list[i].connect_at = w.now + 100;
            false
        }
    }
}

/// What the agent missed (with the replicas it runs, at registration), obeyed, and the
/// replicas it no longer runs ended.
fn reconcile(w: &mut World, i: usize, h: &Handle, with_running: bool) {
    let a = &w.agents.list[i];
    let running: Vec<RunningReplica> =
        a.runs.keys().map(|&(job_id, replica, attempt)| RunningReplica { job_id, replica, attempt }).collect();
    let (orders, ended) = sessions::missed(&h.fsm().state, &a.node, with_running.then_some(running.as_slice()), w.now);
    for order in orders {
        obey(w, i, order);
    }
    for command in ended {
        drop(propose(h, command));
    }
}

/// Follows an order: starts a replica for the time its command names, or stops one. As the
/// agent does (`agent/src/executor.rs`), a start whose devices a replica still holds waits
/// until they are free, and a stop of a waiting start drops it, reported exited.
fn obey(w: &mut World, i: usize, order: SchedulerMessage) {
    let now = w.now;
    match order.body {
        Some(Down::Start(s)) => {
            let a = &mut w.agents.list[i];
            let key = (s.job_id, s.replica, s.attempt);
            if a.runs.contains_key(&key) || a.waiting.iter().any(|o| (o.job_id, o.replica, o.attempt) == key) {
                return;
            }
            if held(a, &s.devices) {
                w.report.trace.push(format!("{now:>6} {}: job {} waits for its devices", a.node, s.job_id));
                w.report.waited += 1;
                a.waiting.push(s);
                return;
            }
            start_run(w, i, s);
        }
        Some(Down::Stop(s)) => {
            let stop_at = now + w.rng.random_range(1..100);
            let a = &mut w.agents.list[i];
            for (key, run) in a.runs.iter_mut() {
                if key.0 == s.job_id && key.2 == s.attempt {
                    run.ends_at = run.ends_at.min(stop_at);
                }
            }
            let (dropped, kept) = std::mem::take(&mut a.waiting)
                .into_iter()
                .partition(|o| o.job_id == s.job_id && o.attempt == s.attempt);
            a.waiting = kept;
            for o in dropped {
                a.reports.push(Report { status: exited((o.job_id, o.replica, o.attempt)), answer: None });
            }
        }
        _ => {}
    }
}

/// Whether a replica the agent runs holds one of `devices`.
fn held(a: &Agent, devices: &[String]) -> bool {
    a.runs.values().any(|r| r.devices.iter().any(|d| devices.contains(d)))
}

/// Starts a replica, to start after 5-50 ms and run for the time its command names.
fn start_run(w: &mut World, i: usize, s: StartReplica) {
    let runtime = s.command.get(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(100);
    let started_at = w.now + w.rng.random_range(5..50);
    let key = (s.job_id, s.replica, s.attempt);
    let run = Run { devices: s.devices, ends_at: started_at + runtime, started_at, reported_started: false };
    w.agents.list[i].runs.insert(key, run);
}

/// The report of a replica that exited.
fn exited((job_id, replica, attempt): (u64, u32, u32)) -> ReplicaStatus {
    ReplicaStatus { job_id, replica, attempt, phase: ReplicaPhase::Exited as i32, ..ReplicaStatus::default() }
}

/// Sends each report not yet recorded, and drops those the leader recorded.
fn report(w: &mut World, i: usize, h: &Handle) {
    let (now, replica) = (w.now, w.agents.list[i].session.as_ref().map_or(0, |s| s.replica));
    let node = w.agents.list[i].node.clone();
    let memory = w.agents.memory.entry(replica).or_default();
    let a = &mut w.agents.list[i];
    a.reports.retain_mut(|r| {
        if let Some(rx) = r.answer.as_mut() {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => return true,
                Ok(Ok(_) | Err(NodeError::Rejected(_))) => return false,
                Ok(Err(_)) | Err(TryRecvError::Closed) => r.answer = None,
            }
        }
        let command = sessions::phase_command(&h.fsm().state, &mut memory.started, &node, &r.status, now);
        match command {
            Some(c) => {
                r.answer = Some(propose(h, c));
                true
            }
            None => false,
        }
    });
}
