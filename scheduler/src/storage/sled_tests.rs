use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry { index, term, data: data.to_vec().into(), ..Entry::default() }
}

fn entries(store: &SledStore, low: u64, high: u64) -> Vec<(u64, u64)> {
    store.entries(low, high, None, GetEntriesContext::empty(false)).unwrap().iter().map(|e| (e.index, e.term)).collect()
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s.data = b"state".to_vec().into();
    s
}

#[test]
fn entries_and_hard_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let hs = HardState { term: 2, vote: 3, commit: 2, ..HardState::default() };
        let ents = [entry(1, 1, b"a"), entry(2, 2, b"b"), entry(3, 2, b"c")];
        store.persist(Persist { entries: &ents, hard_state: Some(&hs), commit: None, applied: Some(2) }).unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let state = store.initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.vote, state.hard_state.commit), (2, 3, 2));
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 3));
    assert_eq!(entries(&store, 1, 4), vec![(1, 1), (2, 2), (3, 2)]);
    assert_eq!(store.entries(2, 3, None, GetEntriesContext::empty(false)).unwrap()[0].data.as_ref(), b"b");
    assert_eq!(store.term(3).unwrap(), 2);
    assert_eq!(store.applied().unwrap(), 2);
    assert_eq!(store.verify().unwrap(), 3);
}

#[test]
fn a_conflicting_append_replaces_the_tail() {
    let store = SledStore::temporary().unwrap();
    let ents = [entry(1, 1, b""), entry(2, 1, b""), entry(3, 1, b""), entry(4, 1, b"")];
    store.persist(Persist { entries: &ents, ..Persist::default() }).unwrap();
    store.persist(Persist { entries: &[entry(3, 2, b"")], ..Persist::default() }).unwrap();
    assert_eq!(store.last_index().unwrap(), 3);
    assert_eq!(entries(&store, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
    assert!(matches!(store.term(4), Err(raft::Error::Store(raft::StorageError::Unavailable))));
}

#[test]
fn terms_agree_with_the_entries_across_a_reopen_and_a_replaced_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let ents: Vec<Entry> = (1..=6).map(|i| entry(i, 1 + i / 4, b"")).collect();
        store.persist(Persist { entries: &ents, ..Persist::default() }).unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let agree = |store: &SledStore| {
        let last = store.last_index().unwrap();
        for (index, term) in entries(store, 1, last + 1) {
            assert_eq!(store.term(index).unwrap(), term, "entry {index}");
        }
    };
    agree(&store);
    store.persist(Persist { entries: &[entry(7, 3, b""), entry(8, 3, b"")], ..Persist::default() }).unwrap();
    agree(&store);
    store.persist(Persist { entries: &[entry(5, 4, b""), entry(6, 5, b"")], ..Persist::default() }).unwrap();
    assert_eq!(store.last_index().unwrap(), 6);
    agree(&store);
    assert_eq!((store.term(4).unwrap(), store.term(5).unwrap(), store.term(6).unwrap()), (2, 4, 5));
}

#[test]
fn max_size_returns_at_least_one_entry() {
    let store = SledStore::temporary().unwrap();
    let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &[0; 100])).collect();
    store.persist(Persist { entries: &ents, ..Persist::default() }).unwrap();
    assert_eq!(store.entries(1, 6, 1, GetEntriesContext::empty(false)).unwrap().len(), 1);
    assert_eq!(store.entries(1, 6, 250, GetEntriesContext::empty(false)).unwrap().len(), 2);
}

/// A replica's own snapshot whose save ends after a leader's newer one was installed neither
/// replaces it nor moves the log's base back.
#[test]
fn an_older_snapshot_saved_late_leaves_the_installed_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = stored(dir.path(), 10, b"");
    let own = snapshot(8, 1, vec![1, 2, 3]);
    store.apply_snapshot(&snapshot(20, 2, vec![1, 2, 3])).unwrap();
    store.save_snapshot(&own).unwrap();
    store.compact(own.get_metadata(), 6).unwrap();
    assert_eq!(store.latest_snapshot().unwrap().unwrap().get_metadata().index, 20);
    assert_eq!((store.first_index().unwrap(), store.term(20).unwrap()), (21, 2));
}

