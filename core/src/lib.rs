//! Quartermaster's core: the scheduling policy and the replicated state machine, as pure,
//! deterministic code. No I/O, no clock reads (time arrives in commands and as `now_ms`), no
//! unseeded randomness; the scheduler replicas, the simulator and the benchmarks all run it.
//!
//! One cycle, end to end: a node, a team, a job; `schedule` plans, `apply` commits.
//!
//! ```
//! use qm_core::*;
//! use std::collections::BTreeMap;
//!
//! let mut state = State::new();
//! let h100 = Flavor::new(AcceleratorKind::Gpu, "nvidia-h100-80gb-hbm3");
//! let quota = FlavorQuota { nominal: 8, borrowing_limit: None, lending_limit: None };
//! let team = TeamSpec { name: "vision".into(), weight_milli: 1000, quotas: BTreeMap::from([(h100, quota)]) };
//! state.apply(Command::SetTeam { team }).unwrap();
//! let devices = (0..8)
//!     .map(|i| Device {
//!         id: format!("GPU-{i}").into(),
//!         kind: AcceleratorKind::Gpu,
//!         vendor: "nvidia".into(),
//!         model: "nvidia-h100-80gb-hbm3".into(),
//!         memory_mib: 81_559,
//!         health: Health::Healthy,
//!         numa_node: Some(0),
//!         pci_bus_id: None,
//!         interconnect_group: Some("nvlink0".into()),
//!     })
//!     .collect();
//! let node = NodeSpec { id: "node-1".into(), labels: BTreeMap::new(), devices, cpu_millis: 64_000, mem_mib: 512_000 };
//! state.apply(Command::RegisterNode { node, at_ms: 0 }).unwrap();
//! let job = JobSpec {
//!     name: "train".into(),
//!     team: "vision".into(),
//!     priority_class: None,
//!     gang: GangSpec {
//!         replicas: 2,
//!         devices: DeviceRequest { kind: AcceleratorKind::Gpu, models: vec![], count: 4 },
//!         cpu_millis: 8_000,
//!         mem_mib: 65_536,
//!     },
//!     command: vec!["python".into(), "train.py".into()],
//!     env: BTreeMap::new(),
//!     max_runtime_ms: None,
//!     preemptible: true,
//!     stop_signal: StopSignal::Term,
//!     grace_ms: 30_000,
//!     max_retries: 3,
//!     runtime_estimate_ms: None,
//! };
//! let id = state.apply(Command::Submit { jobs: vec![job], at_ms: 1_000 }).unwrap().submitted[0];
//!
//! let plan = schedule(&state, &PolicyConfig::default(), 2_000);
//! assert_eq!(plan.decisions.placements.len(), 1);
//! let out = state.apply(Command::ApplyPlan { decisions: plan.decisions, at_ms: 2_000 }).unwrap();
//! assert!(out.rejected.is_empty());
//! assert_eq!(out.effects.len(), 2, "one start order per replica");
//! assert_eq!(state.job(id).unwrap().state, JobState::Starting);
//! ```
//!
//! Module map:
//! - [`ids`]: node, team, device and job identifiers.
//! - [`resource`]: accelerator kinds, flavors, devices, node inventory.
//! - [`job`]: job specs (gangs), job states, assignments.
//! - [`team`]: teams, per-flavor quotas, priority classes.
//! - [`limits`]: validation rules and size limits for everything users and agents send.
//! - [`error`]: the error type of `apply`.
//! - [`command`]: `Command`, and the `Outcome` (agent orders, state changes) of applying one.
//! - [`state`]: `State`, its indexes, snapshots to and from bytes, the state hash, and
//!   `check_invariants` (every derived index against its rebuild). Its derived indexes live
//!   under it: [`layout`] (a node's devices as bit masks, and who holds them), `accounts`
//!   (devices held per team and free per flavor, on dense slots), [`queues`] (every team's
//!   pending jobs in queue order), [`table`] (the job table, indexed by the dense job ids),
//!   [`jobset`] (sets of job ids as bitsets), and the scheduler's node index and team rows,
//!   which the scheduler reads and never the other way round.
//! - `apply` (private): `State::apply` for every command.
//! - [`quota`]: admission arithmetic (nominal, borrowing, lending).
//! - [`plan`]: what a cycle decides and why jobs stay pending.
//! - [`policy`]: `PolicyConfig`, the operator's knobs.
//! - [`schedule`]: `schedule(&State, &PolicyConfig, now) -> Plan`; `schedule_with` keeps a
//!   `Scratch` of buffers between cycles.
//! - [`verify`]: re-checking a plan on apply; stale decisions are rejected with a reason.
//! - [`scenario`]: the TOML scenario files of `qm plan` and the golden tests.
//! - [`render`]: plain-text rendering of plans and placement reports.
//! - [`cause`]: the root cause of a waiting job in one line (`qm why`'s first line).
//! - [`usage`]: how a job used its devices (telemetry summed per replica and device).
//! - [`idle`]: teams' idle policies, and the flag and stop of jobs whose devices sit idle.

pub mod cause;
pub mod command;
pub mod error;
pub mod idle;
pub mod ids;
pub mod job;
pub mod limits;
pub mod plan;
pub mod policy;
pub mod quota;
pub mod render;
pub mod resource;
pub mod scenario;
pub mod schedule;
pub mod state;
pub mod team;
pub mod usage;
pub mod verify;

mod apply;
use state::accounts;
pub use state::{jobset, layout, queues, table};
#[cfg(test)]
mod testkit;

pub use command::{Command, Effect, Outcome, Rejection};
pub use error::{ApplyError, FieldError};
pub use ids::{DeviceId, JobId, NodeId, TeamId};
pub use job::{Assignment, DeviceRequest, GangSpec, Job, JobSpec, JobState, ReplicaAssignment, StopReason, StopSignal};
pub use plan::{Decisions, Placement, PlacementReport, Plan, Preemption, PreemptionRule};
pub use policy::{PlacementStrategy, PolicyConfig, QueueOrder, QueueingStrategy};
pub use resource::{AcceleratorKind, Device, Flavor, Health, Node, NodeSpec, NodeStatus};
pub use schedule::{schedule, schedule_with, Scratch};
pub use state::{State, StateCut};
pub use team::{FlavorQuota, PriorityClass, TeamSpec};
pub use usage::{DeviceUsage, JobUsage};
pub use verify::{verify, StaleReason};
