//! `AdminService/ListAudit`: the newest records of the audit trail that match a request.

use super::before_read;
use crate::access::Caller;
use crate::audit::AuditRecord;
use crate::node::Handle;
use qm_proto::v1::{self, ListAuditRequest, ListAuditResponse};
use tonic::Status;

/// Records answered at most.
pub const MAX_LIMIT: u32 = 10_000;

/// Records answered when the request does not say.
const DEFAULT_LIMIT: u32 = 100;

/// The newest records matching `req`, oldest first (a linearizable read).
pub async fn list(node: &Handle, caller: &Caller, req: ListAuditRequest) -> Result<ListAuditResponse, Status> {
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => return Err(Status::invalid_argument(format!("limit: at most {MAX_LIMIT}, got {n}"))),
        n => n,
    };
    if req.until_ms != 0 && req.until_ms < req.since_ms {
        return Err(Status::invalid_argument("until_ms: before since_ms"));
    }
    before_read(node, 0, caller).await?;
    let fsm = node.fsm();
    let matches = |r: &&AuditRecord| {
        (req.token.is_empty() || r.name == req.token)
            && r.at_ms >= req.since_ms
            && (req.until_ms == 0 || r.at_ms < req.until_ms)
            && (!req.refused_only || r.error.is_some())
    };
    let newest: Vec<v1::AuditRecord> =
        fsm.audit.records().rev().filter(matches).take(limit as usize).map(wire).collect();
    let (mut records, _) = super::page(newest.into_iter(), limit as usize);
    records.reverse();
    Ok(ListAuditResponse { records, kept: fsm.audit.len() as u32 })
}

fn wire(r: &AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        index: r.index,
        at_ms: r.at_ms,
        token: r.name.clone(),
        role: r.role.clone(),
        what: r.what.clone(),
        error: r.error.clone(),
    }
}
