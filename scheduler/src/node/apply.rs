//! Applying what Raft committed: snapshots from the leader, normal entries (batches of client
//! commands) and membership changes; and taking this replica's own snapshots.

use super::measures::Measures;
use super::ready::{Fatal, Node};
use super::{Drive, Input, JobChange, NodeError};
use crate::codec::{decode_batch, ChangeContext};
use crate::fsm::{Fsm, Refused};
use crate::storage::LogStore;
use crate::transport::Transport;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Snapshot};
use std::time::Instant;

impl<S: LogStore, T: Transport> Node<S, T> {
    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Fatal> {
        let md = snap.get_metadata();
        let fsm = Fsm::restore(&snap.data, md.index)
            .map_err(|e| Fatal::Entry { index: md.index, reason: format!("snapshot: {e}") })?;
        self.raw.store().apply_snapshot(snap)?;
        for (id, address) in &fsm.members {
            if *id != self.config.id {
                self.transport.set_peer(*id, address);
            }
        }
        *self.shared.fsm.write().unwrap_or_else(|p| p.into_inner()) = fsm;
        self.snapshot_index = md.index;
        self.applied_term = md.term;
        self.shared.work.notify_one();
        tracing::info!(replica = self.config.id, index = md.index, "installed a snapshot from the leader");
        Ok(())
    }

    pub(super) fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut changes = Vec::new();
        let mut touched = false;
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => touched |= self.apply_normal(&e, &mut changes)?,
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => {
                    return Err(Fatal::Entry { index: e.index, reason: "joint membership changes are not used".into() })
                }
            }
            self.applied_term = e.term;
        }
        self.unsaved_applied = Some(self.shared.fsm.read().unwrap_or_else(|p| p.into_inner()).applied);
        Measures::time(&self.shared.measures.apply, started.elapsed());
        for c in changes {
            let _ = self.shared.events.send(c);
        }
        if touched {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Applies one normal entry; true when it carried proposals.
    fn apply_normal(&mut self, e: &Entry, changes: &mut Vec<JobChange>) -> Result<bool, Fatal> {
        let proposals =
            decode_batch(&e.data).map_err(|err| Fatal::Entry { index: e.index, reason: err.to_string() })?;
        let any = !proposals.is_empty();
        let results = self.shared.fsm.write().unwrap_or_else(|p| p.into_inner()).apply(e.index, proposals);
        for r in results {
            if let Ok(out) = &r.result {
                let at_ms = r.at_ms;
                changes.extend(out.changed.iter().map(|&(job, state)| JobChange { index: e.index, job, state, at_ms }));
                // A submission's changes are its new jobs, and only a submission has any: every
                // other change to pending is a job back in the queue.
                if out.submitted.is_empty() {
                    let requeued = out.changed.iter().filter(|(_, s)| *s == qm_core::JobState::Pending);
                    self.shared.measures.requeues.inc_by(requeued.count() as u64);
                }
                for effect in &out.effects {
                    let _ = self.shared.effects.send(effect.clone());
                }
            }
            if r.origin == self.config.id {
                self.proposals.answer(
                    r.seq,
                    r.result.map_err(|e| match e {
                        Refused::Core(e) => NodeError::Rejected(e),
                        Refused::Access(e) => NodeError::Access(e),
                    }),
                );
            }
        }
        Ok(any)
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), Fatal> {
        let bad = |reason: String| Fatal::Entry { index: e.index, reason };
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?;
        let ChangeContext { origin, seq, address, asker } =
            ChangeContext::decode(&cc.context).map_err(|err| bad(err.to_string()))?;
        let result = self.raw.apply_conf_change(&cc);
        let answer = match result {
            Ok(cs) => {
                self.raw.store().set_conf_state(&cs)?;
                self.snapshot_due = true;
                let removed = cc.get_change_type() == ConfChangeType::RemoveNode;
                if removed {
                    self.transport.remove_peer(cc.node_id);
                } else if cc.node_id != self.config.id {
                    self.transport.set_peer(cc.node_id, &address);
                }
                let mut fsm = self.shared.fsm.write().unwrap_or_else(|p| p.into_inner());
                fsm.record_change(e.index, removed, cc.node_id, address, asker);
                Ok(())
            }
            Err(err) => {
                self.shared.fsm.write().unwrap_or_else(|p| p.into_inner()).applied = e.index;
                Err(NodeError::Unavailable(format!("the membership change failed: {err}")))
            }
        };
        if origin == self.config.id {
            self.changes.answer(seq, answer);
        }
        Ok(())
    }

    /// Every `snapshot_every` applied entries: takes a consistent cut of the state here (cheap:
    /// it shares the state's data, copied on write), then encodes and saves it on a background
    /// thread, so that the loop goes on replicating meanwhile (a stepped node saves it in the
    /// turn). The log is compacted once the save is reported (`compacted`), on this thread.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        if self.saving {
            return Ok(());
        }
        let started = Instant::now();
        let (applied, cut) = {
            let fsm = self.shared.fsm.read().unwrap_or_else(|p| p.into_inner());
            let every = self.config.snapshot_every;
            if !self.snapshot_due && !periodic_snapshot_due(fsm.applied, self.snapshot_index, every, self.config.id) {
                return Ok(());
            }
            (fsm.applied, fsm.cut())
        };
        let cut_us = started.elapsed().as_micros() as u64;
        let mut snap = Snapshot::default();
        let md = snap.mut_metadata();
        md.index = applied;
        md.term = self.applied_term;
        md.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let (store, inbox, measures) = (self.raw.store().clone(), self.inbox.clone(), self.shared.measures.clone());
        self.compaction = Some((snap.get_metadata().clone(), applied.saturating_sub(self.config.keep_entries)));
        self.saving = true;
        self.snapshot_due = false;
        self.snapshot_index = applied;
        let save = move || {
            let started = Instant::now();
            snap.data = cut.encode().into();
            let encoded_ms = started.elapsed().as_millis() as u64;
            let error = store.save_snapshot(&snap).err().map(|e| e.to_string());
            Measures::time(&measures.snapshot_save, started.elapsed());
            measures.snapshot_bytes.set(snap.data.len() as i64);
            tracing::info!(
                index = applied,
                bytes = snap.data.len(),
                cut_us,
                encoded_ms,
                saved_ms = started.elapsed().as_millis() as u64 - encoded_ms,
                "snapshot"
            );
            // Closed before the Raft thread hears of it: a stopping replica waits for this
            // message, then its storage must be free to open again (at low priority, this
            // thread could otherwise still hold it for a while after sending).
            drop(store);
            let _ = inbox.send(Input::Snapshotted(applied, error));
        };
        if self.drive == Drive::Stepped {
            save();
            return Ok(());
        }
        std::thread::Builder::new()
            .name(format!("snapshot-{}", self.config.id))
            .spawn(move || {
                if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
                    tracing::debug!("the snapshot thread keeps its priority: {e}");
                }
                save();
            })
            .map_err(|e| Fatal::Snapshot { index: applied, reason: e.to_string() })?;
        Ok(())
    }

    /// The background save of the snapshot at `index` ended, with `error` if it failed: the
    /// log is compacted up to it (see `LogStore::compact` for why only here).
    pub(super) fn saved(&mut self, index: u64, error: Option<String>) {
        self.saving = false;
        let compaction = self.compaction.take();
        if let Some(reason) = error {
            self.failed = Some(Fatal::Snapshot { index, reason });
            return;
        }
        if let Some((md, compact_to)) = compaction {
            if let Err(e) = self.raw.store().compact(&md, compact_to) {
                self.failed = Some(Fatal::Snapshot { index, reason: format!("compacting the log: {e}") });
                return;
            }
        }
        tracing::info!(replica = self.config.id, index, "took a snapshot and compacted the log");
    }
}

