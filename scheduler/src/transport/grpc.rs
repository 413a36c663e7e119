//! Raft messages over `RaftService.Stream`: one long-lived stream per peer, fed by a task that
//! batches whatever messages are queued. A peer that cannot be reached is reported to the node
//! (`report_unreachable`) and retried with exponential backoff; messages queued meanwhile are
//! dropped, and Raft sends them again.

use super::Transport;
use crate::node::{Inbox, Input};
use protobuf::Message as PbMessage;
use qm_proto::v1::raft_service_client::RaftServiceClient;
use qm_proto::v1::RaftBatch;
use raft::eraftpb::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Messages sent in one batch at most.
const MAX_BATCH: usize = 512;
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
    peers: BTreeMap<u64, Peer>,
}

impl GrpcTransport {
    /// A transport for replica `id` of cluster `cluster_id`, whose tasks run on `runtime`.
    pub fn new(id: u64, cluster_id: u64, inbox: Inbox, runtime: tokio::runtime::Handle) -> Self {
        Self { id, cluster_id, inbox, runtime, peers: BTreeMap::new() }
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
        let link = Link { from: self.id, to: id, cluster_id: self.cluster_id, address: address.to_owned() };
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
}

impl Link {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Message>, inbox: Inbox) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok(client) => {
                    backoff = MIN_BACKOFF;
                    if self.forward(client, &mut rx).await.is_none() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(peer = self.to, address = %self.address, "cannot reach a raft peer: {e}"),
            }
            if inbox.send(Input::Unreachable(self.to)).is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            while rx.try_recv().is_ok() {}
        }
    }

    async fn connect(&self) -> Result<RaftServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        Ok(RaftServiceClient::new(endpoint.connect().await?))
    }

    /// Streams batches until the stream breaks (`Some`) or the transport is gone (`None`).
    async fn forward(
        &self,
        mut client: RaftServiceClient<tonic::transport::Channel>,
        rx: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Option<()> {
        let (tx, stream) = mpsc::channel::<RaftBatch>(64);
        let call = tokio::spawn(async move { client.stream(ReceiverStream::new(stream)).await });
        loop {
            let first = rx.recv().await?;
            let mut messages = vec![first.write_to_bytes().expect("encoding into a Vec cannot fail")];
            while messages.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => messages.push(m.write_to_bytes().expect("encoding into a Vec cannot fail")),
                    Err(_) => break,
                }
            }
            let batch = RaftBatch { cluster_id: self.cluster_id, from: self.from, to: self.to, messages };
            if tx.send(batch).await.is_err() || call.is_finished() {
                call.abort();
                return Some(());
            }
        }
    }
}
