//! Jobs: what a user asks for (a gang of replicas) and where the job is in its life.

use crate::ids::{DeviceId, JobId, NodeId, TeamId};
use crate::layout::PositionHint;
use crate::resource::{AcceleratorKind, Flavor};
use crate::usage::JobUsage;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A job's latest status message: borrowed for the fixed texts of the common steps, so the hot
/// path of a job's life allocates none; encoded as a plain string.
pub type Message = Cow<'static, str>;

/// `one` when `n` is 1 (the first attempt, a single replica: almost every job), borrowed;
/// otherwise `text()`, which writes `n` into the message.
pub(crate) fn counted(n: impl Into<u64>, one: &'static str, text: impl FnOnce() -> String) -> Message {
    if n.into() == 1 {
        Cow::Borrowed(one)
    } else {
        Cow::Owned(text())
    }
}

/// Which devices one replica needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// The kind of accelerator.
    pub kind: AcceleratorKind,
    /// Acceptable models, most preferred first; empty means any model of `kind` the team has
    /// quota for, in flavor order.
    pub models: Vec<String>,
    /// Devices per replica, at least 1.
    pub count: u32,
}

impl DeviceRequest {
    /// Whether `flavor` is of the requested kind and, if models are listed, one of them (quota
    /// aside: see `Accounts::quota_for`).
    pub fn matches(&self, flavor: &Flavor) -> bool {
        flavor.kind == self.kind && (self.models.is_empty() || self.models.iter().any(|m| **m == *flavor.model))
    }
}

/// A gang: `replicas` identical replicas placed all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GangSpec {
    /// Number of replicas, at least 1.
    pub replicas: u32,
    /// Devices per replica.
    pub devices: DeviceRequest,
    /// Host CPU per replica, in thousandths of a core.
    pub cpu_millis: u64,
    /// Host memory per replica.
    pub mem_mib: u64,
}

impl GangSpec {
    /// Devices the whole gang holds.
    pub fn total_devices(&self) -> u32 {
        self.replicas.saturating_mul(self.devices.count)
    }
}

/// The signal a job receives when it must stop; the agent kills it after the grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    /// SIGTERM (the default).
    Term,
    /// SIGINT.
    Int,
    /// SIGUSR1, often used to ask for a checkpoint.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

/// What a user submits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// A human name; need not be unique.
    pub name: String,
    /// The team that pays for it.
    pub team: TeamId,
    /// Priority class name; `None` means priority 0.
    pub priority_class: Option<String>,
    /// The gang.
    pub gang: GangSpec,
    /// Command and arguments the agent runs for each replica.
    pub command: Vec<String>,
    /// Environment for the command.
    pub env: BTreeMap<String, String>,
    /// Stop the job once it has run this long.
    pub max_runtime_ms: Option<u64>,
    /// Whether the scheduler may preempt it.
    pub preemptible: bool,
    /// Signal sent on preemption, cancel or drain.
    pub stop_signal: StopSignal,
    /// Time between the signal and the kill.
    pub grace_ms: u64,
    /// How many times a failed or lost job is requeued.
    pub max_retries: u32,
    /// The user's estimate of the run time, if given; shortest-first orders by it.
    pub runtime_estimate_ms: Option<u64>,
}

impl JobSpec {
    /// Bytes of the command and its arguments together, as the limits count them.
    pub fn command_bytes(&self) -> usize {
        self.command.iter().map(String::len).sum()
    }

    /// Bytes of the environment, names and values, as the limits count them.
    pub fn env_bytes(&self) -> usize {
        self.env.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for devices.
    Pending,
    /// Placed; start orders sent, the agents have not confirmed yet. Holds its devices.
    Starting,
    /// Running on its devices.
    Running,
    /// Told to stop because it was preempted; holds its devices until it exits, then requeues.
    Preempted,
    /// Told to stop (cancel, drain, maximum runtime); holds its devices until it exits.
    Stopping,
    /// Exited 0.
    Succeeded,
    /// Failed past its retry limit, or ran past its maximum runtime.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Whether the job holds devices in this state.
    pub fn holds_devices(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Preempted | Self::Stopping)
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The lower-case name used by the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Preempted => "preempted",
            Self::Stopping => "stopping",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Why a job was told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Preempted; requeued once it exits.
    Preempted,
    /// Cancelled by a user.
    Cancelled,
    /// Its node is draining; requeued once it exits, without counting an attempt.
    Drained,
    /// Ran past `max_runtime_ms`; fails once it exits.
    MaxRuntime,
    /// Another replica's node was lost; requeued (counting a failure) once it exits.
    NodeLost,
    /// A device it holds turned unhealthy; requeued once it exits, without counting a failure
    /// (the device failed, not the job). Appended last: the log encodes variants by position.
    DeviceUnhealthy,
    /// Its devices stayed idle past its team's policy and warning; requeued once it exits,
    /// without counting a failure. Appended last.
    Idle,
}

/// The devices of one replica.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaAssignment {
    /// The node.
    pub node: NodeId,
    /// The devices on it, `count` of them; shared with the start orders that name them.
    pub devices: Arc<[DeviceId]>,
    /// Where the node was in the state's node order (set by the scheduler, and again when the
    /// placement is applied): spares looking it up by name while it still holds (not encoded,
    /// and no part of the assignment's value).
    #[serde(skip)]
    pub position: PositionHint,
}

