//! The leader's scheduling loop: when applied entries may have changed work or capacity (or
//! once a second), the leader runs `qm_core::schedule` on its state and proposes the plan as
//! `ApplyPlan`; `apply` re-verifies it on every replica. Cycles are at least `min_gap` apart,
//! so a burst of submissions costs one cycle, not one per job, and at least three times the
//! last cycle's duration apart, so that scheduling (which reads the state under its lock) takes
//! at most a quarter of the leader's time and never starves the Raft loop's applies.

use crate::node::Handle;
use crate::service::now_ms;
use qm_core::{Command, PolicyConfig, Scratch};
use std::time::Duration;

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The policy.
    pub policy: PolicyConfig,
    /// Least time between two cycles.
    pub min_gap: Duration,
    /// A cycle runs at least this often while leading.
    pub max_gap: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig { explain: false, ..PolicyConfig::default() },
            min_gap: Duration::from_millis(10),
            max_gap: Duration::from_secs(1),
        }
    }
}

/// Runs until the node stops.
pub async fn run(node: Handle, config: LeaderConfig) {
    let mut scratch = Scratch::default();
    loop {
        tokio::select! {
            _ = node.shared().work.notified() => {}
            _ = tokio::time::sleep(config.max_gap) => {}
        }
        let status = node.status();
        if status.fatal.is_some() {
            return;
        }
        let mut gap = config.min_gap;
        if status.leader == status.id {
            gap = gap.max(cycle(&node, &config.policy, &mut scratch).await * 3);
        }
        tokio::time::sleep(gap).await;
    }
}

/// One cycle: plan on the current state, propose what changed. Returns how long planning held
/// the state (not the wait for the plan to commit).
async fn cycle(node: &Handle, policy: &PolicyConfig, scratch: &mut Scratch) -> Duration {
    let now = now_ms();
    let started = std::time::Instant::now();
    let decisions = {
        let fsm = node.fsm();
        qm_core::schedule_with(&fsm.state, policy, now, scratch).decisions
    };
    let planning = started.elapsed();
    if decisions.is_empty() {
        return planning;
    }
    let placed = decisions.placements.len();
    match node.propose(Command::ApplyPlan { decisions, at_ms: now }, None).await {
        Ok(out) => tracing::debug!(placed, rejected = out.rejected.len(), "applied a plan"),
        Err(e) => tracing::warn!("a plan was not applied: {e}"),
    }
    planning
}
