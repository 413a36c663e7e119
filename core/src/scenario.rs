//! Scenario files: a cluster, its teams and a queue, described in TOML (parsed by the caller)
//! and turned into a `State` ready for one scheduling cycle. `qm plan` and the golden tests
//! read them; `examples/` has worked ones and `docs/concepts.md` explains them.
//!
//! Jobs marked `state = "running"` are submitted first and placed by the scheduler itself at
//! time 0 (so a scenario cannot describe an impossible placement); the others are submitted at
//! `submit_s` and the cycle runs at `now_s`.

use crate::command::Command;
use crate::error::{ApplyError, FieldError};
use crate::ids::{DeviceId, JobId, NodeId, TeamId};
use crate::job::{DeviceRequest, GangSpec, JobSpec, StopSignal};
use crate::plan::{Decisions, Preemption, PreemptionRule};
use crate::policy::PolicyConfig;
use crate::resource::{AcceleratorKind, Device, Flavor, Health, NodeSpec, RACK_LABEL};
use crate::schedule::schedule;
use crate::state::State;
use crate::team::{FlavorQuota, PriorityClass, TeamSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `--cluster FILE`: node pools.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Pools of identical nodes.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolFile>,
}

/// Identical nodes named `{name}-{i}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Name prefix.
    pub name: String,
    /// How many nodes.
    pub count: u32,
    /// Accelerator kind.
    pub kind: String,
    /// Accelerator model.
    pub model: String,
    /// Accelerators per node.
    pub devices: u32,
    /// Device memory.
    #[serde(default)]
    pub memory_mib: u64,
    /// Interconnect groups per node; devices are split evenly among them.
    #[serde(default = "one")]
    pub nvlink_groups: u32,
    /// Node CPU in millicores.
    #[serde(default = "default_cpu")]
    pub cpu_millis: u64,
    /// Node memory.
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    /// Racks, assigned round-robin to the pool's nodes.
    #[serde(default)]
    pub racks: Vec<String>,
    /// Device indexes reported unhealthy on the first node of the pool.
    #[serde(default)]
    pub unhealthy_devices: Vec<u32>,
    /// Cordon the first `cordoned` nodes of the pool.
    #[serde(default)]
    pub cordoned: u32,
}

fn one() -> u32 {
    1
}
fn default_cpu() -> u64 {
    128_000
}
fn default_mem() -> u64 {
    1_048_576
}
fn default_weight() -> f64 {
    1.0
}
fn default_grace() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// `--teams FILE`: priority classes, teams and quotas, and the policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsFile {
    /// Priority classes.
    #[serde(default, rename = "priority_class")]
    pub priority_classes: Vec<PriorityClassFile>,
    /// Teams.
    #[serde(rename = "team")]
    pub teams: Vec<TeamFile>,
    /// Policy knobs; defaults when absent.
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// A priority class.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityClassFile {
    /// Name.
    pub name: String,
    /// Value; higher first.
    pub value: i32,
}

/// A team.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamFile {
    /// Name.
    pub name: String,
    /// Fair-share weight.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Quotas per flavor.
    #[serde(default, rename = "quota")]
    pub quotas: Vec<QuotaFile>,
}

/// One flavor's quota.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    /// `kind/model`.
    pub flavor: String,
    /// Guaranteed devices.
    pub nominal: u32,
    /// Most devices above nominal; absent is unlimited.
    pub borrowing_limit: Option<u32>,
    /// Most idle nominal lent; absent is all.
    pub lending_limit: Option<u32>,
}

/// `--jobs FILE`: the queue, and jobs already running. `qm submit --file` reads the same file
/// and submits every job as pending (`now_s`, `state` and `submit_s` mean nothing to a live
/// cluster and are ignored there).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsFile {
    /// When the cycle runs, in seconds; 0 when absent.
    #[serde(default)]
    pub now_s: u64,
    /// The jobs, in submission order.
    #[serde(rename = "job")]
    pub jobs: Vec<JobFile>,
}

