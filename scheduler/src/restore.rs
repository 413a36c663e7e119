//! Backups. `seed` starts a new cluster from a snapshot file (from `AdminService.SaveSnapshot`
//! or `export`): it seeds the empty storage of each new replica, with the new members, at the
//! backup's index; every replica restores the same file, so their logs agree from the start.
//! `export` reads a stopped replica's data directory offline (the way out when a majority is
//! lost): its snapshot, then its committed log.

use crate::codec::CodecError;
use crate::codec::{decode_batch, ChangeContext};
use crate::fsm::Fsm;
use crate::storage::SledStore;
use crate::storage::{LogStore, StorageError};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, EntryType, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, Storage};
use std::path::Path;

/// Why a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The data directory already holds a replica.
    #[error("--restore: the data directory already holds a replica (log or snapshot); restore into an empty one")]
    NotEmpty,
    /// The file is not a snapshot this release reads.
    #[error("--restore: {0}")]
    Snapshot(#[from] CodecError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored log could not be read back.
    #[error("export: {0}")]
    Log(String),
}

/// The committed state of a stopped replica's data directory, as a snapshot file's bytes, and
/// the index it was taken at.
pub fn export(dir: &Path) -> Result<(u64, Vec<u8>), RestoreError> {
    let store = SledStore::open(dir)?;
    store.verify()?;
    let mut fsm = match store.latest_snapshot()? {
        Some(s) => Fsm::restore(&s.data, s.get_metadata().index)?,
        None => Fsm::default(),
    };
    let commit = store.initial_state().map_err(|e| RestoreError::Log(e.to_string()))?.hard_state.commit;
    let log = |e: raft::Error| RestoreError::Log(e.to_string());
    let first = store.first_index().map_err(log)?.max(fsm.applied + 1);
    let last = commit.min(store.last_index().map_err(log)?);
    if first <= last {
        for e in store.entries(first, last + 1, None, GetEntriesContext::empty(false)).map_err(log)? {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    fsm.apply(e.index, decode_batch(&e.data)?);
                }
                _ => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| RestoreError::Log(err.to_string()))?;
                    let context = ChangeContext::decode(&cc.context)?;
                    let removed = cc.get_change_type() == ConfChangeType::RemoveNode;
                    fsm.record_change(e.index, removed, cc.node_id, context.address, context.asker);
                }
            }
        }
    }
    Ok((fsm.applied, fsm.snapshot()))
}

/// Seeds an empty `store` with the snapshot `data`; `members` become the voters. Returns the
/// index the cluster starts at.
pub fn seed(store: &impl LogStore, data: &[u8], members: &[(u64, String)]) -> Result<u64, RestoreError> {
    let state =
        store.initial_state().map_err(|e| StorageError::Decode { what: "state".into(), reason: e.to_string() })?;
    let empty = state.hard_state.term == 0
        && state.conf_state.voters.is_empty()
        && store.latest_snapshot()?.is_none()
        && store.last_index().unwrap_or(0) == 0;
    if !empty {
        return Err(RestoreError::NotEmpty);
    }
    let mut fsm = Fsm::restore(data, 0)?;
    fsm.members = members.iter().cloned().collect();
    let index = fsm.applied.max(1);
    let mut snapshot = Snapshot { data: fsm.snapshot().into(), ..Snapshot::default() };
    let conf = ConfState { voters: members.iter().map(|(id, _)| *id).collect(), ..ConfState::default() };
    snapshot.set_metadata(SnapshotMetadata { index, term: 1, ..SnapshotMetadata::default() });
    snapshot.mut_metadata().set_conf_state(conf);
    store.apply_snapshot(&snapshot)?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Persist, SledStore};
    use qm_core::Command;

    fn backup() -> Vec<u8> {
        let mut fsm = Fsm::default();
        for c in crate::testing::setup("t", 8) {
            fsm.state.apply(c).unwrap();
        }
        fsm.state.apply(Command::Submit { jobs: vec![crate::testing::job_spec("t")], at_ms: 1 }).unwrap();
        fsm.snapshot()
    }

    #[test]
    fn a_backup_seeds_an_empty_store_with_the_new_members() {
        let store = SledStore::temporary().unwrap();
        let members = vec![(1, "10.0.0.1:7070".to_owned()), (2, "10.0.0.2:7070".to_owned())];
        let index = seed(&store, &backup(), &members).unwrap();
        let snap = store.latest_snapshot().unwrap().unwrap();
        assert_eq!(snap.get_metadata().index, index);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
        let fsm = Fsm::restore(&snap.data, index).unwrap();
        assert_eq!(fsm.state.jobs().len(), 1);
        assert_eq!(fsm.members.into_iter().collect::<Vec<_>>(), members);
    }

    #[test]
    fn export_reads_the_snapshot_and_the_committed_log_of_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let members = vec![(1, "a:1".to_owned())];
            seed(&store, &backup(), &members).unwrap();
            let more = crate::codec::encode_batch(&[crate::codec::Proposal {
                asker: None,
                origin: 1,
                seq: 1,
                request_id: None,
                op: crate::codec::Op::Core(Command::Submit { jobs: vec![crate::testing::job_spec("t")], at_ms: 2 }),
            }]);
            let entry =
                |index| raft::eraftpb::Entry { index, term: 1, data: more.clone().into(), ..Default::default() };
            let hs = raft::eraftpb::HardState { term: 1, commit: 2, ..Default::default() };
            store
                .persist(Persist { entries: &[entry(2), entry(3)], hard_state: Some(&hs), ..Persist::default() })
                .unwrap();
        }
        let (index, data) = export(dir.path()).unwrap();
        assert_eq!(index, 2, "the uncommitted entry 3 is left out");
        assert_eq!(Fsm::restore(&data, index).unwrap().state.jobs().len(), 2);
    }

    #[test]
    fn a_store_in_use_or_a_bad_file_is_refused() {
        let store = SledStore::temporary().unwrap();
        let e = raft::eraftpb::Entry { index: 1, term: 1, ..Default::default() };
        store.persist(Persist { entries: &[e], ..Persist::default() }).unwrap();
        assert!(matches!(seed(&store, &backup(), &[(1, "a:1".into())]), Err(RestoreError::NotEmpty)));
        let fresh = SledStore::temporary().unwrap();
        let err = seed(&fresh, b"not a snapshot", &[(1, "a:1".into())]).unwrap_err();
        assert!(err.to_string().starts_with("--restore: snapshot does not decode"), "{err}");
    }
}
