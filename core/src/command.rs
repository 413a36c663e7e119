//! Commands: every change to the replicated state, and what applying one produced.

use crate::idle::IdlePolicy;
use crate::ids::{DeviceId, JobId, NodeId, TeamId};
use crate::job::{JobSpec, JobState, StopReason, StopSignal};
use crate::plan::Decisions;
use crate::resource::NodeSpec;
use crate::team::{PriorityClass, TeamSpec};
use crate::usage::DeviceUsage;
use crate::verify::StaleReason;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A change to the state. Time travels inside the command, so apply never reads a clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node registered, or re-registered with a new inventory.
    RegisterNode {
        /// The inventory.
        node: NodeSpec,
        /// When.
        at_ms: u64,
    },
    /// The leader stopped hearing from a node; its jobs are requeued.
    NodeLost {
        /// The node.
        node: NodeId,
        /// When.
        at_ms: u64,
    },
    /// Jobs submitted together; all are accepted or none.
    Submit {
        /// The jobs.
        jobs: Vec<JobSpec>,
        /// When.
        at_ms: u64,
    },
    /// A user cancels a job.
    Cancel {
        /// The job.
        job: JobId,
        /// When.
        at_ms: u64,
    },
    /// The decisions of a scheduling cycle, re-verified on apply.
    ApplyPlan {
        /// The decisions.
        decisions: Decisions,
        /// When.
        at_ms: u64,
    },
    /// Agents confirmed every replica started.
    JobStarted {
        /// The job.
        job: JobId,
        /// The attempt the report is about; a report about another attempt is refused as stale.
        /// `None` (in-process drivers: the simulator, tests) means the current one.
        attempt: Option<u32>,
        /// When.
        at_ms: u64,
    },
    /// The job exited 0 (or, when told to stop, exited at all).
    JobFinished {
        /// The job.
        job: JobId,
        /// The attempt the report is about; a report about another attempt is refused as stale.
        /// `None` (in-process drivers: the simulator, tests) means the current one.
        attempt: Option<u32>,
        /// When.
        at_ms: u64,
    },
    /// The job failed (non-zero exit, failed to start, lost a device).
    JobFailed {
        /// The job.
        job: JobId,
        /// The attempt the report is about; a report about another attempt is refused as stale.
        /// `None` (in-process drivers: the simulator, tests) means the current one.
        attempt: Option<u32>,
        /// What the agent said.
        message: String,
        /// When.
        at_ms: u64,
    },
    /// Create or replace a team and its quotas.
    SetTeam {
        /// The team.
        team: TeamSpec,
    },
    /// Create or replace a priority class.
    SetPriorityClass {
        /// The class.
        class: PriorityClass,
    },
    /// Cordon or uncordon a node.
    Cordon {
        /// The node.
        node: NodeId,
        /// True to cordon, false to uncordon (which also ends a drain).
        cordoned: bool,
    },
    /// Cordon a node and stop its jobs; they are requeued without losing an attempt.
    Drain {
        /// The node.
        node: NodeId,
    },
    /// Delete a priority class. Jobs already submitted keep the priority they were given; new
    /// submissions that name the class are refused. Appended last: the log encodes variants by
    /// position.
    DeletePriorityClass {
        /// The class's name.
        name: String,
    },
    /// An agent's summary of how one replica used its devices during an attempt (sent when the
    /// replica exits). Appended last: the log encodes variants by position.
    RecordUsage {
        /// The job.
        job: JobId,
        /// The attempt the replica belonged to; a report about an earlier one is refused as stale.
        attempt: u32,
        /// The replica.
        replica: u32,
        /// One entry per device it held.
        devices: Vec<DeviceUsage>,
    },
    /// Set or clear a team's idle policy (`idle.rs`). Appended last.
    SetIdlePolicy {
        /// The team.
        team: TeamId,
        /// The policy; `None` removes it.
        policy: Option<IdlePolicy>,
    },
    /// The leader saw every device of a running job read under the idle threshold since
    /// `since_ms` for its team's time (`None`: busy again). Appended last.
    MarkIdle {
        /// The job.
        job: JobId,
        /// The attempt it saw; another is refused as stale.
        attempt: u32,
        /// Since when, ms; `None` clears the flag.
        since_ms: Option<u64>,
    },
    /// The leader stops a flagged job whose team requeues idle jobs, after the warning.
    /// Appended last.
    StopIdle {
        /// The job.
        job: JobId,
        /// The attempt it saw; another is refused as stale.
        attempt: u32,
    },
}

impl Command {
    /// When the command happened, for the commands that carry their time.
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Self::RegisterNode { at_ms, .. }
            | Self::NodeLost { at_ms, .. }
            | Self::Submit { at_ms, .. }
            | Self::Cancel { at_ms, .. }
            | Self::ApplyPlan { at_ms, .. }
            | Self::JobStarted { at_ms, .. }
            | Self::JobFinished { at_ms, .. }
            | Self::JobFailed { at_ms, .. } => Some(*at_ms),
            Self::SetTeam { .. }
            | Self::SetPriorityClass { .. }
            | Self::Cordon { .. }
            | Self::Drain { .. }
            | Self::DeletePriorityClass { .. }
            | Self::RecordUsage { .. }
            | Self::SetIdlePolicy { .. }
            | Self::MarkIdle { .. }
            | Self::StopIdle { .. } => None,
        }
    }
}

/// An order for an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Start one replica.
    Start {
        /// The job.
        job: JobId,
        /// The replica index.
        replica: u32,
        /// The node.
        node: NodeId,
        /// The devices to expose (the job's assignment's list, shared).
        devices: Arc<[DeviceId]>,
    },
    /// Signal a job's processes on a node, then kill them after the grace period.
    Stop {
        /// The job.
        job: JobId,
        /// The node.
        node: NodeId,
        /// The signal.
        signal: StopSignal,
        /// Time until the kill.
        grace_ms: u64,
        /// Why.
        reason: StopReason,
    },
}

/// A placement or preemption that `apply` refused because the state moved on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The job the decision was about.
    pub job: JobId,
    /// Why.
    pub reason: StaleReason,
}

/// What applying a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Ids given to submitted jobs, in order.
    pub submitted: Vec<JobId>,
    /// Orders for agents.
    pub effects: Vec<Effect>,
    /// Jobs whose state changed, with the new state (for `Watch`).
    pub changed: Vec<(JobId, JobState)>,
    /// Plan decisions refused as stale.
    pub rejected: Vec<Rejection>,
}

impl Outcome {
    /// Empties every list, keeping their buffers.
    pub fn clear(&mut self) {
        self.submitted.clear();
        self.effects.clear();
        self.changed.clear();
        self.rejected.clear();
    }
}
