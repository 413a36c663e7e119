//! Conversions between the wire types (`v1`) and the core types, in one place.
//!
//! Proto to core validates: absent required fields, unspecified enums, out-of-range numbers
//! and oversize strings become a `ConvertError` that names the field (`jobs[2].gang.replicas`)
//! and the reason, and turn into gRPC `InvalidArgument`. The rules themselves live in
//! `qm_core::limits`, shared with the simulator's readers.

use crate::v1;
use qm_core::job::StopReason;
use qm_core::limits::{validate_job, validate_node, validate_team, MAX_BATCH, MAX_REQUEST_ID_BYTES};
use qm_core::plan::{AttemptOutcome, NodeFilterCounts, PendingReason, PlacementReport, QuotaDenial};
use qm_core::state::NodeAlloc;
use qm_core::{
    AcceleratorKind, Assignment, Device, DeviceId, DeviceRequest, DeviceUsage, FieldError, Flavor, FlavorQuota,
    GangSpec, Health, Job, JobSpec, JobState, Node, NodeId, NodeSpec, NodeStatus, PriorityClass, StopSignal, TeamId,
    TeamSpec,
};
use std::collections::BTreeMap;
use thiserror::Error;

/// Bad input from the wire, naming the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ConvertError(pub FieldError);

impl ConvertError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self(FieldError::new(field, reason))
    }

    fn within(self, parent: &str) -> Self {
        Self(self.0.within(parent))
    }

    /// The offending field, dotted.
    pub fn field(&self) -> &str {
        &self.0.field
    }
}

impl From<FieldError> for ConvertError {
    fn from(e: FieldError) -> Self {
        Self(e)
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// A required accelerator kind.
pub fn kind_from(raw: i32, field: &str) -> Result<AcceleratorKind> {
    match v1::AcceleratorKind::try_from(raw) {
        Ok(v1::AcceleratorKind::Gpu) => Ok(AcceleratorKind::Gpu),
        Ok(v1::AcceleratorKind::Tpu) => Ok(AcceleratorKind::Tpu),
        Ok(v1::AcceleratorKind::Fpga) => Ok(AcceleratorKind::Fpga),
        Ok(v1::AcceleratorKind::Ipu) => Ok(AcceleratorKind::Ipu),
        Ok(v1::AcceleratorKind::Unspecified) => Err(ConvertError::new(field, "required (gpu, tpu, fpga or ipu)")),
        Err(_) => Err(ConvertError::new(field, format!("unknown accelerator kind {raw}"))),
    }
}

/// The wire value of a kind.
pub fn kind_to(k: AcceleratorKind) -> v1::AcceleratorKind {
    match k {
        AcceleratorKind::Gpu => v1::AcceleratorKind::Gpu,
        AcceleratorKind::Tpu => v1::AcceleratorKind::Tpu,
        AcceleratorKind::Fpga => v1::AcceleratorKind::Fpga,
        AcceleratorKind::Ipu => v1::AcceleratorKind::Ipu,
    }
}

/// A required flavor.
pub fn flavor_from(f: Option<&v1::Flavor>, field: &str) -> Result<Flavor> {
    let f = f.ok_or_else(|| ConvertError::new(field, "required"))?;
    let kind = kind_from(f.kind, &format!("{field}.kind"))?;
    if f.model.trim().is_empty() || f.model.contains('/') {
        return Err(ConvertError::new(format!("{field}.model"), "must be a non-empty model name without '/'"));
    }
    Ok(Flavor::new(kind, &f.model))
}

/// The wire form of a flavor.
pub fn flavor_to(f: &Flavor) -> v1::Flavor {
    v1::Flavor { kind: kind_to(f.kind) as i32, model: f.model.to_string() }
}

fn signal_from(raw: i32) -> Result<StopSignal> {
    match v1::StopSignal::try_from(raw) {
        Ok(v1::StopSignal::Unspecified | v1::StopSignal::Term) => Ok(StopSignal::Term),
        Ok(v1::StopSignal::Int) => Ok(StopSignal::Int),
        Ok(v1::StopSignal::Usr1) => Ok(StopSignal::Usr1),
        Ok(v1::StopSignal::Usr2) => Ok(StopSignal::Usr2),
        Err(_) => Err(ConvertError::new("stop_signal", format!("unknown signal {raw}"))),
    }
}

fn signal_to(s: StopSignal) -> v1::StopSignal {
    match s {
        StopSignal::Term => v1::StopSignal::Term,
        StopSignal::Int => v1::StopSignal::Int,
        StopSignal::Usr1 => v1::StopSignal::Usr1,
        StopSignal::Usr2 => v1::StopSignal::Usr2,
    }
}

/// Default grace period when a job names none: 30 s.
pub const DEFAULT_GRACE_MS: u64 = 30_000;

/// A submitted job, validated.
pub fn job_spec_from(p: &v1::JobSpec) -> Result<JobSpec> {
    let gang = p.gang.as_ref().ok_or_else(|| ConvertError::new("gang", "required"))?;
    let devices = gang.devices.as_ref().ok_or_else(|| ConvertError::new("gang.devices", "required"))?;
    let spec = JobSpec {
        name: p.name.clone(),
        team: TeamId::from(p.team.as_str()),
        priority_class: p.priority_class.clone(),
        gang: GangSpec {
            replicas: gang.replicas,
            devices: DeviceRequest {
                kind: kind_from(devices.kind, "gang.devices.kind")?,
                models: devices.models.clone(),
                count: devices.count,
            },
            cpu_millis: gang.cpu_millis,
            mem_mib: gang.mem_mib,
        },
        command: p.command.clone(),
        env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        max_runtime_ms: p.max_runtime_ms,
        preemptible: p.preemptible.unwrap_or(true),
        stop_signal: signal_from(p.stop_signal)?,
        grace_ms: p.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
        max_retries: p.max_retries,
        runtime_estimate_ms: p.runtime_estimate_ms,
    };
    validate_job(&spec)?;
    if spec.command.is_empty() {
        return Err(ConvertError::new("command", "required: the program to run and its arguments"));
    }
    Ok(spec)
}

/// The jobs of a submission, validated; each error names `jobs[i]`.
pub fn submit_from(req: &v1::SubmitRequest) -> Result<Vec<JobSpec>> {
    if req.jobs.is_empty() {
        return Err(ConvertError::new("jobs", "at least one job is required"));
    }
    if req.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ConvertError::new(
            "request_id",
            format!("{} bytes, more than {MAX_REQUEST_ID_BYTES}", req.request_id.len()),
        ));
    }
    if req.jobs.len() > MAX_BATCH {
        return Err(ConvertError::new(
            "jobs",
            format!("{} jobs, more than {MAX_BATCH} in one request", req.jobs.len()),
        ));
    }
    req.jobs.iter().enumerate().map(|(i, j)| job_spec_from(j).map_err(|e| e.within(&format!("jobs[{i}]")))).collect()
}