/// A job.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Name.
    pub name: String,
    /// Team.
    pub team: String,
    /// Priority class.
    pub priority_class: Option<String>,
    /// Replicas.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Accelerator kind.
    #[serde(default = "gpu")]
    pub kind: String,
    /// Acceptable models, preferred first; empty is any the team has quota for.
    #[serde(default)]
    pub models: Vec<String>,
    /// Devices per replica.
    pub devices: u32,
    /// CPU per replica.
    #[serde(default)]
    pub cpu_millis: u64,
    /// Memory per replica.
    #[serde(default)]
    pub mem_mib: u64,
    /// Preemptible.
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Grace period in seconds.
    #[serde(default = "default_grace")]
    pub grace_s: u64,
    /// Maximum runtime in seconds: the scheduler stops the job past it (a running job started
    /// at time 0). None by default.
    #[serde(default)]
    pub max_runtime_s: Option<u64>,
    /// `running` (placed at time 0) or `pending` (the default).
    #[serde(default)]
    pub state: ScenarioJobState,
    /// Submission time of a pending job, in seconds; default `now_s`.
    pub submit_s: Option<u64>,
    /// With `state = "preempted"`: the name of the pending job it was preempted for.
    #[serde(default)]
    pub preempted_for: Option<String>,
    /// The command each replica runs; `sleep infinity` when absent.
    #[serde(default)]
    pub command: Vec<String>,
}

fn gpu() -> String {
    "gpu".to_owned()
}

/// Where a scenario job is when the cycle runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioJobState {
    /// In the queue.
    #[default]
    Pending,
    /// Placed and started at time 0.
    Running,
    /// Placed and started at time 0, then cancelled at `now_s`: it holds its devices until it
    /// exits.
    Stopping,
    /// Placed and started at time 0, then preempted at `now_s` for the pending job that
    /// `preempted_for` names: it holds its devices, reserved for that job, until it exits.
    Preempted,
}

impl ScenarioJobState {
    /// Whether the job was placed and started at time 0.
    fn started(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// A scenario ready for a cycle.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The state with nodes, teams, running and pending jobs.
    pub state: State,
    /// The policy.
    pub policy: PolicyConfig,
    /// When the cycle runs.
    pub now_ms: u64,
}

fn field(prefix: &str, e: FieldError) -> ApplyError {
    ApplyError::Invalid(e.within(prefix))
}

impl ClusterFile {
    /// The nodes of every pool.
    pub fn nodes(&self) -> Result<Vec<(NodeSpec, bool)>, FieldError> {
        if let Some((first, again)) = repeated(self.pools.iter().map(|p| p.name.as_str())) {
            let name = &self.pools[again].name;
            return Err(FieldError::new(
                format!("pool[{again}].name"),
                format!("{name:?} is also pool[{first}]'s name"),
            ));
        }
        let mut out = Vec::new();
        for (p, pool) in self.pools.iter().enumerate() {
            let at = |f: &str| format!("pool[{p}].{f}");
            let kind: AcceleratorKind = pool.kind.parse().map_err(|e| FieldError::new(at("kind"), e))?;
            if pool.devices == 0 || pool.devices as usize > crate::resource::MAX_DEVICES_PER_NODE {
                return Err(FieldError::new(at("devices"), "must be 1..=64"));
            }
            if pool.nvlink_groups == 0 || pool.nvlink_groups > pool.devices {
                return Err(FieldError::new(at("nvlink_groups"), "must be 1..=devices"));
            }
            if let Some(bad) = pool.unhealthy_devices.iter().find(|&&d| d >= pool.devices) {
                return Err(FieldError::new(at("unhealthy_devices"), format!("device {bad} is not on the node")));
            }
            let per_group = pool.devices.div_ceil(pool.nvlink_groups);
            for i in 0..pool.count {
                let name = format!("{}-{i}", pool.name);
                let devices = (0..pool.devices)
                    .map(|d| Device {
                        id: DeviceId::from(format!("{name}-{kind}{d}")),
                        kind,
                        vendor: "scenario".to_owned(),
                        model: pool.model.clone(),
                        memory_mib: pool.memory_mib,
                        health: if i == 0 && pool.unhealthy_devices.contains(&d) {
                            Health::Unhealthy
                        } else {
                            Health::Healthy
                        },
                        numa_node: Some(d / per_group),
                        pci_bus_id: None,
                        interconnect_group: Some(format!("nvlink{}", d / per_group)),
                    })
                    .collect();
                let mut labels = BTreeMap::new();
                if !pool.racks.is_empty() {
                    labels.insert(RACK_LABEL.to_owned(), pool.racks[i as usize % pool.racks.len()].clone());
                }
                let spec = NodeSpec {
                    id: NodeId::from(name),
                    labels,
                    devices,
                    cpu_millis: pool.cpu_millis,
                    mem_mib: pool.mem_mib,
                };
                out.push((spec, i < pool.cordoned));
            }
        }
        Ok(out)
    }
}

/// The first name given twice: the positions of its first and second use.
fn repeated<'a>(names: impl Iterator<Item = &'a str>) -> Option<(usize, usize)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(&first) = seen.get(name) {
            return Some((first, i));
        }
        seen.insert(name, i);
    }
    None
}