#[test]
fn saving_a_snapshot_compacts_the_log_and_keeps_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = stored(dir.path(), 10, b"");
        let snap = snapshot(8, 1, vec![1, 2, 3]);
        store.save_snapshot(&snap).unwrap();
        assert_eq!(store.first_index().unwrap(), 1, "saving alone leaves the log to the Raft thread");
        assert_eq!(store.term(4).unwrap(), 1);
        store.compact(snap.get_metadata(), 6).unwrap();
        assert_eq!(store.first_index().unwrap(), 6);
        assert!(matches!(store.term(4), Err(raft::Error::Store(raft::StorageError::Compacted))));
        assert!(matches!(
            store.entries(5, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (6, 10));
    assert_eq!(store.term(8).unwrap(), 1);
    assert_eq!(store.snapshot(8, 2).unwrap().get_metadata().index, 8);
    assert!(store.snapshot(9, 2).is_err(), "a snapshot older than requested is not offered");
}

/// Reopening a store at once after dropping it works, however late sled's flusher thread lets
/// go of the lock (it once failed `WouldBlock` on a loaded machine); a store held open is
/// refused, naming the directory.
#[test]
fn a_store_reopens_at_once_after_a_drop_and_a_held_one_is_named_locked() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=20 {
        let store = SledStore::open(dir.path()).unwrap();
        store.persist(Persist { entries: &[entry(i, 1, b"")], ..Persist::default() }).unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.last_index().unwrap(), 20);
    let err = SledStore::open_waiting(dir.path(), std::time::Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

/// A store in `dir` holding entries 1 to `last` of term 1 with `payload`.
fn stored(dir: &std::path::Path, last: u64, payload: &[u8]) -> SledStore {
    let store = SledStore::open(dir).unwrap();
    let ents: Vec<Entry> = (1..=last).map(|i| entry(i, 1, payload)).collect();
    store.persist(Persist { entries: &ents, ..Persist::default() }).unwrap();
    store
}

#[test]
fn applying_a_snapshot_replaces_the_log() {
    let store = SledStore::temporary().unwrap();
    let ents: Vec<Entry> = (1..=3).map(|i| entry(i, 1, b"")).collect();
    store.persist(Persist { entries: &ents, ..Persist::default() }).unwrap();
    store.apply_snapshot(&snapshot(20, 4, vec![1, 2, 3])).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (21, 20));
    assert_eq!(store.term(20).unwrap(), 4);
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state.commit, 20);
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    store.persist(Persist { entries: &[entry(21, 4, b"")], ..Persist::default() }).unwrap();
    assert_eq!(entries(&store, 21, 22), vec![(21, 4)]);
}

#[test]
fn a_corrupt_entry_is_refused_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 3, b"payload");
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        let mut value = db.get(entry_key(2)).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0xff;
        db.insert(entry_key(2), value).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let err = store.verify().unwrap_err().to_string();
    assert!(err.contains("log entry 2 is corrupt"), "{err}");
    assert!(store.entries(1, 4, None, GetEntriesContext::empty(false)).is_err());
    assert_eq!(entries(&store, 1, 2), vec![(1, 1)], "entries before the corrupt one still read");
}

/// One flipped byte in the hard state, the configuration or the snapshot: the store refuses
/// to open and names the record and the recovery (the issue saw "Read corrupted data at file
/// offset None" for a damaged configuration).
#[test]
fn a_damaged_hard_state_configuration_or_snapshot_is_refused_by_name() {
    for (tree, key, what) in
        [(None, HARD, "hard state"), (None, CONF, "conf state"), (Some(SNAPSHOT_TREE), SNAP, "snapshot")]
    {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = stored(dir.path(), 3, b"payload");
            let hard = HardState { term: 1, commit: 3, ..HardState::default() };
            store.persist(Persist { hard_state: Some(&hard), ..Persist::default() }).unwrap();
            store.set_conf_state(&snapshot(0, 0, vec![1, 2, 3]).get_metadata().get_conf_state().clone()).unwrap();
            let snap = snapshot(2, 1, vec![1, 2, 3]);
            store.save_snapshot(&snap).unwrap();
            store.compact(snap.get_metadata(), 2).unwrap();
        }
        {
            let db = open_db(dir.path(), LOCK_WAIT).unwrap();
            let records = match tree {
                Some(name) => db.open_tree(name).unwrap(),
                None => std::ops::Deref::deref(&db).clone(),
            };
            let mut value = records.get(key).unwrap().unwrap_or_else(|| panic!("{what} stored")).to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x5a;
            records.insert(key, value).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).err().unwrap_or_else(|| panic!("a damaged {what} opened")).to_string();
        assert!(err.contains(&format!("{what} is corrupt")), "{err}");
        assert!(err.contains("remove its data directory so it rejoins empty"), "{err}");
    }
}

