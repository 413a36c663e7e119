//! The PCI probe: accelerators found in sysfs under a configurable root (`/` on a node, a temporary
//! tree in tests). Vendors and models come from `pci_ids`. AMD GPUs are matched to their KFD
//! topology node (`/sys/class/kfd/kfd/topology/nodes/N/properties`) for their memory, their
//! ROCm UUID and their XGMI hive (GPUs of one hive share an interconnect group). TPUs are named by
//! their `/dev/accelN`. NVIDIA GPUs are left to the NVML probe unless no NVIDIA driver is bound
//! to them: then they are reported unhealthy, with the reason.

use crate::inventory::{Probe, ProbeReport};
use crate::pci_ids::{accelerator_vendor, model, Vendor};
use qm_core::{AcceleratorKind, Device, DeviceId, Health};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The probe of PCI devices under `root`.
#[derive(Debug, Clone)]
pub struct SysfsProbe {
    root: PathBuf,
}

/// What a KFD topology node says of one AMD GPU.
#[derive(Debug, Default, Clone)]
struct KfdNode {
    unique_id: Option<u64>,
    hive_id: Option<u64>,
    memory_mib: u64,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn hex(path: &Path) -> Option<u32> {
    u32::from_str_radix(read_trim(path)?.trim_start_matches("0x"), 16).ok()
}

/// `key value` lines of a KFD properties file.
fn properties(path: &Path) -> BTreeMap<String, u64> {
    read_trim(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?))))
        .collect()
}

/// The PCI location KFD uses: bus << 8 | device << 3 | function, from `DDDD:BB:DD.F`.
fn location_id(bdf: &str) -> Option<u64> {
    let (_, rest) = bdf.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let n = |s: &str, radix| u64::from_str_radix(s, radix).ok();
    Some(n(bus, 16)? << 8 | n(dev, 16)? << 3 | n(func, 16)?)
}

impl SysfsProbe {
    /// A probe of the sysfs tree under `root`.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    /// KFD nodes with a GPU, by PCI location.
    fn kfd(&self) -> BTreeMap<u64, KfdNode> {
        let nodes = self.root.join("sys/class/kfd/kfd/topology/nodes");
        let Ok(entries) = std::fs::read_dir(nodes) else { return BTreeMap::new() };
        let mut out = BTreeMap::new();
        for node in entries.flatten().map(|e| e.path()) {
            let p = properties(&node.join("properties"));
            let Some(&location) = p.get("location_id").filter(|_| p.get("simd_count").is_some_and(|&s| s > 0)) else {
                continue;
            };
            let banks = std::fs::read_dir(node.join("mem_banks")).into_iter().flatten().flatten();
            let bytes: u64 = banks
                .map(|b| properties(&b.path().join("properties")).get("size_in_bytes").copied().unwrap_or(0))
                .sum();
            let unique_id = p.get("unique_id").copied().filter(|&u| u != 0);
            let hive_id = p.get("hive_id").copied().filter(|&h| h != 0);
            out.insert(location, KfdNode { unique_id, hive_id, memory_mib: bytes / (1024 * 1024) });
        }
        out
    }

