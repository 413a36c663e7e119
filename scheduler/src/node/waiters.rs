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

impl<T> Waiters<T> {
    /// None yet; the sequence numbers of this `incarnation` of the replica are its own (the
    /// incarnation in the high 32 bits), so that an entry or a read context of an earlier run
    /// of the replica never matches a waiter of this one.
    pub fn new(incarnation: u32) -> Self {
        Self { map: BTreeMap::new(), next: u64::from(incarnation) << 32 }
    }

    /// Registers a reply due by `deadline`; returns its sequence number.
    pub fn add(&mut self, reply: oneshot::Sender<Result<T, NodeError>>, deadline: Instant) -> u64 {
        self.next = self.next.wrapping_add(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry proposed before a restart carries a sequence number of the old run; applied
    /// after the restart, it must not answer the new run's waiter (it did when every run
    /// counted from 1: a client was told another job's id).
    #[test]
    fn a_sequence_number_of_an_earlier_run_answers_no_waiter_of_this_one() {
        let mut before = Waiters::<u64>::new(7);
        let (tx, _rx) = oneshot::channel();
        let old = before.add(tx, Instant::now());
        let mut after = Waiters::<u64>::new(8);
        let (tx, mut rx) = oneshot::channel();
        let new = after.add(tx, Instant::now());
        assert_ne!(old, new);
        after.answer(old, Ok(139));
        assert!(rx.try_recv().is_err(), "the old run's entry answered nobody");
        after.answer(new, Ok(219));
        assert_eq!(rx.try_recv().unwrap().unwrap(), 219);
    }
}
