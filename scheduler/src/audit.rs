//! The audit trail: one record per change a caller asked for (who, with which role, what, when,
//! and whether the state took it), kept in the replicated state, so that every replica holds
//! the same trail and a backup carries it. Bounded: the oldest records go first.

use crate::access::tokens::{AccessCommand, Digest};
use crate::codec::Op;
use qm_core::Command;
use serde::{Deserialize, Serialize};

/// Records kept at most.
pub const CAPACITY: usize = 50_000;

/// Who asked for a change, as the change carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asker {
    /// The token's name (`insecure` on an insecure replica).
    pub name: String,
    /// Its role's word.
    pub role: String,
    /// Its hash: the change is refused if the token was revoked before it applies. None on an
    /// insecure replica.
    pub hash: Option<Digest>,
    /// When the replica that took the call received it, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One change in the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The log index that carried it.
    pub index: u64,
    /// When it was asked for, ms since the Unix epoch.
    pub at_ms: u64,
    /// The token's name.
    pub name: String,
    /// Its role's word.
    pub role: String,
    /// What was asked, in words (`cancel job 7`).
    pub what: String,
    /// Why the state refused it; none when it was applied.
    pub error: Option<String>,
}

/// The trail, oldest first. Kept in a persistent vector, so that a snapshot's copy costs O(1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    records: imbl::Vector<AuditRecord>,
}

impl Audit {
    /// Appends a record, forgetting the oldest beyond `CAPACITY`.
    pub fn push(&mut self, record: AuditRecord) {
        self.records.push_back(record);
        while self.records.len() > CAPACITY {
            self.records.pop_front();
        }
    }

    /// The records, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &AuditRecord> {
        self.records.iter()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the trail is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A change in words.
pub fn describe(op: &Op) -> String {
    match op {
        Op::Core(c) => describe_command(c),
        Op::Access(AccessCommand::Create(t)) => {
            let scope = match &t.role {
                crate::access::Role::Admin => String::new(),
                crate::access::Role::Member { teams } => {
                    format!(" of {}", teams.iter().cloned().collect::<Vec<_>>().join(","))
                }
                crate::access::Role::Agent { node } => format!(" of node {node}"),
            };
            format!("create token {} ({}{scope})", t.name, t.role.word())
        }
        Op::Access(AccessCommand::Revoke { name }) => format!("revoke token {name}"),
        Op::Access(AccessCommand::Bootstrap { .. }) => "bootstrap the cluster's admin token".into(),
    }
}

fn describe_command(c: &Command) -> String {
    match c {
        Command::Submit { jobs, .. } => {
            let mut teams: Vec<&str> = jobs.iter().map(|j| &*j.team.0).collect();
            teams.sort_unstable();
            teams.dedup();
            format!("submit {} job(s) of team {}", jobs.len(), teams.join(","))
        }
        Command::Cancel { job, .. } => format!("cancel job {}", job.0),
        Command::SetTeam { team } => format!("set team {}", team.name.0),
        Command::SetPriorityClass { class } => format!("set priority class {} = {}", class.name, class.value),
        Command::DeletePriorityClass { name } => format!("delete priority class {name}"),
        Command::Cordon { node, cordoned: true } => format!("cordon node {}", node.0),
        Command::Cordon { node, cordoned: false } => format!("uncordon node {}", node.0),
        Command::Drain { node } => format!("drain node {}", node.0),
        Command::RegisterNode { node, .. } => format!("register node {} ({} devices)", node.id.0, node.devices.len()),
        other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("change").to_lowercase(),
    }
}

/// A membership change in words.
pub fn describe_change(removed: bool, id: u64, address: &str) -> String {
    if removed {
        format!("remove replica {id}")
    } else {
        format!("add replica {id} at {address}")
    }
}
