//! The NVIDIA probe: GPUs and MIG instances read through NVML, as devices with health and
//! telemetry. The readings come from an `NvmlSource`: the real library (`nvml_real`), or, in
//! tests, a fake built from real captures. Health rules, each with its reason: volatile
//! uncorrected ECC errors, pages pending retirement, a row remapping that failed or waits for a
//! reset, a critical XID event, a temperature at or past the slowdown threshold, and a device
//! that stops answering.

use crate::inventory::{Probe, ProbeReport};
use qm_core::{AcceleratorKind, Device, DeviceId, Health};
use qm_proto::v1::DeviceTelemetry;
use std::collections::BTreeMap;

/// One MIG instance of a GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigReading {
    /// Its UUID (`MIG-...`).
    pub uuid: String,
    /// Its name, e.g. `NVIDIA H100 80GB HBM3 MIG 1g.10gb`.
    pub name: String,
    /// Its memory.
    pub memory_mib: u64,
    /// Its memory in use.
    pub memory_used_mib: Option<u64>,
}

/// What NVML says about one GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// Its UUID (`GPU-...`).
    pub uuid: String,
    /// Its name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory.
    pub memory_mib: u64,
    /// Memory in use.
    pub memory_used_mib: Option<u64>,
    /// PCI bus id.
    pub pci_bus_id: Option<String>,
    /// NUMA node.
    pub numa_node: Option<u32>,
    /// CUDA compute capability.
    pub compute_capability: Option<(u32, u32)>,
    /// PCI bus ids of the GPUs its active NVLinks reach.
    pub nvlink_peers: Vec<String>,
    /// MIG mode on, and its instances.
    pub mig_enabled: bool,
    /// The MIG instances when MIG is on.
    pub mig: Vec<MigReading>,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected: Option<u64>,
    /// Pages waiting to be retired.
    pub pages_pending_retirement: Option<bool>,
    /// A row remapping failed (the memory has an error it cannot repair).
    pub row_remap_failed: Option<bool>,
    /// A row remapping waits for a GPU reset to take effect.
    pub row_remap_pending: Option<bool>,
    /// Temperature, Celsius.
    pub temperature_c: Option<u32>,
    /// Temperature at which the GPU slows down.
    pub slowdown_c: Option<u32>,
    /// GPU utilization, percent.
    pub utilization_pct: Option<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Set when a call the probe needs failed: the device stopped answering.
    pub unresponsive: Option<String>,
}

/// Where readings come from.
pub trait NvmlSource: Send + Sync + std::fmt::Debug {
    /// Every GPU now, or why NVML cannot be read (no driver, library not found).
    fn read(&self) -> Result<Vec<GpuReading>, String>;
    /// Every GPU's telemetry now: at least the UUID, memory in use, utilization, power,
    /// temperature and MIG instances; a source may leave the rest out to read faster.
    fn telemetry(&self) -> Result<Vec<GpuReading>, String> {
        self.read()
    }
    /// The last critical XID event seen per GPU UUID.
    fn xids(&self) -> BTreeMap<String, u64>;
}

/// The probe of NVIDIA devices through an NVML source.
#[derive(Debug)]
pub struct NvmlProbe<S> {
    source: S,
}

/// A model name as a flavor's model: lower case, words joined by `-`
/// (`NVIDIA H100 80GB HBM3 MIG 1g.10gb` -> `nvidia-h100-80gb-hbm3-mig-1g.10gb`).
pub fn normalize_model(name: &str) -> String {
    name.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join("-")
}

