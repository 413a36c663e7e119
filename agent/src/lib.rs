//! The node agent (`qm agent`): accelerator probes (NVML, sysfs), the inventory and heartbeat
//! stream to the scheduler, and the executor that runs job processes.
//!
//! Module map: empty until the agent issue lands; it speaks `AgentService` from `qm-proto`.
