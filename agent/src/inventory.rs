//! What a node has: probes behind one trait, each reporting devices in `core` terms, and the
//! node's inventory built from them. This file holds the static probe (an inventory in TOML, for
//! development, tests and simulated nodes) and the fake GPUs `qm dev` runs on.

use qm_core::{AcceleratorKind, Device, DeviceId, Health, NodeId, NodeSpec};
use qm_proto::v1::DeviceTelemetry;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one probe found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProbeReport {
    /// The devices, in a stable order.
    pub devices: Vec<Device>,
    /// Why devices may be missing or unhealthy (a driver that did not load, a device that stopped
    /// answering): shown by `qm agent probe` and logged.
    pub notes: Vec<String>,
}

/// A source of devices.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// Its name, as `qm agent --probe` takes it.
    fn name(&self) -> &str;
    /// Reads the devices now.
    fn probe(&self) -> ProbeReport;
    /// The devices' readings now (utilization, memory in use, power, temperature), one entry per
    /// device that offers any; none by default.
    fn telemetry(&self) -> Vec<DeviceTelemetry> {
        Vec::new()
    }
}

/// Why an inventory file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The field and the reason.
        reason: String,
    },
}

/// An inventory file: `[[device]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(rename = "device", default)]
    devices: Vec<DeviceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    id: String,
    #[serde(default = "gpu")]
    kind: String,
    vendor: String,
    model: String,
    #[serde(default)]
    memory_mib: u64,
    #[serde(default)]
    numa_node: Option<u32>,
    #[serde(default)]
    pci_bus_id: Option<String>,
    #[serde(default)]
    interconnect_group: Option<String>,
    /// `healthy` (the default) or `unhealthy`.
    #[serde(default)]
    health: Option<String>,
}

fn gpu() -> String {
    "gpu".to_owned()
}

/// Devices listed in a TOML file, read at every probe (so an edited file is a changed
/// inventory).
#[derive(Debug, Clone)]
pub struct StaticProbe {
    path: PathBuf,
}

impl StaticProbe {
    /// A probe of this file; the file is checked now, so a bad one fails at start.
    pub fn new(path: &Path) -> Result<Self, InventoryError> {
        read_file(path)?;
        Ok(Self { path: path.to_owned() })
    }
}

impl Probe for StaticProbe {
    fn name(&self) -> &str {
        "static"
    }

    fn probe(&self) -> ProbeReport {
        match read_file(&self.path) {
            Ok(devices) => ProbeReport { devices, notes: vec![] },
            Err(e) => ProbeReport { devices: vec![], notes: vec![e.to_string()] },
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<Device>, InventoryError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read { path: shown.clone(), source })?;
    let file: InventoryFile =
        toml::from_str(&text).map_err(|e| InventoryError::Invalid { path: shown.clone(), reason: e.to_string() })?;
    file.devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            device(d).map_err(|reason| InventoryError::Invalid {
                path: shown.clone(),
                reason: format!("device[{i}].{reason}"),
            })
        })
        .collect()
}

fn device(d: DeviceFile) -> Result<Device, String> {
    let kind: AcceleratorKind = d.kind.parse().map_err(|e| format!("kind: {e}"))?;
    let health = match d.health.as_deref() {
        None | Some("healthy") => Health::Healthy,
        Some("unhealthy") => Health::Unhealthy,
        Some(other) => return Err(format!("health: {other:?} is not healthy or unhealthy")),
    };
    Ok(Device {
        id: DeviceId::from(d.id.as_str()),
        kind,
        vendor: d.vendor,
        model: d.model,
        memory_mib: d.memory_mib,
        health,
        numa_node: d.numa_node,
        pci_bus_id: d.pci_bus_id,
        interconnect_group: d.interconnect_group,
    })
}

/// `count` fake NVIDIA GPUs of model `fake-gpu`, for `qm dev` on a machine without
/// accelerators: ids in the form of GPU UUIDs, two NVLink groups.
#[derive(Debug, Clone)]
pub struct FakeGpus {
    /// How many.
    pub count: u32,
}

