//! Clients waiting on the node's thread, by sequence number, each with a deadline.

use super::NodeError;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::oneshot;

/// Replies owed, by sequence number.
#[derive(Debug)]
pub(super) struct Waiters<T> {
    map: BTreeMap<u64, (Instant, oneshot::Sender<Result<T, NodeError>>)>,
    next: u64,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self { map: BTreeMap::new(), next: 0 }
    }
}

impl<T> Waiters<T> {
    /// Registers a reply due by `deadline`; returns its sequence number.
    pub fn add(&mut self, reply: oneshot::Sender<Result<T, NodeError>>, deadline: Instant) -> u64 {
        self.next += 1;
        self.map.insert(self.next, (deadline, reply));
        self.next
    }

    /// Answers one waiter, if still waiting.
    pub fn answer(&mut self, seq: u64, result: Result<T, NodeError>) {
        if let Some((_, reply)) = self.map.remove(&seq) {
            let _ = reply.send(result);
        }
    }

    /// Fails the waiters whose deadline passed.
    pub fn expire(&mut self, now: Instant, why: &str) {
        let late: Vec<u64> = self.map.iter().filter(|(_, (d, _))| *d <= now).map(|(s, _)| *s).collect();
        for seq in late {
            self.answer(seq, Err(NodeError::Unavailable(why.to_owned())));
        }
    }

    /// Fails every waiter.
    pub fn fail_all(&mut self, err: &NodeError) {
        for (_, (_, reply)) in std::mem::take(&mut self.map) {
            let _ = reply.send(Err(err.clone()));
        }
    }
}
