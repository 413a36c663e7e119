//! Builders for the crate's tests.

use qm_core::{
    AcceleratorKind, Command, DeviceRequest, Flavor, FlavorQuota, GangSpec, JobSpec, PriorityClass, StopSignal, TeamId,
    TeamSpec,
};
use std::collections::BTreeMap;

pub const MODEL: &str = "nvidia-h100-80gb-hbm3";

pub fn team(name: &str, nominal: u32) -> TeamSpec {
    let q = FlavorQuota { nominal, borrowing_limit: None, lending_limit: None };
    TeamSpec {
        name: TeamId::from(name),
        weight_milli: 1000,
        quotas: BTreeMap::from([(Flavor::new(AcceleratorKind::Gpu, MODEL), q)]),
    }
}

pub fn job_spec(team: &str) -> JobSpec {
    JobSpec {
        name: "job".into(),
        team: TeamId::from(team),
        priority_class: None,
        gang: GangSpec {
            replicas: 1,
            devices: DeviceRequest { kind: AcceleratorKind::Gpu, models: vec![], count: 1 },
            cpu_millis: 0,
            mem_mib: 0,
        },
        command: vec!["train.py".into()],
        env: BTreeMap::new(),
        max_runtime_ms: None,
        preemptible: true,
        stop_signal: StopSignal::Term,
        grace_ms: 1_000,
        max_retries: 1,
        runtime_estimate_ms: None,
    }
}

/// The commands that set up a default priority class and one team.
pub fn setup(team_name: &str, nominal: u32) -> Vec<Command> {
    vec![
        Command::SetPriorityClass { class: PriorityClass { name: "default".into(), value: 0 } },
        Command::SetTeam { team: team(team_name, nominal) },
    ]
}
