//! The one error type of `core`: why a command was refused. A refused command changes nothing.

use crate::ids::{JobId, NodeId, TeamId};
use crate::job::JobState;
use thiserror::Error;

/// Input that breaks a rule, naming the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `jobs[3].gang.replicas`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// The same error under a parent field, e.g. `jobs[2]`.
    pub fn within(self, parent: &str) -> Self {
        Self { field: format!("{parent}.{}", self.field), reason: self.reason }
    }
}

impl From<FieldError> for ApplyError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e)
    }
}

/// Why `State::apply` refused a command.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// The command's content breaks a rule. (Not the error's source: the message already
    /// says all of it, and a chain of causes would print it twice.)
    #[error("invalid {0}")]
    Invalid(FieldError),
    /// The job names a team that does not exist.
    #[error("{field}: unknown team \"{team}\"")]
    UnknownTeam {
        /// The field that names it.
        field: String,
        /// The team.
        team: TeamId,
    },
    /// The job names a priority class that does not exist.
    #[error("{field}: unknown priority class {class:?}")]
    UnknownPriorityClass {
        /// The field that names it.
        field: String,
        /// The class.
        class: String,
    },
    /// The team has no quota for any flavor the job accepts.
    #[error(
        "{field}: team \"{team}\" has no quota for any flavor the job accepts ({request}); its quota covers {}; the cluster has {}",
        list_or_none(.team_flavors), list_or_none(.cluster_flavors)
    )]
    NoQuotaForRequest {
        /// The field that names the request.
        field: String,
        /// The team.
        team: TeamId,
        /// The request, as `kind/model|model`.
        request: String,
        /// The flavors the team has quota for, as `kind/model`.
        team_flavors: Vec<String>,
        /// The flavors of the cluster's devices, as `kind/model (N devices)`.
        cluster_flavors: Vec<String>,
    },
    /// No such job.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// No such node.
    #[error("unknown node \"{0}\"")]
    UnknownNode(NodeId),
    /// The job's state does not allow this.
    #[error("job {job} is {}: cannot {action}", .state.as_str())]
    WrongState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was asked.
        action: &'static str,
    },
    /// A submission's request id names an earlier submission of other jobs (the replicated
    /// server's table of request ids answers a retry with the first answer only when the retry
    /// carries the same jobs).
    #[error(
        "request_id: {request_id:?} was used for a different submission (it created job(s) {}); \
         retry with the same jobs, or use a new request id",
        list_ids(jobs)
    )]
    RequestIdReused {
        /// The request id.
        request_id: String,
        /// The jobs the first submission created.
        jobs: Vec<JobId>,
    },
    /// An agent's report about an attempt that is no longer the job's current one.
    #[error("job {job}: the report is about attempt {attempt}, the job is on attempt {current}")]
    StaleAttempt {
        /// The job.
        job: JobId,
        /// The attempt reported.
        attempt: u32,
        /// The job's current attempt.
        current: u32,
    },
}

fn list_ids(ids: &[JobId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