/// Where a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The flavor chosen among the acceptable ones.
    pub flavor: Flavor,
    /// One entry per replica.
    pub replicas: Vec<ReplicaAssignment>,
}

/// A job as the state machine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What was submitted.
    pub spec: JobSpec,
    /// The priority value resolved from the class at submission.
    pub priority: i32,
    /// Its state.
    pub state: JobState,
    /// When it was submitted.
    pub submitted_ms: u64,
    /// Attempts started so far (0 before the first start).
    pub attempt: u32,
    /// Where it runs, while it holds devices.
    pub assignment: Option<Assignment>,
    /// When the current attempt was placed.
    pub placed_ms: Option<u64>,
    /// When the current attempt was confirmed running.
    pub started_ms: Option<u64>,
    /// When it reached a terminal state.
    pub finished_ms: Option<u64>,
    /// Why it is stopping, while `Preempted` or `Stopping`.
    pub stop_reason: Option<StopReason>,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Failures so far (non-zero exits, lost nodes); past `max_retries` the job fails.
    pub failures: u32,
    /// Service received by attempts that ended: devices x ms (least-attained-service uses it).
    pub attained_device_ms: u64,
    /// The last thing that happened to it, for `qm job`.
    pub message: Message,
    /// How its latest reporting attempt used its devices. Encoded after the job table, in the
    /// snapshot's trailer (see `state.rs`), so that snapshots without usage keep the first
    /// format.
    #[serde(skip)]
    pub usage: Option<Arc<JobUsage>>,
    /// While its devices are flagged idle (see `idle.rs`), since when, ms; cleared when they
    /// get busy or the attempt ends. Encoded in the snapshot's trailer, as `usage`.
    #[serde(skip)]
    pub idle_since_ms: Option<u64>,
    /// The attempts that ran and ended, oldest first (`usage::AttemptRecord`). Encoded in the
    /// snapshot's trailer, as `usage`.
    #[serde(skip)]
    pub attempts: Vec<crate::usage::AttemptRecord>,
    /// Its team's slot in the state's accounts, set on admission: spares looking the team up
    /// by name whenever the job takes or frees devices (not encoded, and no part of the job's
    /// value).
    #[serde(skip)]
    pub team_slot: PositionHint,
}

impl Job {
    /// A job as submitted at `at_ms`: pending, never started.
    pub fn submitted(id: JobId, spec: JobSpec, priority: i32, at_ms: u64) -> Self {
        Self {
            id,
            spec,
            priority,
            state: JobState::Pending,
            submitted_ms: at_ms,
            attempt: 0,
            assignment: None,
            placed_ms: None,
            started_ms: None,
            finished_ms: None,
            stop_reason: None,
            preemptions: 0,
            failures: 0,
            attained_device_ms: 0,
            message: "submitted".into(),
            usage: None,
            idle_since_ms: None,
            attempts: Vec::new(),
            team_slot: PositionHint::default(),
        }
    }

    /// Service received so far, the current attempt included: devices x ms.
    pub fn attained_at(&self, now_ms: u64) -> u64 {
        let running = match (self.state, self.started_ms) {
            (JobState::Running | JobState::Preempted | JobState::Stopping, Some(s)) => now_ms.saturating_sub(s),
            _ => 0,
        };
        self.attained_device_ms + running * u64::from(self.spec.gang.total_devices())
    }

    /// Whether it may be chosen as a victim now: running, preemptible, past the minimum run time.
    pub fn preemptible_at(&self, now_ms: u64, min_runtime_ms: u64) -> bool {
        self.state == JobState::Running
            && self.spec.preemptible
            && self.started_ms.is_some_and(|s| s.saturating_add(min_runtime_ms) <= now_ms)
    }
}
