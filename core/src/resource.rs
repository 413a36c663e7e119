//! Accelerators and nodes: what a device is, how devices group into flavors, and the node
//! inventory an agent reports.

use crate::ids::{DeviceId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The most devices one node may report. Placement keeps a node's devices in a 64-bit mask.
pub const MAX_DEVICES_PER_NODE: usize = 64;

/// The label that names a node's rack (or switch); the replicas of a gang prefer one rack.
pub const RACK_LABEL: &str = "rack";

/// The label a node agent sets to the address it serves on (`HOST:PORT`): where `qm logs` reads
/// a replica's output and where a gang's replicas meet (the host of replica 0's node).
pub const ADDRESS_LABEL: &str = "qm/address";

/// The kinds of accelerator Quartermaster schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceleratorKind {
    /// A GPU (NVIDIA, AMD, Intel).
    Gpu,
    /// A Google TPU.
    Tpu,
    /// An FPGA card (Xilinx, Intel).
    Fpga,
    /// A Graphcore IPU.
    Ipu,
}

impl AcceleratorKind {
    /// Every kind, in their stable order.
    pub const ALL: [AcceleratorKind; 4] = [Self::Gpu, Self::Tpu, Self::Fpga, Self::Ipu];

    /// The lower-case name used in flavors, files and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Tpu => "tpu",
            Self::Fpga => "fpga",
            Self::Ipu => "ipu",
        }
    }
}

impl fmt::Display for AcceleratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AcceleratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown accelerator kind {s:?} (expected gpu, tpu, fpga or ipu)"))
    }
}

/// A flavor is (kind, model): the unit quotas are counted in, written `kind/model`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Flavor {
    /// The kind of accelerator.
    pub kind: AcceleratorKind,
    /// The normalized model, e.g. `nvidia-h100-80gb-hbm3`; shared, because assignments copy
    /// their flavor from the scheduler's (a clone allocates nothing, and flavors that share it
    /// compare equal without reading it).
    pub model: Arc<str>,
}

impl Flavor {
    /// A flavor from a kind and a model name.
    pub fn new(kind: AcceleratorKind, model: &str) -> Self {
        Self { kind, model: model.into() }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.model)
    }
}

impl FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, model) = s.split_once('/').ok_or_else(|| format!("flavor {s:?} is not of the form kind/model"))?;
        if model.is_empty() || model.contains(char::is_whitespace) {
            return Err(format!("flavor {s:?} has an empty or blank model"));
        }
        Ok(Self { kind: kind.parse()?, model: model.into() })
    }
}

/// Whether a device may be given to jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Usable.
    Healthy,
    /// Reported faulty (XID errors, ECC, missing); never placed on.
    Unhealthy,
}

/// One accelerator on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Stable identity (GPU UUID or device path); unique on its node.
    pub id: DeviceId,
    /// Kind of accelerator.
    pub kind: AcceleratorKind,
    /// Vendor, e.g. `nvidia`.
    pub vendor: String,
    /// Normalized model, e.g. `nvidia-h100-80gb-hbm3`.
    pub model: String,
    /// Device memory.
    pub memory_mib: u64,
    /// Current health.
    pub health: Health,
    /// NUMA node the device hangs off, when known.
    pub numa_node: Option<u32>,
    /// PCI bus id, when known.
    pub pci_bus_id: Option<String>,
    /// Interconnect group (an NVLink domain, an IPU-Link ring): devices in one group talk fast.
    pub interconnect_group: Option<String>,
}

impl Device {
    /// The flavor this device counts under.
    pub fn flavor(&self) -> Flavor {
        Flavor::new(self.kind, &self.model)
    }

    /// Whether this device is of `flavor`, without allocating.
    pub fn is_flavor(&self, flavor: &Flavor) -> bool {
        self.kind == flavor.kind && self.model == *flavor.model
    }

    /// The group used for locality: the interconnect group, else the NUMA node.
    pub fn locality_key(&self) -> Option<String> {
        self.interconnect_group.clone().or_else(|| self.numa_node.map(|n| format!("numa{n}")))
    }
}

/// What an agent reports about its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's name.
    pub id: NodeId,
    /// Labels such as `rack`; used by placement.
    pub labels: BTreeMap<String, String>,
    /// Accelerators, in the agent's order.
    pub devices: Vec<Device>,
    /// Allocatable CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Allocatable host memory.
    pub mem_mib: u64,
}

impl NodeSpec {
    /// The node's rack label, if any.
    pub fn rack(&self) -> Option<&str> {
        self.labels.get(RACK_LABEL).map(String::as_str)
    }
}

/// Whether the scheduler hears from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Registered and heartbeating.
    Ready,
    /// Missed its heartbeats; its jobs were requeued.
    Lost,
}

/// A node as the state machine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The last inventory reported.
    pub spec: NodeSpec,
    /// Ready or lost.
    pub status: NodeStatus,
    /// No new work is placed here.
    pub cordoned: bool,
    /// Cordoned, and its jobs were told to stop.
    pub draining: bool,
    /// When it last registered (virtual or wall time in ms, from the command).
    pub registered_ms: u64,
}

impl Node {
    /// Whether new work may be placed on this node.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && !self.cordoned && !self.draining
    }
}
