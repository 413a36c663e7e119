//! Builders of common wire messages, for clients, tests and load drivers: a GPU job, a node's
//! GPU inventory, a team with a quota of one GPU model.

use crate::v1;

/// A job of one replica with `gpus` GPUs of any model the team has quota for, running `command`.
pub fn gpu_job(name: &str, team: &str, gpus: u32, command: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        team: team.into(),
        gang: Some(v1::GangSpec {
            replicas: 1,
            devices: Some(v1::DeviceRequest { kind: v1::AcceleratorKind::Gpu as i32, models: vec![], count: gpus }),
            cpu_millis: 0,
            mem_mib: 0,
        }),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        ..v1::JobSpec::default()
    }
}

/// A node named `name` with `gpus` healthy GPUs of `model` (ids `NAME-gpuI`).
pub fn gpu_inventory(name: &str, gpus: u32, model: &str) -> v1::NodeInventory {
    v1::NodeInventory {
        name: name.into(),
        devices: (0..gpus)
            .map(|i| v1::Device {
                id: format!("{name}-gpu{i}"),
                kind: v1::AcceleratorKind::Gpu as i32,
                vendor: "nvidia".into(),
                model: model.into(),
                memory_mib: 81_559,
                health: v1::Health::Healthy as i32,
                ..v1::Device::default()
            })
            .collect(),
        cpu_millis: 64_000,
        mem_mib: 512_000,
        ..v1::NodeInventory::default()
    }
}

/// A team of weight 1 with a nominal quota of `nominal` GPUs of `model`, borrowing unlimited.
pub fn gpu_team(name: &str, model: &str, nominal: u32) -> v1::Team {
    let flavor = v1::Flavor { kind: v1::AcceleratorKind::Gpu as i32, model: model.into() };
    let quota = v1::FlavorQuota { flavor: Some(flavor), nominal, borrowing_limit: None, lending_limit: None };
    v1::Team { name: name.into(), weight: 1.0, quotas: vec![quota] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_messages_convert_to_valid_core_values() {
        let job = crate::convert::job_spec_from(&gpu_job("j", "t", 2, &["run"])).unwrap();
        assert_eq!((job.gang.replicas, job.gang.devices.count), (1, 2));
        let node = crate::convert::inventory_from(&gpu_inventory("n", 8, "h100")).unwrap();
        assert_eq!(node.devices.len(), 8);
        let team = crate::convert::team_from(&gpu_team("t", "h100", 16)).unwrap();
        assert_eq!(team.quotas.values().next().unwrap().nominal, 16);
    }
}