impl TeamsFile {
    /// The teams as core specs, once the file is checked: no team and no priority class named
    /// twice (the second would silently replace the first).
    pub fn teams(&self) -> Result<Vec<TeamSpec>, FieldError> {
        if let Some((first, again)) = repeated(self.teams.iter().map(|t| t.name.as_str())) {
            let name = &self.teams[again].name;
            return Err(FieldError::new(
                format!("team[{again}].name"),
                format!("{name:?} is also team[{first}]'s name"),
            ));
        }
        if let Some((first, again)) = repeated(self.priority_classes.iter().map(|c| c.name.as_str())) {
            let name = &self.priority_classes[again].name;
            return Err(FieldError::new(
                format!("priority_class[{again}].name"),
                format!("{name:?} is also priority_class[{first}]'s name"),
            ));
        }
        self.teams
            .iter()
            .enumerate()
            .map(|(t, team)| {
                if !(team.weight.is_finite() && team.weight > 0.0 && team.weight <= 1000.0) {
                    return Err(FieldError::new(format!("team[{t}].weight"), "must be in (0, 1000]"));
                }
                let mut quotas = BTreeMap::new();
                for (i, q) in team.quotas.iter().enumerate() {
                    let flavor: Flavor =
                        q.flavor.parse().map_err(|e| FieldError::new(format!("team[{t}].quota[{i}].flavor"), e))?;
                    let quota = FlavorQuota {
                        nominal: q.nominal,
                        borrowing_limit: q.borrowing_limit,
                        lending_limit: q.lending_limit,
                    };
                    if quotas.insert(flavor, quota).is_some() {
                        return Err(FieldError::new(format!("team[{t}].quota[{i}].flavor"), "listed twice"));
                    }
                }
                let weight_milli = (team.weight * 1000.0).round() as u32;
                Ok(TeamSpec { name: TeamId::from(team.name.as_str()), weight_milli: weight_milli.max(1), quotas })
            })
            .collect()
    }
}

impl JobsFile {
    /// What the jobs must agree on among themselves: names given once (the plan names jobs by
    /// them), and no submission after `now_s` (such a job would not exist yet).
    pub fn check(&self) -> Result<(), FieldError> {
        if let Some((first, again)) = repeated(self.jobs.iter().map(|j| j.name.as_str())) {
            let name = &self.jobs[again].name;
            return Err(FieldError::new(format!("job[{again}].name"), format!("{name:?} is also job[{first}]'s name")));
        }
        match self.jobs.iter().enumerate().find(|(_, j)| j.submit_s.is_some_and(|s| s > self.now_s)) {
            Some((i, j)) => Err(FieldError::new(
                format!("job[{i}].submit_s"),
                format!(
                    "{} is after now_s {}: the job would not be submitted yet",
                    j.submit_s.unwrap_or(0),
                    self.now_s
                ),
            )),
            None => Ok(()),
        }
    }
}

