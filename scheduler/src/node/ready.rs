//! The node's thread: inputs, ticks, and each `Ready` handled in raft-rs' documented order
//! for asynchronous writes (applying what it commits is in `apply.rs`): send the messages that
//! need nothing stored; apply a snapshot; apply committed entries (raft-rs gives only entries
//! this replica holds durably); stage entries and hard state, readable at once; hand the Ready's
//! number to the writer (`writer.rs`) and advance. Once the writer says the Ready is durable,
//! its other messages (a follower's acknowledgements and votes) go out and raft-rs counts it.

use super::waiters::Waiters;
use super::writer::Writer;
use super::{Drive, Inbox, Input, Membership, NodeConfig, NodeError, Shared, Status};
use crate::codec::{encode_batch, ChangeContext, Proposal};
use crate::fsm::Fsm;
use crate::logging::raft_logger;
use crate::storage::{LogStore, Persist, Staged, StorageError};
use crate::transport::Transport;
use qm_core::Outcome;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, MessageType};
use raft::{Config, RawNode, ReadOnlyOption};
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

/// Inputs handled before the next Ready, at most (the rest wait one round).
const MAX_INPUTS_PER_ROUND: usize = 16_384;

/// Why the node stops.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fatal {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("log entry {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error("saving the snapshot at {index}: {reason}")]
    Snapshot { index: u64, reason: String },
    #[error("making the log durable: {0}")]
    Write(String),
}

pub(super) struct Node<S: LogStore, T: Transport> {
    pub(super) raw: RawNode<S>,
    pub(super) config: NodeConfig,
    pub(super) transport: T,
    pub(super) rx: Receiver<Input>,
    /// The node's own inbox, for its background snapshot saves to report back.
    pub(super) inbox: Inbox,
    /// A snapshot is being saved in the background.
    pub(super) saving: bool,
    /// The snapshot being saved, and where to compact the log once it is.
    pub(super) compaction: Option<(raft::eraftpb::SnapshotMetadata, u64)>,
    /// Take a snapshot at the next chance (the membership changed: a new member can only
    /// install a snapshot whose configuration names it).
    pub(super) snapshot_due: bool,
    /// An error a background job reported, to stop on.
    pub(super) failed: Option<Fatal>,
    pub(super) shared: Arc<Shared>,
    pub(super) proposals: Waiters<Outcome>,
    pub(super) reads: Waiters<()>,
    pub(super) changes: Waiters<()>,
    pub(super) batch: Vec<Proposal>,
    /// Read barriers the leader confirmed: (index to reach, waiter).
    pub(super) confirmed_reads: Vec<(u64, u64)>,
    pub(super) applied_term: u64,
    pub(super) snapshot_index: u64,
    /// Applied index not yet written to storage (it rides with the next batch).
    pub(super) unsaved_applied: Option<u64>,
    /// Messages that may go only once their Ready is durable, by Ready number.
    pub(super) unsent: VecDeque<(u64, Vec<raft::eraftpb::Message>)>,
    /// How the node is driven.
    pub(super) drive: Drive,
    /// The time of this turn of the loop (the driver's, when stepped).
    pub(super) now: Instant,
    /// When Raft ticks next.
    pub(super) next_tick: Instant,
    /// Makes staged writes durable; dropped last, so that what was staged is flushed.
    pub(super) writer: Writer,
}

