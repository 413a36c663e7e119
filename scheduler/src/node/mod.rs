//! The Raft node of one replica: raft-rs `RawNode` on a `LogStore`, driven by a dedicated
//! thread (`ready.rs`) that ticks, batches proposals into log entries, handles each `Ready` in
//! the documented order and applies committed entries to the state machine, with the flushes
//! on a writer thread of its own (`writer.rs`). `Handle` is how the
//! services talk to it: propose and wait until applied, linearizable read barriers, status.

mod apply;
pub mod measures;
mod ready;
mod stepped;
mod waiters;
mod writer;

use crate::access::tokens::{AccessCommand, AccessError};
use crate::audit::Asker;
use crate::codec::Op;
use crate::fsm::Fsm;
use crate::storage::{LogStore, StorageError};
use crate::transport::Transport;
use qm_core::{ApplyError, Command, Effect, JobId, JobState, Outcome};
use raft::eraftpb::Message;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
pub(crate) use stepped::SteppedNode;
use tokio::sync::{broadcast, oneshot, Notify};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This replica's Raft id (not 0).
    pub id: u64,
    /// The voters of a new cluster (ignored when the store already holds a configuration).
    pub initial_voters: Vec<u64>,
    /// Addresses of the initial voters, by id.
    pub peers: Vec<(u64, String)>,
    /// Time between two Raft ticks.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// Entries applied between two snapshots.
    pub snapshot_every: u64,
    /// Entries kept before a snapshot's index, for followers a little behind.
    pub keep_entries: u64,
    /// Proposals grouped into one log entry at most.
    pub max_batch: usize,
    /// How long a proposal or read may wait before it fails with `Unavailable`.
    pub deadline: Duration,
    /// A number that differs between two starts of this replica. It is the high half of the
    /// sequence numbers that match log entries and read contexts to the clients waiting for
    /// them, so that an entry proposed before a restart, and applied after it, never answers
    /// a client of the new run with another command's outcome.
    pub incarnation: u32,
}

impl NodeConfig {
    /// Defaults for replica `id` of a cluster of `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Self {
            id,
            initial_voters: voters,
            peers: Vec::new(),
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            keep_entries: 1_000,
            max_batch: 4_096,
            deadline: Duration::from_secs(3),
            incarnation: fresh_incarnation(id),
        }
    }
}

/// A number for this start of replica `id`: the wall clock's nanoseconds and the process id,
/// mixed (two starts of one replica get the same one with a chance of one in 2^32).
fn fresh_incarnation(id: u64) -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut h = (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32) ^ id.rotate_left(48);
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 33)) as u32
}

/// How a node's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drive {
    /// A thread of its own on the wall clock, a writer thread, snapshots saved in the
    /// background.
    Threads,
    /// Turned by a driver that owns the clock (the deterministic simulation, `crate::dst`):
    /// its writes wait until the driver completes them, snapshots are saved in the turn, and
    /// its election timeout is fixed (raft-rs would draw it from an unseeded generator).
    Stepped,
}

/// Why a proposal or read did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// No quorum, no leader, or the deadline passed; the outcome of a proposal is unknown.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The state machine refused the command.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The tokens refused the change.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The node stopped, possibly on a storage error.
    #[error("replica stopped: {0}")]
    Stopped(String),
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Add a voter at an address.
    Add {
        /// Its Raft id.
        id: u64,
        /// Its replication address.
        address: String,
    },
    /// Remove a voter.
    Remove {
        /// Its Raft id.
        id: u64,
    },
}

/// What the node's thread is told.
#[derive(Debug)]
pub enum Input {
    /// A command to replicate.
    Propose {
        /// The change.
        op: Op,
        /// A client's retry token.
        request_id: Option<String>,
        /// Who asked for it.
        asker: Option<Asker>,
        /// Answered once applied.
        reply: oneshot::Sender<Result<Outcome, NodeError>>,
    },
    /// A linearizable read barrier: answered when this replica has applied everything
    /// committed when it was asked.
    Read {
        /// Answered when safe to read.
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A membership change.
    Change {
        /// The change.
        change: Membership,
        /// Who asked for it.
        asker: Option<Asker>,
        /// Answered once applied.
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A message from a peer.
    Raft(Box<Message>),
    /// A peer could not be reached.
    Unreachable(u64),
    /// The background save of the snapshot at this index ended (with the error, if any).
    Snapshotted(u64, Option<String>),
    /// Everything staged up to the Ready of this number is durable.
    Persisted(u64),
    /// The writer could not make the log durable.
    WriteFailed(String),
    /// Stop the thread.
    Stop,
}

/// The sending side of a node's inbox.
pub type Inbox = mpsc::Sender<Input>;

/// A job's state changed (for `Watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobChange {
    /// Log index of the change.
    pub index: u64,
    /// The job.
    pub job: JobId,
    /// Its new state.
    pub state: JobState,
    /// When the command that changed it happened (ms since the Unix epoch), when it says.
    pub at_ms: Option<u64>,
}

/// What a replica says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: u64,
    /// The leader, 0 when unknown.
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Why the node stopped, if it did.
    pub fatal: Option<String>,
}

