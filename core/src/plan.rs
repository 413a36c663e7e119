//! What one scheduling cycle decides (`Decisions`, which travel in the log) and explains
//! (`PlacementReport`s, which `qm why` shows and which never enter the log).

use crate::ids::{JobId, TeamId};
use crate::job::Assignment;
use crate::resource::Flavor;
use serde::{Deserialize, Serialize};

/// Start a pending job on these devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The job.
    pub job: JobId,
    /// Where each replica goes.
    pub assignment: Assignment,
}

/// Which rule allowed a preemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptionRule {
    /// The preemptor fits its team's nominal; the victim's team runs above its nominal.
    Reclaim,
    /// Same team, the victim has a lower priority.
    WithinTeam,
    /// Least attained service: the victim has received more service (a baseline's rule).
    LeastAttained,
}

/// Stop a running job so that another one fits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    /// The job to stop.
    pub victim: JobId,
    /// The job it makes room for.
    pub preemptor: JobId,
    /// The rule that allows it.
    pub rule: PreemptionRule,
}

/// The decisions of a cycle: the payload of `Command::ApplyPlan`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    /// Jobs to start.
    pub placements: Vec<Placement>,
    /// Jobs to preempt.
    pub preemptions: Vec<Preemption>,
    /// Jobs past their maximum runtime, to stop.
    pub expired: Vec<JobId>,
}

impl Decisions {
    /// Whether the cycle decided nothing.
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.preemptions.is_empty() && self.expired.is_empty()
    }
}

/// Why quota does not admit a request of one flavor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaDenial {
    /// Usage + request would pass nominal + borrowing limit.
    OverBorrowingLimit {
        /// Devices the team holds.
        usage: u32,
        /// Devices asked for.
        request: u32,
        /// The team's nominal.
        nominal: u32,
        /// The team's borrowing limit.
        borrowing_limit: u32,
    },
    /// Usage + request would pass nominal and the policy forbids borrowing.
    BorrowingDisabled {
        /// Devices the team holds.
        usage: u32,
        /// Devices asked for.
        request: u32,
        /// The team's nominal.
        nominal: u32,
    },
    /// Other teams do not have enough idle, lendable quota right now.
    NoLendableCapacity {
        /// Devices the team would borrow in all.
        borrow_needed: u64,
        /// Devices that can be borrowed.
        lendable: u64,
    },
    /// The team has no quota entry for this flavor.
    NoQuota,
    /// The job would borrow and may not be preempted: a loan must be possible to pay back, so a
    /// non-preemptible job runs within its team's nominal only.
    NotPreemptible {
        /// Devices the team holds.
        usage: u32,
        /// Devices asked for.
        request: u32,
        /// The team's nominal.
        nominal: u32,
    },
}

/// Why nodes were rejected for a request, counted over every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilterCounts {
    /// Nodes looked at.
    pub nodes: u32,
    /// Rejected: lost.
    pub not_ready: u32,
    /// Rejected: cordoned or draining.
    pub cordoned: u32,
    /// Rejected: no device of the flavor.
    pub no_flavor: u32,
    /// Rejected: fewer healthy devices of the flavor than one replica needs.
    pub unhealthy: u32,
    /// Rejected: not enough free devices of the flavor.
    pub busy: u32,
    /// Rejected: not enough free CPU.
    pub cpu: u32,
    /// Rejected: not enough free host memory.
    pub memory: u32,
    /// Nodes that could take at least one replica.
    pub fit: u32,
    /// Replicas all fitting nodes could take together.
    pub replicas_fit: u32,
    /// Rejected: fewer devices of the flavor in all than one replica needs (healthy or not).
    #[serde(default)]
    pub too_small: u32,
}

/// What happened when a flavor was tried for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Quota refused it.
    Quota(QuotaDenial),
    /// Quota allowed it; the free devices do not hold the gang.
    NoFit(NodeFilterCounts),
    /// The gang could never fit, even on an empty cluster.
    NeverFits(NodeFilterCounts),
}

/// One flavor tried for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorAttempt {
    /// The flavor.
    pub flavor: Flavor,
    /// What happened.
    pub outcome: AttemptOutcome,
}

/// Why a job is still pending after this cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// No acceptable flavor was admitted or fitted; see the attempts.
    Unschedulable,
    /// Victims were chosen for it; it starts once they exit.
    Preempting {
        /// How many victims.
        victims: u32,
    },
    /// Jobs preempted earlier are still stopping; their devices are reserved for it.
    WaitingForRelease,
    /// It waited long for free devices: the free devices of the nodes it needs are held back
    /// from later jobs (see the attempts for why it does not fit yet).
    Reserved {
        /// Devices held back for it this cycle.
        devices: u32,
        /// How long after the cycle it can start at the latest, by the maximum runtimes of the
        /// jobs it waits for; later jobs that end by then may use the held devices (backfill).
        /// `None` when some job it waits for has no maximum runtime.
        starts_within_ms: Option<u64>,
    },
}

/// Why a pending job was not placed: what `qm why` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementReport {
    /// The job.
    pub job: JobId,
    /// Its team.
    pub team: TeamId,
    /// Its position in the cycle's queue order (0 = first).
    pub position: u32,
    /// The reason in one word.
    pub reason: PendingReason,
    /// Each flavor tried, in preference order.
    pub attempts: Vec<FlavorAttempt>,
    /// Why preemption could not help, when it was tried and failed.
    pub preemption: Option<String>,
}

/// Counters of one cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStats {
    /// Pending jobs in the state.
    pub pending: u32,
    /// Jobs looked at: examined, or answered from the cache of failed shapes.
    pub considered: u32,
    /// Jobs placed.
    pub placed: u32,
    /// Victims chosen.
    pub victims: u32,
    /// Jobs answered from the cycle's cache of failed shapes.
    pub cache_hits: u32,
    /// Jobs placed on devices held for a reservation, ending before it starts.
    pub backfilled: u32,
    /// Jobs for which devices were held back: reservations, and waits for devices that
    /// preempted jobs are releasing.
    pub held: u32,
    /// Jobs not looked at because strict FIFO blocked their queue behind a stuck job.
    pub blocked: u32,
    /// Jobs not looked at because every job their team had left was of a shape that failed
    /// in the cycle (see `schedule::park`): each stays pending, as the cache would have said.
    #[serde(default)]
    pub parked: u32,
}

impl Plan {
    /// Whether the cycle looked at (or parked) every pending job and none changed what the jobs after it
    /// saw: no decision, no devices held back, no queue stopped. Every job then stays pending
    /// whatever the order it is looked at in, and a job that arrives later is the only one
    /// whose answer is not known (`schedule::arrivals_inert`).
    pub fn is_inert(&self) -> bool {
        let s = &self.stats;
        self.decisions.is_empty() && s.held == 0 && s.blocked == 0 && s.considered + s.parked == s.pending
    }
}

/// The result of one scheduling cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The time the cycle ran at.
    pub at_ms: u64,
    /// What to do.
    pub decisions: Decisions,
    /// Why each job looked at stays pending.
    pub reports: Vec<PlacementReport>,
    /// Counters.
    pub stats: CycleStats,
}
