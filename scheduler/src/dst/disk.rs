//! A simulated disk under the real sled store: what the writer stores reaches sled only at a
//! sync (or any other call that flushes), as with a drive's volatile cache. A crash drops the
//! batches not yet synced, and a power cut loses them and makes every later sync fail. Reads see everything,
//! as a running process does through the page cache.

use crate::storage::{LogStore, Persist, SledStore, Staged, StorageError};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A disk that loses what was not synced; clones share it.
#[derive(Clone, Debug)]
pub struct Disk {
    inner: SledStore,
    unsynced: Arc<Mutex<Vec<Staged>>>,
    cut: Arc<AtomicBool>,
}

impl Disk {
    /// A disk over `inner`.
    pub fn new(inner: SledStore) -> Self {
        Self { inner, unsynced: Arc::default(), cut: Arc::default() }
    }

    /// An empty disk in memory.
    pub fn empty() -> Result<Self, StorageError> {
        Ok(Self::new(SledStore::temporary()?))
    }

    /// Cuts the power: what was not synced is lost, and no sync succeeds from now on.
    pub fn cut_power(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.lock().clear();
    }

    /// The disk as a process started after a crash finds it: only what was synced.
    pub fn after_crash(&self) -> Result<Self, StorageError> {
        self.cut_power();
        Ok(Self::new(self.inner.reopen()?))
    }

    /// Flips a byte of stored entry `index` (see `SledStore::flip_entry_byte`).
    pub fn flip_entry_byte(&self, index: u64, at: usize) -> Result<bool, StorageError> {
        self.inner.flip_entry_byte(index, at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Staged>> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes through what waits in the cache (a flush stores everything written before it);
    /// once the power is cut, it is lost instead.
    fn flush_cache(&self) -> Result<(), StorageError> {
        let batches = std::mem::take(&mut *self.lock());
        if self.cut.load(Ordering::SeqCst) {
            return Ok(());
        }
        batches.iter().try_for_each(|b| self.inner.write(b))
    }
}

impl Storage for Disk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max: impl Into<Option<u64>>,
        c: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max, c)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.inner.snapshot(request_index, to)
    }
}

impl LogStore for Disk {
    fn persist(&self, batch: Persist<'_>) -> Result<(), StorageError> {
        self.flush_cache()?;
        self.inner.persist(batch)
    }
    fn stage(&self, entries: Vec<Entry>, hard: Option<HardState>, commit: Option<u64>, applied: Option<u64>) -> Staged {
        self.inner.stage(entries, hard, commit, applied)
    }
    fn write(&self, staged: &Staged) -> Result<(), StorageError> {
        self.lock().push(staged.clone());
        Ok(())
    }
    fn sync(&self) -> Result<(), StorageError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StorageError::Decode { what: "the disk".into(), reason: "the power is cut".into() });
        }
        self.flush_cache()?;
        self.inner.sync()
    }
    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.flush_cache()?;
        self.inner.apply_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.flush_cache()?;
        self.inner.save_snapshot(snapshot)
    }
    fn compact(&self, snapshot: &SnapshotMetadata, compact_to: u64) -> Result<(), StorageError> {
        self.inner.compact(snapshot, compact_to)
    }
    fn set_conf_state(&self, conf: &ConfState) -> Result<(), StorageError> {
        self.flush_cache()?;
        self.inner.set_conf_state(conf)
    }
    fn applied(&self) -> Result<u64, StorageError> {
        self.inner.applied()
    }
    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.latest_snapshot()
    }
    fn verify(&self) -> Result<u64, StorageError> {
        self.inner.verify()
    }
}
