//! The replicated state: what every replica holds, built only by `apply` (see `apply.rs`).
//! Indexes derived from the persistent part (device holders, usage, queues, capacity, the
//! scheduler's node index, the quota totals) are rebuilt on load, so a snapshot carries each
//! fact once. They live in this module's children: `layout`, `accounts`, `queues`, `table`,
//! `jobset`, `nodes` (the node index) and `rows` (the team rows); `invariants` checks them.

use crate::accounts::{Accounts, FlavorNo};
use crate::idle::IdlePolicy;
use crate::ids::{DeviceId, JobId, NodeId, TeamId};
use crate::job::{GangSpec, Job, JobState};
use crate::jobset::JobSet;
pub use crate::layout::{NodeAlloc, NodeAllocs, NodeLayout};
pub use crate::queues::{QueueKey, TeamQueues};
use crate::quota::Ledger;
use crate::resource::{Flavor, Health, Node};
use crate::table::JobTable;
use crate::team::{PriorityClass, TeamSpec};
use crate::usage::{AttemptRecord, JobUsage};
use nodes::NodeIndex;
use rows::TeamRows;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

pub(crate) mod accounts;
mod invariants;
pub mod jobset;
pub mod layout;
pub(crate) mod nodes;
pub mod queues;
pub(crate) mod rows;
pub mod table;
pub(crate) mod times;

/// Newest snapshot format version; bump on any change of `Persistent`'s encoding. Version 2
/// is version 1 followed by a trailer of job usage records; version 3 adds a second trailer,
/// the teams' idle policies, the jobs flagged idle and the jobs' ended attempts. A state is
/// written in the oldest version that holds it (version 1 without any of these), so that older
/// releases read what they can.
pub const SNAPSHOT_VERSION: u16 = 3;
/// The first snapshot format: the persistent state alone.
const FIRST_VERSION: u16 = 1;
/// The format with the usage trailer.
const USAGE_VERSION: u16 = 2;
const SNAPSHOT_MAGIC: &[u8; 4] = b"QMSS";

/// Order of pending jobs in the shortest-first queue: (runtime estimate, age, id).
pub type GlobalKey = (u64, u64, JobId);

/// The part of the state that snapshots carry. Cloning it is cheap (the nodes and the job
/// chunks are shared, and copied on write), which is what makes a snapshot's cut cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Persistent {
    pub nodes: Arc<BTreeMap<NodeId, Node>>,
    pub jobs: JobTable,
    pub teams: BTreeMap<TeamId, TeamSpec>,
    pub classes: BTreeMap<String, PriorityClass>,
    pub next_job: u64,
    /// Teams' idle policies, encoded in the version 3 trailer.
    #[serde(skip)]
    pub idle: BTreeMap<TeamId, IdlePolicy>,
}

/// The version 3 trailer: idle policies, the jobs flagged idle with since when, and the jobs'
/// ended attempts.
type Trailer3<'a> = (Vec<(TeamId, IdlePolicy)>, Vec<(JobId, u64)>, Vec<(JobId, Cow<'a, [AttemptRecord]>)>);

