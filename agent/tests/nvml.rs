//! The NVML probe fed with real captures of an H100 80GB HBM3 (idle and busy) and an H200
//! (`agent/testdata/nvml/`), through a fake NVML source, with injected faults.

use qm_agent::inventory::{Probe, ProbeReport};
use qm_agent::nvml::{health, readings_from_csv, FakeNvml, GpuReading, MigReading, NvmlProbe};
use qm_core::Health;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn capture(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nvml").join(path)).unwrap()
}

/// The NUMA node of GPU0 from `nvidia-smi topo -m` (the "NUMA Affinity" column).
fn topo_numa(topo: &str) -> Option<u32> {
    let header: Vec<&str> = topo.lines().next()?.split('\t').collect();
    let column = header.iter().position(|h| h.contains("NUMA Affinity"))?;
    topo.lines().nth(1)?.split('\t').nth(column)?.trim().parse().ok()
}

fn h100() -> GpuReading {
    let mut g = readings_from_csv(&capture("h100-80gb-hbm3/nvidia-smi-query.csv")).remove(0);
    g.numa_node = topo_numa(&capture("h100-80gb-hbm3/nvidia-smi-topo.txt"));
    g
}

fn h200() -> GpuReading {
    let mut g = readings_from_csv(&capture("h200/h200-query.csv")).remove(0);
    g.numa_node = topo_numa(&capture("h200/h200-topo.txt"));
    g
}

fn probe(gpus: Vec<GpuReading>) -> ProbeReport {
    NvmlProbe::new(FakeNvml { gpus: Ok(gpus), xids: BTreeMap::new() }).probe()
}

type Seen = (String, u64, String, Option<String>, Option<u32>, Health);

