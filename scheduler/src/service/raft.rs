//! `RaftService`: peers' message batches, decoded and handed to the node's inbox. A message too
//! large for one batch (a snapshot of a large state) comes in pieces (`RaftChunk`), kept per
//! sender until whole; a sender whose stream broke asks how much is held (`Received`) and goes
//! on from there.
//!
//! Over mutual TLS the access layer hands each call the replica its certificate names (a
//! [`Peer`]): a batch or a message that claims another sender is refused.

use crate::access::layer::Peer;
use crate::node::{Inbox, Input};
use protobuf::Message as PbMessage;
use qm_proto::v1::raft_service_server::RaftService;
use qm_proto::v1::{ChunkProgress, ChunkQuery, RaftAck, RaftBatch, RaftChunk};
use raft::eraftpb::Message;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tonic::{Request, Response, Status, Streaming};

/// The largest message accepted in pieces: a state this large could not be held in memory by
/// a replica of ours anyway.
pub const MAX_CHUNKED_BYTES: u64 = 16 << 30;

/// Receives Raft traffic for one replica.
#[derive(Debug)]
pub struct RaftServer {
    id: u64,
    cluster_id: u64,
    inbox: Mutex<Inbox>,
    /// Per sender, the message it is sending in pieces.
    partial: Mutex<BTreeMap<u64, Partial>>,
}

/// The pieces of one message received so far.
#[derive(Debug)]
struct Partial {
    crc: u32,
    total: u64,
    data: Vec<u8>,
}

impl RaftServer {
    /// The service of replica `id` of cluster `cluster_id`.
    pub fn new(id: u64, cluster_id: u64, inbox: Inbox) -> Self {
        Self { id, cluster_id, inbox: Mutex::new(inbox), partial: Mutex::new(BTreeMap::new()) }
    }

    fn check(&self, cluster_id: u64, to: u64, from: u64, peer: Option<Peer>) -> Result<(), Status> {
        if peer.is_some_and(|Peer(id)| id != from) {
            return Err(Status::permission_denied(format!(
                "from: replica {} may not send as replica {from}",
                peer.map_or(0, |p| p.0)
            )));
        }
        if cluster_id != self.cluster_id {
            return Err(Status::permission_denied(format!(
                "cluster_id: batch of cluster {cluster_id} sent to cluster {}",
                self.cluster_id
            )));
        }
        if to != self.id {
            return Err(Status::invalid_argument(format!("to: batch for replica {to} sent to replica {}", self.id)));
        }
        Ok(())
    }

    /// Adds a piece of `from`'s message; the message once it is whole.
    pub(crate) fn piece(&self, from: u64, chunk: RaftChunk) -> Result<Option<Message>, Status> {
        if chunk.total > MAX_CHUNKED_BYTES {
            return Err(Status::invalid_argument(format!(
                "chunk.total: {} bytes is over the limit of {MAX_CHUNKED_BYTES}",
                chunk.total
            )));
        }
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let held =
            partial.get(&from).filter(|p| p.crc == chunk.crc && p.total == chunk.total).map_or(0, |p| p.data.len());
        if chunk.offset != 0 && chunk.offset != held as u64 {
            return Err(Status::failed_precondition(format!(
                "chunk.offset: {} does not follow the {held} bytes held of this message",
                chunk.offset
            )));
        }
        if chunk.offset == 0 {
            partial.insert(from, Partial { crc: chunk.crc, total: chunk.total, data: Vec::new() });
        }
        let entry = partial.get_mut(&from).expect("a piece past the start follows the bytes held");
        if entry.data.len() as u64 + chunk.data.len() as u64 > entry.total {
            partial.remove(&from);
            return Err(Status::invalid_argument("chunk.data: runs past the message's total length"));
        }
        entry.data.extend_from_slice(&chunk.data);
        if (entry.data.len() as u64) < entry.total {
            return Ok(None);
        }
        let whole = partial.remove(&from).expect("just filled");
        if crc32fast::hash(&whole.data) != whole.crc {
            return Err(Status::data_loss("chunk.crc: the reassembled message does not match its CRC-32"));
        }
        Message::parse_from_bytes(&whole.data)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("chunk: not a raft message: {e}")))
    }
}

/// A message of a batch is from the batch's sender.
fn same_sender(m: Message, from: u64) -> Result<Message, Status> {
    if m.from != from {
        return Err(Status::invalid_argument(format!("messages: a message from {} in a batch from {from}", m.from)));
    }
    Ok(m)
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn stream(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let peer = request.extensions().get::<Peer>().copied();
        let mut stream = request.into_inner();
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let deliver =
            |m: Message| inbox.send(Input::Raft(Box::new(m))).map_err(|_| Status::unavailable("replica stopped"));
        let mut batches = 0;
        while let Some(batch) = stream.message().await? {
            self.check(batch.cluster_id, batch.to, batch.from, peer)?;
            for (i, bytes) in batch.messages.iter().enumerate() {
                let m = Message::parse_from_bytes(bytes)
                    .map_err(|e| Status::invalid_argument(format!("messages[{i}]: not a raft message: {e}")))?;
                deliver(same_sender(m, batch.from)?)?;
            }
            if let Some(chunk) = batch.chunk {
                if let Some(m) = self.piece(batch.from, chunk)? {
                    deliver(same_sender(m, batch.from)?)?;
                }
            }
            batches += 1;
        }
        Ok(Response::new(RaftAck { batches }))
    }

    async fn received(&self, request: Request<ChunkQuery>) -> Result<Response<ChunkProgress>, Status> {
        let peer = request.extensions().get::<Peer>().copied();
        let q = request.into_inner();
        self.check(q.cluster_id, q.to, q.from, peer)?;
        let partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let held = partial.get(&q.from).filter(|p| p.crc == q.crc && p.total == q.total);
        Ok(Response::new(ChunkProgress { received: held.map_or(0, |p| p.data.len() as u64) }))
    }
}
