//! The real NVML source: `libnvidia-ml.so`, loaded at run time by `nvml-wrapper` (a node without
//! the driver reports no NVIDIA device and says why), and a thread that waits on an NVML event
//! set for critical XID errors.

use crate::nvml::{GpuReading, MigReading, NvmlSource};
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING};
use nvml_wrapper::{Device, Nvml};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Most NVLinks one GPU has (NVML_NVLINK_MAX_LINKS).
const MAX_LINKS: u32 = 18;
/// How long the XID thread waits on the event set per call, in ms.
const XID_WAIT_MS: u32 = 5_000;

/// NVML, loaded.
#[derive(Debug)]
pub struct RealNvml {
    nvml: Nvml,
    xids: Arc<Mutex<BTreeMap<String, u64>>>,
}

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

impl RealNvml {
    /// Loads NVML and starts watching for critical XID errors; the error says why NVML is not
    /// there (no driver, library not found).
    pub fn load() -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML could not be loaded: {e}"))?;
        let xids = Arc::<Mutex<BTreeMap<String, u64>>>::default();
        let seen = xids.clone();
        let spawned = std::thread::Builder::new().name("qm-nvml-xid".into()).spawn(move || {
            if let Err(e) = watch_xids(&seen) {
                tracing::warn!("XID events are not watched: {e}");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("XID events are not watched: {e}");
        }
        Ok(Self { nvml, xids })
    }
}

/// Waits for critical XID events on every GPU and records the last one per UUID.
fn watch_xids(seen: &Mutex<BTreeMap<String, u64>>) -> Result<(), NvmlError> {
    let nvml = Nvml::init()?;
    let mut set = nvml.create_event_set()?;
    for i in 0..nvml.device_count()? {
        let device = nvml.device_by_index(i)?;
        set = device
            .register_events(nvml_wrapper::bitmasks::event::EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| e.error)?;
    }
    loop {
        match set.wait(XID_WAIT_MS) {
            Ok(event) => {
                if let (Some(XidError::Value(xid)), Ok(uuid)) = (event.event_data, event.device.uuid()) {
                    tracing::warn!(gpu = %uuid, xid, "critical XID event");
                    seen.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid, xid);
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a row remapping is pending and whether one failed, as NVML's field values give them
/// (`None` where the GPU does not remap rows: before Ampere).
fn row_remapping(d: &Device<'_>) -> (Option<bool>, Option<bool>) {
    let ids = [FieldId(NVML_FI_DEV_REMAPPED_PENDING), FieldId(NVML_FI_DEV_REMAPPED_FAILURE)];
    let flag = |s: Option<&Result<FieldValueSample, NvmlError>>| match s?.as_ref().ok()?.value.as_ref().ok()? {
        SampleValue::U32(v) => Some(*v != 0),
        SampleValue::U64(v) => Some(*v != 0),
        SampleValue::I64(v) => Some(*v != 0),
        SampleValue::F64(v) => Some(*v != 0.0),
    };
    match d.field_values_for(&ids) {
        Ok(values) => (flag(values.first()), flag(values.get(1))),
        Err(_) => (None, None),
    }
}

/// One GPU's reading; a call that fails with the device gone or not answering marks it
/// unresponsive, and optional readings the card does not support are left out.
fn read_gpu(d: &Device<'_>, index: u32) -> GpuReading {
    let uuid = match d.uuid() {
        Ok(u) => u,
        Err(e) => {
            return GpuReading {
                uuid: format!("nvml-index-{index}"),
                unresponsive: Some(e.to_string()),
                ..GpuReading::default()
            }
        }
    };
    let memory = d.memory_info();
    let remapping = row_remapping(d);
    let mut g = GpuReading {
        uuid,
        name: d.name().unwrap_or_default(),
        memory_mib: memory.as_ref().map_or(0, |m| mib(m.total)),
        memory_used_mib: memory.as_ref().ok().map(|m| mib(m.used)),
        pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
        numa_node: d.numa_node_id().ok(),
        compute_capability: d.cuda_compute_capability().ok().map(|c| (c.major as u32, c.minor as u32)),
        nvlink_peers: (0..MAX_LINKS)
            .filter(|&l| d.link_wrapper_for(l).is_active().unwrap_or(false))
            .filter_map(|l| d.link_wrapper_for(l).remote_pci_info().ok().map(|p| p.bus_id))
            .collect(),
        mig_enabled: d.mig_mode().is_ok_and(|m| m.current == 1),
        ecc_uncorrected: d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile).ok(),
        pages_pending_retirement: d.are_pages_pending_retired().ok(),
        row_remap_pending: remapping.0,
        row_remap_failed: remapping.1,
        temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        slowdown_c: d.temperature_threshold(TemperatureThreshold::Slowdown).ok(),
        utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
        power_mw: d.power_usage().ok(),
        ..GpuReading::default()
    };
    if let Err(e @ (NvmlError::GpuLost | NvmlError::Timeout | NvmlError::Unknown)) = memory {
        g.unresponsive = Some(e.to_string());
    }
    if g.mig_enabled {
        let count = d.mig_device_count().unwrap_or(0);
        g.mig = (0..count)
            .filter_map(|i| d.mig_device_by_index(i).ok())
            .filter_map(|m| {
                let memory = m.memory_info();
                let memory_mib = memory.as_ref().map_or(0, |i| mib(i.total));
                let memory_used_mib = memory.ok().map(|i| mib(i.used));
                Some(MigReading { uuid: m.uuid().ok()?, name: m.name().ok()?, memory_mib, memory_used_mib })
            })
            .collect();
    }
    g
}

/// One GPU's telemetry alone: UUID, memory in use, utilization, power, temperature, and with
/// MIG on each instance's memory in use (a handful of NVML calls, for every heartbeat).
fn read_telemetry(d: &Device<'_>) -> GpuReading {
    let mig_enabled = d.mig_mode().is_ok_and(|m| m.current == 1);
    let mig = if mig_enabled {
        (0..d.mig_device_count().unwrap_or(0))
            .filter_map(|i| d.mig_device_by_index(i).ok())
            .filter_map(|m| {
                let memory_used_mib = m.memory_info().ok().map(|i| mib(i.used));
                Some(MigReading { uuid: m.uuid().ok()?, memory_used_mib, ..MigReading::default() })
            })
            .collect()
    } else {
        Vec::new()
    };
    GpuReading {
        uuid: d.uuid().unwrap_or_default(),
        memory_used_mib: d.memory_info().ok().map(|m| mib(m.used)),
        utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
        power_mw: d.power_usage().ok(),
        temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        mig_enabled,
        mig,
        ..GpuReading::default()
    }
}

impl RealNvml {
    /// Every GPU through `read_one`; a GPU NVML cannot open is reported as not answering.
    fn each(&self, read_one: impl Fn(&Device<'_>, u32) -> GpuReading) -> Result<Vec<GpuReading>, String> {
        let count = self.nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
        Ok((0..count)
            .map(|i| match self.nvml.device_by_index(i) {
                Ok(d) => read_one(&d, i),
                Err(e) => GpuReading {
                    uuid: format!("nvml-index-{i}"),
                    unresponsive: Some(e.to_string()),
                    ..GpuReading::default()
                },
            })
            .collect())
    }
}

impl NvmlSource for RealNvml {
    fn read(&self) -> Result<Vec<GpuReading>, String> {
        self.each(read_gpu)
    }

    fn telemetry(&self) -> Result<Vec<GpuReading>, String> {
        self.each(|d, _| read_telemetry(d))
    }

    fn xids(&self) -> BTreeMap<String, u64> {
        self.xids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// NVML when it loaded, else why not: a probe over it reports the reason as a note.
impl NvmlSource for Result<RealNvml, String> {
    fn read(&self) -> Result<Vec<GpuReading>, String> {
        match self {
            Ok(nvml) => nvml.read(),
            Err(why) => Err(why.clone()),
        }
    }

    fn telemetry(&self) -> Result<Vec<GpuReading>, String> {
        match self {
            Ok(nvml) => nvml.telemetry(),
            Err(why) => Err(why.clone()),
        }
    }

    fn xids(&self) -> BTreeMap<String, u64> {
        self.as_ref().map(RealNvml::xids).unwrap_or_default()
    }
}
