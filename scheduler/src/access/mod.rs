//! Who may do what: bearer tokens with roles, kept as hashes in the replicated state, and the
//! layer that checks them on every call before a service sees it.
//!
//! Module map:
//! - `tokens`: token records, the commands that create and revoke them, secrets and hashes.
//! - `rules`: the table of every RPC and the roles it admits.
//! - `layer`: the tower layer in front of the services: it authenticates the caller, applies
//!   the table, and hands the services a `Caller`.
//! - `bootstrap`: the first admin token of a cluster, written to the leader's data directory.
//!
//! `core` knows nothing of this: the services narrow members to their teams and agents to their
//! node, with the helpers below.

pub mod bootstrap;
pub mod layer;
pub mod rules;
pub mod tokens;

use crate::audit::Asker;
use crate::node::Handle;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokens::Digest;
use tonic::Status;

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything.
    Admin,
    /// Jobs of these teams; cluster-wide views without other teams' commands and environments.
    Member {
        /// The teams.
        teams: BTreeSet<String>,
    },
    /// The agent session of one node.
    Agent {
        /// The node.
        node: String,
    },
}

impl Role {
    /// The role's name in messages.
    pub fn word(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member { .. } => "member",
            Role::Agent { .. } => "agent",
        }
    }
}

/// Who is calling: the token's name, role and hash. With `--insecure`, everyone is an admin
/// named `insecure`, without a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its hash: the changes it asks for carry it, and are refused if it is revoked by then.
    pub hash: Option<Digest>,
}

impl Caller {
    /// The caller of an insecure replica.
    pub fn insecure() -> Self {
        Self { name: "insecure".into(), role: Role::Admin, hash: None }
    }

    /// The caller as a change it asks for carries it (the time is now, on this replica).
    pub fn asker(&self) -> Asker {
        let (name, role, hash) = (self.name.clone(), self.role.word().to_owned(), self.hash);
        Asker { name, role, hash, at_ms: crate::service::now_ms() }
    }

    /// `Unauthenticated` when the caller's token is no longer in this replica's state: checked
    /// after a read barrier (so a read that starts after a revocation was acknowledged is
    /// refused on every replica) and on each event of a long stream.
    pub fn current(&self, node: &Handle) -> Result<(), Status> {
        match &self.hash {
            Some(h) if node.fsm().tokens.find(h).is_none() => Err(Status::unauthenticated("the token was revoked")),
            _ => Ok(()),
        }
    }

    /// The caller the access layer put on a request. A request that did not pass the layer
    /// has none and is refused: the services fail closed.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Arc<Caller>, Status> {
        request
            .extensions()
            .get::<Arc<Caller>>()
            .cloned()
            .ok_or_else(|| Status::internal("no caller: the access layer is missing"))
    }

    /// Whether the caller may see and change the jobs of `team`.
    pub fn owns(&self, team: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Member { teams } => teams.contains(team),
            Role::Agent { .. } => false,
        }
    }

    /// `PermissionDenied` unless the caller owns `team`; `what` names the operation.
    pub fn must_own(&self, team: &str, what: &str) -> Result<(), Status> {
        if self.owns(team) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{} token {:?} may not {what} of team {team:?}",
            self.role.word(),
            self.name
        )))
    }

    /// `PermissionDenied` unless the caller may act for `node`.
    pub fn must_be_node(&self, node: &str) -> Result<(), Status> {
        match &self.role {
            Role::Admin => Ok(()),
            Role::Agent { node: own } if own == node => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{} token {:?} may not report for node {node:?}",
                self.role.word(),
                self.name
            ))),
        }
    }
}