/// The device's health and, when unhealthy, why.
pub fn health(r: &GpuReading, xid: Option<u64>) -> (Health, Option<String>) {
    let reason = if let Some(why) = &r.unresponsive {
        Some(format!("stopped answering: {why}"))
    } else if let Some(n) = r.ecc_uncorrected.filter(|&n| n > 0) {
        Some(format!("{n} volatile uncorrected ECC error(s)"))
    } else if r.pages_pending_retirement == Some(true) {
        Some("memory pages pending retirement".to_owned())
    } else if r.row_remap_failed == Some(true) {
        Some("row remapping failed".to_owned())
    } else if r.row_remap_pending == Some(true) {
        Some("row remapping pending: the GPU needs a reset".to_owned())
    } else if let Some(x) = xid {
        Some(format!("critical XID {x}"))
    } else if let (Some(t), Some(limit)) = (r.temperature_c, r.slowdown_c.filter(|&l| l > 0)) {
        (t >= limit).then(|| format!("temperature {t} C at or past the slowdown threshold {limit} C"))
    } else {
        None
    };
    (if reason.is_some() { Health::Unhealthy } else { Health::Healthy }, reason)
}

/// NVLink groups: GPUs joined by active links, transitively, named by the smallest PCI bus id
/// among them; a GPU without links has no group.
fn nvlink_groups(gpus: &[GpuReading]) -> Vec<Option<String>> {
    let bus = |g: &GpuReading| g.pci_bus_id.clone().unwrap_or_default();
    let mut group: Vec<usize> = (0..gpus.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    for (i, g) in gpus.iter().enumerate() {
        for peer in &g.nvlink_peers {
            if let Some(j) = gpus.iter().position(|o| bus(o).eq_ignore_ascii_case(peer)) {
                let (a, b) = (root(&mut group, i), root(&mut group, j));
                group[a.max(b)] = a.min(b);
            }
        }
    }
    (0..gpus.len())
        .map(|i| {
            let r = root(&mut group, i);
            let members: Vec<&GpuReading> =
                (0..gpus.len()).filter(|&j| root(&mut group, j) == r).map(|j| &gpus[j]).collect();
            (members.len() > 1).then(|| format!("nvlink-{}", members.iter().map(|g| bus(g)).min().unwrap_or_default()))
        })
        .collect()
}

impl<S: NvmlSource> NvmlProbe<S> {
    /// A probe over `source`.
    pub fn new(source: S) -> Self {
        Self { source }
    }
}

/// A GPU's readings, or with MIG on, each instance's memory in use (NVML reads no
/// utilization per instance) with the GPU's power and temperature.
fn gpu_telemetry(g: GpuReading) -> Vec<DeviceTelemetry> {
    if !g.mig_enabled {
        let (utilization_pct, memory_used_mib) = (g.utilization_pct, g.memory_used_mib);
        let (power_mw, temperature_c) = (g.power_mw, g.temperature_c);
        return vec![DeviceTelemetry { device: g.uuid, utilization_pct, memory_used_mib, power_mw, temperature_c }];
    }
    g.mig
        .into_iter()
        .map(|m| DeviceTelemetry {
            device: m.uuid,
            utilization_pct: None,
            memory_used_mib: m.memory_used_mib,
            power_mw: g.power_mw,
            temperature_c: g.temperature_c,
        })
        .collect()
}

impl<S: NvmlSource> Probe for NvmlProbe<S> {
    fn name(&self) -> &str {
        "nvml"
    }

    fn telemetry(&self) -> Vec<DeviceTelemetry> {
        self.source.telemetry().unwrap_or_default().into_iter().flat_map(gpu_telemetry).collect()
    }

    fn probe(&self) -> ProbeReport {
        let gpus = match self.source.read() {
            Ok(g) => g,
            Err(why) => {
                return ProbeReport { devices: vec![], notes: vec![format!("no NVIDIA device reported: {why}")] }
            }
        };
        let (xids, groups) = (self.source.xids(), nvlink_groups(&gpus));
        let mut report = ProbeReport::default();
        for (g, group) in gpus.iter().zip(groups) {
            let (health, reason) = health(g, xids.get(&g.uuid).copied());
            if let Some(r) = &reason {
                report.notes.push(format!("{} unhealthy: {r}", g.uuid));
            }
            let device = |id: &str, name: &str, memory_mib: u64| Device {
                id: DeviceId::from(id),
                kind: AcceleratorKind::Gpu,
                vendor: "nvidia".into(),
                model: normalize_model(name),
                memory_mib,
                health,
                numa_node: g.numa_node,
                pci_bus_id: g.pci_bus_id.clone(),
                interconnect_group: group.clone(),
            };
            if g.mig_enabled {
                if g.mig.is_empty() {
                    report.notes.push(format!("{}: MIG is on and no instance is configured: no device", g.uuid));
                }
                report.devices.extend(g.mig.iter().map(|m| device(&m.uuid, &m.name, m.memory_mib)));
            } else {
                report.devices.push(device(&g.uuid, &g.name, g.memory_mib));
            }
        }
        report
    }
}

/// A fake NVML: readings given by the caller (tests build them from real captures), with
/// faults to inject.
#[derive(Debug, Clone)]
pub struct FakeNvml {
    /// The GPUs, or why NVML cannot be read.
    pub gpus: Result<Vec<GpuReading>, String>,
    /// Critical XID events per UUID.
    pub xids: BTreeMap<String, u64>,
}

impl NvmlSource for FakeNvml {
    fn read(&self) -> Result<Vec<GpuReading>, String> {
        self.gpus.clone()
    }

    fn xids(&self) -> BTreeMap<String, u64> {
        self.xids.clone()
    }
}

/// A fake NVML over a capture file (`nvidia-smi --query-gpu=... --format=csv` output that names
/// at least `uuid`, `name` and `memory.total`): a simulated node that looks like the captured
/// machine, telemetry included. The error names the file, the row and the missing column.
pub fn capture(path: &std::path::Path) -> Result<FakeNvml, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let gpus = readings_from_csv(&text);
    if gpus.is_empty() {
        return Err(format!("{}: no GPU row under the header", path.display()));
    }
    for (i, g) in gpus.iter().enumerate() {
        let missing = [("uuid", g.uuid.is_empty()), ("name", g.name.is_empty()), ("memory.total", g.memory_mib == 0)];
        if let Some((column, _)) = missing.iter().find(|(_, m)| *m) {
            return Err(format!("{}: row {}: {column}: missing or empty", path.display(), i + 1));
        }
    }
    Ok(FakeNvml { gpus: Ok(gpus), xids: BTreeMap::new() })
}

