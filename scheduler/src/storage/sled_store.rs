//! `LogStore` on `sled`: the default tree holds the log (keys `e` + big-endian index) and the
//! small records (one-letter keys); the snapshot lives alone in the tree `snapshot`. Every
//! value starts with the CRC-32 of what follows. The bounds of the log and the small records
//! are cached in memory, and so are the terms of the entries written since the store opened
//! (`terms.rs`); entries are read from sled.
//!
//! Why the snapshot has a tree of its own (format 2): sled keeps values inside the tree's leaf
//! pages, and rewrites a whole leaf when one of its keys changes. In format 1 the snapshot
//! shared a leaf with the hard state, which changes on nearly every Raft round, so each flush
//! rewrote the whole snapshot: megabytes per round, growing with the number of jobs.

use super::durable::Durable;
use super::terms::Terms;
use super::{LogStore, Persist, Staged, StorageError};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The on-disk format this release writes.
pub const FORMAT_VERSION: u32 = 2;
/// The format before the snapshot moved to its own tree; opened and migrated.
const FORMAT_ONE: u32 = 1;

/// How long opening a store waits for a lock that a store dropped in this process still holds.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often it looks again.
const LOCK_POLL: Duration = Duration::from_millis(5);
/// The tree of the snapshot.
const SNAPSHOT_TREE: &str = "snapshot";

const VERSION: &[u8] = b"v";
const HARD: &[u8] = b"h";
const CONF: &[u8] = b"c";
const SNAP: &[u8] = b"s";
const APPLIED: &[u8] = b"a";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [b'e'; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn open_sealed<'v>(what: &dyn Fn() -> String, value: &'v [u8]) -> Result<&'v [u8], StorageError> {
    if value.len() < 4 {
        return Err(StorageError::Corrupt { what: what() });
    }
    let (sum, body) = value.split_at(4);
    if crc32fast::hash(body).to_le_bytes() != sum {
        return Err(StorageError::Corrupt { what: what() });
    }
    Ok(body)
}

fn encode<M: PbMessage>(m: &M) -> Vec<u8> {
    seal(&m.write_to_bytes().expect("encoding a raft message into a Vec cannot fail"))
}

fn decode<M: PbMessage>(what: &dyn Fn() -> String, value: &[u8]) -> Result<M, StorageError> {
    let body = open_sealed(what, value)?;
    M::parse_from_bytes(body).map_err(|e| StorageError::Decode { what: what(), reason: e.to_string() })
}

/// What is cached of the store.
#[derive(Debug, Default)]
struct Meta {
    hard: HardState,
    conf: ConfState,
    /// Index and term of the latest snapshot (0, 0 when none).
    snap: SnapshotMetadata,
    /// Last stored entry's index; `snap.index` when the log is empty.
    last: u64,
    /// First stored entry's index; `last + 1` when the log is empty.
    first: u64,
    /// The terms of the entries stored since the store was opened.
    terms: Terms,
    /// Entries staged and not yet in sled, or stored and not yet applied, by index: a run that
    /// ends at `last`. Raft reads them from here: the entries it commits and applies are read
    /// just after they are written, and a read from sled would wait behind the writer's flush.
    /// Dropped once applied (the applied index rides with the next staged batch).
    staged: BTreeMap<u64, Arc<Entry>>,
    /// The last entry's index in sled (past `last` until the writer stores a staged
    /// truncation).
    stored_last: u64,
    /// The entries of `staged` up to this index are in sled as staged (only those are dropped
    /// once applied).
    written_through: u64,
}

/// Raft storage on a sled database. Clones share the database (a snapshot is saved from a
/// background thread).
#[derive(Debug, Clone)]
pub struct SledStore {
    tree: sled::Db,
    snaps: sled::Tree,
    meta: Arc<Mutex<Meta>>,
    /// The barrier after each flush (`durable.rs`); none for a temporary store.
    durable: Option<Arc<Durable>>,
}

/// Whether sled could not open a directory because its lock is held. sled reports it as an
/// error of kind `Other` whose message carries the `flock` error (`WouldBlock`), so the
/// message is all there is to go by.
fn lock_held(e: &io::Error) -> bool {
    let message = e.to_string();
    e.kind() == io::ErrorKind::WouldBlock
        || (message.starts_with("could not acquire lock") && message.contains("WouldBlock"))
}

