//! The environment a replica runs with: the job's own variables, then Quartermaster's (which
//! win): who it is (`QM_JOB_ID`, `QM_REPLICA`, ...), where its gang meets (`MASTER_ADDR`,
//! `MASTER_PORT`, `WORLD_SIZE`, `RANK`), and which devices it may see. Every visibility variable
//! is set: to the assigned devices for their vendor's runtime, and to nothing for every other,
//! so that a job never sees devices it was not given.

use qm_core::{AcceleratorKind, Device};
use qm_proto::v1::StartReplica;
use std::collections::BTreeMap;

/// Which variable each runtime reads, and how it names a device.
struct Visibility {
    /// The variable.
    var: &'static str,
    /// The devices it applies to: (kind, vendor).
    kind: AcceleratorKind,
    vendor: &'static str,
    /// Names devices by index (the trailing number of the device id) instead of by id.
    by_index: bool,
    /// The value that hides every device.
    none: &'static str,
}

/// The one table of runtimes and their variables.
const VISIBILITY: [Visibility; 7] = [
    Visibility { var: "CUDA_VISIBLE_DEVICES", kind: AcceleratorKind::Gpu, vendor: "nvidia", by_index: false, none: "" },
    Visibility {
        var: "NVIDIA_VISIBLE_DEVICES",
        kind: AcceleratorKind::Gpu,
        vendor: "nvidia",
        by_index: false,
        none: "void",
    },
    Visibility { var: "ROCR_VISIBLE_DEVICES", kind: AcceleratorKind::Gpu, vendor: "amd", by_index: false, none: "" },
    Visibility { var: "HIP_VISIBLE_DEVICES", kind: AcceleratorKind::Gpu, vendor: "amd", by_index: false, none: "" },
    Visibility { var: "ZE_AFFINITY_MASK", kind: AcceleratorKind::Gpu, vendor: "intel", by_index: true, none: "" },
    Visibility {
        var: "HABANA_VISIBLE_DEVICES",
        kind: AcceleratorKind::Gpu,
        vendor: "habana",
        by_index: true,
        none: "",
    },
    Visibility { var: "TPU_VISIBLE_CHIPS", kind: AcceleratorKind::Tpu, vendor: "google", by_index: true, none: "" },
];

/// The trailing number of a device id (`/dev/accel3` -> 3), or the id itself.
fn index_of(id: &str) -> String {
    let digits: String = id.chars().rev().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        id.to_owned()
    } else {
        digits.chars().rev().collect()
    }
}

/// The replica's full environment, given the node's devices (to know each assigned device's
/// vendor).
pub fn replica_env(order: &StartReplica, node_devices: &[Device]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = order.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let replicas = order.replicas.max(1);
    let host = if order.rendezvous_host.is_empty() { "127.0.0.1" } else { order.rendezvous_host.as_str() };
    let ours = [
        ("QM_JOB_ID", order.job_id.to_string()),
        ("QM_JOB_NAME", order.job_name.clone()),
        ("QM_TEAM", order.team.clone()),
        ("QM_ATTEMPT", order.attempt.to_string()),
        ("QM_REPLICA", order.replica.to_string()),
        ("QM_REPLICAS", replicas.to_string()),
        ("QM_DEVICES", order.devices.join(",")),
        ("WORLD_SIZE", replicas.to_string()),
        ("RANK", order.replica.to_string()),
        ("MASTER_ADDR", host.to_owned()),
        ("MASTER_PORT", order.rendezvous_port.to_string()),
    ];
    env.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));
    let assigned: Vec<&Device> =
        order.devices.iter().filter_map(|id| node_devices.iter().find(|d| d.id.as_str() == id)).collect();
    for v in &VISIBILITY {
        let mine: Vec<String> = assigned
            .iter()
            .filter(|d| d.kind == v.kind && d.vendor == v.vendor)
            .map(|d| if v.by_index { index_of(d.id.as_str()) } else { d.id.as_str().to_owned() })
            .collect();
        let value = if mine.is_empty() { v.none.to_owned() } else { mine.join(",") };
        env.insert(v.var.to_owned(), value);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_core::{DeviceId, Health};

    fn dev(id: &str, kind: AcceleratorKind, vendor: &str) -> Device {
        Device {
            id: DeviceId::from(id),
            kind,
            vendor: vendor.into(),
            model: "m".into(),
            memory_mib: 0,
            health: Health::Healthy,
            numa_node: None,
            pci_bus_id: None,
            interconnect_group: None,
        }
    }

    #[test]
    fn assigned_devices_are_visible_and_every_other_runtime_sees_none() {
        let node = [
            dev("GPU-a", AcceleratorKind::Gpu, "nvidia"),
            dev("GPU-b", AcceleratorKind::Gpu, "nvidia"),
            dev("GPU-c", AcceleratorKind::Gpu, "nvidia"),
        ];
        let order = StartReplica {
            job_id: 7,
            replica: 1,
            attempt: 2,
            replicas: 4,
            devices: vec!["GPU-c".into(), "GPU-a".into()],
            rendezvous_host: "10.0.0.5".into(),
            rendezvous_port: 29_777,
            env: [("CUDA_VISIBLE_DEVICES".to_owned(), "0,1,2".to_owned()), ("MINE".to_owned(), "x".to_owned())].into(),
            ..StartReplica::default()
        };
        let env = replica_env(&order, &node);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-c,GPU-a", "the job's own value does not win");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-c,GPU-a");
        assert_eq!((env["ROCR_VISIBLE_DEVICES"].as_str(), env["TPU_VISIBLE_CHIPS"].as_str()), ("", ""));
        let gang = ["QM_JOB_ID", "QM_REPLICA", "QM_REPLICAS", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];
        let values: Vec<&str> = gang.iter().map(|k| env[*k].as_str()).collect();
        assert_eq!(values, ["7", "1", "4", "1", "4", "10.0.0.5", "29777"]);
        assert_eq!(env["MINE"], "x");
    }

    #[test]
    fn a_job_without_devices_sees_every_kind_hidden() {
        let env = replica_env(&StartReplica::default(), &[]);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void");
        assert_eq!(env["HIP_VISIBLE_DEVICES"], "");
        assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
    }

    #[test]
    fn tpus_are_named_by_chip_index() {
        let node =
            [dev("/dev/accel0", AcceleratorKind::Tpu, "google"), dev("/dev/accel3", AcceleratorKind::Tpu, "google")];
        let order = StartReplica { devices: vec!["/dev/accel3".into()], ..StartReplica::default() };
        assert_eq!(replica_env(&order, &node)["TPU_VISIBLE_CHIPS"], "3");
    }
}