/// The model of `FakeGpus`.
pub const FAKE_MODEL: &str = "fake-gpu";

impl Probe for FakeGpus {
    fn name(&self) -> &str {
        "fake"
    }

    fn probe(&self) -> ProbeReport {
        let half = self.count.div_ceil(2).max(1);
        let devices = (0..self.count)
            .map(|i| Device {
                id: DeviceId::from(format!("GPU-fa4e0000-0000-4000-8000-{i:012}").as_str()),
                kind: AcceleratorKind::Gpu,
                vendor: "nvidia".into(),
                model: FAKE_MODEL.into(),
                memory_mib: 81_559,
                health: Health::Healthy,
                numa_node: Some(i / half),
                pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x10 + i)),
                interconnect_group: Some(format!("nvlink{}", i / half)),
            })
            .collect();
        ProbeReport { devices, notes: vec!["fake devices: no accelerator is used".into()] }
    }
}

/// The host's CPU (thousandths of a core) and memory (MiB), as jobs may use them.
pub fn host_resources() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as u64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(str::trim).map(str::to_owned)))
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (cpus * 1000, mem_kib / 1024)
}

/// The node's inventory from every probe: devices in probe order (a device id reported twice
/// keeps its first report, and the repeat is noted), plus the labels and host resources.
pub fn collect(
    name: &str,
    labels: &BTreeMap<String, String>,
    probes: &[Box<dyn Probe>],
    (cpu_millis, mem_mib): (u64, u64),
) -> (NodeSpec, Vec<String>) {
    let mut devices: Vec<Device> = Vec::new();
    let mut notes = Vec::new();
    for p in probes {
        let report = p.probe();
        notes.extend(report.notes.into_iter().map(|n| format!("{}: {n}", p.name())));
        for d in report.devices {
            if devices.iter().any(|x| x.id == d.id) {
                notes.push(format!("{}: device {} reported by an earlier probe; kept the first", p.name(), d.id));
            } else {
                devices.push(d);
            }
        }
    }
    let spec = NodeSpec { id: NodeId::from(name), labels: labels.clone(), devices, cpu_millis, mem_mib };
    (spec, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_inventory_reads_devices_and_names_a_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.toml");
        let good = "[[device]]\nid = \"GPU-1\"\nvendor = \"nvidia\"\nmodel = \"nvidia-h100-80gb-hbm3\"\nmemory_mib = 81559\n\
                    [[device]]\nid = \"/dev/accel0\"\nkind = \"tpu\"\nvendor = \"google\"\nmodel = \"google-tpu-v5e\"\nhealth = \"unhealthy\"\n";
        std::fs::write(&path, good).unwrap();
        let report = StaticProbe::new(&path).unwrap().probe();
        assert_eq!(report.devices.len(), 2);
        assert_eq!((report.devices[1].kind, report.devices[1].health), (AcceleratorKind::Tpu, Health::Unhealthy));
        std::fs::write(&path, "[[device]]\nid = \"x\"\nkind = \"npu\"\nvendor = \"v\"\nmodel = \"m\"\n").unwrap();
        let err = StaticProbe::new(&path).unwrap_err().to_string();
        assert!(err.contains("device[0].kind"), "{err}");
        std::fs::write(&path, "[[device]]\nid = \"x\"\nvendor = \"v\"\nmodel = \"m\"\ncolour = 1\n").unwrap();
        assert!(StaticProbe::new(&path).unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn probes_are_merged_in_order_and_repeats_are_noted() {
        let probes: Vec<Box<dyn Probe>> = vec![Box::new(FakeGpus { count: 4 }), Box::new(FakeGpus { count: 2 })];
        let (spec, notes) = collect("n1", &BTreeMap::new(), &probes, (8000, 1024));
        assert_eq!(spec.devices.len(), 4);
        assert_eq!(spec.devices[3].interconnect_group.as_deref(), Some("nvlink1"));
        assert_eq!(notes.iter().filter(|n| n.contains("reported by an earlier probe")).count(), 2);
        assert!(qm_core::limits::validate_node(&spec).is_ok());
    }
}
