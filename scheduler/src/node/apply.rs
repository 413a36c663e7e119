//! Applying what Raft committed: snapshots from the leader, normal entries (batches of client
//! commands) and membership changes; and taking this replica's own snapshots.

use super::ready::{Fatal, Node};
use super::{Input, JobChange, NodeError};
use crate::codec::{decode_batch, ChangeContext};
use crate::fsm::Fsm;
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
                changes.extend(out.changed.iter().map(|&(job, state)| JobChange { index: e.index, job, state }));
                for effect in &out.effects {
                    let _ = self.shared.effects.send(effect.clone());
                }
            }
            if r.origin == self.config.id {
                self.proposals.answer(r.seq, r.result.map_err(NodeError::Rejected));
            }
        }
        Ok(any)
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), Fatal> {
        let bad = |reason: String| Fatal::Entry { index: e.index, reason };
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?;
        let ChangeContext { origin, seq, address } =
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
                fsm.record_change(e.index, removed, cc.node_id, address);
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

    /// Every `snapshot_every` applied entries: encodes the state here (a consistent cut), and
    /// saves it and compacts the log on a background thread, so that the loop goes on
    /// replicating meanwhile.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        if self.saving {
            return Ok(());
        }
        let started = Instant::now();
        let (applied, data) = {
            let fsm = self.shared.fsm.read().unwrap_or_else(|p| p.into_inner());
            if !self.snapshot_due && fsm.applied < self.snapshot_index + self.config.snapshot_every {
                return Ok(());
            }
            (fsm.applied, fsm.snapshot())
        };
        let encoded_ms = started.elapsed().as_millis() as u64;
        let bytes = data.len();
        let mut snap = Snapshot { data: data.into(), ..Snapshot::default() };
        let md = snap.mut_metadata();
        md.index = applied;
        md.term = self.applied_term;
        md.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let (store, inbox) = (self.raw.store().clone(), self.inbox.clone());
        let compact_to = applied.saturating_sub(self.config.keep_entries);
        self.saving = true;
        self.snapshot_due = false;
        self.snapshot_index = applied;
        std::thread::Builder::new()
            .name(format!("snapshot-{}", self.config.id))
            .spawn(move || {
                let started = Instant::now();
                let error = store.save_snapshot(&snap, compact_to).err().map(|e| e.to_string());
                tracing::info!(
                    index = applied,
                    bytes,
                    encoded_ms,
                    saved_ms = started.elapsed().as_millis() as u64,
                    "snapshot"
                );
                let _ = inbox.send(Input::Snapshotted(applied, error));
            })
            .map_err(|e| Fatal::Snapshot { index: applied, reason: e.to_string() })?;
        Ok(())
    }
}