/// State shared between the node's thread and the services.
#[derive(Debug)]
pub struct Shared {
    fsm: RwLock<Fsm>,
    status: Mutex<Status>,
    events: broadcast::Sender<JobChange>,
    effects: broadcast::Sender<Effect>,
    /// Woken when applied entries may have changed work or capacity.
    pub work: Notify,
    /// What the node measures of its work, for the metrics.
    pub measures: measures::Measures,
}

/// The services' handle on a node.
#[derive(Debug, Clone)]
pub struct Handle {
    inbox: Inbox,
    shared: Arc<Shared>,
    deadline: Duration,
}

impl Handle {
    /// Replicates a command and waits until it is applied here.
    pub async fn propose(&self, command: Command, request_id: Option<String>) -> Result<Outcome, NodeError> {
        self.propose_as(None, Op::Core(command), request_id).await
    }

    /// Replicates a change asked for by `asker` (recorded in the audit trail; refused if the
    /// asker's token is revoked when the change applies), and waits until it is applied here.
    pub async fn propose_as(
        &self,
        asker: Option<Asker>,
        op: Op,
        request_id: Option<String>,
    ) -> Result<Outcome, NodeError> {
        let (reply, rx) = oneshot::channel();
        let started = std::time::Instant::now();
        self.send(Input::Propose { op, request_id, asker, reply })?;
        let outcome = self.wait(rx).await?;
        if outcome.is_ok() {
            measures::Measures::time(&self.shared.measures.proposal, started.elapsed());
        }
        outcome
    }

    /// Replicates a change to the tokens and waits until it is applied here.
    pub async fn propose_access(&self, command: AccessCommand) -> Result<(), NodeError> {
        self.propose_as(None, Op::Access(command), None).await.map(drop)
    }

    /// Waits until reads here see every write committed before the call.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Read { reply })?;
        self.wait(rx).await?
    }

    /// Adds or removes a voter.
    pub async fn change(&self, change: Membership, asker: Option<Asker>) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Change { change, asker, reply })?;
        self.wait(rx).await?
    }

    fn send(&self, input: Input) -> Result<(), NodeError> {
        self.inbox.send(input).map_err(|_| self.stopped())
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, NodeError> {
        match tokio::time::timeout(self.deadline + Duration::from_millis(500), rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(NodeError::Unavailable("no answer within the deadline".into())),
        }
    }

    fn stopped(&self) -> NodeError {
        NodeError::Stopped(self.status().fatal.unwrap_or_else(|| "shut down".into()))
    }

    /// The state machine, for reading.
    pub fn fsm(&self) -> RwLockReadGuard<'_, Fsm> {
        self.shared.fsm.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The replica's status.
    pub fn status(&self) -> Status {
        self.shared.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Job state changes as they are applied.
    pub fn subscribe(&self) -> broadcast::Receiver<JobChange> {
        self.shared.events.subscribe()
    }

    /// Orders for agents as they are applied (the leader's agent sessions forward them).
    pub fn subscribe_effects(&self) -> broadcast::Receiver<Effect> {
        self.shared.effects.subscribe()
    }

    /// Shared state (the leader loop waits on `work`).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The inbox, for the Raft service to deliver peers' messages.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Stops the node's thread.
    pub fn stop(&self) {
        let _ = self.inbox.send(Input::Stop);
    }
}

/// Starts a node on `store`; `transport` is built with the node's inbox (to report unreachable
/// peers). Returns the handle and the thread, which ends on `Handle::stop`.
pub fn spawn<S: LogStore, T: Transport>(
    config: NodeConfig,
    store: S,
    transport: impl FnOnce(Inbox) -> T,
) -> Result<(Handle, std::thread::JoinHandle<()>), StorageError> {
    let (inbox, rx, shared) = parts(&config);
    let transport = transport(inbox.clone());
    let deadline = config.deadline;
    let drive = (Drive::Threads, std::time::Instant::now());
    let node = ready::Node::new(config, store, transport, (inbox.clone(), rx), Arc::clone(&shared), drive)?;
    let (id, watched) = (node.id(), Arc::clone(&shared));
    let thread = std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run())) {
                stop_on_panic(id, &watched, panic.as_ref());
            }
        })
        .expect("the OS can start a thread");
    Ok((Handle { inbox, shared, deadline }, thread))
}

/// A node's inbox, the thread's end of it, and the state it shares with the services.
fn parts(config: &NodeConfig) -> (Inbox, mpsc::Receiver<Input>, Arc<Shared>) {
    let (inbox, rx) = mpsc::channel();
    let (events, _) = broadcast::channel(65_536);
    let (effects, _) = broadcast::channel(65_536);
    let shared = Arc::new(Shared {
        fsm: RwLock::new(Fsm::default()),
        status: Mutex::new(Status { id: config.id, ..Status::default() }),
        events,
        effects,
        work: Notify::new(),
        measures: measures::Measures::default(),
    });
    (inbox, rx, shared)
}

/// A panic on the Raft thread is fatal: the replica can no longer commit or apply, so it says
/// why and marks itself stopped (the server then exits with an error) instead of answering on
/// as a zombie, every write refused and every read stale.
fn stop_on_panic(id: u64, shared: &Shared, panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let why = format!("the Raft thread panicked: {message}");
    tracing::error!(replica = id, "replica stopped: {why}");
    shared.status.lock().unwrap_or_else(|p| p.into_inner()).fatal = Some(why);
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod power_tests;
