//! The policies a simulation can run. All of them go through `qm_core::schedule` and the same
//! placement code; the baselines only change the queue order, blocking and preemption.

use qm_core::{PolicyConfig, QueueOrder, QueueingStrategy};
use std::fmt;
use std::str::FromStr;

/// A named policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The production policy: quotas, borrowing, priorities, reclaim and within-team preemption.
    Default,
    /// One global FIFO queue whose head blocks everyone behind it; no preemption.
    StrictFifo,
    /// One global FIFO queue; jobs behind a stuck head that fit go ahead; no preemption.
    Backfill,
    /// Shortest job first by the known duration (an oracle), with backfill; no preemption.
    Sjf,
    /// Discretized least attained service (Tiresias' 2D-LAS): service levels at 1 and 10
    /// GPU-hours, FIFO within a level, with backfill; a job preempts jobs of a higher level.
    Las,
}

impl Policy {
    /// Every policy, for `qm sim compare` without `--policy`.
    pub const ALL: [Policy; 5] = [Self::Default, Self::StrictFifo, Self::Backfill, Self::Sjf, Self::Las];

    /// The core configuration of this policy, on top of the cluster's production knobs.
    pub fn config(self, production: &PolicyConfig) -> PolicyConfig {
        let base = PolicyConfig { explain: false, ..production.clone() };
        let baseline = |order, queueing| PolicyConfig {
            order,
            queueing,
            reclaim: false,
            within_team_preemption: false,
            ..base.clone()
        };
        match self {
            Self::Default => base,
            Self::StrictFifo => baseline(QueueOrder::Fifo, QueueingStrategy::StrictFifo),
            Self::Backfill => baseline(QueueOrder::Fifo, QueueingStrategy::BestEffortFifo),
            Self::Sjf => baseline(QueueOrder::ShortestFirst, QueueingStrategy::BestEffortFifo),
            Self::Las => PolicyConfig {
                las_preemption: true,
                las_thresholds_device_s: vec![3_600, 36_000],
                ..baseline(QueueOrder::LeastAttained, QueueingStrategy::BestEffortFifo)
            },
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::StrictFifo => "strict-fifo",
            Self::Backfill => "backfill",
            Self::Sjf => "sjf",
            Self::Las => "las",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown policy {s:?} (expected default, strict-fifo, backfill, sjf or las)"))
    }
}

/// How a job's GPUs map onto nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Real node boundaries: a job of N GPUs is a gang of N / c replicas of c GPUs, c the
    /// largest divisor of N that fits a node.
    Nodes,
    /// Free GPUs are counted cluster-wide, ignoring nodes (as the Tiresias `count` scheme): a
    /// job of N GPUs is N replicas of one GPU, placed anywhere.
    Pool,
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nodes" => Ok(Self::Nodes),
            "pool" => Ok(Self::Pool),
            _ => Err(format!("unknown placement {s:?} (expected nodes or pool)")),
        }
    }
}

impl Placement {
    /// (replicas, devices per replica) for a job of `gpus` on nodes of at most `per_node`.
    pub fn gang(self, gpus: u32, per_node: u32) -> (u32, u32) {
        match self {
            Self::Pool => (gpus, 1),
            Self::Nodes => {
                let count = (1..=per_node.min(gpus)).rev().find(|c| gpus % c == 0).unwrap_or(1);
                (gpus / count, count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gangs_follow_node_boundaries() {
        assert_eq!(Placement::Nodes.gang(16, 8), (2, 8));
        assert_eq!(Placement::Nodes.gang(12, 8), (2, 6));
        assert_eq!(Placement::Nodes.gang(3, 8), (1, 3));
        assert_eq!(Placement::Nodes.gang(7, 4), (7, 1));
        assert_eq!(Placement::Pool.gang(16, 8), (16, 1));
    }

    #[test]
    fn baselines_turn_preemption_off() {
        let c = Policy::StrictFifo.config(&PolicyConfig::default());
        assert!(!c.reclaim && !c.within_team_preemption);
        assert_eq!((c.order, c.queueing), (QueueOrder::Fifo, QueueingStrategy::StrictFifo));
        assert!(Policy::Default.config(&PolicyConfig::default()).reclaim);
        assert_eq!("sjf".parse::<Policy>(), Ok(Policy::Sjf));
    }
}
