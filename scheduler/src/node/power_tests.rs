//! A power cut of every replica at once: a store that keeps what the writer stores only in
//! memory until it is synced, and loses it at the cut. Every job acknowledged before the cut
//! must be there once the replicas start again: the replica acknowledges nothing that its
//! writer has not made durable, on a majority.

use super::*;
use crate::storage::{LogStore, Persist, SledStore, Staged, StorageError};
use crate::testing::{job_spec, setup};
use crate::transport::mem::MemNet;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A store whose written batches reach the disk (the sled store below, flushed) only at a
/// sync; once the power is cut, they are dropped and no sync succeeds.
#[derive(Clone)]
struct PowerCut {
    inner: SledStore,
    unsynced: Arc<Mutex<Vec<Staged>>>,
    cut: Arc<AtomicBool>,
}

impl Storage for PowerCut {
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

impl LogStore for PowerCut {
    fn persist(&self, batch: Persist<'_>) -> Result<(), StorageError> {
        self.inner.persist(batch)
    }
    fn stage(&self, entries: Vec<Entry>, hard: Option<HardState>, commit: Option<u64>, applied: Option<u64>) -> Staged {
        self.inner.stage(entries, hard, commit, applied)
    }
    fn write(&self, staged: &Staged) -> Result<(), StorageError> {
        self.unsynced.lock().unwrap().push(staged.clone());
        Ok(())
    }
    fn sync(&self) -> Result<(), StorageError> {
        let batches = std::mem::take(&mut *self.unsynced.lock().unwrap());
        if self.cut.load(Ordering::SeqCst) {
            return Err(StorageError::Decode { what: "the disk".into(), reason: "the power is cut".into() });
        }
        for b in &batches {
            self.inner.write(b)?;
        }
        self.inner.sync()
    }
    fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.inner.apply_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot, compact_to: u64) -> Result<(), StorageError> {
        self.inner.save_snapshot(snapshot, compact_to)
    }
    fn set_conf_state(&self, conf: &ConfState) -> Result<(), StorageError> {
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

fn start(net: &MemNet, dir: &std::path::Path, id: u64, cut: &Arc<AtomicBool>) -> (Handle, std::thread::JoinHandle<()>) {
    let mut config = NodeConfig::new(id, vec![1, 2, 3]);
    config.tick = Duration::from_millis(10);
    config.deadline = Duration::from_millis(1500);
    let inner = SledStore::open(&dir.join(id.to_string())).unwrap();
    let store = PowerCut { inner, unsynced: Arc::default(), cut: Arc::clone(cut) };
    let net = net.clone();
    spawn(config, store, |inbox| {
        net.attach(id, inbox);
        net.transport(id)
    })
    .unwrap()
}

async fn leader(replicas: &[Handle]) -> &Handle {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(h) = replicas.iter().find(|h| h.status().leader == h.status().id) {
            return h;
        }
        assert!(Instant::now() < until, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Proposes until acknowledged or refused for good; the name when acknowledged.
async fn submit(replicas: &[Handle], name: String) -> Option<String> {
    let mut spec = job_spec("t");
    spec.name.clone_from(&name);
    for _ in 0..50 {
        let command = Command::Submit { jobs: vec![spec.clone()], at_ms: 1 };
        match leader(replicas).await.propose(command, Some(name.clone())).await {
            Ok(_) => return Some(name),
            Err(NodeError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_acknowledged_before_a_power_cut_of_every_replica_are_kept() {
    let (net, dir, cut) = (MemNet::new(11), tempfile::tempdir().unwrap(), Arc::new(AtomicBool::new(false)));
    let (replicas, threads): (Vec<Handle>, Vec<_>) = (1..=3).map(|id| start(&net, dir.path(), id, &cut)).unzip();
    for c in setup("t", 8) {
        let until = Instant::now() + Duration::from_secs(10);
        while leader(&replicas).await.propose(c.clone(), None).await.is_err() {
            assert!(Instant::now() < until, "the setup was never acknowledged");
        }
    }
    let replicas = Arc::new(replicas);
    let mut clients = Vec::new();
    for client in 0..4 {
        let replicas = Arc::clone(&replicas);
        clients.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match submit(&replicas, format!("c{client}-{i}")).await {
                    Some(name) => acked.push(name),
                    None => return acked,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    replicas.iter().for_each(Handle::stop);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(acked.len() > 10, "the clients were acknowledged before the cut: {}", acked.len());

    let on = Arc::new(AtomicBool::new(false));
    let (replicas, _threads): (Vec<Handle>, Vec<_>) = (1..=3).map(|id| start(&net, dir.path(), id, &on)).unzip();
    let until = Instant::now() + Duration::from_secs(10);
    let lead = leader(&replicas).await;
    loop {
        let ok = lead.read_barrier().await.is_ok();
        let names: std::collections::BTreeSet<String> =
            lead.fsm().state.jobs().values().map(|j| j.spec.name.clone()).collect();
        let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(*n)).collect();
        if ok && lost.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "acknowledged before the cut and lost: {lost:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