/// Opens the sled database in `dir`, waiting up to `wait` for its lock (see
/// `SledStore::open_waiting`).
pub(crate) fn open_db(dir: &Path, wait: Duration) -> Result<sled::Db, StorageError> {
    let deadline = Instant::now() + wait;
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e)) if lock_held(&e) => {
                if Instant::now() >= deadline {
                    return Err(StorageError::Locked { dir: dir.to_owned() });
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(e @ sled::Error::Corruption { .. }) => {
                return Err(StorageError::Corrupt { what: format!("the database in {} ({e})", dir.display()) })
            }
            db => return Ok(db?),
        }
    }
}

impl SledStore {
    /// Flushes sled, then makes what it wrote durable.
    fn flush(&self) -> Result<(), StorageError> {
        self.tree.flush()?;
        match &self.durable {
            Some(d) => d.barrier().map_err(|e| StorageError::Io(e.into())),
            None => Ok(()),
        }
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    /// Opens the store in `dir`, waiting up to `wait` for its lock. A store dropped in this
    /// process releases the lock only once sled's flusher thread has stopped, a moment after
    /// the drop (sled does not join it), so a replica reopened at once (a restore, a test)
    /// would otherwise fail; a lock held longer is another process's.
    pub(crate) fn open_waiting(dir: &Path, wait: Duration) -> Result<Self, StorageError> {
        let mut store = Self::from_db(open_db(dir, wait)?)?;
        store.durable = Some(Arc::new(Durable::open(dir).map_err(|e| StorageError::Io(e.into()))?));
        Ok(store)
    }

    /// A store that lives in a temporary directory and disappears when dropped.
    pub fn temporary() -> Result<Self, StorageError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(tree: sled::Db) -> Result<Self, StorageError> {
        let snaps = tree.open_tree(SNAPSHOT_TREE)?;
        match tree.get(VERSION)? {
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
                match found {
                    FORMAT_VERSION => {}
                    FORMAT_ONE => Self::migrate_from_one(&tree, &snaps)?,
                    _ => return Err(StorageError::Version { found, known: FORMAT_VERSION }),
                }
            }
            None => {
                tree.insert(VERSION, &FORMAT_VERSION.to_le_bytes())?;
            }
        }
        let mut meta = Meta::default();
        if let Some(v) = tree.get(HARD)? {
            meta.hard = decode(&|| "hard state".into(), &v)?;
        }
        if let Some(v) = tree.get(CONF)? {
            meta.conf = decode(&|| "conf state".into(), &v)?;
        }
        if let Some(v) = snaps.get(SNAP)? {
            let snap: Snapshot = decode(&|| "snapshot".into(), &v)?;
            meta.snap = snap.get_metadata().clone();
        }
        let index_of = |kv: Option<sled::Result<(sled::IVec, sled::IVec)>>| -> Result<Option<u64>, StorageError> {
            Ok(kv.transpose()?.map(|(k, _)| u64::from_be_bytes(k[1..9].try_into().expect("entry keys are 9 bytes"))))
        };
        let first = index_of(tree.scan_prefix(b"e").next())?;
        let last = index_of(tree.scan_prefix(b"e").next_back())?;
        meta.last = last.unwrap_or(meta.snap.index).max(meta.snap.index);
        meta.first = first.unwrap_or(meta.last + 1);
        meta.terms = Terms::starting_at(meta.last + 1);
        meta.stored_last = meta.last;
        meta.written_through = meta.last;
        Ok(Self { tree, snaps, meta: Arc::new(Mutex::new(meta)), durable: None })
    }

    /// Format 1 to 2: the snapshot moves to its own tree. Copied and flushed before the old
    /// copy is removed and the version bumped, so a crash halfway leaves format 1 with the
    /// snapshot in both places, and the next start migrates again.
    fn migrate_from_one(tree: &sled::Db, snaps: &sled::Tree) -> Result<(), StorageError> {
        if let Some(v) = tree.get(SNAP)? {
            snaps.insert(SNAP, v)?;
            tree.flush()?;
        }
        let mut batch = sled::Batch::default();
        batch.remove(SNAP);
        batch.insert(VERSION, &FORMAT_VERSION.to_le_bytes());
        tree.apply_batch(batch)?;
        tree.flush()?;
        tracing::info!("storage migrated from format 1 to 2 (the snapshot has a tree of its own)");
        Ok(())
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
        if let Some(e) = self.meta().staged.get(&index) {
            return Ok((**e).clone());
        }
        let what = || format!("log entry {index}");
        let value = self.tree.get(entry_key(index))?.ok_or_else(|| StorageError::Corrupt { what: what() })?;
        decode(&what, &value)
    }

