//! Admission limits an operator sets per replica (`qm server --max-...`), checked by the API
//! layer before a change is proposed. They may only lower the core's fixed ceilings
//! (`qm_core::limits`), which every replica enforces again when it applies a change; a limit
//! on counts (pending jobs of a team, teams, nodes) is checked against this replica's state,
//! so concurrent requests may pass it by what is in flight. Give every replica the same values.

use crate::fsm::Fsm;
use qm_core::limits::{MAX_BATCH, MAX_COMMAND_BYTES, MAX_ENV_BYTES, MAX_REPLICAS};
use qm_core::{JobSpec, NodeSpec, TeamSpec};
use tonic::Status;

/// The limits, each at most its ceiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Jobs in one submission.
    pub max_batch: usize,
    /// Replicas of one job.
    pub max_replicas: u32,
    /// Bytes of one job's command and arguments.
    pub max_command_bytes: usize,
    /// Bytes of one job's environment.
    pub max_env_bytes: usize,
    /// Pending jobs of one team.
    pub max_pending_per_team: usize,
    /// Teams.
    pub max_teams: usize,
    /// Nodes.
    pub max_nodes: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_batch: MAX_BATCH,
            max_replicas: MAX_REPLICAS,
            max_command_bytes: MAX_COMMAND_BYTES,
            max_env_bytes: MAX_ENV_BYTES,
            max_pending_per_team: 1_000_000,
            max_teams: 10_000,
            max_nodes: 100_000,
        }
    }
}

/// Why a configuration of limits is refused: the flag and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct BadLimit {
    /// The flag.
    pub flag: &'static str,
    /// Why.
    pub reason: String,
}

impl Admission {
    /// Checks each limit against its ceiling, naming the flag of one that is out of range.
    pub fn check(&self) -> Result<(), BadLimit> {
        let ceilings = [
            ("--max-batch", self.max_batch, MAX_BATCH),
            ("--max-replicas", self.max_replicas as usize, MAX_REPLICAS as usize),
            ("--max-command-bytes", self.max_command_bytes, MAX_COMMAND_BYTES),
            ("--max-env-bytes", self.max_env_bytes, MAX_ENV_BYTES),
            ("--max-pending-per-team", self.max_pending_per_team, usize::MAX),
            ("--max-teams", self.max_teams, usize::MAX),
            ("--max-nodes", self.max_nodes, usize::MAX),
        ];
        for (flag, value, ceiling) in ceilings {
            if value == 0 && ceiling == usize::MAX {
                return Err(BadLimit { flag, reason: "must be at least 1, got 0".into() });
            }
            if value == 0 || value > ceiling {
                return Err(BadLimit { flag, reason: format!("must be 1..={ceiling}, got {value}") });
            }
        }
        Ok(())
    }

    /// Whether a submission of `jobs` may be proposed now.
    pub fn submit(&self, fsm: &Fsm, jobs: &[JobSpec]) -> Result<(), Status> {
        if jobs.len() > self.max_batch {
            return Err(too_many("jobs", jobs.len(), self.max_batch, "jobs in one submission", "--max-batch"));
        }
        let mut added: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            let field = |f: &str| format!("jobs[{i}].{f}");
            if j.gang.replicas > self.max_replicas {
                let (n, max) = (j.gang.replicas as usize, self.max_replicas as usize);
                return Err(too_many(&field("gang.replicas"), n, max, "replicas", "--max-replicas"));
            }
            let command = j.command_bytes();
            if command > self.max_command_bytes {
                return Err(too_many(
                    &field("command"),
                    command,
                    self.max_command_bytes,
                    "bytes",
                    "--max-command-bytes",
                ));
            }
            let env = j.env_bytes();
            if env > self.max_env_bytes {
                return Err(too_many(&field("env"), env, self.max_env_bytes, "bytes", "--max-env-bytes"));
            }
            *added.entry(&j.team.0).or_default() += 1;
        }
        for (team, n) in added {
            let pending = fsm.state.queues().get(&qm_core::TeamId::from(team)).map_or(0, |q| q.len());
            if pending + n > self.max_pending_per_team {
                return Err(Status::resource_exhausted(format!(
                    "jobs: team {team:?} has {pending} pending job(s); {n} more would pass the {} this cluster admits (--max-pending-per-team)",
                    self.max_pending_per_team
                )));
            }
        }
        Ok(())
    }

    /// Whether `team` may be set now (a new team must leave room under `max_teams`).
    pub fn team(&self, fsm: &Fsm, team: &TeamSpec) -> Result<(), Status> {
        let teams = fsm.state.teams();
        room(teams.contains_key(&team.name), teams.len(), self.max_teams, "team.name", "teams", "--max-teams")
    }

    /// Whether `node` may register now (a new node must leave room under `max_nodes`).
    pub fn node(&self, fsm: &Fsm, node: &NodeSpec) -> Result<(), Status> {
        let nodes = fsm.state.nodes();
        let known = nodes.contains_key(&node.id);
        room(known, nodes.len(), self.max_nodes, "register.inventory.name", "nodes", "--max-nodes")
    }
}

/// `ResourceExhausted` when a new entry (not `known`) would pass `max` of `what` held now.
fn room(known: bool, held: usize, max: usize, field: &str, what: &str, flag: &str) -> Result<(), Status> {
    if known || held < max {
        return Ok(());
    }
    Err(Status::resource_exhausted(format!("{field}: the cluster has {held} {what}, the most it admits ({flag})")))
}

/// `InvalidArgument`: `field` holds `n` of `what`, more than `max` (`flag`).
fn too_many(field: &str, n: usize, max: usize, what: &str, flag: &str) -> Status {
    Status::invalid_argument(format!("{field}: {n} {what}, more than the {max} this cluster admits ({flag})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_zero_or_above_its_ceiling_is_refused_naming_the_flag() {
        assert!(Admission::default().check().is_ok());
        let zero = Admission { max_teams: 0, ..Admission::default() }.check().unwrap_err();
        assert_eq!(zero.to_string(), "--max-teams: must be at least 1, got 0");
        let high = Admission { max_batch: MAX_BATCH + 1, ..Admission::default() }.check().unwrap_err();
        assert_eq!(high.to_string(), "--max-batch: must be 1..=10000, got 10001");
    }
}
