//! Three replicas in one process over a `MemNet` that can partition, drop and delay.

use super::*;
use crate::storage::SledStore;
use crate::testing::{job_spec, setup};
use crate::transport::mem::MemNet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

struct Cluster {
    net: MemNet,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, (Handle, std::thread::JoinHandle<()>)>,
    tune: fn(&mut NodeConfig),
}

impl Cluster {
    fn new(tune: fn(&mut NodeConfig)) -> Self {
        let mut c = Self { net: MemNet::new(7), dir: tempfile::tempdir().unwrap(), nodes: BTreeMap::new(), tune };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.path().join(id.to_string())
    }

    fn start(&mut self, id: u64) {
        self.start_with(id, vec![1, 2, 3]);
    }

    fn start_with(&mut self, id: u64, voters: Vec<u64>) {
        let mut config = NodeConfig::new(id, voters);
        config.tick = Duration::from_millis(10);
        config.deadline = Duration::from_millis(1500);
        (self.tune)(&mut config);
        let store = SledStore::open(&self.path(id)).unwrap();
        let net = self.net.clone();
        let (handle, thread) = spawn(config, store, |inbox| {
            net.attach(id, inbox);
            net.transport(id)
        })
        .unwrap();
        self.nodes.insert(id, (handle, thread));
    }

    fn stop(&mut self, id: u64) {
        let (handle, thread) = self.nodes.remove(&id).unwrap();
        handle.stop();
        thread.join().unwrap();
    }

    fn handle(&self, id: u64) -> &Handle {
        &self.nodes[&id].0
    }