impl<S: LogStore, T: Transport> Node<S, T> {
    pub fn new(
        config: NodeConfig,
        store: S,
        mut transport: T,
        (inbox, rx): (Inbox, Receiver<Input>),
        shared: Arc<Shared>,
        (drive, now): (Drive, Instant),
    ) -> Result<Self, StorageError> {
        store.verify()?;
        let initial =
            store.initial_state().map_err(|e| StorageError::Decode { what: "state".into(), reason: e.to_string() })?;
        let mut voters = initial.conf_state.voters.clone();
        if !initial.initialized() && voters.is_empty() && !config.initial_voters.is_empty() {
            voters.clone_from(&config.initial_voters);
            store.set_conf_state(&ConfState { voters: voters.clone(), ..ConfState::default() })?;
        }
        let fsm = match store.latest_snapshot()? {
            Some(snap) => Fsm::restore(&snap.data, snap.get_metadata().index)
                .map_err(|e| StorageError::Decode { what: "snapshot".into(), reason: e.to_string() })?,
            None => {
                let address = |id: u64| config.peers.iter().find(|(p, _)| *p == id).map(|(_, a)| a.clone());
                let members = voters.iter().map(|id| (*id, address(*id).unwrap_or_default())).collect();
                Fsm { members, ..Fsm::default() }
            }
        };
        for (id, address) in config.peers.iter().map(|(i, a)| (i, a)).chain(&fsm.members) {
            if *id != config.id && !address.is_empty() {
                transport.set_peer(*id, address);
            }
        }
        let snapshot_index = fsm.applied;
        if initial.hard_state.commit < snapshot_index {
            // A snapshot holds only applied, so committed, entries; but a leader does not flush
            // a hard state that only moves the commit index, and its snapshot may be saved
            // before that write: after a crash, the stored commit index is behind the snapshot,
            // which raft-rs refuses to start from. The snapshot's index is committed.
            store.persist(Persist { commit: Some(snapshot_index), ..Persist::default() })?;
        }
        let applied_term = store.term(snapshot_index).unwrap_or(0);
        let (min_election_tick, max_election_tick) = match drive {
            Drive::Threads => (0, 0),
            // raft-rs draws election timeouts from an unseeded generator: a range of one value
            // keeps a stepped node deterministic (the driver varies its clock's rate instead).
            Drive::Stepped => (config.election_ticks, config.election_ticks + 1),
        };
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_ticks,
            min_election_tick,
            max_election_tick,
            heartbeat_tick: config.heartbeat_ticks,
            applied: fsm.applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            read_only_option: ReadOnlyOption::Safe,
            ..Config::default()
        };
        let logger = raft_logger(config.id);
        let raw = RawNode::new(&raft_config, store, &logger)
            .map_err(|e| StorageError::Decode { what: "raft configuration".into(), reason: e.to_string() })?;
        *shared.fsm.write().unwrap_or_else(|p| p.into_inner()) = fsm;
        let incarnation = config.incarnation;
        let writer = match drive {
            Drive::Threads => {
                Writer::start(config.id, raw.store().clone(), inbox.clone()).map_err(|e| StorageError::Io(e.into()))?
            }
            Drive::Stepped => Writer::stepped(raw.store().clone(), inbox.clone()),
        };
        let next_tick = now + config.tick;
        Ok(Self {
            raw,
            config,
            transport,
            rx,
            inbox,
            saving: false,
            compaction: None,
            snapshot_due: false,
            failed: None,
            shared,
            proposals: Waiters::new(incarnation),
            reads: Waiters::new(incarnation),
            changes: Waiters::new(incarnation),
            batch: Vec::new(),
            confirmed_reads: Vec::new(),
            applied_term,
            snapshot_index,
            unsaved_applied: None,
            unsent: VecDeque::new(),
            drive,
            now,
            next_tick,
            writer,
        })
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Runs until told to stop or until storage fails.
    pub fn run(mut self) {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if !self.turn(first, Instant::now()) {
                self.await_saving();
                return;
            }
        }
        self.proposals.fail_all(&NodeError::Stopped("shut down".into()));
        self.await_saving();
    }

    /// One turn of the loop at `now`: `first` and whatever else is queued, a tick when one is
    /// due, then every Ready. False once the node stopped: told to, or on a fatal error (which
    /// its status then says).
    pub(super) fn turn(&mut self, first: Option<Input>, now: Instant) -> bool {
        self.now = now;
        if !self.take_inputs(first) {
            self.proposals.fail_all(&NodeError::Stopped("shut down".into()));
            return false;
        }
        if now >= self.next_tick {
            self.raw.tick();
            self.next_tick = now + self.config.tick;
            self.expire(now);
        }
        if let Err(e) = self.round() {
            self.stop_on(e);
            return false;
        }
        true
    }

    /// Waits (bounded) for a background snapshot save, so that the storage is closed when the
    /// thread ends and the replica can be reopened at once.
    fn await_saving(&mut self) {
        let until = Instant::now() + std::time::Duration::from_secs(30);
        while self.saving && Instant::now() < until {
            if let Ok(Input::Snapshotted(..)) = self.rx.recv_timeout(until - Instant::now()) {
                self.saving = false;
            }
        }
    }

    /// Handles `first` and whatever else is queued; false when told to stop.
    fn take_inputs(&mut self, first: Option<Input>) -> bool {
        let Some(first) = first else { return true };
        if !self.handle(first) {
            return false;
        }
        for _ in 0..MAX_INPUTS_PER_ROUND {
            match self.rx.try_recv() {
                Ok(input) => {
                    if !self.handle(input) {
                        return false;
                    }
                }
                Err(_) => break,
            }
        }
        true
    }

    fn round(&mut self) -> Result<(), Fatal> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.flush_batch();
        while self.raw.has_ready() {
            self.on_ready()?;
        }
        self.answer_reads();
        self.publish();
        Ok(())
    }

    fn stop_on(&mut self, e: Fatal) {
        let why = e.to_string();
        tracing::error!(replica = self.config.id, "replica stopped: {why}");
        self.shared.status.lock().unwrap_or_else(|p| p.into_inner()).fatal = Some(why.clone());
        let err = NodeError::Stopped(why);
        self.proposals.fail_all(&err);
        self.reads.fail_all(&err);
        self.changes.fail_all(&err);
    }

    fn expire(&mut self, now: Instant) {
        let why =
            "not committed within the deadline (no quorum?); the outcome is unknown, retry with the same request id";
        self.proposals.expire(now, why);
        self.reads.expire(now, "the leader did not confirm the read within the deadline (no quorum?)");
        self.changes.expire(now, why);
    }

    fn deadline(&self) -> Instant {
        self.now + self.config.deadline
    }

    fn no_leader(&self) -> Option<NodeError> {
        (self.raw.raft.leader_id == raft::INVALID_ID).then(|| {
            NodeError::Unavailable("no leader is known (an election is under way or there is no quorum)".into())
        })
    }

    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose { op, request_id, asker, reply } => {
                if let Some(e) = self.no_leader() {
                    let _ = reply.send(Err(e));
                    return true;
                }
                let seq = self.proposals.add(reply, self.deadline());
                self.batch.push(Proposal { origin: self.config.id, seq, request_id, asker, op });
                if self.batch.len() >= self.config.max_batch {
                    self.flush_batch();
                }
            }
            Input::Read { reply } => {
                if let Some(e) = self.no_leader() {
                    let _ = reply.send(Err(e));
                    return true;
                }
                let seq = self.reads.add(reply, self.deadline());
                self.raw.read_index(seq.to_le_bytes().to_vec());
            }
            Input::Change { change, asker, reply } => self.propose_change(change, asker, reply),
            Input::Raft(m) if self.beyond_log(&m) => {
                tracing::warn!(
                    replica = self.config.id,
                    from = m.from,
                    commit = m.commit,
                    "dropped a heartbeat that counts entries this replica does not hold (sent to an \
                     earlier run of this id before it was removed and emptied)"
                );
            }
            Input::Raft(m) if self.sent_by_stranger(&m) => {
                tracing::warn!(
                    replica = self.config.id,
                    from = m.from,
                    term = m.term,
                    "dropped a raft message from an id that is not a member of the group"
                );
            }
            Input::Raft(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(replica = self.config.id, "dropped a raft message: {e}");
                }
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::Snapshotted(index, error) => self.saved(index, error),
            Input::Persisted(number) => self.persisted(number),
            Input::WriteFailed(reason) => self.failed = Some(Fatal::Write(reason)),
            Input::Stop => return false,
        }
        true
    }

    /// A heartbeat whose commit index is past the end of this replica's log. A leader never
    /// sends one to a follower it counts right, but one sent to the earlier run of a replaced
    /// replica can arrive after the replacement started empty, and raft-rs would panic on it
    /// (`to_commit is out of range`).
    /// A message from an id that is neither a voter nor a learner of the configuration this
    /// replica knows, while it follows (or is) a leader of that configuration: raft-rs would
    /// take its term, so one forged message with a higher term would depose the leader. A
    /// replica without a leader takes what comes: one joining (empty) hears first from the
    /// leader that adds it, and one that lags may not yet know that a new leader was added; a
    /// lagging follower stops hearing its old leader, so it is soon without one (raft-rs clears
    /// the leader when the election timeout starts a pre-vote).
    fn sent_by_stranger(&self, m: &raft::eraftpb::Message) -> bool {
        let (members, leader) = (self.raw.raft.prs(), self.raw.raft.leader_id);
        members.get(m.from).is_none() && members.get(leader).is_some()
    }

    fn beyond_log(&self, m: &raft::eraftpb::Message) -> bool {
        m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > self.raw.raft.raft_log.last_index()
    }

    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Err(e) = self.raw.propose(vec![], encode_batch(&batch)) {
            let err = NodeError::Unavailable(format!("the proposal was dropped: {e}"));
            for p in batch {
                self.proposals.answer(p.seq, Err(err.clone()));
            }
        }
    }

    fn propose_change(
        &mut self,
        change: Membership,
        asker: Option<crate::audit::Asker>,
        reply: tokio::sync::oneshot::Sender<Result<(), NodeError>>,
    ) {
        if let Some(e) = self.no_leader() {
            let _ = reply.send(Err(e));
            return;
        }
        let seq = self.changes.add(reply, self.deadline());
        let mut cc = ConfChange::default();
        let address = match change {
            Membership::Add { id, address } => {
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                address
            }
            Membership::Remove { id } => {
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
                String::new()
            }
        };
        cc.context = ChangeContext { origin: self.config.id, seq, address, asker }.encode().into();
        if let Err(e) = self.raw.propose_conf_change(vec![], cc) {
            self.changes.answer(seq, Err(NodeError::Unavailable(format!("the change was refused: {e}"))));
        }
    }

    fn on_ready(&mut self) -> Result<(), Fatal> {
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            return self.on_snapshot_ready(ready);
        }
        self.apply_entries(ready.take_committed_entries())?;
        let staged = if !ready.entries().is_empty() || ready.hs().is_some() {
            let applied = self.unsaved_applied.take();
            self.raw.store().stage(ready.take_entries(), ready.hs().cloned(), None, applied)
        } else {
            Staged::default()
        };
        let (now, later): (Vec<_>, Vec<_>) = ready
            .take_persisted_messages()
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse);
        self.send(now);
        if !later.is_empty() {
            self.unsent.push_back((ready.number(), later));
        }
        for rs in ready.take_read_states() {
            if let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) {
                self.confirmed_reads.push((rs.index, u64::from_le_bytes(bytes)));
            }
        }
        // A commit index alone need not be durable for Raft, which learns it again from the
        // leader. A follower flushes it all the same, because a survivor's backup
        // (docs/operations.md, the majority lost) keeps only what its stored commit index
        // covers; the leader, whose commit index changes with every round, does not.
        let leading = self.raw.raft.state == raft::StateRole::Leader;
        let sync = ready.must_sync() || (ready.hs().is_some() && !leading);
        let number = ready.number();
        self.raw.advance_append_async(ready);
        self.raw.advance_apply();
        self.writer.staged(number, staged, sync);
        self.maybe_snapshot()
    }

    /// A Ready that installs a leader's snapshot, handled at once: installing it flushes
    /// everything staged before, so the Ready and all before it are durable, and raft-rs
    /// applies the snapshot's index only once it counts it persisted.
    fn on_snapshot_ready(&mut self, mut ready: raft::Ready) -> Result<(), Fatal> {
        self.writer.drain();
        self.install_snapshot(ready.snapshot())?;
        self.apply_entries(ready.take_committed_entries())?;
        let applied = self.unsaved_applied.take();
        self.raw.store().persist(Persist {
            entries: ready.entries(),
            hard_state: ready.hs(),
            commit: None,
            applied,
        })?;
        while let Some((_, messages)) = self.unsent.pop_front() {
            self.send(messages);
        }
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().persist(Persist { commit: Some(commit), ..Persist::default() })?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()
    }

    /// The writer made everything up to Ready `number` durable: raft-rs may count it (a
    /// leader's own acknowledgement, a follower's commit), and the messages that waited for it
    /// go. A follower's heartbeat responses never wait: they claim nothing about its log, and a
    /// leader that hears none for an election timeout steps down.
    fn persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        while self.unsent.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, messages)) = self.unsent.pop_front() {
                self.send(messages);
            }
        }
    }

    /// Hands messages to the transport. A snapshot sent is reported finished at once: the
    /// leader then probes the follower, which either accepted it or makes the leader send a
    /// newer one, instead of waiting forever for a report.
    fn send(&mut self, messages: Vec<raft::eraftpb::Message>) {
        let snapshots: Vec<u64> =
            messages.iter().filter(|m| m.get_msg_type() == MessageType::MsgSnapshot).map(|m| m.to).collect();
        self.transport.send(messages);
        for to in snapshots {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
    }

    fn answer_reads(&mut self) {
        if self.confirmed_reads.is_empty() {
            return;
        }
        let applied = self.shared.fsm.read().unwrap_or_else(|p| p.into_inner()).applied;
        let reads = &mut self.reads;
        self.confirmed_reads.retain(|&(index, seq)| {
            let done = index <= applied;
            if done {
                reads.answer(seq, Ok(()));
            }
            !done
        });
    }

    /// Proposals waiting on a leader that lost its place may never commit: fail them now, so
    /// that clients retry (with their request id) on the new leader instead of waiting out the
    /// deadline.
    fn on_leader_change(&mut self, before: u64) {
        let now = self.raw.raft.leader_id;
        if before != now && before != raft::INVALID_ID {
            let err = NodeError::Unavailable(format!(
                "the leader changed ({before} -> {now}); retry with the same request id"
            ));
            self.proposals.fail_all(&err);
            self.reads.fail_all(&err);
            self.confirmed_reads.clear();
        }
    }

    fn publish(&mut self) {
        let before = self.shared.status.lock().unwrap_or_else(|p| p.into_inner()).leader;
        self.on_leader_change(before);
        let applied = self.shared.fsm.read().unwrap_or_else(|p| p.into_inner()).applied;
        let status = Status {
            id: self.config.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied,
            snapshot_index: self.snapshot_index,
            fatal: None,
        };
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}