impl Persistent {
    /// The nodes, to change (copied first if a cut shares them).
    pub fn nodes_mut(&mut self) -> &mut BTreeMap<NodeId, Node> {
        Arc::make_mut(&mut self.nodes)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let usage: Vec<(JobId, &JobUsage)> =
            self.jobs.values().filter_map(|j| Some((j.id, j.usage.as_deref()?))).collect();
        let third: Trailer3 = (
            self.idle.iter().map(|(t, p)| (t.clone(), *p)).collect(),
            self.jobs.values().filter_map(|j| Some((j.id, j.idle_since_ms?))).collect(),
            self.jobs.values().filter(|j| !j.attempts.is_empty()).map(|j| (j.id, Cow::from(&j.attempts[..]))).collect(),
        );
        let version = match (usage.is_empty(), third.0.is_empty() && third.1.is_empty() && third.2.is_empty()) {
            (_, false) => SNAPSHOT_VERSION,
            (false, true) => USAGE_VERSION,
            (true, true) => FIRST_VERSION,
        };
        let mut out = Vec::with_capacity(64 * 1024);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        let out = postcard::to_extend(self, out).expect("encoding to a Vec cannot fail");
        if version == FIRST_VERSION {
            return out;
        }
        let out = postcard::to_extend(&usage, out).expect("encoding to a Vec cannot fail");
        if version == USAGE_VERSION {
            return out;
        }
        postcard::to_extend(&third, out).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a body of format `version`: the persistent state, then, from version 2, the
    /// usage records of its jobs.
    fn from_body(version: u16, body: &[u8]) -> Result<Self, SnapshotError> {
        let corrupt = |e: postcard::Error| SnapshotError::Corrupt(e.to_string());
        if version == FIRST_VERSION {
            return postcard::from_bytes(body).map_err(corrupt);
        }
        let (mut data, trailer): (Self, _) = postcard::take_from_bytes(body).map_err(corrupt)?;
        let (usage, trailer): (Vec<(JobId, JobUsage)>, _) = postcard::take_from_bytes(trailer).map_err(corrupt)?;
        for (id, u) in usage {
            data.job_in_trailer(id, "usage")?.usage = Some(Arc::new(u));
        }
        if version == USAGE_VERSION {
            return Ok(data);
        }
        let (policies, flagged, attempts): Trailer3 = postcard::from_bytes(trailer).map_err(corrupt)?;
        for (team, policy) in policies {
            if !data.teams.contains_key(&team) {
                return Err(SnapshotError::Corrupt(format!(
                    "idle policy of team {:?}, which is not set",
                    team.as_str()
                )));
            }
            data.idle.insert(team, policy);
        }
        for (id, since) in flagged {
            data.job_in_trailer(id, "idle flag")?.idle_since_ms = Some(since);
        }
        for (id, ended) in attempts {
            data.job_in_trailer(id, "attempts")?.attempts = ended.into_owned();
        }
        Ok(data)
    }

    /// Job `id`, which a trailer's `what` names.
    fn job_in_trailer(&mut self, id: JobId, what: &str) -> Result<&mut Job, SnapshotError> {
        self.jobs
            .get_mut(&id)
            .ok_or_else(|| SnapshotError::Corrupt(format!("{what} of job {id}, which is not in the table")))
    }
}

/// A consistent copy of what a snapshot carries, taken in microseconds (it shares unchanged
/// nodes and jobs with the live state), to be encoded elsewhere while the state moves on.
#[derive(Clone, Debug)]
pub struct StateCut(Persistent);

impl StateCut {
    /// The snapshot bytes, the same as `State::to_bytes` gave when the cut was taken.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The state as it was when the cut was taken, its indexes built again (as a restore
    /// builds them): a copy to work on without holding up the live state.
    pub fn into_state(self) -> State {
        State::rebuild(self.0)
    }
}

/// The whole scheduler state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub(crate) data: Persistent,
    pub(crate) allocs: NodeAllocs,
    /// Devices each team holds, and devices free, per flavor.
    pub(crate) accounts: Accounts,
    pub(crate) queues: TeamQueues,
    /// Jobs in `queues`, counted as they enter and leave.
    pending: usize,
    /// Every pending job in submission order (by id), for the global FIFO orders.
    /// Kept only once a cycle asked for it: the production order walks the team queues.
    fifo: Derived<JobSet>,
    /// Every pending job by runtime estimate, for shortest-first; kept once asked for.
    shortest: Derived<BTreeSet<GlobalKey>>,
    pub(crate) capacity: BTreeMap<Flavor, u64>,
    /// Jobs told to stop that still hold devices (`Preempted`, `Stopping`).
    pub(crate) stopping: JobSet,
    /// Jobs in state `Running`.
    running: JobSet,
    /// Running jobs with a maximum runtime, by the time it runs out.
    pub(crate) deadlines: BTreeSet<(u64, JobId)>,
    deadline_of: BTreeMap<JobId, u64>,
    /// Pending jobs by submission, running jobs by start (see `times.rs`).
    pub(crate) times: times::Times,
    /// The scheduler's node index, kept between cycles (see `schedule/nodes.rs`).
    node_index: Derived<NodeIndex>,
    /// Quota totals per flavor slot of `accounts`, kept between cycles.
    ledgers: Derived<Vec<Ledger>>,
    /// The scheduler's team rows, kept between cycles (see `schedule/rows.rs`).
    team_rows: Derived<TeamRows>,
    /// Ended attempts are not kept on the jobs' records (`forget_attempts`).
    pub(crate) forget_attempts: bool,
}