/// Whether this replica's periodic snapshot is due: one every `every` applied entries, at
/// points shifted by a third of the period per replica (`id` mod 3). Encoding and saving cost
/// CPU and disk for a while; staggered, no two of three replicas pay it at once, so a quorum
/// always has a replica that is not busy with a snapshot.
fn periodic_snapshot_due(applied: u64, last: u64, every: u64, id: u64) -> bool {
    let every = every.max(1);
    let phase = (id % 3) * every / 3;
    (applied + phase) / every > (last + phase) / every
}

#[cfg(test)]
mod tests {
    use super::periodic_snapshot_due;

    /// Applies entries one at a time and returns the indexes at which replica `id` snapshots.
    fn points(id: u64, every: u64, upto: u64) -> Vec<u64> {
        let mut last = 0;
        let mut out = Vec::new();
        for applied in 1..=upto {
            if periodic_snapshot_due(applied, last, every, id) {
                out.push(applied);
                last = applied;
            }
        }
        out
    }

    #[test]
    fn replicas_snapshot_once_per_period_at_staggered_points() {
        let all: Vec<Vec<u64>> = (1..=3).map(|id| points(id, 900, 9_000)).collect();
        assert_eq!(all[2], (1..=10).map(|k| k * 900).collect::<Vec<_>>(), "replica 3 at multiples of the period");
        for p in &all {
            assert!(p.windows(2).all(|w| w[1] - w[0] == 900), "one per period: {p:?}");
        }
        let mut every_point: Vec<u64> = all.concat();
        every_point.sort_unstable();
        assert!(every_point.windows(2).all(|w| w[1] - w[0] >= 299), "a third of a period apart: {every_point:?}");
    }

    #[test]
    fn a_batch_that_jumps_past_a_point_snapshots_once() {
        assert!(periodic_snapshot_due(2_500, 0, 1_000, 3));
        assert!(!periodic_snapshot_due(2_900, 2_500, 1_000, 3));
        assert!(periodic_snapshot_due(3_000, 2_500, 1_000, 3));
        assert!(periodic_snapshot_due(5, 0, 0, 1), "a period of 0 is taken as 1");
    }
}
