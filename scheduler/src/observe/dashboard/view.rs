//! What the pages show, counted from this replica's state and the devices' latest readings:
//! plain data, rendered by `pages.rs`. Every list is a page of rows after a cursor, so that a
//! page costs the same at 10 nodes and at 10,000.

use crate::access::Caller;
use crate::observe::teams::{self, TeamFlavorRow};
use qm_core::state::State;
use qm_core::{AcceleratorKind, Health, Job, JobId, JobState, NodeId, NodeStatus, TeamId};
use qm_proto::v1::DeviceTelemetry;
use std::collections::{BTreeMap, HashMap};

/// Rows in a page of the queue or of the nodes.
pub const PAGE: usize = 50;

pub use crate::service::readings::Latest;

/// One flavor's devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlavorRow {
    /// `kind/model`.
    pub flavor: String,
    /// Devices on nodes that report.
    pub total: u64,
    /// Held by jobs.
    pub allocated: u64,
    /// Held, and reading under the idle threshold now.
    pub idle: u64,
    /// Neither held nor unhealthy, on nodes that are ready.
    pub free: u64,
    /// Reported unhealthy.
    pub unhealthy: u64,
}

/// The first page: the cluster at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    /// Devices by flavor.
    pub flavors: Vec<FlavorRow>,
    /// Teams against quota.
    pub teams: Vec<TeamRow>,
    /// Jobs by state.
    pub jobs: BTreeMap<&'static str, u64>,
    /// Nodes: all, ready, cordoned or draining.
    pub nodes: (u64, u64, u64),
    /// The idle threshold, percent.
    pub below_pct: u32,
}

/// A team on one flavor, with its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamRow {
    /// Quota and holdings.
    pub quota: TeamFlavorRow,
    /// Mean utilization now of the devices it holds that report one, percent.
    pub utilization_pct: Option<u32>,
    /// Pending jobs of the team (on its first flavor's row).
    pub pending: u64,
    /// How long its oldest pending job has waited, ms.
    pub oldest_wait_ms: u64,
}

/// The overview at `now_ms`.
pub fn overview(state: &State, latest: &Latest, now_ms: u64, below_pct: u32) -> Overview {
    let mut flavors: BTreeMap<(AcceleratorKind, &str), FlavorRow> = BTreeMap::new();
    let mut held_by_team: HashMap<&TeamId, (u64, u64)> = HashMap::new();
    let (mut ready, mut out_of_service) = (0, 0);
    for (id, node) in state.nodes() {
        ready += u64::from(node.status == NodeStatus::Ready);
        out_of_service += u64::from(node.cordoned || node.draining);
        let alloc = state.alloc(id);
        let readings = latest.get(id).map_or(&[][..], |(_, r)| r.as_slice());
        for (i, d) in node.spec.devices.iter().enumerate() {
            let row = flavors.entry((d.kind, d.model.as_str())).or_default();
            row.total += 1;
            let holder = alloc.and_then(|a| a.holders.get(i).copied().flatten());
            let reading = readings
                .get(i)
                .filter(|r| r.device == d.id.as_str())
                .or_else(|| readings.iter().find(|r| r.device == d.id.as_str()));
            let pct = reading.and_then(|r| r.utilization_pct);
            match holder {
                Some(job) => {
                    row.allocated += 1;
                    row.idle += u64::from(pct.is_some_and(|p| p < below_pct));
                    if let (Some(team), Some(p)) = (state.job(job).map(|j| &j.spec.team), pct) {
                        let t = held_by_team.entry(team).or_default();
                        (t.0, t.1) = (t.0 + u64::from(p), t.1 + 1);
                    }
                }
                None if d.health == Health::Unhealthy => row.unhealthy += 1,
                None => row.free += u64::from(node.status == NodeStatus::Ready),
            }
        }
    }
    let flavors = flavors.into_iter().map(|((k, m), row)| FlavorRow { flavor: format!("{k}/{m}"), ..row }).collect();
    let pending = teams::pending(state);
    let mut teams = Vec::new();
    let mut seen: Option<TeamId> = None;
    for quota in teams::rows(state) {
        let first = seen.as_ref() != Some(&quota.team);
        seen = Some(quota.team.clone());
        let (count, oldest) = pending.get(&quota.team).copied().filter(|_| first).unwrap_or((0, now_ms));
        let utilization_pct = held_by_team.get(&quota.team).filter(|t| t.1 > 0).map(|t| (t.0 / t.1) as u32);
        teams.push(TeamRow { quota, utilization_pct, pending: count, oldest_wait_ms: now_ms.saturating_sub(oldest) });
    }
    let mut jobs: BTreeMap<&'static str, u64> = BTreeMap::new();
    for job in state.jobs().values() {
        *jobs.entry(job.state.as_str()).or_default() += 1;
    }
    Overview { flavors, teams, jobs, nodes: (state.nodes().len() as u64, ready, out_of_service), below_pct }
}