    /// One PCI function as a device, or nothing when it is not an accelerator this probe reports.
    fn device(&self, dir: &Path, kfd: &BTreeMap<u64, KfdNode>, notes: &mut Vec<String>) -> Option<Device> {
        let bdf = dir.file_name()?.to_str()?.to_owned();
        let vendor: &Vendor = accelerator_vendor(hex(&dir.join("vendor"))? as u16, hex(&dir.join("class"))?)?;
        let device_id = hex(&dir.join("device"))? as u16;
        let driver =
            std::fs::read_link(dir.join("driver")).ok().and_then(|l| l.file_name()?.to_str().map(str::to_owned));
        let numa_node =
            read_trim(&dir.join("numa_node")).and_then(|n| n.parse::<i64>().ok()).and_then(|n| u32::try_from(n).ok());
        let mut device = Device {
            id: DeviceId::from(bdf.as_str()),
            kind: vendor.kind,
            vendor: vendor.name.to_owned(),
            model: model(vendor, device_id),
            memory_mib: 0,
            health: Health::Healthy,
            numa_node,
            pci_bus_id: Some(bdf.clone()),
            interconnect_group: None,
        };
        match vendor.name {
            "nvidia" if driver.as_deref() == Some("nvidia") => return None,
            "nvidia" => {
                device.health = Health::Unhealthy;
                notes.push(format!(
                    "{bdf}: NVIDIA device without a working driver (bound to {})",
                    driver.as_deref().unwrap_or("none")
                ));
            }
            "amd" => {
                if let Some(k) = location_id(&bdf).and_then(|l| kfd.get(&l)) {
                    if let Some(u) = k.unique_id {
                        device.id = DeviceId::from(format!("GPU-{u:016x}").as_str());
                    }
                    device.memory_mib = k.memory_mib;
                    device.interconnect_group = k.hive_id.map(|h| format!("xgmi-{h:x}"));
                }
            }
            _ if vendor.kind == AcceleratorKind::Tpu => {
                let accel = std::fs::read_dir(dir.join("accel"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .find_map(|e| e.file_name().into_string().ok());
                if let Some(name) = accel {
                    device.id = DeviceId::from(format!("/dev/{name}").as_str());
                }
            }
            _ => {}
        }
        Some(device)
    }
}

impl Probe for SysfsProbe {
    fn name(&self) -> &str {
        "pci"
    }

    fn probe(&self) -> ProbeReport {
        let pci = self.root.join("sys/bus/pci/devices");
        let Ok(entries) = std::fs::read_dir(&pci) else {
            return ProbeReport { devices: vec![], notes: vec![format!("{} cannot be read", pci.display())] };
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        let kfd = self.kfd();
        let mut report = ProbeReport::default();
        for dir in dirs {
            if let Some(d) = self.device(&dir, &kfd, &mut report.notes) {
                report.devices.push(d);
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PCI function in a fake tree, optionally bound to `driver`.
    fn pci(root: &Path, bdf: &str, vendor: &str, device: &str, class: &str, driver: Option<&str>) -> PathBuf {
        let dir = root.join("sys/bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, value) in [("vendor", vendor), ("device", device), ("class", class), ("numa_node", "1")] {
            std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
        }
        if let Some(d) = driver {
            let target = root.join("sys/bus/pci/drivers").join(d);
            std::fs::create_dir_all(&target).unwrap();
            std::os::unix::fs::symlink(&target, dir.join("driver")).unwrap();
        }
        dir
    }

    fn kfd_node(root: &Path, n: u32, location: u64, unique: u64, hive: u64) {
        let dir = root.join(format!("sys/class/kfd/kfd/topology/nodes/{n}"));
        std::fs::create_dir_all(dir.join("mem_banks/0")).unwrap();
        let props = format!("simd_count 1216\nlocation_id {location}\nunique_id {unique}\nhive_id {hive}\n");
        std::fs::write(dir.join("properties"), props).unwrap();
        std::fs::write(dir.join("mem_banks/0/properties"), format!("heap_type 1\nsize_in_bytes {}\n", 192u64 << 30))
            .unwrap();
    }

    #[test]
    fn every_accelerator_of_a_fake_tree_is_reported_in_core_terms() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        pci(root, "0000:03:00.0", "0x10de", "0x2330", "0x030200", Some("nvidia"));
        pci(root, "0000:04:00.0", "0x10de", "0x2335", "0x030200", None);
        pci(root, "0000:04:00.1", "0x10de", "0x22e8", "0x040300", None);
        pci(root, "0000:19:00.0", "0x1002", "0x74a1", "0x120000", Some("amdgpu"));
        pci(root, "0000:1a:00.0", "0x1002", "0x74a1", "0x120000", Some("amdgpu"));
        kfd_node(root, 1, 0x19 << 8, 0xabc, 77);
        kfd_node(root, 2, 0x1a << 8, 0xdef, 77);
        let tpu = pci(root, "0000:05:00.0", "0x1ae0", "0x0063", "0x120000", Some("vfio-pci"));
        std::fs::create_dir_all(tpu.join("accel/accel2")).unwrap();
        pci(root, "0000:06:00.0", "0x10ee", "0x500c", "0x120000", Some("xocl"));
        pci(root, "0000:07:00.0", "0x1e26", "0x0002", "0x120000", None);
        pci(root, "0000:08:00.0", "0x8086", "0x1572", "0x020000", Some("i40e"));
        let report = SysfsProbe::new(root).probe();
        let seen: Vec<(String, String, Health, Option<String>)> = report
            .devices
            .iter()
            .map(|d| (d.id.as_str().to_owned(), d.flavor().to_string(), d.health, d.interconnect_group.clone()))
            .collect();
        let want = |id: &str, flavor: &str, health, group: Option<&str>| {
            (id.to_owned(), flavor.to_owned(), health, group.map(str::to_owned))
        };
        assert_eq!(
            seen,
            [
                want("0000:04:00.0", "gpu/nvidia-h200", Health::Unhealthy, None),
                want("/dev/accel2", "tpu/google-0x0063", Health::Healthy, None),
                want("0000:06:00.0", "fpga/xilinx-alveo-u280", Health::Healthy, None),
                want("0000:07:00.0", "ipu/graphcore-0x0002", Health::Healthy, None),
                want("GPU-0000000000000abc", "gpu/amd-instinct-mi300x", Health::Healthy, Some("xgmi-4d")),
                want("GPU-0000000000000def", "gpu/amd-instinct-mi300x", Health::Healthy, Some("xgmi-4d")),
            ]
        );
        let amd = &report.devices[4];
        assert_eq!(
            (amd.memory_mib, amd.numa_node, amd.pci_bus_id.as_deref()),
            (196_608, Some(1), Some("0000:19:00.0"))
        );
        assert_eq!(report.notes, ["0000:04:00.0: NVIDIA device without a working driver (bound to none)"]);
        assert!(SysfsProbe::new(&root.join("nowhere")).probe().notes[0].contains("cannot be read"));
    }
}
