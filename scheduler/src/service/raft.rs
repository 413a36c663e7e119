//! `RaftService`: peers' message batches, decoded and handed to the node's inbox.

use crate::node::{Inbox, Input};
use protobuf::Message as PbMessage;
use qm_proto::v1::raft_service_server::RaftService;
use qm_proto::v1::{RaftAck, RaftBatch};
use raft::eraftpb::Message;
use std::sync::Mutex;
use tonic::{Request, Response, Status, Streaming};

/// Receives Raft traffic for one replica.
#[derive(Debug)]
pub struct RaftServer {
    id: u64,
    cluster_id: u64,
    inbox: Mutex<Inbox>,
}

impl RaftServer {
    /// The service of replica `id` of cluster `cluster_id`.
    pub fn new(id: u64, cluster_id: u64, inbox: Inbox) -> Self {
        Self { id, cluster_id, inbox: Mutex::new(inbox) }
    }

    fn check(&self, batch: &RaftBatch) -> Result<(), Status> {
        if batch.cluster_id != self.cluster_id {
            return Err(Status::permission_denied(format!(
                "cluster_id: batch of cluster {} sent to cluster {}",
                batch.cluster_id, self.cluster_id
            )));
        }
        if batch.to != self.id {
            return Err(Status::invalid_argument(format!(
                "to: batch for replica {} sent to replica {}",
                batch.to, self.id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn stream(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut batches = 0;
        while let Some(batch) = stream.message().await? {
            self.check(&batch)?;
            for (i, bytes) in batch.messages.iter().enumerate() {
                let m = Message::parse_from_bytes(bytes)
                    .map_err(|e| Status::invalid_argument(format!("messages[{i}]: not a raft message: {e}")))?;
                inbox.send(Input::Raft(Box::new(m))).map_err(|_| Status::unavailable("replica stopped"))?;
            }
            batches += 1;
        }
        Ok(Response::new(RaftAck { batches }))
    }
}
