//! Builders for the crate's unit and property tests.

use crate::command::Command;
use crate::ids::{DeviceId, JobId, NodeId, TeamId};
use crate::job::{DeviceRequest, GangSpec, JobSpec, JobState, StopSignal};
use crate::plan::Plan;
use crate::policy::PolicyConfig;
use crate::resource::{AcceleratorKind, Device, Flavor, Health, NodeSpec, RACK_LABEL};
use crate::schedule::schedule;
use crate::state::State;
use crate::team::{FlavorQuota, PriorityClass, TeamSpec};
use std::collections::BTreeMap;

pub const H100: &str = "nvidia-h100-80gb-hbm3";

pub fn h100() -> Flavor {
    Flavor::new(AcceleratorKind::Gpu, H100)
}

pub const L4: &str = "nvidia-l4";

pub fn l4() -> Flavor {
    Flavor::new(AcceleratorKind::Gpu, L4)
}

/// A node with `gpus` H100s in two NVLink groups.
pub fn node(name: &str, gpus: u32, rack: Option<&str>) -> NodeSpec {
    node_of(name, gpus, H100, rack)
}

/// A node with `gpus` GPUs of `model` in two NVLink groups.
pub fn node_of(name: &str, gpus: u32, model: &str, rack: Option<&str>) -> NodeSpec {
    let devices = (0..gpus)
        .map(|i| Device {
            id: DeviceId::from(format!("{name}-gpu{i}")),
            kind: AcceleratorKind::Gpu,
            vendor: "nvidia".into(),
            model: model.into(),
            memory_mib: 81_559,
            health: Health::Healthy,
            numa_node: Some(i * 2 / gpus.max(1)),
            pci_bus_id: None,
            interconnect_group: Some(format!("nvlink{}", i * 2 / gpus.max(1))),
        })
        .collect();
    let labels = rack.map(|r| BTreeMap::from([(RACK_LABEL.to_owned(), r.to_owned())])).unwrap_or_default();
    NodeSpec { id: NodeId(name.into()), labels, devices, cpu_millis: 64_000, mem_mib: 512_000 }
}

pub fn team(name: &str, nominal: u32, borrowing_limit: Option<u32>) -> TeamSpec {
    let q = FlavorQuota { nominal, borrowing_limit, lending_limit: None };
    TeamSpec { name: TeamId(name.into()), weight_milli: 1000, quotas: BTreeMap::from([(h100(), q)]) }
}

pub fn job(team: &str, replicas: u32, count: u32) -> JobSpec {
    JobSpec {
        name: format!("{team}-{replicas}x{count}"),
        team: TeamId(team.into()),
        priority_class: None,
        gang: GangSpec {
            replicas,
            devices: DeviceRequest { kind: AcceleratorKind::Gpu, models: vec![], count },
            cpu_millis: 1000,
            mem_mib: 1024,
        },
        command: vec!["train.py".into()],
        env: BTreeMap::new(),
        max_runtime_ms: None,
        preemptible: true,
        stop_signal: StopSignal::Term,
        grace_ms: 30_000,
        max_retries: 2,
        runtime_estimate_ms: None,
    }
}

/// `nodes` nodes of 8 GPUs and the given teams (name, nominal, borrowing limit).
pub fn cluster(nodes: usize, teams: &[(&str, u32, Option<u32>)]) -> State {
    let mut s = State::new();
    for (name, value) in [("low", 0), ("high", 100)] {
        s.apply(Command::SetPriorityClass { class: PriorityClass { name: name.into(), value } }).unwrap();
    }
    for (name, nominal, borrowing) in teams {
        s.apply(Command::SetTeam { team: team(name, *nominal, *borrowing) }).unwrap();
    }
    for i in 0..nodes {
        s.apply(Command::RegisterNode { node: node(&format!("n{i}"), 8, None), at_ms: 0 }).unwrap();
    }
    s
}

pub fn submit(s: &mut State, spec: JobSpec, at_ms: u64) -> JobId {
    s.apply(Command::Submit { jobs: vec![spec], at_ms }).unwrap().submitted[0]
}

/// Schedules, applies the plan, and confirms every placed job started.
pub fn cycle(s: &mut State, policy: &PolicyConfig, now_ms: u64) -> Plan {
    let plan = schedule(s, policy, now_ms);
    let out = s.apply(Command::ApplyPlan { decisions: plan.decisions.clone(), at_ms: now_ms }).unwrap();
    assert!(out.rejected.is_empty(), "fresh plan rejected: {:?}", out.rejected);
    for p in &plan.decisions.placements {
        s.apply(Command::JobStarted { job: p.job, attempt: None, at_ms: now_ms }).unwrap();
    }
    plan
}

pub fn state_of(s: &State, id: JobId) -> JobState {
    s.job(id).unwrap().state
}
