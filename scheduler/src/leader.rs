//! The leader's scheduling loop: when applied entries may have changed work or capacity (or
//! once a second), the leader runs `qm_core::schedule` on its state and proposes the plan as
//! `ApplyPlan`; `apply` re-verifies it on every replica. Cycles are at least `min_gap` apart,
//! so a burst of submissions costs one cycle, not one per job, and at least three times the
//! last cycle's duration apart, so that scheduling (which reads the state under its lock) takes
//! at most a quarter of the leader's time and never starves the Raft loop's applies.
//!
//! A cycle that decided nothing is remembered with the log index its state was at: the next
//! cycle, if nothing was applied since and no rule that reads the time changes its answer
//! (`qm_core::schedule::same_decisions_between`), decides nothing either and is not planned, so
//! a leader with a backlog that cannot run idles instead of walking the queue every second.

pub mod idle;

use crate::fsm::Fsm;
use crate::node::Handle;
use crate::observe::metrics::Metrics;
use crate::service::now_ms;
use qm_core::plan::Decisions;
use qm_core::{Command, PolicyConfig, Scratch};
use std::sync::Arc;
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

/// The last cycle, when it decided nothing: its time and the log index of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quiet {
    at_ms: u64,
    applied: u64,
}

/// Whether a cycle at `now_ms` on `fsm` would decide what the quiet cycle `quiet` decided:
/// nothing.
fn still_quiet(quiet: Option<Quiet>, fsm: &Fsm, policy: &PolicyConfig, now_ms: u64) -> bool {
    quiet.is_some_and(|q| {
        q.applied == fsm.applied && qm_core::schedule::same_decisions_between(&fsm.state, policy, q.at_ms, now_ms)
    })
}

/// The leader's planning between cycles: the policy, the scheduler's scratch space, and the
/// last quiet cycle.
#[derive(Debug)]
pub struct Planner {
    policy: PolicyConfig,
    scratch: Scratch,
    quiet: Option<Quiet>,
    /// Whether the last `plan` ran the scheduler (rather than finding the state quiet).
    ran: bool,
}

impl Planner {
    /// A planner for `policy`.
    pub fn new(policy: PolicyConfig) -> Self {
        Self { policy, scratch: Scratch::default(), quiet: None, ran: false }
    }

    /// The plan of a cycle at `now_ms` on `fsm`, as the command to propose; `None` when it
    /// decides nothing (then remembered, so that the next cycle on the same state at a time
    /// when no rule's answer changed costs nothing).
    pub fn plan(&mut self, fsm: &Fsm, now_ms: u64) -> Option<Command> {
        self.ran = !still_quiet(self.quiet, fsm, &self.policy, now_ms);
        if !self.ran {
            return None;
        }
        let decisions = qm_core::schedule_with(&fsm.state, &self.policy, now_ms, &mut self.scratch).decisions;
        self.quiet = decisions.is_empty().then_some(Quiet { at_ms: now_ms, applied: fsm.applied });
        (!decisions.is_empty()).then_some(Command::ApplyPlan { decisions, at_ms: now_ms })
    }
}

/// Runs until the node stops.
pub async fn run(node: Handle, config: LeaderConfig, metrics: Arc<Metrics>) {
    let mut planner = Planner::new(config.policy.clone());
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
            gap = gap.max(cycle(&node, &mut planner, &metrics).await * 3);
        }
        tokio::time::sleep(gap).await;
    }
}

/// One cycle: plan on the current state, propose what changed. Returns how long planning held
/// the state (not the wait for the plan to commit).
async fn cycle(node: &Handle, planner: &mut Planner, metrics: &Metrics) -> Duration {
    let started = std::time::Instant::now();
    let command = planner.plan(&node.fsm(), now_ms());
    let planning = started.elapsed();
    if planner.ran {
        metrics.cycle(planning);
    }
    let Some(command) = command else { return planning };
    let decisions = match &command {
        Command::ApplyPlan { decisions, .. } => decisions.clone(),
        _ => Decisions::default(),
    };
    match node.propose(command, None).await {
        Ok(out) => {
            tracing::debug!(rejected = out.rejected.len(), "applied a plan");
            metrics.applied(&decisions, &out.rejected.iter().map(|r| r.job).collect());
        }
        Err(e) => tracing::warn!("a plan was not applied: {e}"),
    }
    planning
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered quiet cycle holds only while nothing was applied and no rule that reads the
    /// time has changed its answer.
    #[test]
    fn a_quiet_cycle_holds_until_an_entry_is_applied() {
        let policy = PolicyConfig::default();
        let mut fsm = Fsm { applied: 7, ..Fsm::default() };
        let quiet = Some(Quiet { at_ms: 1_000, applied: 7 });
        assert!(!still_quiet(None, &fsm, &policy, 2_000), "nothing remembered");
        assert!(still_quiet(quiet, &fsm, &policy, 2_000));
        assert!(!still_quiet(quiet, &fsm, &policy, 500), "the clock went back");
        fsm.applied = 8;
        assert!(!still_quiet(quiet, &fsm, &policy, 2_000), "an entry was applied since");
    }
}