/// A value computed from the other fields of the state: built on first use after what it
/// depends on changed wholesale (nodes, teams, a load), and kept up to date by `charge` in
/// between. It caches a function of the other fields, so it takes no part in equality; built
/// lazily, so that registering 10,000 nodes one command at a time does not rebuild it 10,000
/// times.
#[derive(Clone, Debug)]
struct Derived<T>(OnceLock<T>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Self(OnceLock::new())
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Derived<T> {}

/// Why a snapshot could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// Not a Quartermaster snapshot.
    #[error("not a state snapshot (bad magic)")]
    BadMagic,
    /// Written by a version this build does not know.
    #[error(
        "snapshot format version {found} is not supported (this build reads {FIRST_VERSION} to {SNAPSHOT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// The body does not decode.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps no ended attempt on the jobs' records from now on: they serve accounting only
    /// (`qm usage`), which a simulation does without, and cost it a tenth of its time.
    pub fn forget_attempts(&mut self) {
        self.forget_attempts = true;
    }

    /// Nodes by name.
    pub fn nodes(&self) -> &BTreeMap<NodeId, Node> {
        &self.data.nodes
    }

    /// Device holders and host usage of a node.
    pub fn alloc(&self, node: &NodeId) -> Option<&NodeAlloc> {
        self.allocs.get(node)
    }

    /// Jobs by id, terminal ones included.
    pub fn jobs(&self) -> &JobTable {
        &self.data.jobs
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.data.jobs.get(&id)
    }

    /// Teams by name.
    pub fn teams(&self) -> &BTreeMap<TeamId, TeamSpec> {
        &self.data.teams
    }

    /// Priority classes by name.
    pub fn priority_classes(&self) -> &BTreeMap<String, PriorityClass> {
        &self.data.classes
    }

    /// Devices of `flavor` that jobs of `team` hold.
    pub fn usage(&self, team: &TeamId, flavor: &Flavor) -> u32 {
        self.accounts.held(team, flavor)
    }

    /// Free devices that `job` could use: of the flavors its team has quota for and its request
    /// matches; `None` if its team is unknown.
    pub fn free_for(&self, job: &Job) -> Option<u64> {
        let t = self.accounts.team_of(job)?;
        Some(self.accounts.free_for(t, &job.spec.gang.devices))
    }

    /// Devices of every flavor that `team` holds.
    pub fn team_held(&self, team: &TeamId) -> u32 {
        self.accounts.held_total(team)
    }

    /// Devices of `flavor` that the team of `job` holds (`usage`, finding the team by the
    /// job's hint).
    pub fn team_usage(&self, job: &Job, flavor: &Flavor) -> u32 {
        self.accounts.held_by(self.accounts.team_of(job), flavor)
    }

    /// A team's pending jobs in queue order.
    pub fn queue(&self, team: &TeamId) -> impl Iterator<Item = JobId> + '_ {
        self.queues.get(team).into_iter().flat_map(|q| q.iter().map(|k| k.id))
    }

    /// Per-team queues in team order.
    pub fn queues(&self) -> &TeamQueues {
        &self.queues
    }

    /// Indexes the pending jobs by least-attained-service level under `thresholds` (devices x
    /// seconds, the policy's `las_thresholds_device_s`), for a caller that schedules by least
    /// attained service with them: its cycles then find each level's next job without reading
    /// the other levels'. The same decisions with or without; not part of the state (equality
    /// and snapshots ignore it).
    pub fn index_service_levels(&mut self, thresholds: &[u64]) {
        self.queues.index_levels(thresholds);
    }

    /// Number of pending jobs.
    pub fn pending_count(&self) -> usize {
        debug_assert_eq!(self.pending, self.queues.iter().map(|(_, q)| q.len()).sum::<usize>());
        self.pending
    }

    /// Schedulable healthy devices per flavor.
    pub fn capacity(&self) -> &BTreeMap<Flavor, u64> {
        &self.capacity
    }

    /// A model that job `spec` lists beside one that exists, and that neither its team's quota
    /// nor the cluster has, as a field error naming its place (`gang.devices.models[1]: ...`):
    /// most likely a typo. (A list of unknown models alone is refused by `apply`, with the
    /// flavors the team and the cluster have.) Checked where requests come in (the API, scenario files), not
    /// in `apply`, so that logs written before the check replay the same.
    pub fn unknown_model(&self, spec: &crate::job::JobSpec) -> Option<crate::error::FieldError> {
        let req = &spec.gang.devices;
        let team = self.data.teams.get(&spec.team)?;
        let known = |m: &str| {
            let is = |f: &Flavor| f.kind == req.kind && &*f.model == m;
            team.quotas.keys().any(is) || self.capacity.keys().any(is)
        };
        if !req.models.iter().any(|m| known(m)) {
            return None;
        }
        let (k, model) = req.models.iter().enumerate().find(|(_, m)| !known(m))?;
        Some(crate::error::FieldError::new(
            format!("gang.devices.models[{k}]"),
            format!("no flavor {}/{model} in team {:?}'s quota or in the cluster", req.kind, spec.team.as_str()),
        ))
    }

    /// Flavors whose teams' nominal quotas add up to more than the cluster's schedulable healthy
    /// devices of the flavor, with the sum and the capacity: there, not every team can have its
    /// nominal at once, and a team's guarantee holds only while others leave theirs unused.
    pub fn overcommitted(&self) -> Vec<(Flavor, u64, u64)> {
        crate::quota::overcommitted(self.data.teams.values(), |f| self.capacity.get(f).copied().unwrap_or(0))
    }

    /// Quota totals per flavor over all teams, at the current usage (flavors whose totals are
    /// all zero left out).
    pub fn ledgers(&self) -> BTreeMap<Flavor, Ledger> {
        let totals = self.slot_ledgers();
        let known = self.accounts.flavors().iter().zip(totals);
        known.filter(|(_, l)| **l != Ledger::default()).map(|(f, l)| (f.clone(), *l)).collect()
    }

    /// The quota totals of `flavor`.
    pub fn ledger(&self, flavor: &Flavor) -> Ledger {
        self.accounts.flavor(flavor).map(|f| self.slot_ledger(f)).unwrap_or_default()
    }

    /// The quota totals of flavor slot `f` of the accounts.
    pub(crate) fn slot_ledger(&self, f: FlavorNo) -> Ledger {
        self.slot_ledgers().get(f.ix()).copied().unwrap_or_default()
    }

    /// The quota totals by flavor slot of the accounts, counted here if teams or nodes changed.
    fn slot_ledgers(&self) -> &[Ledger] {
        self.ledgers.0.get_or_init(|| self.count_ledgers())
    }

    fn count_ledgers(&self) -> Vec<Ledger> {
        let flavors = self.accounts.flavors();
        let mut out: Vec<Ledger> = flavors
            .iter()
            .map(|f| Ledger { capacity: self.capacity.get(f).copied().unwrap_or(0), ..Ledger::default() })
            .collect();
        for (team, spec) in &self.data.teams {
            for (flavor, q) in &spec.quotas {
                let f = self.accounts.flavor(flavor).expect("teams' flavors have slots").ix();
                out[f].add_team(q, self.usage(team, flavor));
            }
        }
        out
    }

    /// Drops the quota totals after teams' quotas changed; they are counted again when next
    /// asked for.
    pub(crate) fn quotas_changed(&mut self) {
        self.ledgers = Derived::default();
        self.team_rows = Derived::default();
    }

    /// Encodes the persistent state: magic, format version, then the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.to_bytes()
    }

    /// A cheap consistent copy of the persistent state, to encode off the caller's thread.
    pub fn cut(&self) -> StateCut {
        StateCut(self.data.clone())
    }

    /// Decodes a snapshot and rebuilds the indexes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if bytes.len() < 6 || &bytes[..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let found = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !(FIRST_VERSION..=SNAPSHOT_VERSION).contains(&found) {
            return Err(SnapshotError::UnsupportedVersion { found });
        }
        let data = Persistent::from_body(found, &bytes[6..])?;
        if let Some(job) = data.jobs.values().find(|j| !data.teams.contains_key(&j.spec.team)) {
            return Err(SnapshotError::Corrupt(format!(
                "job {}: its team {:?} is not set",
                job.id,
                job.spec.team.as_str()
            )));
        }
        Ok(Self::rebuild(data))
    }

    /// SHA-256 of the snapshot bytes: equal on replicas that applied the same commands.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// The scheduler's node index, built here if nodes changed since it was last used.
    pub(crate) fn node_index(&self) -> &NodeIndex {
        self.node_index.0.get_or_init(|| NodeIndex::build(&self.data.nodes, &self.allocs))
    }

    /// The scheduler's team rows, built here if nodes or teams changed since they were last
    /// used.
    pub(crate) fn team_rows(&self) -> &TeamRows {
        self.team_rows.0.get_or_init(|| TeamRows::build(self.node_index(), &self.data.teams, &self.accounts))
    }

    /// Runs a command that changes nodes themselves (not only what is held on them): the node
    /// index, the team rows (flavors may change) and the quota totals (capacity may change) are
    /// dropped first, and built again when next needed.
    pub(crate) fn with_node_change<T>(&mut self, change: impl FnOnce(&mut Self) -> T) -> T {
        self.node_index = Derived::default();
        self.team_rows = Derived::default();
        self.ledgers = Derived::default();
        change(self)
    }

    fn rebuild(data: Persistent) -> Self {
        let mut state = Self { data, ..Self::default() };
        for team in state.data.teams.values() {
            state.accounts.open(team);
        }
        let ids: Vec<NodeId> = state.data.nodes.keys().cloned().collect();
        for id in &ids {
            state.reset_alloc(id);
            state.add_capacity(id, 1);
        }
        let jobs: Vec<JobId> = state.data.jobs.keys().collect();
        for id in jobs {
            let job = &state.data.jobs[&id];
            match job.state {
                s if s.holds_devices() => {
                    state.hold(id);
                    state.track(id);
                }
                JobState::Pending => state.enqueue(id),
                _ => {}
            }
        }
        state
    }

    pub(crate) fn reset_alloc(&mut self, id: &NodeId) {
        let node = &self.data.nodes[id];
        let alloc = NodeAlloc {
            holders: vec![None; node.spec.devices.len()],
            layout: NodeLayout::of(&node.spec),
            schedulable: node.schedulable(),
            ..NodeAlloc::default()
        };
        self.allocs.insert(id.clone(), alloc);
    }

    /// Copies a node's schedulability into its allocation, after its status, cordon or drain
    /// changed (before anything is held or freed on it).
    pub(crate) fn sync_schedulable(&mut self, id: &NodeId) {
        let schedulable = self.data.nodes[id].schedulable();
        self.allocs.get_mut(id).expect("alloc exists for every node").schedulable = schedulable;
    }

    /// Adds (`sign` = 1) or removes (-1) a node's schedulable healthy devices from capacity.
    pub(crate) fn add_capacity(&mut self, id: &NodeId, sign: i64) {
        let node = &self.data.nodes[id];
        if !node.schedulable() {
            return;
        }
        let held = self.allocs.get(id).map_or(0, |a| a.held);
        for (i, d) in node.spec.devices.iter().enumerate().filter(|(_, d)| d.health == Health::Healthy) {
            let flavor = d.flavor();
            let f = self.accounts.flavor_slot(&flavor);
            bump(&mut self.capacity, &flavor, sign);
            if held & (1 << i) == 0 {
                self.accounts.add_free(f, sign);
            }
        }
    }

    /// Healthy devices of `flavor` nobody holds on schedulable nodes.
    pub fn free(&self, flavor: &Flavor) -> u64 {
        self.accounts.free(flavor)
    }

    /// Healthy devices nobody holds on schedulable nodes, per flavor (flavors with none left
    /// out).
    pub fn free_by_flavor(&self) -> BTreeMap<Flavor, u64> {
        self.accounts.free_by_flavor()
    }

    /// Whether no healthy device on a schedulable node is free.
    pub fn none_free(&self) -> bool {
        self.accounts.none_free()
    }

    /// Jobs told to stop that still hold devices.
    pub fn stopping(&self) -> &JobSet {
        &self.stopping
    }

    /// Jobs in state `Running`.
    pub fn running(&self) -> &JobSet {
        &self.running
    }

    /// Running jobs whose maximum runtime has run out at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> impl Iterator<Item = JobId> + '_ {
        self.deadlines.range(..=(now_ms, JobId(u64::MAX))).map(|(_, id)| *id)
    }

    /// Refreshes the `stopping`, `running`, `deadlines` and start-time indexes after a job
    /// changed state.
    pub(crate) fn track(&mut self, id: JobId) {
        let job = &self.data.jobs[&id];
        self.times.track(job);
        if matches!(job.state, JobState::Preempted | JobState::Stopping) {
            self.stopping.insert(id);
        } else {
            self.stopping.remove(id);
        }
        if job.state == JobState::Running {
            self.running.insert(id);
        } else {
            self.running.remove(id);
        }
        let Some(max) = job.spec.max_runtime_ms else { return };
        let deadline = match (job.state, job.started_ms) {
            (JobState::Running, Some(start)) => Some(start.saturating_add(max)),
            _ => None,
        };
        if let Some(old) = self.deadline_of.remove(&id) {
            self.deadlines.remove(&(old, id));
        }
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
            self.deadline_of.insert(id, d);
        }
    }

    pub(crate) fn enqueue(&mut self, id: JobId) {
        let job = &self.data.jobs[&id];
        let t = self.accounts.team_of(job).expect("every job's team has a slot");
        self.pending += usize::from(self.queues.insert(t, job));
        self.times.enqueue(job);
        if let Some(set) = self.fifo.0.get_mut() {
            set.insert(id);
        }
        if let Some(set) = self.shortest.0.get_mut() {
            set.insert(Self::shortest_key(job));
        }
    }

    pub(crate) fn dequeue(&mut self, id: JobId) {
        let job = &self.data.jobs[&id];
        self.times.dequeue(job);
        if let Some(set) = self.fifo.0.get_mut() {
            set.remove(id);
        }
        if let Some(set) = self.shortest.0.get_mut() {
            set.remove(&Self::shortest_key(job));
        }
        let t = self.accounts.team_of(job).expect("every job's team has a slot");
        self.pending -= usize::from(self.queues.remove(t, job));
    }

    fn shortest_key(job: &Job) -> GlobalKey {
        (job.spec.runtime_estimate_ms.unwrap_or(u64::MAX), job.submitted_ms, job.id)
    }

    /// All pending jobs in submission order: by id, the order in which the replicated log
    /// took them (the order of their submission times too, in the simulator and whenever the
    /// leader's clock moves forward); built on first use, then kept.
    pub fn fifo(&self) -> &JobSet {
        self.fifo.0.get_or_init(|| self.pending_ids().collect())
    }

    /// All pending jobs by runtime estimate (unknown last), then submission time; built on
    /// first use, then kept.
    pub fn shortest(&self) -> &BTreeSet<GlobalKey> {
        self.shortest.0.get_or_init(|| self.pending_ids().map(|id| Self::shortest_key(&self.data.jobs[&id])).collect())
    }

    fn pending_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.queues.iter().flat_map(|(_, q)| q).map(|k| k.id)
    }

    /// Marks the devices of a job's assignment as held and charges its team.
    pub(crate) fn hold(&mut self, id: JobId) {
        self.charge(id, true);
    }

    /// Frees a job's devices and credits its team.
    pub(crate) fn release(&mut self, id: JobId) {
        self.charge(id, false);
    }

    /// Holds (`take`) or frees a job's devices.
    fn charge(&mut self, id: JobId, take: bool) {
        let job = &self.data.jobs[&id];
        let Some(a) = &job.assignment else { return };
        let mut schedulable = 0i64;
        for r in &a.replicas {
            let at = self.allocs.locate(&r.node, r.position).expect("alloc exists for every node");
            debug_assert_eq!(self.allocs.ids()[at], r.node);
            let alloc = self.allocs.at_mut(at);
            debug_assert_eq!(alloc.schedulable, self.data.nodes[&r.node].schedulable());
            schedulable += mark_replica(alloc, &r.devices, take.then_some(id), &job.spec.gang);
            if let Some(index) = self.node_index.0.get_mut() {
                index.update(at, alloc);
            }
        }
        let f = self.accounts.flavor_slot(&a.flavor);
        self.accounts.add_free(f, if take { -schedulable } else { schedulable });
        // Every job's team was set (admission checks it), so it has a slot.
        let Some(t) = self.accounts.team_of(job) else { return };
        let total = job.spec.gang.total_devices();
        let change = |used: u32| if take { used + total } else { used.saturating_sub(total) };
        let (used, next) = self.accounts.change_held(t, f, change);
        let quota = match self.team_rows.0.get_mut().map(|rows| rows.set_usage(t, f, next)) {
            Some(Some(quota)) => quota,
            missing => {
                if missing.is_some() {
                    self.team_rows = Derived::default();
                }
                self.accounts.quota(t, f)
            }
        };
        if let Some(ledgers) = self.ledgers.0.get_mut() {
            match (quota, ledgers.get_mut(f.ix())) {
                (Some(q), Some(ledger)) => ledger.update(&q, used, next),
                (None, _) => {}
                (Some(_), None) => self.ledgers = Derived::default(),
            }
        }
    }
}

