//! The token RPCs of `AdminService`: create (the secret is in the reply only), list, revoke,
//! and who the caller is.

use super::{before_read, now_ms, status_of};
use crate::access::tokens::{check_name, digest, new_secret, AccessCommand, AccessError, TokenRecord};
use crate::access::{Caller, Role};
use crate::codec::Op;
use crate::node::Handle;
use qm_proto::v1::{self, CreateTokenRequest, CreateTokenResponse, ListTokensResponse, TokenInfo};
use tonic::Status;

/// A token as listed.
pub fn info(r: &TokenRecord) -> TokenInfo {
    let (role, teams, node) = match &r.role {
        Role::Admin => (v1::Role::Admin, vec![], String::new()),
        Role::Member { teams } => (v1::Role::Member, teams.iter().cloned().collect(), String::new()),
        Role::Agent { node } => (v1::Role::Agent, vec![], node.clone()),
    };
    TokenInfo {
        name: r.name.clone(),
        role: role as i32,
        teams,
        node,
        created_ms: r.created_ms,
        created_by: r.created_by.clone(),
    }
}

fn invalid(e: AccessError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The role a request asks for, its scope checked.
fn role_of(req: &CreateTokenRequest) -> Result<Role, Status> {
    let bad = |field: &'static str, reason: &str| invalid(AccessError::Invalid { field, reason: reason.into() });
    let role = v1::Role::try_from(req.role).map_err(|_| bad("role", &format!("unknown value {}", req.role)))?;
    let (teams, node) = (!req.teams.is_empty(), !req.node.is_empty());
    match role {
        v1::Role::Unspecified => Err(bad("role", "required (admin, member or agent)")),
        v1::Role::Admin | v1::Role::Agent if teams => Err(bad("teams", "only member tokens have teams")),
        v1::Role::Admin | v1::Role::Member if node => Err(bad("node", "only agent tokens have a node")),
        v1::Role::Admin => Ok(Role::Admin),
        v1::Role::Member => Ok(Role::Member { teams: req.teams.iter().cloned().collect() }),
        v1::Role::Agent => Ok(Role::Agent { node: req.node.clone() }),
    }
}

/// Creates a token for `caller`.
pub async fn create(node: &Handle, caller: &Caller, req: CreateTokenRequest) -> Result<CreateTokenResponse, Status> {
    check_name(&req.name).map_err(invalid)?;
    let role = role_of(&req)?;
    let secret = new_secret().map_err(|e| Status::unavailable(format!("the system's random generator: {e}")))?;
    let record = TokenRecord {
        name: req.name,
        role,
        hash: digest(&secret),
        created_ms: now_ms(),
        created_by: caller.name.clone(),
    };
    let token = info(&record);
    node.propose_as(Some(caller.asker()), Op::Access(AccessCommand::Create(record)), None).await.map_err(status_of)?;
    tracing::info!(token = %token.name, by = %caller.name, "created a token");
    Ok(CreateTokenResponse { token: Some(token), secret })
}

/// Every token (a linearizable read).
pub async fn list(node: &Handle, caller: &Caller) -> Result<ListTokensResponse, Status> {
    before_read(node, 0, caller).await?;
    Ok(ListTokensResponse { tokens: node.fsm().tokens.list().map(info).collect() })
}

/// Revokes a token.
pub async fn revoke(node: &Handle, caller: &Caller, name: String) -> Result<(), Status> {
    check_name(&name).map_err(invalid)?;
    let revoke = Op::Access(AccessCommand::Revoke { name: name.clone() });
    node.propose_as(Some(caller.asker()), revoke, None).await.map_err(status_of)?;
    tracing::info!(token = %name, by = %caller.name, "revoked a token");
    Ok(())
}

/// The caller's token (a role-only record for an insecure replica's callers).
pub fn who(node: &Handle, caller: &Caller) -> TokenInfo {
    node.fsm().tokens.list().find(|r| r.name == caller.name).map(info).unwrap_or_else(|| {
        info(&TokenRecord {
            name: caller.name.clone(),
            role: caller.role.clone(),
            hash: [0; 32],
            created_ms: 0,
            created_by: String::new(),
        })
    })
}