    /// Waits until the replicas in `ids` agree on a leader among them.
    async fn leader_of(&self, ids: &[u64]) -> u64 {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: Vec<u64> = ids.iter().map(|id| self.handle(*id).status().leader).collect();
            if leaders[0] != 0 && ids.contains(&leaders[0]) && leaders.iter().all(|l| *l == leaders[0]) {
                return leaders[0];
            }
            assert!(Instant::now() < until, "no leader agreed among {ids:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running replica has applied the same index and holds the same state
    /// (fails after 10 s).
    async fn converged(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let applied: Vec<u64> = self.nodes.values().map(|(h, _)| h.fsm().applied).collect();
            let hashes: Vec<[u8; 32]> = self.nodes.values().map(|(h, _)| h.fsm().state.hash()).collect();
            if applied.windows(2).all(|w| w[0] == w[1]) && hashes.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < until, "replicas did not converge: applied {applied:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets up the team, through the leader of the moment: a leader elected a moment ago may
    /// step down under the first proposals (they are absolute settings, safe to send again).
    async fn set_up(&self) {
        for c in setup("t", 8) {
            let mut tries = 0;
            loop {
                let leader = self.leader_of(&[1, 2, 3]).await;
                match self.handle(leader).propose(c.clone(), None).await {
                    Ok(_) => break,
                    Err(NodeError::Unavailable(_)) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
}

fn defaults(_: &mut NodeConfig) {}

fn submit(name: String) -> Command {
    let mut spec = job_spec("t");
    spec.name = name;
    Command::Submit { jobs: vec![spec], at_ms: 1 }
}

fn names(h: &Handle) -> Vec<String> {
    let mut out: Vec<String> = h.fsm().state.jobs().values().map(|j| j.spec.name.clone()).collect();
    out.sort();
    out
}

/// Proposes until acknowledged (elections may refuse a few), with one request id.
async fn submit_acked(h: &Handle, name: String) -> JobId {
    for _ in 0..50 {
        match h.propose(submit(name.clone()), Some(name.clone())).await {
            Ok(out) => return out.submitted[0],
            Err(NodeError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{name} was never acknowledged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_to_every_replica_are_applied_once_everywhere() {
    let c = Cluster::new(defaults);
    c.set_up().await;
    let mut tasks = Vec::new();
    for client in 0..6u64 {
        let h = c.handle(client % 3 + 1).clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                submit_acked(&h, format!("c{client}-{i:02}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.converged().await;
    let all = names(c.handle(1));
    assert_eq!(all.len(), 240);
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(unique.len(), 240, "a job was applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_through_drops_and_delays() {
    let c = Cluster::new(defaults);
    c.set_up().await;
    c.net.set_drop_rate(0.2);
    c.net.set_delay(Duration::from_millis(3));
    for i in 0..20 {
        submit_acked(c.handle(i % 3 + 1), format!("j{i:02}")).await;
    }
    c.net.set_drop_rate(0.0);
    c.converged().await;
    assert_eq!(names(c.handle(2)).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_in_a_minority_commits_nothing() {
    let c = Cluster::new(defaults);
    c.set_up().await;
    let old = c.leader_of(&[1, 2, 3]).await;
    let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    c.net.partition(&[&[old], &rest]);
    let started = Instant::now();
    let lost = c.handle(old).propose(submit("minority".into()), None).await;
    assert!(matches!(lost, Err(NodeError::Unavailable(_))), "{lost:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "the refusal took {:?}", started.elapsed());
    let new = c.leader_of(&rest).await;
    assert_ne!(new, old);
    submit_acked(c.handle(new), "majority".into()).await;
    assert!(c.handle(old).read_barrier().await.is_err(), "a cut-off replica cannot serve linearizable reads");
    c.net.heal();
    c.converged().await;
    for id in 1..=3 {
        assert_eq!(names(c.handle(id)), vec!["majority".to_owned()], "replica {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_barrier_on_a_follower_sees_the_latest_write() {
    let c = Cluster::new(defaults);
    c.set_up().await;
    let leader = c.leader_of(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.net.set_delay(Duration::from_millis(5));
    let id = submit_acked(c.handle(leader), "fresh".into()).await;
    c.handle(follower).read_barrier().await.unwrap();
    assert!(c.handle(follower).fsm().state.job(id).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_by_log() {
    let mut c = Cluster::new(defaults);
    c.set_up().await;
    let leader = c.leader_of(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    submit_acked(c.handle(leader), "before".into()).await;
    c.stop(follower);
    for i in 0..10 {
        submit_acked(c.handle(leader), format!("while-down-{i}")).await;
    }
    c.start(follower);
    c.converged().await;
    assert_eq!(names(c.handle(follower)).len(), 11);
    assert_eq!(c.handle(follower).status().snapshot_index, 0, "caught up by log, not by snapshot");
}

fn small_snapshots(config: &mut NodeConfig) {
    config.snapshot_every = 10;
    config.keep_entries = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_by_snapshot_and_everyone_recovers_from_one() {
    let mut c = Cluster::new(small_snapshots);
    c.set_up().await;
    let leader = c.leader_of(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.stop(follower);
    for i in 0..40 {
        submit_acked(c.handle(leader), format!("j{i:02}")).await;
    }
    // The leader snapshots on a low-priority thread: wait for it to finish, not for a guess.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while c.handle(leader).status().snapshot_index < 30 {
        assert!(std::time::Instant::now() < until, "the leader never saved a snapshot at index 30 or later");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.start(follower);
    c.converged().await;
    assert!(c.handle(follower).status().snapshot_index > 0, "the follower installed the leader's snapshot");
    assert_eq!(names(c.handle(follower)).len(), 40);
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.start(id);
    }
    c.leader_of(&[1, 2, 3]).await;
    c.converged().await;
    assert_eq!(names(c.handle(1)).len(), 40, "restored from snapshot + log after a full restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_through_raft() {
    let mut c = Cluster::new(small_snapshots);
    c.set_up().await;
    let leader = c.leader_of(&[1, 2, 3]).await;
    for i in 0..15 {
        submit_acked(c.handle(leader), format!("before-{i:02}")).await;
    }
    c.start_with(4, vec![]);
    c.handle(leader).change(Membership::Add { id: 4, address: "127.0.0.1:7004".into() }, None).await.unwrap();
    c.converged().await;
    assert_eq!(names(c.handle(4)).len(), 15, "the new member caught up");
    let measures = &c.handle(leader).shared().measures;
    assert!(measures.snapshot_bytes.get() > 0, "the leader measured its snapshots");
    let members: Vec<u64> = c.handle(leader).fsm().members.keys().copied().collect();
    assert_eq!(members, vec![1, 2, 3, 4]);
    assert_eq!(c.handle(4).fsm().members.get(&4).map(String::as_str), Some("127.0.0.1:7004"));

    let gone = (1..=3).find(|id| *id != leader).unwrap();
    c.handle(leader).change(Membership::Remove { id: gone }, None).await.unwrap();
    c.stop(gone);
    c.stop((1..=3).find(|id| *id != leader && *id != gone).unwrap());
    submit_acked(c.handle(leader), "after".into()).await;
    assert!(
        names(c.handle(4)).contains(&"after".to_owned()) || {
            c.handle(4).read_barrier().await.unwrap();
            names(c.handle(4)).contains(&"after".to_owned())
        }
    );
    let members: Vec<u64> = c.handle(leader).fsm().members.keys().copied().collect();
    assert_eq!(members.len(), 3, "three voters left: {members:?}");
}

/// Sends nothing: it panics, as the Raft thread once did on a log shorter than its commit index.
struct Panicking;

impl crate::transport::Transport for Panicking {
    fn send(&mut self, _: Vec<raft::eraftpb::Message>) {
        panic!("to_commit 9809 is out of range [last_index 9808]");
    }
    fn set_peer(&mut self, _: u64, _: &str) {}
    fn remove_peer(&mut self, _: u64) {}
}

/// A panic on the Raft thread stops the replica with the panic's message (what the server
/// exits on), and a proposal is refused as stopped instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_raft_thread_stops_the_replica_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(1, vec![1, 2, 3]);
    config.tick = Duration::from_millis(10);
    let (handle, thread) = spawn(config, SledStore::open(dir.path()).unwrap(), |_| Panicking).unwrap();
    thread.join().expect("the thread ends without unwinding further");
    let fatal = handle.status().fatal.expect("marked stopped");
    assert_eq!(fatal, "the Raft thread panicked: to_commit 9809 is out of range [last_index 9808]");
    let refused = handle.propose(submit("after".into()), None).await.unwrap_err();
    assert!(refused.to_string().contains("the Raft thread panicked"), "{refused}");
}

/// A store as a leader can leave it after a crash: entries 1-10, a snapshot at 10, and a hard
/// state whose commit index (5) was never flushed past it.
fn snapshot_ahead_of_commit() -> SledStore {
    use raft::eraftpb::{Entry, HardState, Snapshot};
    let store = SledStore::temporary().unwrap();
    let entries: Vec<Entry> = (1..=10).map(|index| Entry { index, term: 1, ..Entry::default() }).collect();
    let hard = HardState { term: 1, vote: 1, commit: 5, ..HardState::default() };
    store
        .persist(crate::storage::Persist { entries: &entries, hard_state: Some(&hard), ..Default::default() })
        .unwrap();
    let mut snap = Snapshot { data: crate::fsm::Fsm::default().snapshot().into(), ..Snapshot::default() };
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().mut_conf_state().voters = vec![1];
    store.save_snapshot(&snap).unwrap();
    store.compact(snap.get_metadata(), 10).unwrap();
    store
}

/// The stored commit index behind the snapshot is raised to it at start: raft-rs refused to
/// start from it (`applied(10) is out of range`), at every restart (the simulation's seed 1).
#[test]
fn a_replica_whose_snapshot_is_ahead_of_its_stored_commit_index_starts() {
    let net = MemNet::new(1);
    let (handle, thread) =
        spawn(NodeConfig::new(1, vec![1]), snapshot_ahead_of_commit(), |_| net.transport(1)).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while handle.status().commit < 10 || handle.status().leader != 1 {
        assert!(Instant::now() < until, "the replica did not lead from its snapshot: {:?}", handle.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handle.status().fatal, None);
    handle.stop();
    thread.join().unwrap();
}

/// A heartbeat whose commit index is past the replica's log (one sent to the removed run of a
/// replaced replica) is dropped: raft-rs panicked on it (`to_commit 100 is out of range
/// [last_index 0]`; the simulation's seed 6).
#[test]
fn a_heartbeat_past_the_end_of_the_log_is_dropped() {
    let net = MemNet::new(1);
    let store = SledStore::temporary().unwrap();
    let (handle, thread) = spawn(NodeConfig::new(4, vec![]), store, |_| net.transport(4)).unwrap();
    let heartbeat = raft::eraftpb::Message {
        msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
        from: 1,
        to: 4,
        term: 3,
        commit: 100,
        ..Default::default()
    };
    handle.inbox().send(Input::Raft(Box::new(heartbeat))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.status().fatal, None, "the replica survived the heartbeat");
    handle.stop();
    thread.join().unwrap();
}

/// A heartbeat to replica 1 of the group {1, 2}, from `from` at `term`.
fn heartbeat(from: u64, term: u64) -> Input {
    let m = raft::eraftpb::Message {
        msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
        from,
        to: 1,
        term,
        ..Default::default()
    };
    Input::Raft(Box::new(m))
}

/// Replica 1 of the group {1, 2} alone, fed `messages`; its term and leader once its term reached
/// `term` (or after 10 s).
fn after_heartbeats(messages: Vec<Input>, term: u64) -> (u64, u64) {
    let net = MemNet::new(2);
    let store = SledStore::temporary().unwrap();
    let (handle, thread) = spawn(NodeConfig::new(1, vec![1, 2]), store, |_| net.transport(1)).unwrap();
    for m in messages {
        handle.inbox().send(m).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle.status().term < term && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = handle.status();
    handle.stop();
    thread.join().unwrap();
    (status.term, status.leader)
}

/// A message from an id that is not a member is dropped by a replica that follows a member: one
/// forged heartbeat with a higher term from a stranger moved a cluster's term and leader. The
/// stranger's message (term 2,000) comes between two of the leader's (1,000 and 1,500): had it
/// been taken, the last, of a lower term, would be ignored.
#[test]
fn a_message_from_a_non_member_is_dropped() {
    let messages = vec![heartbeat(2, 1_000), heartbeat(9, 2_000), heartbeat(2, 1_500)];
    assert_eq!(after_heartbeats(messages, 1_500), (1_500, 2), "the member's heartbeats count, the stranger's does not");
}

/// A replica without a leader hears a stranger: a lagging follower may not know yet that the
/// new leader was added.
#[test]
fn a_replica_without_a_leader_hears_a_stranger() {
    assert_eq!(after_heartbeats(vec![heartbeat(9, 2_000)], 2_000), (2_000, 9));
}
