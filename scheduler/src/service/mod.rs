//! The gRPC services of a replica: `JobService` and `AdminService` (any replica serves them:
//! writes are proposed through Raft, which forwards them to the leader; reads are linearizable
//! unless the request asks for a stale one), `AgentService` for node agents (leader only), and
//! `RaftService` for peers; `admission` holds the limits an operator sets on what the API
//! admits; `tokens` and `audit` hold the token and audit-trail RPCs of the
//! admin service. `readings` holds the devices' latest telemetry that the agent
//! service hears and the admin service shows.

pub mod admin;
pub mod admission;
pub mod agent;
pub mod audit;
pub mod jobs;
pub mod raft;
pub mod readings;
pub mod sessions;
pub mod tokens;

use crate::access::tokens::AccessError;
use crate::access::Caller;
use crate::node::{Handle, NodeError};
use qm_core::ApplyError;
use qm_proto::v1::ReadConsistency;
use tonic::Status;

/// The wall clock in milliseconds: the time that travels inside commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Bytes of items in one page of a list reply at most: under the 4 MiB that gRPC clients
/// decode by default, whatever the items hold (a job's command and environment may hold
/// 128 KiB, a node 64 labels).
pub const MAX_PAGE_BYTES: usize = 3 << 20;

/// Takes `items` into a page, at most `max` of them and `MAX_PAGE_BYTES` of their encoding
/// (always at least one); true when items are left.
pub fn page<T: prost::Message>(items: impl Iterator<Item = T>, max: usize) -> (Vec<T>, bool) {
    let mut items = items.peekable();
    let (mut page, mut bytes) = (Vec::new(), 0);
    while let Some(item) = items.peek() {
        let size = item.encoded_len() + 8;
        if page.len() == max || (!page.is_empty() && bytes + size > MAX_PAGE_BYTES) {
            break;
        }
        bytes += size;
        page.extend(items.next());
    }
    let more = items.peek().is_some();
    (page, more)
}

/// A node error as a gRPC status.
pub fn status_of(e: NodeError) -> Status {
    match e {
        NodeError::Unavailable(m) => Status::unavailable(m),
        NodeError::Stopped(m) => Status::unavailable(format!("replica stopped: {m}")),
        NodeError::Rejected(e) => match e {
            ApplyError::Invalid(_)
            | ApplyError::UnknownTeam { .. }
            | ApplyError::UnknownPriorityClass { .. }
            | ApplyError::NoQuotaForRequest { .. } => Status::invalid_argument(e.to_string()),
            ApplyError::UnknownJob(_) | ApplyError::UnknownNode(_) => Status::not_found(e.to_string()),
            ApplyError::RequestIdReused { .. } => Status::already_exists(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        },
        NodeError::Access(e) => match e {
            AccessError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            AccessError::NameTaken(_) => Status::already_exists(e.to_string()),
            AccessError::Unknown(_) => Status::not_found(e.to_string()),
            AccessError::Bootstrapped => Status::failed_precondition(e.to_string()),
            AccessError::Revoked => Status::unauthenticated(e.to_string()),
        },
    }
}

/// Waits for a read barrier unless the request asked for a stale read; then checks that the
/// caller's token was not revoked meanwhile.
pub async fn before_read(node: &Handle, consistency: i32, caller: &Caller) -> Result<(), Status> {
    match ReadConsistency::try_from(consistency) {
        Ok(ReadConsistency::Stale) => Ok(()),
        Ok(_) => node.read_barrier().await.map_err(status_of),
        Err(_) => Err(Status::invalid_argument(format!("consistency: unknown value {consistency}"))),
    }?;
    caller.current(node)
}
