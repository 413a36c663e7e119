//! Idle accelerators: a team's policy for running jobs whose devices read under the cluster's
//! utilization threshold for a set time, and the commands the leader proposes about them. The
//! leader watches the devices' readings (they never enter the state); the state keeps each
//! team's policy and, on each flagged job, since when its devices are idle.

use crate::command::Outcome;
use crate::error::{ApplyError, FieldError};
use crate::ids::{JobId, TeamId};
use crate::job::{JobState, StopReason};
use crate::state::State;
use serde::{Deserialize, Serialize};

/// Idle for less than this is never flagged: readings come about once a second. (Times of
/// minutes are what a cluster wants; seconds serve a demonstration or a test.)
pub const MIN_AFTER_MS: u64 = 1_000;

/// What a team's idle jobs get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdleAction {
    /// Flagged (an event on the job, `qm jobs --idle`, a metric), nothing more.
    Report,
    /// Flagged, then stopped and requeued `warn_ms` later unless its devices got busy again.
    Requeue {
        /// The warning's length.
        warn_ms: u64,
    },
}

/// A team's idle policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdlePolicy {
    /// How long every device of a running job must read under the threshold before it is
    /// flagged.
    pub after_ms: u64,
    /// What then.
    pub action: IdleAction,
}

impl IdlePolicy {
    /// Refuses a policy that would flag jobs on a reading or two.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.after_ms < MIN_AFTER_MS {
            return Err(FieldError::new("after", format!("at least {} s", MIN_AFTER_MS / 1000)));
        }
        Ok(())
    }

    /// When a job idle since `since_ms` is stopped, under this policy.
    pub fn stop_at(&self, since_ms: u64) -> Option<u64> {
        match self.action {
            IdleAction::Report => None,
            IdleAction::Requeue { warn_ms } => Some(since_ms + self.after_ms + warn_ms),
        }
    }
}

impl State {
    /// The idle policy of `team`, if it has one.
    pub fn idle_policy(&self, team: &TeamId) -> Option<&IdlePolicy> {
        self.data.idle.get(team)
    }

    pub(crate) fn set_idle_policy(&mut self, team: TeamId, policy: Option<IdlePolicy>) -> Result<(), ApplyError> {
        if !self.data.teams.contains_key(&team) {
            return Err(ApplyError::UnknownTeam { field: "team".into(), team });
        }
        match policy {
            Some(p) => {
                p.validate().map_err(|e| ApplyError::Invalid(e.within("idle")))?;
                self.data.idle.insert(team, p);
            }
            None => {
                self.data.idle.remove(&team);
            }
        }
        Ok(())
    }

    /// Flags the running job `id` idle since `since_ms`, or clears the flag (`None`).
    pub(crate) fn mark_idle(&mut self, id: JobId, since_ms: Option<u64>, out: &mut Outcome) -> Result<(), ApplyError> {
        let job = self.data.jobs.get_mut(&id).ok_or(ApplyError::UnknownJob(id))?;
        if job.state != JobState::Running {
            return Err(ApplyError::WrongState { job: id, state: job.state, action: "flag idle" });
        }
        if job.idle_since_ms == since_ms {
            return Ok(());
        }
        job.idle_since_ms = since_ms;
        job.message = match since_ms {
            Some(_) => "idle: every device it holds has read under the idle threshold for its team's idle time".into(),
            None => "running: its devices are busy again".into(),
        };
        out.changed.push((id, JobState::Running));
        Ok(())
    }

    /// Stops the flagged job `id` and requeues it once it exits, under its team's policy.
    pub(crate) fn stop_idle(&mut self, id: JobId, out: &mut Outcome) -> Result<(), ApplyError> {
        let job = self.data.jobs.get(&id).ok_or(ApplyError::UnknownJob(id))?;
        if job.state != JobState::Running || job.idle_since_ms.is_none() {
            return Err(ApplyError::WrongState { job: id, state: job.state, action: "stop as idle" });
        }
        let requeues = self.data.idle.get(&job.spec.team).is_some_and(|p| p.action != IdleAction::Report);
        if !requeues {
            return Err(ApplyError::Invalid(FieldError::new(
                "job",
                format!("job {id}'s team does not stop idle jobs (its idle policy reports only, or it has none)"),
            )));
        }
        self.order_stop(id, StopReason::Idle, JobState::Stopping, out);
        Ok(())
    }
}

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