    /// The store as a restarted process finds it on the same database: what was written to
    /// sled, without what was only staged in memory (the deterministic simulation's crash).
    pub(crate) fn reopen(&self) -> Result<Self, StorageError> {
        Self::from_db(self.tree.clone())
    }

    /// Flips one byte of the stored entry `index` (the byte at `at`, modulo its length), as a
    /// failing disk would; false when no such entry is stored (the simulation's bit rot).
    pub(crate) fn flip_entry_byte(&self, index: u64, at: usize) -> Result<bool, StorageError> {
        let Some(value) = self.tree.get(entry_key(index))? else { return Ok(false) };
        let mut bytes = value.to_vec();
        let at = at % bytes.len();
        bytes[at] ^= 0x5a;
        self.tree.insert(entry_key(index), bytes)?;
        self.tree.flush()?;
        Ok(true)
    }

    /// Bytes on disk, for status and benchmarks.
    pub fn size_on_disk(&self) -> u64 {
        self.tree.size_on_disk().unwrap_or(0)
    }
}

impl Storage for SledStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.meta();
        Ok(RaftState::new(m.hard.clone(), m.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last, staged) = {
            let m = self.meta();
            let staged: Vec<Arc<Entry>> = m.staged.range(low..high).map(|(_, e)| Arc::clone(e)).collect();
            (m.first, m.last, staged)
        };
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max = max_size.into();
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let stored_end = staged.first().map_or(high, |e| e.index);
        let sled = (low < stored_end).then(|| self.tree.range(entry_key(low)..entry_key(stored_end)));
        let stored = sled.into_iter().flatten().map(|kv| -> raft::Result<Entry> {
            let (k, v) = kv.map_err(StorageError::from)?;
            let index = u64::from_be_bytes(k[1..9].try_into().expect("entry keys are 9 bytes"));
            Ok(decode(&|| format!("log entry {index}"), &v)?)
        });
        for entry in stored.chain(staged.iter().map(|e| Ok((**e).clone()))) {
            let entry = entry?;
            size += u64::from(entry.compute_size());
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let m = self.meta();
            if idx == m.snap.index {
                return Ok(m.snap.term);
            }
            if idx < m.first {
                return Err(raft::Error::Store(raft::StorageError::Compacted));
            }
            if idx > m.last {
                return Err(raft::Error::Store(raft::StorageError::Unavailable));
            }
            if let Some(term) = m.terms.get(idx) {
                return Ok(term);
            }
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.meta().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.meta().last)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.latest_snapshot()? {
            Some(s) if s.get_metadata().index >= request_index => Ok(s),
            _ => Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

impl LogStore for SledStore {
    fn persist(&self, p: Persist<'_>) -> Result<(), StorageError> {
        let durable = !p.entries.is_empty() || p.hard_state.is_some();
        let staged = self.stage(p.entries.to_vec(), p.hard_state.cloned(), p.commit, p.applied);
        self.write(&staged)?;
        if durable {
            self.flush()?;
        }
        Ok(())
    }

    fn stage(&self, entries: Vec<Entry>, hard: Option<HardState>, commit: Option<u64>, applied: Option<u64>) -> Staged {
        let mut m = self.meta();
        if let Some(applied) = applied {
            let from = applied.min(m.written_through) + 1;
            let keep = m.staged.split_off(&from);
            m.staged = keep;
        }
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            m.staged.split_off(&first.index);
            m.staged.extend(entries.iter().map(|e| (e.index, Arc::clone(e))));
            m.terms.store(entries.iter().map(|e| (e.index, e.term)));
            m.written_through = m.written_through.min(first.index - 1);
            m.last = last.index;
            if m.first > first.index {
                m.first = first.index;
            }
        }
        let mut next = hard.unwrap_or_else(|| m.hard.clone());
        if let Some(commit) = commit {
            next.commit = commit;
        }
        let hard = (next != m.hard).then(|| next.clone());
        m.hard = next;
        Staged { entries, hard, applied }
    }

    fn write(&self, staged: &Staged) -> Result<(), StorageError> {
        if staged.entries.is_empty() && staged.hard.is_none() && staged.applied.is_none() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let (first, stored_last) = {
            let m = self.meta();
            (m.first, m.stored_last)
        };
        if let Some(e) = staged.entries.first() {
            for stale in e.index.max(first)..=stored_last {
                batch.remove(&entry_key(stale));
            }
        }
        for e in &staged.entries {
            batch.insert(&entry_key(e.index), encode(&**e));
        }
        if let Some(applied) = staged.applied {
            batch.insert(APPLIED, &applied.to_le_bytes());
        }
        if let Some(hard) = &staged.hard {
            batch.insert(HARD, encode(hard));
        }
        self.tree.apply_batch(batch)?;
        if let Some(last) = staged.entries.last() {
            let mut m = self.meta();
            m.stored_last = last.index;
            if m.staged.get(&last.index).is_some_and(|e| Arc::ptr_eq(e, last)) {
                m.written_through = last.index;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.flush()
    }

    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let mut m = self.meta();
        let md = snapshot.get_metadata();
        let mut batch = sled::Batch::default();
        for stale in m.first..=m.last {
            batch.remove(&entry_key(stale));
        }
        let mut hard = m.hard.clone();
        hard.commit = hard.commit.max(md.index);
        hard.term = hard.term.max(md.term);
        batch.insert(HARD, encode(&hard));
        batch.insert(CONF, encode(md.get_conf_state()));
        batch.insert(APPLIED, &md.index.to_le_bytes());
        let value = encode(snapshot);
        (&*self.tree, &self.snaps)
            .transaction(|(log, snaps)| {
                log.apply_batch(&batch)?;
                snaps.insert(SNAP, value.as_slice())?;
                Ok::<(), ConflictableTransactionError<Infallible>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StorageError::from(e),
                TransactionError::Abort(never) => match never {},
            })?;
        self.flush()?;
        m.hard = hard;
        m.conf = md.get_conf_state().clone();
        m.snap = md.clone();
        m.last = md.index;
        m.stored_last = md.index;
        m.written_through = md.index;
        m.first = md.index + 1;
        m.terms = Terms::starting_at(md.index + 1);
        m.staged.clear();
        Ok(())
    }

    /// A snapshot older than the log's base is not stored: a leader's snapshot installed
    /// while this one was being encoded is newer, and stays.
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let value = encode(snapshot);
        {
            let m = self.meta();
            if snapshot.get_metadata().index <= m.snap.index {
                return Ok(());
            }
            self.snaps.insert(SNAP, value)?;
        }
        self.flush()
    }

    fn compact(&self, md: &SnapshotMetadata, compact_to: u64) -> Result<(), StorageError> {
        let stale = {
            let mut m = self.meta();
            if md.index <= m.snap.index {
                return Ok(());
            }
            let compact_to = compact_to.min(md.index + 1).min(m.last + 1).max(m.first);
            let stale = m.first..compact_to;
            m.snap = md.clone();
            m.first = compact_to;
            m.terms.compact(compact_to);
            stale
        };
        let mut batch = sled::Batch::default();
        for index in stale {
            batch.remove(&entry_key(index));
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn set_conf_state(&self, conf: &ConfState) -> Result<(), StorageError> {
        self.tree.insert(CONF, encode(conf))?;
        self.flush()?;
        self.meta().conf = conf.clone();
        Ok(())
    }

    fn applied(&self) -> Result<u64, StorageError> {
        Ok(match self.tree.get(APPLIED)? {
            Some(v) => u64::from_le_bytes(
                v.as_ref().try_into().map_err(|_| StorageError::Corrupt { what: "applied index".into() })?,
            ),
            None => 0,
        })
    }

    fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        match self.snaps.get(SNAP)? {
            Some(v) => Ok(Some(decode(&|| "snapshot".into(), &v)?)),
            None => Ok(None),
        }
    }

    fn verify(&self) -> Result<u64, StorageError> {
        let (first, last, commit) = {
            let m = self.meta();
            (m.first, m.last, m.hard.commit)
        };
        if commit > last {
            return Err(StorageError::Truncated { last, commit });
        }
        let mut expected = first;
        for kv in self.tree.range(entry_key(first)..=entry_key(last)) {
            let (k, v) = kv?;
            let index = u64::from_be_bytes(k[1..9].try_into().expect("entry keys are 9 bytes"));
            if index != expected {
                return Err(StorageError::Corrupt { what: format!("log (entry {expected} is missing)") });
            }
            let entry: Entry = decode(&|| format!("log entry {index}"), &v)?;
            if entry.index != index {
                return Err(StorageError::Corrupt {
                    what: format!("log entry {index} (it says index {})", entry.index),
                });
            }
            expected += 1;
        }
        Ok(expected - first)
    }
}

#[cfg(test)]
#[path = "sled_tests.rs"]
mod tests;