/// Readings from `nvidia-smi --query-gpu=... --format=csv` output: one per row, fields by the
/// header's names (those this probe uses; others are ignored).
pub fn readings_from_csv(csv: &str) -> Vec<GpuReading> {
    let mut lines = csv.lines();
    let header: Vec<String> = lines.next().unwrap_or_default().split(',').map(|h| h.trim().to_owned()).collect();
    let number = |v: &str| v.split_whitespace().next().and_then(|n| n.parse::<f64>().ok());
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: BTreeMap<&str, &str> =
                header.iter().map(String::as_str).zip(line.split(',').map(str::trim)).collect();
            let get = |k: &str| row.get(k).copied().unwrap_or_default();
            GpuReading {
                uuid: get("uuid").to_owned(),
                name: get("name").to_owned(),
                memory_mib: number(get("memory.total [MiB]")).map_or(0, |m| m as u64),
                memory_used_mib: number(get("memory.used [MiB]")).map(|m| m as u64),
                pci_bus_id: Some(get("pci.bus_id")).filter(|b| !b.is_empty()).map(str::to_owned),
                utilization_pct: number(get("utilization.gpu [%]")).map(|u| u as u32),
                temperature_c: number(get("temperature.gpu")).map(|t| t as u32),
                power_mw: number(get("power.draw [W]")).map(|w| (w * 1000.0).round() as u32),
                ecc_uncorrected: number(get("ecc.errors.uncorrected.volatile.total")).map(|n| n as u64),
                mig_enabled: get("mig.mode.current") == "Enabled",
                ..GpuReading::default()
            }
        })
        .collect()
}