/// A flipped byte in sled's own `conf` file: refused as corrupt, naming the directory and the
/// recovery, instead of sled's bare "Read corrupted data at file offset None".
#[test]
fn a_damaged_sled_configuration_file_is_refused_with_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    drop(stored(dir.path(), 3, b"payload"));
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[0] ^= 0x5a;
    std::fs::write(&conf, bytes).unwrap();
    let err = SledStore::open(dir.path()).expect_err("a damaged sled conf opened").to_string();
    assert!(err.contains(&format!("the database in {}", dir.path().display())), "{err}");
    assert!(err.contains("is corrupt") && err.contains("rejoins empty"), "{err}");
}

/// A log that lost its end (what sled did when the newest entry was damaged) no longer reaches
/// the commit index: the store says so at start instead of Raft panicking later.
#[test]
fn a_log_cut_before_its_commit_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = stored(dir.path(), 3, b"payload");
        let hard = HardState { term: 1, commit: 3, ..HardState::default() };
        store.persist(Persist { hard_state: Some(&hard), ..Persist::default() }).unwrap();
        assert_eq!(store.verify().unwrap(), 3);
    }
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        db.remove(entry_key(3)).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap().verify().unwrap_err();
    assert!(matches!(err, StorageError::Truncated { last: 2, commit: 3 }), "{err:?}");
    assert!(err.to_string().contains("replace this replica"), "{err}");
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        db.insert(VERSION, &99u32.to_le_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("format version 99"), "{err}");
}

#[test]
fn a_format_one_store_is_migrated_and_keeps_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        db.insert(VERSION, &1u32.to_le_bytes()).unwrap();
        db.insert(SNAP, encode(&snapshot(5, 2, vec![1, 2, 3]))).unwrap();
        for e in (6..=8).map(|i| entry(i, 2, b"x")) {
            db.insert(entry_key(e.index), encode(&e)).unwrap();
        }
        db.flush().unwrap();
    }
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.latest_snapshot().unwrap().unwrap().get_metadata().index, 5);
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (6, 8));
        assert_eq!(store.verify().unwrap(), 3);
    }
    let db = open_db(dir.path(), LOCK_WAIT).unwrap();
    assert_eq!(db.get(VERSION).unwrap().unwrap().as_ref(), &FORMAT_VERSION.to_le_bytes());
    assert!(db.get(SNAP).unwrap().is_none(), "the old copy is gone");
    assert!(db.open_tree(SNAPSHOT_TREE).unwrap().get(SNAP).unwrap().is_some());
}

/// The Raft thread stages batches in memory and the writer stores them later, in order: staged
/// entries are read at once (raft-rs requires it before the Ready is advanced), a staged
/// truncation hides the stored tail it replaces, and once written and synced everything is
/// there after a reopen, the tail replaced.
#[test]
fn staged_batches_read_at_once_and_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let stored: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"old")).collect();
        store.persist(Persist { entries: &stored, ..Persist::default() }).unwrap();
        let first = store.stage(vec![entry(4, 2, b"new"), entry(5, 2, b"new"), entry(6, 2, b"new")], None, None, None);
        let hs = HardState { term: 2, vote: 1, commit: 6, ..HardState::default() };
        let second = store.stage(vec![entry(7, 2, b"next")], Some(hs), None, Some(6));
        let expected = vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2)];
        assert_eq!(entries(&store, 1, 8), expected, "staged entries are read before they are written");
        assert_eq!(store.term(5).unwrap(), 2);
        assert_eq!(store.initial_state().unwrap().hard_state.commit, 6);
        store.write(&first).unwrap();
        assert_eq!(entries(&store, 1, 8), expected, "and while only some are written");
        store.write(&second).unwrap();
        store.sync().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(entries(&store, 1, 8), vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2)]);
    let read = store.entries(4, 5, None, GetEntriesContext::empty(false)).unwrap();
    assert_eq!(read[0].data.as_ref(), b"new", "the stored tail was replaced");
    assert_eq!((store.initial_state().unwrap().hard_state.commit, store.applied().unwrap()), (6, 6));
    assert_eq!(store.verify().unwrap(), 7);
}