/// The wire form of a job spec.
pub fn job_spec_to(s: &JobSpec) -> v1::JobSpec {
    let g = &s.gang;
    v1::JobSpec {
        name: s.name.clone(),
        team: s.team.0.to_string(),
        priority_class: s.priority_class.clone(),
        gang: Some(v1::GangSpec {
            replicas: g.replicas,
            devices: Some(v1::DeviceRequest {
                kind: kind_to(g.devices.kind) as i32,
                models: g.devices.models.clone(),
                count: g.devices.count,
            }),
            cpu_millis: g.cpu_millis,
            mem_mib: g.mem_mib,
        }),
        command: s.command.clone(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        max_runtime_ms: s.max_runtime_ms,
        preemptible: Some(s.preemptible),
        stop_signal: signal_to(s.stop_signal) as i32,
        grace_ms: Some(s.grace_ms),
        max_retries: s.max_retries,
        runtime_estimate_ms: s.runtime_estimate_ms,
    }
}

/// The wire value of a job state.
pub fn state_to(s: JobState) -> v1::JobState {
    match s {
        JobState::Pending => v1::JobState::Pending,
        JobState::Starting => v1::JobState::Starting,
        JobState::Running => v1::JobState::Running,
        JobState::Preempted => v1::JobState::Preempted,
        JobState::Stopping => v1::JobState::Stopping,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// A state filter: `None` for "any".
pub fn state_filter_from(raw: i32, field: &str) -> Result<Option<JobState>> {
    let s = v1::JobState::try_from(raw).map_err(|_| ConvertError::new(field, format!("unknown job state {raw}")))?;
    Ok(match s {
        v1::JobState::Unspecified => None,
        v1::JobState::Pending => Some(JobState::Pending),
        v1::JobState::Starting => Some(JobState::Starting),
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Preempted => Some(JobState::Preempted),
        v1::JobState::Stopping => Some(JobState::Stopping),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

fn assignment_to(a: &Assignment) -> v1::Assignment {
    v1::Assignment {
        flavor: Some(flavor_to(&a.flavor)),
        replicas: a
            .replicas
            .iter()
            .map(|r| v1::ReplicaAssignment {
                node: r.node.0.to_string(),
                devices: r.devices.iter().map(|d| d.0.to_string()).collect(),
            })
            .collect(),
    }
}

/// The wire form of a job.
pub fn job_to(j: &Job) -> v1::Job {
    v1::Job {
        id: j.id.0,
        spec: Some(job_spec_to(&j.spec)),
        priority: j.priority,
        state: state_to(j.state) as i32,
        submitted_ms: j.submitted_ms,
        attempt: j.attempt,
        assignment: j.assignment.as_ref().map(assignment_to),
        placed_ms: j.placed_ms,
        started_ms: j.started_ms,
        finished_ms: j.finished_ms,
        preemptions: j.preemptions,
        failures: j.failures,
        message: j.message.to_string(),
        usage: j.usage.iter().flat_map(|u| &u.devices).map(usage_to).collect(),
        usage_attempt: j.usage.as_ref().map_or(0, |u| u.attempt),
        redacted: false,
        attained_device_ms: j.attained_device_ms,
        idle_since_ms: j.idle_since_ms,
        attempts: j
            .attempts
            .iter()
            .map(|a| v1::AttemptRecord {
                attempt: a.attempt,
                started_ms: a.started_ms,
                ended_ms: a.ended_ms,
                devices: a.devices,
                flavor: Some(flavor_to(&a.flavor)),
                utilization_samples: a.utilization.0,
                utilization_pct_sum: a.utilization.1,
            })
            .collect(),
    }
}

/// A replica's use of a device, for the API.
pub fn usage_to(u: &DeviceUsage) -> v1::DeviceUsage {
    v1::DeviceUsage {
        replica: u.replica,
        node: u.node.to_string(),
        device: u.device.to_string(),
        utilization_samples: u.utilization_samples,
        utilization_pct_sum: u.utilization_pct_sum,
        utilization_pct_peak: u.utilization_pct_peak,
        memory_samples: u.memory_samples,
        memory_used_mib_sum: u.memory_used_mib_sum,
        memory_used_mib_peak: u.memory_used_mib_peak,
    }
}

/// An agent's report of a device's use, on `node` (the session's: the report's own is ignored).
pub fn usage_from(u: &v1::DeviceUsage, node: &NodeId) -> DeviceUsage {
    DeviceUsage {
        replica: u.replica,
        node: node.clone(),
        device: DeviceId::from(u.device.as_str()),
        utilization_samples: u.utilization_samples,
        utilization_pct_sum: u.utilization_pct_sum,
        utilization_pct_peak: u.utilization_pct_peak,
        memory_samples: u.memory_samples,
        memory_used_mib_sum: u.memory_used_mib_sum,
        memory_used_mib_peak: u.memory_used_mib_peak,
    }
}

fn device_from(d: &v1::Device, field: &str) -> Result<Device> {
    Ok(Device {
        id: DeviceId::from(d.id.as_str()),
        kind: kind_from(d.kind, &format!("{field}.kind"))?,
        vendor: d.vendor.clone(),
        model: d.model.clone(),
        memory_mib: d.memory_mib,
        health: match v1::Health::try_from(d.health) {
            Ok(v1::Health::Healthy) => Health::Healthy,
            Ok(v1::Health::Unspecified | v1::Health::Unhealthy) => Health::Unhealthy,
            Err(_) => return Err(ConvertError::new(format!("{field}.health"), format!("unknown value {}", d.health))),
        },
        numa_node: d.numa_node,
        pci_bus_id: d.pci_bus_id.clone(),
        interconnect_group: d.interconnect_group.clone(),
    })
}

/// A node's inventory from its agent, validated.
pub fn inventory_from(p: &v1::NodeInventory) -> Result<NodeSpec> {
    let devices = p
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| device_from(d, &format!("devices[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let spec = NodeSpec {
        id: NodeId::from(p.name.as_str()),
        labels: p.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        devices,
        cpu_millis: p.cpu_millis,
        mem_mib: p.mem_mib,
    };
    validate_node(&spec).map_err(|e| {
        let field = if e.field == "id" { "name".to_owned() } else { e.field };
        ConvertError(FieldError::new(field, e.reason))
    })?;
    Ok(spec)
}

/// The wire form of a node, with each device's holder.
pub fn node_to(n: &Node, alloc: Option<&NodeAlloc>) -> v1::Node {
    let held = |i: usize| alloc.and_then(|a| a.holders.get(i).copied().flatten()).map(|j| j.0);
    let mut inventory = inventory_to(&n.spec);
    for (i, d) in inventory.devices.iter_mut().enumerate() {
        d.held_by_job = held(i);
    }
    v1::Node {
        inventory: Some(inventory),
        status: match n.status {
            NodeStatus::Ready => v1::NodeStatus::Ready,
            NodeStatus::Lost => v1::NodeStatus::Lost,
        } as i32,
        cordoned: n.cordoned,
        draining: n.draining,
        cpu_used_millis: alloc.map_or(0, |a| a.cpu_used),
        mem_used_mib: alloc.map_or(0, |a| a.mem_used),
        telemetry: Vec::new(),
        telemetry_age_ms: None,
    }
}

/// The wire form of a node's inventory (what an agent registers).
pub fn inventory_to(spec: &NodeSpec) -> v1::NodeInventory {
    let devices = spec
        .devices
        .iter()
        .map(|d| v1::Device {
            id: d.id.0.to_string(),
            kind: kind_to(d.kind) as i32,
            vendor: d.vendor.clone(),
            model: d.model.clone(),
            memory_mib: d.memory_mib,
            health: if d.health == Health::Healthy { v1::Health::Healthy } else { v1::Health::Unhealthy } as i32,
            numa_node: d.numa_node,
            pci_bus_id: d.pci_bus_id.clone(),
            interconnect_group: d.interconnect_group.clone(),
            held_by_job: None,
        })
        .collect();
    v1::NodeInventory {
        name: spec.id.0.to_string(),
        labels: spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        devices,
        cpu_millis: spec.cpu_millis,
        mem_mib: spec.mem_mib,
    }
}

/// Most a team's weight may be.
pub const MAX_WEIGHT: f64 = 1000.0;

/// A team, validated; weight 0 means 1.
pub fn team_from(p: &v1::Team) -> Result<TeamSpec> {
    let weight = if p.weight == 0.0 { 1.0 } else { p.weight };
    if !(weight.is_finite() && weight > 0.0 && weight <= MAX_WEIGHT) {
        return Err(ConvertError::new("weight", format!("must be in (0, {MAX_WEIGHT}], got {}", p.weight)));
    }
    let mut quotas = BTreeMap::new();
    for (i, q) in p.quotas.iter().enumerate() {
        let field = format!("quotas[{i}]");
        let flavor = flavor_from(q.flavor.as_ref(), &format!("{field}.flavor"))?;
        let quota =
            FlavorQuota { nominal: q.nominal, borrowing_limit: q.borrowing_limit, lending_limit: q.lending_limit };
        if quotas.insert(flavor.clone(), quota).is_some() {
            return Err(ConvertError::new(format!("{field}.flavor"), format!("{flavor} is listed twice")));
        }
    }
    let spec = TeamSpec { name: TeamId::from(p.name.as_str()), weight_milli: (weight * 1000.0).round() as u32, quotas };
    validate_team(&spec)?;
    Ok(spec)
}

/// The wire form of a team.
/// A team's idle policy from its wire form.
pub fn idle_policy_from(p: &v1::IdlePolicy) -> Result<qm_core::idle::IdlePolicy> {
    use qm_core::idle::{IdleAction, IdlePolicy};
    let action = match p.requeue_after_warning_ms {
        None => IdleAction::Report,
        Some(warn_ms) => IdleAction::Requeue { warn_ms },
    };
    let policy = IdlePolicy { after_ms: p.after_ms, action };
    policy.validate().map_err(|e| ConvertError(e.within("policy")))?;
    Ok(policy)
}

/// The wire form of a team's idle policy.
pub fn idle_policy_to(p: &qm_core::idle::IdlePolicy) -> v1::IdlePolicy {
    let requeue_after_warning_ms = match p.action {
        qm_core::idle::IdleAction::Report => None,
        qm_core::idle::IdleAction::Requeue { warn_ms } => Some(warn_ms),
    };
    v1::IdlePolicy { after_ms: p.after_ms, requeue_after_warning_ms }
}

pub fn team_to(t: &TeamSpec) -> v1::Team {
    v1::Team {
        name: t.name.0.to_string(),
        weight: f64::from(t.weight_milli) / 1000.0,
        quotas: t
            .quotas
            .iter()
            .map(|(f, q)| v1::FlavorQuota {
                flavor: Some(flavor_to(f)),
                nominal: q.nominal,
                borrowing_limit: q.borrowing_limit,
                lending_limit: q.lending_limit,
            })
            .collect(),
    }
}

/// A priority class, validated.
pub fn priority_class_from(p: Option<&v1::PriorityClass>) -> Result<PriorityClass> {
    let p = p.ok_or_else(|| ConvertError::new("class", "required"))?;
    if p.name.trim().is_empty() {
        return Err(ConvertError::new("class.name", "must not be empty"));
    }
    Ok(PriorityClass { name: p.name.clone(), value: p.value })
}

fn quota_denial_to(d: &QuotaDenial) -> v1::QuotaDenial {
    use v1::QuotaDenialKind as K;
    let mut out = v1::QuotaDenial::default();
    match *d {
        QuotaDenial::OverBorrowingLimit { usage, request, nominal, borrowing_limit } => {
            out = v1::QuotaDenial { usage, request, nominal, borrowing_limit, ..out };
            out.kind = K::OverBorrowingLimit as i32;
        }
        QuotaDenial::BorrowingDisabled { usage, request, nominal } => {
            out = v1::QuotaDenial { usage, request, nominal, ..out };
            out.kind = K::BorrowingDisabled as i32;
        }
        QuotaDenial::NoLendableCapacity { borrow_needed, lendable } => {
            out = v1::QuotaDenial { borrow_needed, lendable, ..out };
            out.kind = K::NoLendableCapacity as i32;
        }
        QuotaDenial::NoQuota => out.kind = K::NoQuota as i32,
        QuotaDenial::NotPreemptible { usage, request, nominal } => {
            out = v1::QuotaDenial { usage, request, nominal, ..out };
            out.kind = K::NotPreemptible as i32;
        }
    }
    out
}

fn counts_to(c: &NodeFilterCounts) -> v1::NodeFilterCounts {
    v1::NodeFilterCounts {
        nodes: c.nodes,
        not_ready: c.not_ready,
        cordoned: c.cordoned,
        no_flavor: c.no_flavor,
        unhealthy: c.unhealthy,
        busy: c.busy,
        cpu: c.cpu,
        memory: c.memory,
        fit: c.fit,
        replicas_fit: c.replicas_fit,
        too_small: c.too_small,
    }
}

/// The wire form of a placement report.
pub fn report_to(r: &PlacementReport) -> v1::PlacementReport {
    use v1::AttemptOutcome as O;
    let mut out = v1::PlacementReport {
        position: r.position,
        preemption: r.preemption.clone().unwrap_or_default(),
        ..Default::default()
    };
    out.reason = match r.reason {
        PendingReason::Unschedulable => v1::PendingReason::Unschedulable,
        PendingReason::Preempting { victims } => {
            out.victims = victims;
            v1::PendingReason::Preempting
        }
        PendingReason::WaitingForRelease => v1::PendingReason::WaitingForRelease,
        PendingReason::Reserved { devices, starts_within_ms } => {
            out.reserved_devices = devices;
            out.reserved_starts_within_ms = starts_within_ms;
            v1::PendingReason::Reserved
        }
    } as i32;
    out.attempts = r
        .attempts
        .iter()
        .map(|a| {
            let (outcome, quota, nodes) = match &a.outcome {
                AttemptOutcome::Quota(d) => (O::Quota, Some(quota_denial_to(d)), None),
                AttemptOutcome::NoFit(c) => (O::NoFit, None, Some(counts_to(c))),
                AttemptOutcome::NeverFits(c) => (O::NeverFits, None, Some(counts_to(c))),
            };
            v1::FlavorAttempt { flavor: Some(flavor_to(&a.flavor)), outcome: outcome as i32, quota, nodes }
        })
        .collect();
    out
}

/// The wire value of a stop reason.
pub fn stop_reason_to(r: StopReason) -> v1::StopReason {
    match r {
        StopReason::Preempted => v1::StopReason::Preempted,
        StopReason::Cancelled => v1::StopReason::Cancelled,
        StopReason::Drained => v1::StopReason::Drained,
        StopReason::MaxRuntime => v1::StopReason::MaxRuntime,
        StopReason::NodeLost => v1::StopReason::NodeLost,
        StopReason::DeviceUnhealthy => v1::StopReason::DeviceUnhealthy,
        StopReason::Idle => v1::StopReason::Idle,
    }
}

/// The wire value of a stop signal.
pub fn stop_signal_to(s: StopSignal) -> v1::StopSignal {
    signal_to(s)
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "convert_props.rs"]
mod props;
