//! Raft messages over `RaftService.Stream`: one long-lived stream per peer, fed by a task that
//! batches whatever messages are queued. A peer that cannot be reached is reported to the node
//! (`report_unreachable`) and retried with exponential backoff; messages queued meanwhile are
//! dropped, and Raft sends them again.
//!
//! A batch holds at most `CHUNK_BYTES` of messages; a larger message (a snapshot of a large
//! state) goes in pieces of that size, in order on the same stream, so that no batch nears the
//! receiver's decode limit whatever the size of the state. Before the first piece the sender
//! asks the receiver how much of that message it holds (`Received`): a transfer whose stream
//! broke goes on where it stopped.
//!
//! Peers are dialled with the replica's `Dialer`: over TLS, the replica presents its own
//! certificate (which names its id) and checks the peer's against the cluster's CA.

use super::Transport;
use crate::node::{Inbox, Input};
use protobuf::Message as PbMessage;
use qm_proto::tls::Dialer;
use qm_proto::v1::raft_service_client::RaftServiceClient;
use qm_proto::v1::{ChunkQuery, RaftBatch, RaftChunk};
use raft::eraftpb::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Messages sent in one batch at most.
const MAX_BATCH: usize = 512;
/// Bytes of messages in one batch at most, and the size of the pieces of a larger message.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Batches queued for the stream at most (up to this many pieces of a large message).
const QUEUED_BATCHES: usize = 16;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Peer {
    address: String,
    queue: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

/// The gRPC transport of one replica.
#[derive(Debug)]
pub struct GrpcTransport {
    id: u64,
    cluster_id: u64,
    inbox: Inbox,
    runtime: tokio::runtime::Handle,
    dialer: Dialer,
    peers: BTreeMap<u64, Peer>,
}

impl GrpcTransport {
    /// A transport for replica `id` of cluster `cluster_id`, whose tasks run on `runtime` and
    /// dial peers with `dialer`.
    pub fn new(id: u64, cluster_id: u64, inbox: Inbox, runtime: tokio::runtime::Handle, dialer: Dialer) -> Self {
        Self { id, cluster_id, inbox, runtime, dialer, peers: BTreeMap::new() }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(peer) => {
                    let _ = peer.queue.send(m);
                }
                None => tracing::debug!(to = m.to, "no address for a raft peer; message dropped"),
            }
        }
    }

    fn set_peer(&mut self, id: u64, address: &str) {
        if self.peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        self.remove_peer(id);
        let (queue, rx) = mpsc::unbounded_channel();
        let link = Link {
            from: self.id,
            to: id,
            cluster_id: self.cluster_id,
            address: address.to_owned(),
            dialer: self.dialer.clone(),
        };
        let task = self.runtime.spawn(link.run(rx, self.inbox.clone()));
        self.peers.insert(id, Peer { address: address.to_owned(), queue, task });
    }

    fn remove_peer(&mut self, id: u64) {
        if let Some(peer) = self.peers.remove(&id) {
            peer.task.abort();
        }
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        for peer in self.peers.values() {
            peer.task.abort();
        }
    }
}

struct Link {
    from: u64,
    to: u64,
    cluster_id: u64,
    address: String,
    dialer: Dialer,
}

impl Link {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Message>, inbox: Inbox) {
        let mut backoff = MIN_BACKOFF;
        let mut last: Option<String> = None;
        loop {
            match self.connect().await {
                Ok(client) => {
                    (backoff, last) = (MIN_BACKOFF, None);
                    if self.forward(client, &mut rx).await.is_none() {
                        return;
                    }
                }
                Err(e) if last.as_ref() == Some(&e) => {
                    tracing::debug!(peer = self.to, address = %self.address, "cannot reach a raft peer: {e}")
                }
                Err(e) => {
                    tracing::warn!(peer = self.to, address = %self.address, "cannot reach a raft peer: {e}");
                    last = Some(e);
                }
            }
            if inbox.send(Input::Unreachable(self.to)).is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            while rx.try_recv().is_ok() {}
        }
    }

    async fn connect(&self) -> Result<RaftServiceClient<Channel>, String> {
        let endpoint = self.dialer.endpoint(&self.address).map_err(|e| e.to_string())?;
        let endpoint = endpoint.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| qm_proto::tls::causes(&e))?;
        Ok(RaftServiceClient::new(channel))
    }

    /// Streams batches until the stream breaks (`Some`) or the transport is gone (`None`).
    async fn forward(
        &self,
        client: RaftServiceClient<Channel>,
        rx: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Option<()> {
        let (tx, stream) = mpsc::channel::<RaftBatch>(QUEUED_BATCHES);
        let mut streaming = client.clone();
        let call = tokio::spawn(async move { streaming.stream(ReceiverStream::new(stream)).await });
        let mut next: Option<Vec<u8>> = None;
        loop {
            let first = match next.take() {
                Some(bytes) => bytes,
                None => encode(&rx.recv().await?),
            };
            let sent = if first.len() > CHUNK_BYTES {
                self.send_in_pieces(client.clone(), &tx, first).await
            } else {
                let mut size = first.len();
                let mut messages = vec![first];
                while let Some(m) = (messages.len() < MAX_BATCH).then(|| rx.try_recv().ok()).flatten() {
                    let bytes = encode(&m);
                    if size + bytes.len() > CHUNK_BYTES {
                        next = Some(bytes);
                        break;
                    }
                    size += bytes.len();
                    messages.push(bytes);
                }
                tx.send(self.batch(messages, None)).await.is_ok()
            };
            if !sent || call.is_finished() {
                call.abort();
                return Some(());
            }
        }
    }

    /// Sends one large encoded message in pieces, from where the receiver's copy stops; false
    /// when the stream broke.
    async fn send_in_pieces(
        &self,
        mut client: RaftServiceClient<Channel>,
        tx: &mpsc::Sender<RaftBatch>,
        bytes: Vec<u8>,
    ) -> bool {
        let (crc, total) = (crc32fast::hash(&bytes), bytes.len() as u64);
        let query = ChunkQuery { cluster_id: self.cluster_id, from: self.from, to: self.to, crc, total };
        let start = client.received(query).await.map_or(0, |r| r.into_inner().received).min(total);
        if start > 0 {
            tracing::info!(peer = self.to, start, total, "resuming a message sent in pieces");
        }
        for (i, data) in bytes[start as usize..].chunks(CHUNK_BYTES).enumerate() {
            let offset = start + (i * CHUNK_BYTES) as u64;
            let chunk = RaftChunk { crc, total, offset, data: data.to_vec() };
            if tx.send(self.batch(Vec::new(), Some(chunk))).await.is_err() {
                return false;
            }
        }
        true
    }

    fn batch(&self, messages: Vec<Vec<u8>>, chunk: Option<RaftChunk>) -> RaftBatch {
        RaftBatch { cluster_id: self.cluster_id, from: self.from, to: self.to, messages, chunk }
    }
}

fn encode(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("encoding into a Vec cannot fail")
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
