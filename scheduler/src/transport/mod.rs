//! How Raft messages leave a replica. `grpc.rs` streams them to peers over `RaftService`;
//! `mem.rs` is an in-process network for tests that can drop, delay and partition.

pub mod grpc;
pub mod mem;

use raft::eraftpb::Message;

/// Sends Raft messages to peers. `send` never blocks the Raft loop; a peer that cannot be
/// reached is reported back to the node as `Input::Unreachable`.
pub trait Transport: Send + 'static {
    /// Queues messages for their receivers.
    fn send(&mut self, messages: Vec<Message>);
    /// Learns or updates a peer's address.
    fn set_peer(&mut self, id: u64, address: &str);
    /// Forgets a peer.
    fn remove_peer(&mut self, id: u64);
}
