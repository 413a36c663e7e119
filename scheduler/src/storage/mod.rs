//! Durable Raft storage behind a trait: log entries (each with a checksum), hard state, conf
//! state, the latest snapshot and the applied index. `sled_store.rs` implements it on `sled`,
//! with the entries' terms cached in memory (`terms.rs`).

mod durable;
mod sled_store;
mod terms;

pub use sled_store::SledStore;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// What one Ready asks to make durable, written in one batch and flushed before the Ready's
/// persisted messages are sent.
#[derive(Debug, Default)]
pub struct Persist<'a> {
    /// New entries; any stored entry at or after the first one's index is replaced.
    pub entries: &'a [Entry],
    /// The new hard state, if it changed.
    pub hard_state: Option<&'a HardState>,
    /// The new commit index, when only it changed (written, not flushed: a lost commit index is
    /// learnt again from the leader).
    pub commit: Option<u64>,
    /// The applied index, written with the batch (not flushed on its own: after a crash the
    /// replica re-applies from its snapshot anyway).
    pub applied: Option<u64>,
}

/// A batch taken in memory by `LogStore::stage`, for the writer to store.
#[derive(Debug, Default, Clone)]
pub struct Staged {
    /// The entries, shared with the store's memory until they are stored.
    pub entries: Vec<std::sync::Arc<Entry>>,
    /// The hard state, when it changed.
    pub hard: Option<HardState>,
    /// The applied index, written with the batch.
    pub applied: Option<u64>,
}

/// Storage of one replica. Reads come through `raft::Storage`; writes are durable when the
/// call returns. Clones share the storage (a snapshot is saved from another thread while the
/// Raft loop goes on).
pub trait LogStore: raft::Storage + Clone + Send + Sync + 'static {
    /// Appends entries and hard state in one flushed batch.
    fn persist(&self, batch: Persist<'_>) -> Result<(), StorageError>;
    /// Takes entries and a hard state (or only a new commit index) in memory: readable at once
    /// through `raft::Storage`, stored by `write` and made durable by `sync`, both on another
    /// thread, in the order they were staged.
    fn stage(&self, entries: Vec<Entry>, hard: Option<HardState>, commit: Option<u64>, applied: Option<u64>) -> Staged;
    /// Stores a staged batch (not yet durable); staged batches are written in order.
    fn write(&self, staged: &Staged) -> Result<(), StorageError>;
    /// Makes every batch written so far durable (the flush and its barrier).
    fn sync(&self) -> Result<(), StorageError>;
    /// Replaces everything up to the snapshot's index with it (a follower catching up).
    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Stores a snapshot this replica made of its own state, durably, and leaves the log as it
    /// is. Safe to call from another thread while the Raft loop appends and reads.
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Makes the saved snapshot of `snapshot` the log's base and drops the entries before
    /// `compact_to` (entries at and after it stay for lagging followers); reads of dropped
    /// entries answer `Compacted` from then on. Only on the Raft thread, between two steps:
    /// raft-rs reads the entries to send and the term of the one before them in two calls, and
    /// a compaction between the two made it send a new member an append whose previous term
    /// read 0, which the member took as matching its empty log (and panicked).
    fn compact(&self, snapshot: &SnapshotMetadata, compact_to: u64) -> Result<(), StorageError>;
    /// Sets the conf state (after a membership change is applied).
    fn set_conf_state(&self, conf: &ConfState) -> Result<(), StorageError>;
    /// The applied index recorded last.
    fn applied(&self) -> Result<u64, StorageError>;
    /// The latest snapshot, if any.
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;
    /// Reads and checks every stored entry, and that the log reaches the commit index; a
    /// replica calls it at start so that a corrupt or cut log stops it with a clear error
    /// instead of being applied (or of a panic later, when Raft finds the commit index past
    /// the log's end).
    fn verify(&self) -> Result<u64, StorageError>;
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk or sled failed.
    #[error("storage failed")]
    Io(#[from] sled::Error),
    /// A stored record does not match its checksum.
    #[error("storage: {what} is corrupt (checksum mismatch); restore this replica from a snapshot or remove its data directory so it rejoins empty")]
    Corrupt {
        /// Which record.
        what: String,
    },
    /// A stored record does not decode.
    #[error("storage: {what} does not decode: {reason}")]
    Decode {
        /// Which record.
        what: String,
        /// The decoder's message.
        reason: String,
    },
    /// The log ends before the commit index: entries that a majority acknowledged are gone
    /// (a disk or a file system that lost the end of the log).
    #[error(
        "storage: the log ends at entry {last}, before the commit index {commit}: committed entries are missing; \
         replace this replica (docs/operations.md, \"Its disk is lost or corrupt\")"
    )]
    Truncated {
        /// The last entry stored (or the snapshot's index).
        last: u64,
        /// The commit index of the hard state.
        commit: u64,
    },
    /// Another process holds the data directory.
    #[error(
        "storage: {} is locked by another process (is another qm server running on this data directory?)",
        .dir.display()
    )]
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// The data directory was written by a newer format.
    #[error("storage: format version {found} is not known to this release (it knows {known}); upgrade qm")]
    Version {
        /// Found on disk.
        found: u32,
        /// What this release writes.
        known: u32,
    },
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