/// A page of the queue: pending jobs in submission order after `after`, of `team` if given.
pub fn queue<'a>(state: &'a State, team: Option<&str>, after: u64) -> (Vec<&'a Job>, Option<u64>) {
    let mut rows: Vec<&Job> = state
        .jobs()
        .after(JobId(after))
        .filter(|j| j.state == JobState::Pending && team.is_none_or(|t| j.spec.team.as_str() == t))
        .take(PAGE + 1)
        .collect();
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);
    let next = rows.last().filter(|_| more).map(|j| j.id.0);
    (rows, next)
}

/// One device of a node as the nodes page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    /// Its id.
    pub id: String,
    /// Its model.
    pub model: String,
    /// Healthy or not.
    pub healthy: bool,
    /// The job holding it.
    pub job: Option<JobId>,
    /// What it reads now.
    pub reading: Option<DeviceTelemetry>,
    /// Held, and reading under the idle threshold now.
    pub idle: bool,
}

/// One node with its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// `ready`, `lost`, and `cordoned` or `draining` when so.
    pub status: String,
    /// Its devices, in inventory order.
    pub devices: Vec<DeviceRow>,
    /// Seconds since its readings came (none when no reading came to this replica).
    pub readings_age_s: Option<u64>,
}

/// A page of nodes from the one named `from` (the first when empty), and the name the next
/// page starts from.
pub fn nodes(state: &State, latest: &Latest, from: &str, below_pct: u32) -> (Vec<NodeRow>, Option<String>) {
    let start = match from {
        "" => std::ops::Bound::Unbounded,
        name => std::ops::Bound::Included(NodeId::from(name)),
    };
    let mut rows = Vec::new();
    for (id, node) in state.nodes().range((start, std::ops::Bound::Unbounded)) {
        if rows.len() == PAGE {
            return (rows, Some(id.as_str().to_owned()));
        }
        rows.push(row(state, latest, (id, node), below_pct));
    }
    (rows, None)
}

/// The node named `name`, if there is one.
pub fn node(state: &State, latest: &Latest, name: &NodeId, below_pct: u32) -> Option<NodeRow> {
    state.nodes().get(name).map(|node| row(state, latest, (name, node), below_pct))
}

fn row(state: &State, latest: &Latest, (id, node): (&NodeId, &qm_core::Node), below_pct: u32) -> NodeRow {
    let alloc = state.alloc(id);
    let latest = latest.get(id);
    let reading = |device: &str| latest.and_then(|(_, r)| r.iter().find(|t| t.device == device)).cloned();
    let devices = node
        .spec
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (job, reading) = (alloc.and_then(|a| a.holders.get(i).copied().flatten()), reading(d.id.as_str()));
            let idle = job.is_some() && reading.as_ref().and_then(|r| r.utilization_pct).is_some_and(|p| p < below_pct);
            DeviceRow {
                id: d.id.as_str().to_owned(),
                model: d.model.clone(),
                healthy: d.health == Health::Healthy,
                job,
                reading,
                idle,
            }
        })
        .collect();
    NodeRow {
        name: id.as_str().to_owned(),
        status: node_status(&node.status, node.cordoned, node.draining),
        devices,
        readings_age_s: latest.map(|(at, _)| at.elapsed().as_secs()),
    }
}

fn node_status(status: &NodeStatus, cordoned: bool, draining: bool) -> String {
    let base = if *status == NodeStatus::Ready { "ready" } else { "lost" };
    match (draining, cordoned) {
        (true, _) => format!("{base}, draining"),
        (false, true) => format!("{base}, cordoned"),
        _ => base.to_owned(),
    }
}

/// Whether `caller` sees `job`'s command, environment and output.
pub fn owns(caller: &Caller, job: &Job) -> bool {
    caller.owns(job.spec.team.as_str())
}
