//! Idle accelerators: once a second, the leader compares each running job's devices with the
//! readings its agents sent (`Readings`: since when each device has read under the threshold)
//! and its team's idle policy (`qm_core::idle`), and proposes what changed: `MarkIdle` when
//! every device of the job has read idle for the policy's time (an event on the job), `MarkIdle`
//! with no time when one is busy again, and `StopIdle` once a requeueing team's warning has run
//! out. A team without a policy gets `DEFAULT_POLICY`: reported after 30 minutes.
//!
//! A device without a reading, or whose reading has no utilization, is not idle: a job is
//! flagged only on evidence. Only the leader hears the readings; a new leader starts without
//! them, so it flags a job only after the job's devices have read idle for the whole time again.

use crate::node::Handle;
use crate::service::now_ms;
use crate::service::readings::{Quiet, Readings};
use qm_core::idle::{IdleAction, IdlePolicy};
use qm_core::{Command, Job, State};
use std::time::Duration;

/// A device reading under this utilization, percent, is idle (`qm server --idle-below-pct`).
pub const DEFAULT_BELOW_PCT: u32 = 5;

/// The policy of a team that has none: report after 30 minutes.
pub const DEFAULT_POLICY: IdlePolicy = IdlePolicy { after_ms: 30 * 60 * 1000, action: IdleAction::Report };

/// How often the leader looks.
const EVERY: Duration = Duration::from_secs(1);

/// Proposes the idle commands while this replica leads, until its node stops.
pub async fn run(node: Handle, readings: Readings) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = node.status();
        if status.fatal.is_some() {
            return;
        }
        if status.leader != status.id {
            continue;
        }
        // The state's lock first, then the readings', as every reader of both takes them.
        let commands = {
            let fsm = node.fsm();
            readings.quiet(|quiet| decide(&fsm.state, quiet, now_ms()))
        };
        for command in commands {
            if let Err(e) = node.propose(command, None).await {
                tracing::debug!("an idle flag was not applied: {e}");
            }
        }
    }
}

/// The commands that bring the running jobs' idle flags in line with `quiet` at `now_ms`.
pub fn decide(state: &State, quiet: &Quiet, now_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    for id in state.running().iter() {
        let Some(job) = state.job(id) else { continue };
        let policy = state.idle_policy(&job.spec.team).copied().unwrap_or(DEFAULT_POLICY);
        let attempt = job.attempt;
        match (idle_since(job, quiet), job.idle_since_ms) {
            (Some(since), None) if now_ms.saturating_sub(since) >= policy.after_ms => {
                out.push(Command::MarkIdle { job: id, attempt, since_ms: Some(since) });
            }
            (None, Some(_)) => out.push(Command::MarkIdle { job: id, attempt, since_ms: None }),
            (Some(_), Some(flagged)) if policy.stop_at(flagged).is_some_and(|at| now_ms >= at) => {
                out.push(Command::StopIdle { job: id, attempt });
            }
            _ => {}
        }
    }
    out
}

/// Since when every device `job` holds has read idle (not before the attempt started); `None`
/// when one has not.
fn idle_since(job: &Job, quiet: &Quiet) -> Option<u64> {
    let assignment = job.assignment.as_ref()?;
    let mut since = job.started_ms.unwrap_or(0);
    for replica in &assignment.replicas {
        let node = quiet.get(&replica.node)?;
        for device in replica.devices.iter() {
            since = since.max(*node.get(device.as_str())?);
        }
    }
    Some(since)
}

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
