//! The operator's knobs. Defaults are what a shared GPU cluster usually wants: reclaim and
//! within-team preemption on, borrowing on, bin-packing, bounded work per cycle.

use serde::{Deserialize, Serialize};

/// How replicas are spread over nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementStrategy {
    /// Fill the fullest node that fits, keeping whole nodes free for large gangs.
    #[default]
    BinPack,
    /// Use the emptiest node, spreading load and heat.
    Spread,
}

/// Whether a gang's replicas must share a rack (on a cluster whose nodes carry `rack` labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RackPlacement {
    /// One rack whenever some rack can hold the gang; split across racks otherwise.
    #[default]
    Preferred,
    /// One rack or not at all: a gang that no rack can hold waits (nodes without a rack label
    /// form no rack).
    Required,
}

/// What a team's queue does when its first job cannot be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueueingStrategy {
    /// Later jobs of the team that fit go ahead (Kueue's BestEffortFIFO).
    #[default]
    BestEffortFifo,
    /// Nothing behind a stuck job is placed for its team (Kueue's StrictFIFO).
    StrictFifo,
}

/// The order pending jobs are looked at in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOrder {
    /// The order of docs/design.md: within a team by priority then age; across teams, demand within nominal
    /// first, then borrowers by weighted dominant share, then age.
    #[default]
    FairShare,
    /// One global queue by submission time, whatever the team or priority (the FIFO baselines).
    Fifo,
    /// One global queue by the jobs' runtime estimates, shortest first; jobs without an
    /// estimate last, by submission time.
    ShortestFirst,
    /// Least attained service, discretized (Tiresias' 2D-LAS): one global queue by service
    /// level (how many of `las_thresholds_device_s` the job's attained devices x seconds has
    /// passed), then submission time.
    LeastAttained,
}

/// Policy configuration; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// A job within its team's nominal may preempt other teams' borrowed work.
    pub reclaim: bool,
    /// A job may preempt lower-priority jobs of its own team.
    pub within_team_preemption: bool,
    /// Teams may go above nominal on idle capacity.
    pub borrowing: bool,
    /// Bin-pack or spread.
    pub placement: PlacementStrategy,
    /// Best-effort or strict FIFO: per team with `FairShare`, for the one global queue otherwise.
    pub queueing: QueueingStrategy,
    /// The order of the queue.
    pub order: QueueOrder,
    /// Jobs that ran less than this are not preempted (avoids thrashing).
    pub min_runtime_ms: u64,
    /// Most victims one cycle may choose.
    pub max_victims_per_cycle: u32,
    /// Most preemption searches one cycle runs.
    pub max_preemption_attempts_per_cycle: u32,
    /// Most candidates one preemption search looks at.
    pub max_preemption_candidates: u32,
    /// Most pending jobs one cycle looks at.
    pub max_jobs_per_cycle: u32,
    /// Most placements one cycle makes.
    pub max_placements_per_cycle: u32,
    /// Feasible nodes collected (beyond what the gang needs) before scoring picks among them.
    pub candidate_nodes: u32,
    /// Write a placement report for every job left pending (what `qm why` shows). The
    /// simulator, which never reads them, turns this off.
    pub explain: bool,
    /// Service levels of `LeastAttained`, in devices x seconds, ascending.
    pub las_thresholds_device_s: Vec<u64>,
    /// With `LeastAttained`: a job may preempt running jobs of a higher service level, whatever
    /// the teams' quotas (a baseline, not the production policy).
    pub las_preemption: bool,
    /// A job within its team's nominal that waited this long for free devices gets a
    /// reservation (see `schedule/reserve.rs`).
    pub reserve_after_ms: u64,
    /// Most reservations one cycle makes; 0 turns reservations off.
    pub max_reservations_per_cycle: u32,
    /// Whether a gang's replicas must share a rack.
    pub rack_placement: RackPlacement,
}

/// The service level of `attained` devices x ms under `thresholds` (devices x seconds): how many
/// of them it reached.
pub fn service_level(thresholds: &[u64], attained_device_ms: u64) -> usize {
    thresholds.iter().filter(|&&t| attained_device_ms >= t.saturating_mul(1000)).count()
}

impl PolicyConfig {
    /// The service level of `attained` devices x ms.
    pub fn las_level(&self, attained_device_ms: u64) -> usize {
        service_level(&self.las_thresholds_device_s, attained_device_ms)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            reclaim: true,
            within_team_preemption: true,
            borrowing: true,
            placement: PlacementStrategy::BinPack,
            queueing: QueueingStrategy::BestEffortFifo,
            order: QueueOrder::FairShare,
            min_runtime_ms: 5 * 60 * 1000,
            max_victims_per_cycle: 64,
            max_preemption_attempts_per_cycle: 32,
            max_preemption_candidates: 256,
            max_jobs_per_cycle: 10_000,
            max_placements_per_cycle: 2_000,
            candidate_nodes: 8,
            explain: true,
            las_thresholds_device_s: vec![3_600, 36_000],
            las_preemption: false,
            reserve_after_ms: 4 * 60 * 60 * 1000,
            max_reservations_per_cycle: 4,
            rack_placement: RackPlacement::Preferred,
        }
    }
}