#[test]
fn each_real_model_gives_its_own_flavor_memory_id_bus_and_numa_node() {
    let report = probe(vec![h100(), h200()]);
    let seen: Vec<Seen> = report
        .devices
        .iter()
        .map(|d| {
            let id = d.id.as_str().to_owned();
            (d.flavor().to_string(), d.memory_mib, id, d.pci_bus_id.clone(), d.numa_node, d.health)
        })
        .collect();
    let bus = Some("00000000:00:06.0".to_owned());
    let expected: Vec<Seen> = vec![
        (
            "gpu/nvidia-h100-80gb-hbm3".into(),
            81_559,
            "GPU-e3add550-e7a5-29cb-ed5d-d7eb703deb6c".into(),
            bus.clone(),
            Some(0),
            Health::Healthy,
        ),
        (
            "gpu/nvidia-h200".into(),
            143_771,
            "GPU-8a8c5945-ae97-eeb0-a3ee-a31ff33b8c78".into(),
            bus,
            Some(0),
            Health::Healthy,
        ),
    ];
    assert_eq!(seen, expected);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn a_busy_card_reports_its_telemetry_and_stays_healthy() {
    let mut busy = readings_from_csv(&capture("h100-80gb-hbm3-busy/nvidia-smi-query-busy.csv")).remove(0);
    busy.name = "NVIDIA H100 80GB HBM3".into();
    busy.slowdown_c = Some(89);
    let p = NvmlProbe::new(FakeNvml { gpus: Ok(vec![busy.clone()]), xids: BTreeMap::new() });
    let t = &p.telemetry()[0];
    let read = (t.utilization_pct, t.memory_used_mib, t.temperature_c, t.power_mw);
    assert_eq!(read, (Some(100), Some(9203), Some(59), Some(699_120)));
    assert_eq!(health(&busy, None), (Health::Healthy, None), "59 C is below the 89 C slowdown threshold");
}

#[test]
fn injected_faults_mark_the_device_unhealthy_with_the_reason() {
    let with = |f: &dyn Fn(&mut GpuReading)| {
        let mut g = h100();
        f(&mut g);
        g
    };
    let cases: [(GpuReading, Option<u64>, &str); 7] = [
        (h100(), Some(79), "critical XID 79"),
        (with(&|g| g.ecc_uncorrected = Some(2)), None, "2 volatile uncorrected ECC error(s)"),
        (with(&|g| g.unresponsive = Some("Timeout".into())), None, "stopped answering: Timeout"),
        (with(&|g| g.pages_pending_retirement = Some(true)), None, "memory pages pending retirement"),
        (with(&|g| g.row_remap_failed = Some(true)), None, "row remapping failed"),
        (with(&|g| g.row_remap_pending = Some(true)), None, "row remapping pending: the GPU needs a reset"),
        (with(&|g| g.slowdown_c = Some(38)), None, "temperature 38 C at or past the slowdown threshold 38 C"),
    ];
    for (reading, xid, reason) in cases {
        let uuid = reading.uuid.clone();
        let xids = xid.map(|x| BTreeMap::from([(uuid.clone(), x)])).unwrap_or_default();
        let report = NvmlProbe::new(FakeNvml { gpus: Ok(vec![reading]), xids }).probe();
        assert_eq!(report.devices[0].health, Health::Unhealthy, "{reason}");
        assert_eq!(report.notes, [format!("{uuid} unhealthy: {reason}")]);
    }
}

#[test]
fn mig_instances_are_devices_of_their_own_flavor() {
    let mut g = h100();
    g.mig_enabled = true;
    g.mig = (0..2)
        .map(|i| MigReading {
            uuid: format!("MIG-{i}"),
            name: "NVIDIA H100 80GB HBM3 MIG 1g.10gb".into(),
            memory_mib: 9_984,
            memory_used_mib: Some(100 * i),
        })
        .collect();
    let report = probe(vec![g.clone()]);
    let flavors: Vec<String> = report.devices.iter().map(|d| d.flavor().to_string()).collect();
    assert_eq!(flavors, ["gpu/nvidia-h100-80gb-hbm3-mig-1g.10gb"; 2]);
    assert_eq!(report.devices[1].id.as_str(), "MIG-1");
    let source = FakeNvml { gpus: Ok(vec![g.clone()]), xids: BTreeMap::new() };
    let readings: Vec<(String, Option<u32>, Option<u64>)> = NvmlProbe::new(source)
        .telemetry()
        .into_iter()
        .map(|t| (t.device, t.utilization_pct, t.memory_used_mib))
        .collect();
    let per_instance = vec![("MIG-0".into(), None, Some(0)), ("MIG-1".into(), None, Some(100))];
    assert_eq!(readings, per_instance, "each instance's memory; NVML reads no utilization per instance");
    g.mig.clear();
    let empty = probe(vec![g]);
    assert!(empty.devices.is_empty() && empty.notes[0].contains("no instance is configured"), "{empty:?}");
}

#[test]
fn nvlink_peers_share_a_group_and_a_node_without_nvml_says_why() {
    let gpu = |bus: &str, peers: &[&str]| GpuReading {
        uuid: format!("GPU-{bus}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        pci_bus_id: Some(bus.into()),
        nvlink_peers: peers.iter().map(|p| p.to_string()).collect(),
        ..GpuReading::default()
    };
    let gpus =
        vec![gpu("0000:18:00.0", &["0000:2a:00.0"]), gpu("0000:2a:00.0", &["0000:18:00.0"]), gpu("0000:9a:00.0", &[])];
    let report = probe(gpus);
    let groups: Vec<Option<&str>> = report.devices.iter().map(|d| d.interconnect_group.as_deref()).collect();
    assert_eq!(groups, [Some("nvlink-0000:18:00.0"), Some("nvlink-0000:18:00.0"), None]);
    let missing = "libnvidia-ml.so.1: cannot open shared object file".to_owned();
    let none = NvmlProbe::new(FakeNvml { gpus: Err(missing), xids: BTreeMap::new() }).probe();
    assert!(none.devices.is_empty());
    assert_eq!(none.notes, ["no NVIDIA device reported: libnvidia-ml.so.1: cannot open shared object file"]);
}
