//! The node agent (`qm agent`): finds the node's accelerators, keeps a session with the
//! scheduler's leader, and runs the replicas placed on the node.
//!
//! Module map:
//! - [`inventory`]: the `Probe` trait, the static (TOML) probe, fake GPUs for `qm dev`, and the
//!   node's inventory built from every probe.
//! - [`env`]: the environment contract of a replica (identity, gang rendezvous, device
//!   visibility).
//! - [`executor`]: runs replicas in process groups with per-replica logs; signal, grace, kill;
//!   replicas outlive an agent restart and are adopted again.
//! - [`cgroup`]: CPU and memory limits for replicas through cgroup v2, where writable.
//! - [`session`]: the session with the scheduler: register, heartbeat, orders, reports, and
//!   reconnection to the leader with backoff and jitter.
//! - [`outbox`]: replica reports awaiting the scheduler's `Recorded`, sent again until then.
//! - [`logs`]: the `ReplicaLogs` service that `qm logs` reads.
//! - [`nvml`]: the NVIDIA probe over an NVML source (health rules, MIG, NVLink groups, telemetry).
//! - [`nvml_real`]: the NVML source of `libnvidia-ml.so` (loaded at run time) and its XID watcher.
//! - [`sysfs`]: the PCI probe (AMD with KFD topology, Intel, Gaudi, TPU, FPGA, IPU, and NVIDIA
//!   devices without a driver) under a configurable root.
//! - [`pci_ids`]: the one table of accelerator vendors and device models.
//! - [`usage`]: a running replica's usage meter (telemetry of its devices, summed).
//! - [`metrics`]: the agent's Prometheus metrics and its HTTP address.

pub mod cgroup;
pub mod env;
pub mod executor;
pub mod inventory;
pub mod logs;
pub mod metrics;
pub mod nvml;
pub mod nvml_real;
pub mod outbox;
pub mod pci_ids;
pub mod session;
pub mod sysfs;
pub mod usage;
