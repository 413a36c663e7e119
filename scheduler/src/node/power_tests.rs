//! A power cut of every replica at once: a store that keeps what the writer stores only in
//! memory until it is synced, and loses it at the cut. Every job acknowledged before the cut
//! must be there once the replicas start again: the replica acknowledges nothing that its
//! writer has not made durable, on a majority.

use super::*;
use crate::dst::disk::Disk;
use crate::storage::SledStore;
use crate::testing::{job_spec, setup};
use crate::transport::mem::MemNet;
use std::time::Instant;

/// Starts replica `id` on a disk (`crate::dst::disk`) whose written batches reach sled only
/// at a sync; returns the disk too, to cut its power.
fn start(net: &MemNet, dir: &std::path::Path, id: u64) -> (Handle, std::thread::JoinHandle<()>, Disk) {
    let mut config = NodeConfig::new(id, vec![1, 2, 3]);
    config.tick = Duration::from_millis(10);
    config.deadline = Duration::from_millis(1500);
    let inner = SledStore::open(&dir.join(id.to_string())).unwrap();
    let disk = Disk::new(inner);
    let net = net.clone();
    let (handle, thread) = spawn(config, disk.clone(), |inbox| {
        net.attach(id, inbox);
        net.transport(id)
    })
    .unwrap();
    (handle, thread, disk)
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

/// Proposes until acknowledged or refused for good; the name when acknowledged. Proposes to
/// the replica that says it leads, else to any (which answers `Unavailable` while there is no
/// leader, and `Stopped` once the replicas are stopped: the client ends then, instead of
/// waiting for a leader that stopped replicas never elect).
async fn submit(replicas: &[Handle], name: String) -> Option<String> {
    let mut spec = job_spec("t");
    spec.name.clone_from(&name);
    for _ in 0..50 {
        let command = Command::Submit { jobs: vec![spec.clone()], at_ms: 1 };
        let to = replicas.iter().find(|h| h.status().leader == h.status().id).unwrap_or(&replicas[0]);
        match to.propose(command, Some(name.clone())).await {
            Ok(_) => return Some(name),
            Err(NodeError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_acknowledged_before_a_power_cut_of_every_replica_are_kept() {
    let (net, dir) = (MemNet::new(11), tempfile::tempdir().unwrap());
    let started: Vec<_> = (1..=3).map(|id| start(&net, dir.path(), id)).collect();
    let disks: Vec<Disk> = started.iter().map(|(_, _, d)| d.clone()).collect();
    let (replicas, threads): (Vec<Handle>, Vec<_>) = started.into_iter().map(|(h, t, _)| (h, t)).unzip();
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
    disks.iter().for_each(Disk::cut_power);
    tokio::time::sleep(Duration::from_millis(200)).await;
    replicas.iter().for_each(Handle::stop);
    threads.into_iter().for_each(|t| t.join().unwrap());
    drop(disks);
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(acked.len() > 10, "the clients were acknowledged before the cut: {}", acked.len());

    let (replicas, _threads): (Vec<Handle>, Vec<_>) =
        (1..=3).map(|id| start(&net, dir.path(), id)).map(|(h, t, _)| (h, t)).unzip();
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