impl JobFile {
    /// The job as a core spec.
    pub fn spec(&self) -> Result<JobSpec, FieldError> {
        let kind = self.kind.parse().map_err(|e| FieldError::new("kind", e))?;
        Ok(JobSpec {
            name: self.name.clone(),
            team: TeamId::from(self.team.as_str()),
            priority_class: self.priority_class.clone(),
            gang: GangSpec {
                replicas: self.replicas,
                devices: DeviceRequest { kind, models: self.models.clone(), count: self.devices },
                cpu_millis: self.cpu_millis,
                mem_mib: self.mem_mib,
            },
            command: if self.command.is_empty() {
                vec!["sleep".to_owned(), "infinity".to_owned()]
            } else {
                self.command.clone()
            },
            env: BTreeMap::new(),
            max_runtime_ms: self.max_runtime_s.map(|s| s.saturating_mul(1000)),
            preemptible: self.preemptible,
            stop_signal: StopSignal::Term,
            grace_ms: self.grace_s.saturating_mul(1000),
            max_retries: 3,
            runtime_estimate_ms: None,
        })
    }
}

impl Scenario {
    /// Builds the state: classes, teams and nodes; running jobs placed at time 0; pending jobs.
    pub fn build(cluster: &ClusterFile, teams: &TeamsFile, jobs: &JobsFile) -> Result<Self, ApplyError> {
        let mut state = State::new();
        for c in &teams.priority_classes {
            state.apply(Command::SetPriorityClass { class: PriorityClass { name: c.name.clone(), value: c.value } })?;
        }
        for team in teams.teams().map_err(|e| field("teams", e))? {
            state.apply(Command::SetTeam { team })?;
        }
        for (node, cordoned) in cluster.nodes().map_err(|e| field("cluster", e))? {
            let id = node.id.clone();
            state.apply(Command::RegisterNode { node, at_ms: 0 })?;
            if cordoned {
                state.apply(Command::Cordon { node: id, cordoned: true })?;
            }
        }
        let now_ms = jobs.now_s.saturating_mul(1000);
        jobs.check().map_err(|e| field("jobs", e))?;
        let specs = |state: &State, started: bool| -> Result<Vec<(usize, JobSpec)>, ApplyError> {
            let mut out = Vec::new();
            for (i, j) in jobs.jobs.iter().enumerate().filter(|(_, j)| j.state.started() == started) {
                let spec = j.spec().map_err(|e| field(&format!("jobs.job[{i}]"), e))?;
                if let Some(e) = state.unknown_model(&spec) {
                    return Err(in_job(ApplyError::Invalid(e.within("jobs[0]")), i));
                }
                out.push((i, spec));
            }
            Ok(out)
        };
        let (running, pending) = (specs(&state, true)?, specs(&state, false)?);
        let mut ids = Self::start_running(&mut state, running, &teams.policy)?;
        for (i, spec) in pending {
            let at_ms = jobs.jobs[i].submit_s.map_or(now_ms, |s| s.saturating_mul(1000));
            let out = state.apply(Command::Submit { jobs: vec![spec], at_ms }).map_err(|e| in_job(e, i))?;
            ids.push((i, out.submitted[0]));
        }
        Self::stop(&mut state, jobs, &ids, now_ms)?;
        Ok(Self { state, policy: teams.policy.clone(), now_ms })
    }

