//! The one table of accelerator vendors and devices the sysfs probe knows, by PCI vendor and
//! device id. A vendor listed here with a device missing from the table is still reported, with
//! the model `VENDOR-DEVICEID` (`amd-0x74b5`), so that adding a row names it without changing
//! its id.

use qm_core::AcceleratorKind;

/// A vendor whose devices the sysfs probe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vendor {
    /// PCI vendor id.
    pub id: u16,
    /// The vendor as devices name it (`amd`).
    pub name: &'static str,
    /// The kind of its accelerators.
    pub kind: AcceleratorKind,
    /// Only devices of these PCI class prefixes (the top byte, or the top two) are accelerators:
    /// display (0x03), processing accelerators (0x12), co-processors (0x0b40).
    pub classes: &'static [u32],
}

/// The vendors, in one place.
pub const VENDORS: [Vendor; 8] = [
    Vendor { id: 0x10de, name: "nvidia", kind: AcceleratorKind::Gpu, classes: &[0x03, 0x12] },
    Vendor { id: 0x1002, name: "amd", kind: AcceleratorKind::Gpu, classes: &[0x03, 0x12] },
    Vendor { id: 0x8086, name: "intel", kind: AcceleratorKind::Gpu, classes: &[0x0380, 0x12] },
    Vendor { id: 0x1da3, name: "habana", kind: AcceleratorKind::Gpu, classes: &[0x12] },
    Vendor { id: 0x1ae0, name: "google", kind: AcceleratorKind::Tpu, classes: &[0x12, 0x0b40, 0x08] },
    Vendor { id: 0x10ee, name: "xilinx", kind: AcceleratorKind::Fpga, classes: &[0x12, 0x05, 0x0b40, 0xff] },
    Vendor { id: 0x1172, name: "intel-fpga", kind: AcceleratorKind::Fpga, classes: &[0x12, 0x11, 0x0b40, 0xff] },
    Vendor { id: 0x1e26, name: "graphcore", kind: AcceleratorKind::Ipu, classes: &[0x12, 0x0b40] },
];

/// Known devices: (vendor id, device id, normalized model).
pub const MODELS: [(u16, u16, &str); 14] = [
    (0x10de, 0x2330, "nvidia-h100-80gb-hbm3"),
    (0x10de, 0x2331, "nvidia-h100-pcie"),
    (0x10de, 0x2335, "nvidia-h200"),
    (0x10de, 0x20b2, "nvidia-a100-sxm4-80gb"),
    (0x10de, 0x20b0, "nvidia-a100-sxm4-40gb"),
    (0x10de, 0x26b9, "nvidia-l40s"),
    (0x1002, 0x74a1, "amd-instinct-mi300x"),
    (0x1002, 0x740c, "amd-instinct-mi250x"),
    (0x1002, 0x740f, "amd-instinct-mi210"),
    (0x1002, 0x738c, "amd-instinct-mi100"),
    (0x8086, 0x0bd5, "intel-data-center-gpu-max-1550"),
    (0x1da3, 0x1000, "habana-gaudi"),
    (0x1da3, 0x1020, "habana-gaudi2"),
    (0x10ee, 0x500c, "xilinx-alveo-u280"),
];

/// The vendor of `vendor_id`, when its class makes the device an accelerator.
pub fn accelerator_vendor(vendor_id: u16, class: u32) -> Option<&'static Vendor> {
    let v = VENDORS.iter().find(|v| v.id == vendor_id)?;
    let matches = |prefix: u32| {
        if prefix > 0xff {
            class >> 8 == prefix
        } else {
            class >> 16 == prefix
        }
    };
    v.classes.iter().any(|&p| matches(p)).then_some(v)
}

/// The normalized model of a device.
pub fn model(vendor: &Vendor, device_id: u16) -> String {
    MODELS
        .iter()
        .find(|(v, d, _)| *v == vendor.id && *d == device_id)
        .map_or_else(|| format!("{}-{device_id:#06x}", vendor.name), |(_, _, m)| (*m).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_tell_accelerators_from_other_devices_of_a_vendor() {
        assert_eq!(accelerator_vendor(0x10de, 0x030200).map(|v| v.name), Some("nvidia"), "3D controller");
        assert!(accelerator_vendor(0x10de, 0x040300).is_none(), "an NVIDIA audio function");
        assert!(accelerator_vendor(0x8086, 0x030000).is_none(), "an Intel integrated VGA controller");
        assert_eq!(accelerator_vendor(0x8086, 0x038000).map(|v| v.name), Some("intel"), "a data-center GPU");
        assert!(accelerator_vendor(0x1234, 0x120000).is_none(), "an unknown vendor");
        let amd = accelerator_vendor(0x1002, 0x038000).unwrap();
        assert_eq!((model(amd, 0x74a1), model(amd, 0x74b5)), ("amd-instinct-mi300x".into(), "amd-0x74b5".into()));
    }
}