/// Marks one replica's devices as held by `holder` (or by nobody), and takes (or gives back)
/// its CPU and memory; returns how many of the devices count as capacity (healthy, on a node
/// that takes work).
fn mark_replica(alloc: &mut NodeAlloc, devices: &[DeviceId], holder: Option<JobId>, gang: &GangSpec) -> i64 {
    let mask = alloc.layout.mask_of(devices);
    for i in bits(mask) {
        alloc.holders[i] = holder;
    }
    if holder.is_some() {
        alloc.held |= mask;
        alloc.cpu_used += gang.cpu_millis;
        alloc.mem_used += gang.mem_mib;
    } else {
        alloc.held &= !mask;
        alloc.cpu_used = alloc.cpu_used.saturating_sub(gang.cpu_millis);
        alloc.mem_used = alloc.mem_used.saturating_sub(gang.mem_mib);
    }
    if alloc.schedulable {
        i64::from((mask & alloc.layout.healthy).count_ones())
    } else {
        0
    }
}

/// The positions of the set bits of a mask, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let i = mask.trailing_zeros() as usize;
        mask &= mask.wrapping_sub(1);
        (i < 64).then_some(i)
    })
}

/// Adds `delta` to a per-flavor count, dropping it at zero (so a rebuilt state compares equal).
fn bump(counts: &mut BTreeMap<Flavor, u64>, flavor: &Flavor, delta: i64) {
    match counts.get_mut(flavor) {
        Some(c) => {
            *c = c.saturating_add_signed(delta);
            if *c == 0 {
                counts.remove(flavor);
            }
        }
        None if delta > 0 => {
            counts.insert(flavor.clone(), delta as u64);
        }
        None => {}
    }
}
