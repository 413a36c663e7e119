//! Quartermaster's core: the scheduling policy and the replicated state machine, as pure,
//! deterministic code. No I/O, no clock reads (time arrives in commands and as `now_ms`), no
//! unseeded randomness; the scheduler replicas, the simulator and the benchmarks all run it.
//!
//! Module map:
//! - [`ids`]: node, team, device and job identifiers.
//! - [`resource`]: accelerator kinds, flavors, devices, node inventory.
//! - [`job`]: job specs (gangs), job states, assignments.
//! - [`team`]: teams, per-flavor quotas, priority classes.
//! - [`limits`]: validation rules and size limits for everything users and agents send.
//! - [`error`]: the error type of `apply`.
//! - [`command`]: `Command`, and the `Outcome` (agent orders, state changes) of applying one.
//! - [`state`]: `State`, its indexes, snapshots to and from bytes, the state hash.
//! - [`table`]: the job table, indexed by the dense job ids.
//! - `apply` (private): `State::apply` for every command.
//! - [`quota`]: admission arithmetic (nominal, borrowing, lending).
//! - [`plan`]: what a cycle decides and why jobs stay pending.
//! - [`policy`]: `PolicyConfig`, the operator's knobs.
//! - [`schedule`]: `schedule(&State, &PolicyConfig, now) -> Plan`.
//! - [`verify`]: re-checking a plan on apply; stale decisions are rejected with a reason.
//! - [`scenario`]: the TOML scenario files of `qm plan` and the golden tests.
//! - [`render`]: plain-text rendering of plans and placement reports.

pub mod command;
pub mod error;
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
pub mod table;
pub mod team;
pub mod verify;

mod apply;
#[cfg(test)]
mod testkit;

pub use command::{Command, Effect, Outcome, Rejection};
pub use error::{ApplyError, FieldError};
pub use ids::{DeviceId, JobId, NodeId, TeamId};
pub use job::{Assignment, DeviceRequest, GangSpec, Job, JobSpec, JobState, ReplicaAssignment, StopReason, StopSignal};
pub use plan::{Decisions, Placement, PlacementReport, Plan, Preemption, PreemptionRule};
pub use policy::{PlacementStrategy, PolicyConfig, QueueingStrategy};
pub use resource::{AcceleratorKind, Device, Flavor, Health, Node, NodeSpec, NodeStatus};
pub use schedule::schedule;
pub use state::State;
pub use team::{FlavorQuota, PriorityClass, TeamSpec};
pub use verify::{verify, StaleReason};