    /// Cancels the `stopping` jobs and preempts the `preempted` ones, at `now_ms`; `ids` gives
    /// each job's id by its place in the file.
    fn stop(state: &mut State, jobs: &JobsFile, ids: &[(usize, JobId)], now_ms: u64) -> Result<(), ApplyError> {
        let id_of = |i: usize| ids.iter().find(|(j, _)| *j == i).map(|(_, id)| *id);
        for (i, j) in jobs.jobs.iter().enumerate() {
            let at = |f: &str| format!("jobs.job[{i}].{f}");
            let victim = id_of(i).expect("every job was submitted");
            match (j.state, &j.preempted_for) {
                (ScenarioJobState::Stopping, None) => {
                    state.apply(Command::Cancel { job: victim, at_ms: now_ms })?;
                }
                (ScenarioJobState::Preempted, Some(name)) => {
                    let preemptor = jobs
                        .jobs
                        .iter()
                        .position(|p| &p.name == name && p.state == ScenarioJobState::Pending)
                        .and_then(id_of)
                        .ok_or_else(|| {
                            ApplyError::Invalid(FieldError::new(
                                at("preempted_for"),
                                format!("no pending job {name:?}"),
                            ))
                        })?;
                    let same_team = jobs.jobs.iter().any(|p| &p.name == name && p.team == j.team);
                    let rule = if same_team { PreemptionRule::WithinTeam } else { PreemptionRule::Reclaim };
                    let decisions =
                        Decisions { preemptions: vec![Preemption { victim, preemptor, rule }], ..Decisions::default() };
                    let out = state.apply(Command::ApplyPlan { decisions, at_ms: now_ms })?;
                    if let Some(r) = out.rejected.first() {
                        let why = format!("the preemption is refused: {:?}", r.reason);
                        return Err(ApplyError::Invalid(FieldError::new(at("preempted_for"), why)));
                    }
                }
                (ScenarioJobState::Preempted, None) => {
                    return Err(ApplyError::Invalid(FieldError::new(
                        at("preempted_for"),
                        "required with state = \"preempted\"",
                    )));
                }
                (_, Some(_)) => {
                    return Err(ApplyError::Invalid(FieldError::new(
                        at("preempted_for"),
                        "only with state = \"preempted\"",
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn start_running(
        state: &mut State,
        running: Vec<(usize, JobSpec)>,
        policy: &PolicyConfig,
    ) -> Result<Vec<(usize, JobId)>, ApplyError> {
        let mut ids = Vec::new();
        for (i, spec) in running {
            let out = state.apply(Command::Submit { jobs: vec![spec], at_ms: 0 }).map_err(|e| in_job(e, i))?;
            ids.push((i, out.submitted[0]));
        }
        let plan = schedule(state, policy, 0);
        state.apply(Command::ApplyPlan { decisions: plan.decisions, at_ms: 0 })?;
        for &(i, id) in &ids {
            state.apply(Command::JobStarted { job: id, attempt: None, at_ms: 0 }).map_err(|_| {
                ApplyError::Invalid(FieldError::new(
                    format!("jobs.job[{i}].state"),
                    "started, but it does not fit the cluster at time 0",
                ))
            })?;
        }
        Ok(ids)
    }
}

/// The request's paths of a job's gang, as the keys of a `[[job]]` entry.
const FILE_KEYS: [(&str, &str); 3] =
    [(".gang.devices.count", ".devices"), (".gang.devices.models", ".models"), (".gang.replicas", ".replicas")];

/// Renames `jobs[0]` (a one-job batch) to the job's place in the file, and the gang's paths to
/// the file's keys (`jobs.job[2].devices`).
fn in_job(e: ApplyError, i: usize) -> ApplyError {
    let at = |f: String| {
        let f = f.replacen("jobs[0]", &format!("jobs.job[{i}]"), 1);
        FILE_KEYS.iter().fold(f, |f, (path, key)| f.replacen(path, key, 1))
    };
    match e {
        ApplyError::Invalid(f) => ApplyError::Invalid(FieldError::new(at(f.field), f.reason)),
        ApplyError::UnknownTeam { field, team } => ApplyError::UnknownTeam { field: at(field), team },
        ApplyError::UnknownPriorityClass { field, class } => {
            ApplyError::UnknownPriorityClass { field: at(field), class }
        }
        ApplyError::NoQuotaForRequest { field, team, request, team_flavors, cluster_flavors } => {
            ApplyError::NoQuotaForRequest { field: at(field), team, request, team_flavors, cluster_flavors }
        }
        other => other,
    }
}
