//! A node without threads, turned by a driver that owns the clock and the disk (the
//! deterministic simulation, `crate::dst`): the same loop as a replica's Raft thread, one turn
//! per call, with its writes completed when the driver says the disk finished them. raft-rs
//! draws election timeouts from an unseeded generator, so a stepped node's timeout is fixed;
//! the driver makes elections vary by running each replica's clock at its own, changing rate.

use super::ready::Node;
use super::{parts, stop_on_panic, Drive, Handle, Inbox, NodeConfig};
use crate::storage::{LogStore, StorageError};
use crate::transport::Transport;
use std::sync::Arc;
use std::time::Instant;

/// A stepped node and its handle.
pub(crate) struct SteppedNode<S: LogStore, T: Transport> {
    node: Node<S, T>,
    handle: Handle,
}

impl<S: LogStore, T: Transport> SteppedNode<S, T> {
    /// Starts a node on `store` at time `now`, as `spawn` does, without its threads.
    pub fn start(
        config: NodeConfig,
        store: S,
        transport: impl FnOnce(Inbox) -> T,
        now: Instant,
    ) -> Result<Self, StorageError> {
        let (inbox, rx, shared) = parts(&config);
        let transport = transport(inbox.clone());
        let deadline = config.deadline;
        let node =
            Node::new(config, store, transport, (inbox.clone(), rx), Arc::clone(&shared), (Drive::Stepped, now))?;
        Ok(Self { node, handle: Handle { inbox, shared, deadline } })
    }

    /// The services' handle (its inbox takes inputs for the next turn).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// One turn at `now`: every queued input, a tick when due, every Ready. False once the node
    /// stopped (its status says why when it failed; a panic is fatal, as on the Raft thread).
    pub fn turn(&mut self, now: Instant) -> bool {
        let first = self.node.rx.try_recv().ok();
        let node = &mut self.node;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.turn(first, now))) {
            Ok(alive) => alive,
            Err(panic) => {
                stop_on_panic(self.node.id(), &self.handle.shared, panic.as_ref());
                false
            }
        }
    }

    /// Batches handed to the disk and not yet written.
    pub fn pending_writes(&self) -> usize {
        self.node.writer.pending()
    }

    /// The disk finished the first `n` pending batches (the node hears of it next turn).
    pub fn complete_writes(&mut self, n: usize) {
        self.node.writer.complete(n);
    }
}
