//! One replica over real gRPC on loopback: a fake agent that speaks `AgentService` receives the
//! leader's orders and reports back; bad requests are refused with the field named; a replica
//! without a quorum answers `Unavailable` instead of hanging.

mod common;

use common::Replica;
use qm_proto::auth::Authed;
use qm_proto::build::{gpu_inventory, gpu_job, gpu_team};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::*;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MODEL: &str = "nvidia-h100-80gb-hbm3";

/// A channel to the replica and its admin and job clients, once it leads and the team
/// "research" is set.
async fn serving(replica: &Replica) -> (Authed, AdminServiceClient<Authed>, JobServiceClient<Authed>) {
    let channel = replica.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    wait_leader(&mut admin).await;
    set_team(&mut admin).await;
    (channel.clone(), admin, JobServiceClient::new(channel))
}

fn job(name: &str, gpus: u32) -> JobSpec {
    gpu_job(name, "research", gpus, &["python", "train.py"])
}

fn inventory(name: &str, gpus: u32) -> NodeInventory {
    gpu_inventory(name, gpus, MODEL)
}

async fn wait_leader(admin: &mut AdminServiceClient<Authed>) {
    let until = Instant::now() + Duration::from_secs(5);
    while admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().leader_id != 1 {
        assert!(Instant::now() < until, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn set_team(admin: &mut AdminServiceClient<Authed>) {
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 8)) }).await.unwrap();
}

async fn state_of(jobs: &mut JobServiceClient<Authed>, id: u64) -> JobState {
    let job = jobs.get(GetJobRequest { job_id: id, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    JobState::try_from(job.state).unwrap()
}

async fn wait_state(jobs: &mut JobServiceClient<Authed>, id: u64, want: JobState) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = state_of(jobs, id).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < until, "job {id} is {s:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct FakeAgent {
    up: mpsc::Sender<AgentMessage>,
    down: tonic::Streaming<SchedulerMessage>,
}

impl FakeAgent {
    async fn connect(channel: Authed, inv: NodeInventory) -> Self {
        Self::register(channel, Register { inventory: Some(inv), ..Register::default() }).await
    }

    async fn register(channel: Authed, register: Register) -> Self {
        let (up, rx) = mpsc::channel(16);
        up.send(AgentMessage { body: Some(Up::Register(register)) }).await.unwrap();
        let down = AgentServiceClient::new(channel).session(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut agent = Self { up, down };
        assert!(matches!(agent.next().await, Down::Registered(_)));
        agent
    }

    async fn next(&mut self) -> Down {
        let m = tokio::time::timeout(Duration::from_secs(5), self.down.message()).await.expect("an order in time");
        m.unwrap().unwrap().body.unwrap()
    }

    async fn report(&self, job_id: u64, phase: ReplicaPhase, exit_code: i32) {
        self.report_with(job_id, phase, exit_code, vec![]).await;
    }

    async fn report_with(&self, job_id: u64, phase: ReplicaPhase, exit_code: i32, usage: Vec<DeviceUsage>) {
        let status = ReplicaStatus {
            job_id,
            replica: 0,
            attempt: 1,
            phase: phase as i32,
            exit_code,
            usage,
            ..ReplicaStatus::default()
        };
        self.up.send(AgentMessage { body: Some(Up::Status(status)) }).await.unwrap();
    }
}

/// One replica leading, the team set, and a fake agent of node-a (8 GPUs) registered.
struct WithAgent {
    replica: Replica,
    admin: AdminServiceClient<Authed>,
    jobs: JobServiceClient<Authed>,
    agent: FakeAgent,
}

impl WithAgent {
    async fn start() -> Self {
        let replica = Replica::start(&[1], 4 * 1024 * 1024);
        let (channel, admin, jobs) = serving(&replica).await;
        let agent = FakeAgent::connect(channel, inventory("node-a", 8)).await;
        Self { replica, admin, jobs, agent }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_orders_a_fake_agent_and_records_what_it_reports() {
    let WithAgent { replica, mut admin, mut jobs, mut agent } = WithAgent::start().await;
    let watch = jobs.watch(WatchJobsRequest { team: "research".into(), job_ids: vec![] });
    let mut watch = watch.await.unwrap().into_inner();

    let id = jobs.submit(SubmitRequest { jobs: vec![job("train", 2)], request_id: "r1".into() }).await.unwrap();
    let id = id.into_inner().job_ids[0];
    let Down::Start(start) = agent.next().await else { panic!("expected a start order") };
    assert_eq!((start.job_id, start.attempt, start.devices.len()), (id, 1, 2));
    assert_eq!(start.command, vec!["python", "train.py"]);
    assert_eq!(state_of(&mut jobs, id).await, JobState::Starting);
    agent.report(id, ReplicaPhase::Started, 0).await;
    wait_state(&mut jobs, id, JobState::Running).await;
    agent.report(id, ReplicaPhase::Exited, 0).await;
    wait_state(&mut jobs, id, JobState::Succeeded).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&JobState::Succeeded) {
        let e = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.job_id, id);
        seen.push(JobState::try_from(e.state).unwrap());
    }
    assert_eq!(seen, [JobState::Pending, JobState::Starting, JobState::Running, JobState::Succeeded]);

    let second = jobs.submit(SubmitRequest { jobs: vec![job("sweep", 1)], request_id: String::new() }).await.unwrap();
    let second = second.into_inner().job_ids[0];
    assert!(matches!(agent.next().await, Down::Start(s) if s.job_id == second));
    agent.report(second, ReplicaPhase::Started, 0).await;
    wait_state(&mut jobs, second, JobState::Running).await;
    jobs.cancel(CancelJobRequest { job_id: second }).await.unwrap();
    let Down::Stop(stop) = agent.next().await else { panic!("expected a stop order") };
    assert_eq!((stop.job_id, stop.reason), (second, StopReason::Cancelled as i32));
    agent.report(second, ReplicaPhase::Exited, 143).await;
    wait_state(&mut jobs, second, JobState::Cancelled).await;

    drop(agent);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let nodes = admin.list_nodes(ListNodesRequest::default()).await.unwrap().into_inner().nodes;
        if nodes[0].status == NodeStatus::Lost as i32 {
            break;
        }
        assert!(Instant::now() < until, "a silent node was never marked lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_oversize_requests_are_refused_naming_the_field() {
    let replica = Replica::start(&[1], 64 * 1024);
    let (_, mut admin, mut jobs) = serving(&replica).await;
    let mut bad = job("bad", 1);
    bad.gang.as_mut().unwrap().replicas = 0;
    let err =
        jobs.submit(SubmitRequest { jobs: vec![job("ok", 1), bad], request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("jobs[1].gang.replicas"), "{}", err.message());
    let mut unknown = job("nobody", 1);
    unknown.team = "nobody".into();
    let err = jobs.submit(SubmitRequest { jobs: vec![unknown], request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("jobs[0].team"), "{}", err.message());
    let mut huge = job("huge", 1);
    huge.command = vec!["x".repeat(100 * 1024)];
    let err = jobs.submit(SubmitRequest { jobs: vec![huge], request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let listed = jobs.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert!(listed.is_empty(), "nothing of a refused batch was accepted");
    let err =
        admin.add_member(AddMemberRequest { id: 4, address: "nowhere".into(), learner: false }).await.unwrap_err();
    assert!(err.message().starts_with("address:"), "{}", err.message());
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_quorum_answers_unavailable_within_its_deadline() {
    // Insecure: a cluster that never had a leader has no token yet.
    let replica = Replica::start_insecure(&[1, 2, 3], 4 * 1024 * 1024);
    let channel = replica.channel().await;
    let mut jobs = JobServiceClient::new(channel.clone());
    let started = Instant::now();
    let err = jobs.submit(SubmitRequest { jobs: vec![job("lonely", 1)], request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = jobs.get(GetJobRequest { job_id: 1, consistency: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let stale = jobs.list(ListJobsRequest { consistency: ReadConsistency::Stale as i32, ..ListJobsRequest::default() });
    assert!(stale.await.is_ok(), "a stale read needs no quorum");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_starts_a_new_cluster_with_the_same_state() {
    let old = Replica::start(&[1], 4 * 1024 * 1024);
    let channel = old.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut jobs = JobServiceClient::new(channel);
    wait_leader(&mut admin).await;
    set_team(&mut admin).await;
    let batch = (0..50).map(|i| job(&format!("j{i}"), 1)).collect();
    jobs.submit(SubmitRequest { jobs: batch, request_id: "b".into() }).await.unwrap();
    let mut stream = admin.save_snapshot(SaveSnapshotRequest {}).await.unwrap().into_inner();
    let mut backup = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        backup.extend(chunk.data);
    }
    let old_hash = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().state_hash;
    let token = old.token().await;
    old.stop().await;

    let mut new = Replica::start_from(&[1], 4 * 1024 * 1024, Some(backup));
    new.token = Some(token);
    let channel = new.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    wait_leader(&mut admin).await;
    let status = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.state_hash, old_hash);
    assert!(!new.dir.path().join("admin.token").exists(), "the tokens came with the backup: no new bootstrap");
    let listed = JobServiceClient::new(channel).list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 50);
    let mut jobs = JobServiceClient::new(new.channel().await);
    let batch: Vec<_> = (0..50).map(|i| job(&format!("j{i}"), 1)).collect();
    let again = jobs.submit(SubmitRequest { jobs: batch, request_id: "b".into() }).await.unwrap();
    assert_eq!(again.into_inner().job_ids, (1..=50).collect::<Vec<u64>>(), "request ids survive the backup");
    let other = jobs.submit(SubmitRequest { jobs: vec![job("retry", 1)], request_id: "b".into() }).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");
    assert!(other.message().contains("request_id: \"b\" was used for a different submission"), "{other:?}");
    new.stop().await;
}

/// Status reads while the Raft thread applies a stream of writes: every read answers. (The
/// status handler once took the state machine's read lock twice; with the Raft thread's write
/// queued in between, the second read waited on the writer and the writer on the first read.)
/// The replica runs on a runtime of its own thread, so that a deadlock fails this test after a
/// deadline instead of hanging it.
#[test]
fn status_reads_answer_while_writes_are_applied() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        let _ = tx.send(runtime.block_on(reads_during_writes()));
    });
    let (written, read) = rx.recv_timeout(Duration::from_secs(60)).expect("reads and writes finish: no deadlock");
    assert!(written > 10 && read > 10, "{written} writes, {read} reads");
}

/// Submits jobs one at a time for three seconds while three clients read the status; returns
/// the writes and the reads done.
async fn reads_during_writes() -> (u64, u64) {
    let replica = Replica::start(&[1], 4 * 1024 * 1024);
    let channel = replica.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    wait_leader(&mut admin).await;
    set_team(&mut admin).await;
    let until = Instant::now() + Duration::from_secs(3);
    let mut jobs = JobServiceClient::new(channel);
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while Instant::now() < until {
            let request = SubmitRequest { jobs: vec![job(&format!("w{written}"), 1)], request_id: String::new() };
            jobs.submit(request).await.unwrap();
            written += 1;
        }
        written
    });
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut admin = admin.clone();
            tokio::spawn(async move {
                let mut reads = 0;
                while Instant::now() < until {
                    admin.cluster_status(ClusterStatusRequest {}).await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let written = writer.await.unwrap();
    let mut read = 0;
    for r in readers {
        read += r.await.unwrap();
    }
    replica.stop().await;
    (written, read)
}

/// A job started on the fake agent's node, running.
async fn running_job(jobs: &mut JobServiceClient<Authed>, agent: &mut FakeAgent, name: &str) -> (u64, Vec<String>) {
    let id = jobs.submit(SubmitRequest { jobs: vec![job(name, 1)], request_id: String::new() }).await.unwrap();
    let id = id.into_inner().job_ids[0];
    let Down::Start(start) = agent.next().await else { panic!("expected a start order") };
    agent.report(id, ReplicaPhase::Started, 0).await;
    wait_state(jobs, id, JobState::Running).await;
    (id, start.devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_land_on_the_job_and_heartbeat_readings_on_the_node() {
    let WithAgent { replica, mut admin, mut jobs, mut agent } = WithAgent::start().await;
    let reading = DeviceTelemetry { device: "GPU-0".into(), utilization_pct: Some(97), ..DeviceTelemetry::default() };
    let beat = Heartbeat { seq: 1, telemetry: vec![reading.clone()] };
    agent.up.send(AgentMessage { body: Some(Up::Heartbeat(beat)) }).await.unwrap();

    let (good, devices) = running_job(&mut jobs, &mut agent, "good").await;
    let used = DeviceUsage {
        device: devices[0].clone(),
        node: "a name the agent may not choose".into(),
        utilization_samples: 4,
        utilization_pct_sum: 300,
        utilization_pct_peak: 90,
        ..DeviceUsage::default()
    };
    agent.report_with(good, ReplicaPhase::Exited, 0, vec![used.clone()]).await;
    wait_state(&mut jobs, good, JobState::Succeeded).await;
    let record = jobs.get(GetJobRequest { job_id: good, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    assert_eq!(record.usage, [DeviceUsage { node: "node-a".into(), ..used.clone() }], "the session's node");
    assert_eq!(record.usage_attempt, 1);

    let (bad, _) = running_job(&mut jobs, &mut agent, "bad").await;
    let impossible = DeviceUsage { utilization_pct_peak: 150, ..used };
    agent.report_with(bad, ReplicaPhase::Exited, 0, vec![impossible]).await;
    wait_state(&mut jobs, bad, JobState::Succeeded).await;
    let record = jobs.get(GetJobRequest { job_id: bad, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    assert!(record.usage.is_empty(), "an impossible report is dropped; the exit it came with counts");

    let nodes = admin.list_nodes(ListNodesRequest::default()).await.unwrap().into_inner().nodes;
    assert_eq!(nodes[0].telemetry, [reading], "the leader shows the last heartbeat's readings");
    assert!(nodes[0].telemetry_age_ms.is_some());
    replica.stop().await;
}

/// A job whose command and environment hold 60,000 bytes each.
fn large_job(i: usize) -> JobSpec {
    let mut spec = job(&format!("large-{i}"), 1);
    spec.command.push("c".repeat(60_000));
    spec.env.insert("PAYLOAD".into(), "e".repeat(60_000));
    spec
}

/// An inventory with the most labels a node may have, each 250 bytes of name and of value.
fn labelled(i: usize) -> NodeInventory {
    let mut inv = inventory(&format!("node-{i:03}"), 8);
    inv.labels = (0..64).map(|l| (format!("{l:02}{}", "k".repeat(248)), "v".repeat(250))).collect();
    inv
}

/// Jobs of 120 KB and nodes of 32 KB, 4.8 MB and 4.5 MB in all: through a client that decodes
/// at most 4 MiB (gRPC's default), both lists come whole, a page at a time, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_larger_than_a_client_decodes_come_page_by_page() {
    let replica = Replica::start(&[1], 16 << 20);
    let (channel, mut admin, mut jobs) = serving(&replica).await;
    for half in 0..2 {
        let batch = (half * 20..half * 20 + 20).map(large_job).collect();
        jobs.submit(SubmitRequest { jobs: batch, request_id: String::new() }).await.unwrap();
    }
    let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let req = ListJobsRequest { page_size: 1000, page_token: token, ..ListJobsRequest::default() };
        let page = jobs.list(req).await.expect("a page fits the client").into_inner();
        listed.extend(page.jobs.iter().map(|j| j.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 1, "4.8 MB of jobs do not fit one page");
    assert_eq!(listed, (1..=40).collect::<Vec<u64>>(), "every job once, in order");

    let mut agents = Vec::new();
    for i in 0..140 {
        agents.push(FakeAgent::connect(channel.clone(), labelled(i)).await);
    }
    let until = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let req = ListNodesRequest { page_token: token, ..ListNodesRequest::default() };
            let page = admin.list_nodes(req).await.expect("a page fits the client").into_inner();
            names.extend(page.nodes.iter().map(|n| n.inventory.as_ref().unwrap().name.clone()));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if names.len() == 140 {
            assert!(pages > 1, "4.5 MB of nodes do not fit one page");
            break names;
        }
        assert!(Instant::now() < until, "{} of 140 nodes registered", names.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(names, (0..140).map(|i| format!("node-{i:03}")).collect::<Vec<_>>(), "every node once, by name");
    drop(agents);
    replica.stop().await;
}

/// A replica's report with the agent's number for it.
fn numbered(job_id: u64, phase: ReplicaPhase, seq: u64) -> ReplicaStatus {
    ReplicaStatus { job_id, replica: 0, attempt: 1, phase: phase as i32, seq, ..ReplicaStatus::default() }
}

/// Reports lost with a leader (sent, never committed) are not lost for good: the scheduler
/// acknowledges each report once recorded, and the agent's next registration carries those it
/// has not acknowledged, which the scheduler records before it reconciles. A job whose exit
/// report was lost ends as it did (it was failed as "lost", or started again, before); and a
/// job told to stop while its agent was away, whose replica the agent no longer runs, ends (it
/// stayed stopping for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_acknowledged_and_an_unrecorded_end_counts_at_the_next_registration() {
    let replica = Replica::start_leased(&[1], 4 * 1024 * 1024, None, Duration::from_secs(60));
    let (channel, _, mut jobs) = serving(&replica).await;
    let mut agent = FakeAgent::connect(channel.clone(), inventory("node-a", 8)).await;
    let mut ids = Vec::new();
    for (seq, name) in [(1, "ends-unseen"), (2, "stops-unseen")] {
        let id = jobs.submit(SubmitRequest { jobs: vec![job(name, 1)], request_id: String::new() }).await.unwrap();
        let id = id.into_inner().job_ids[0];
        assert!(matches!(agent.next().await, Down::Start(_)));
        agent.up.send(AgentMessage { body: Some(Up::Status(numbered(id, ReplicaPhase::Started, seq))) }).await.unwrap();
        let Down::Recorded(r) = agent.next().await else { panic!("expected the report acknowledged") };
        assert_eq!(r.seqs, [seq]);
        wait_state(&mut jobs, id, JobState::Running).await;
        ids.push(id);
    }
    drop(agent);
    jobs.cancel(CancelJobRequest { job_id: ids[1] }).await.unwrap();
    let exited = numbered(ids[0], ReplicaPhase::Exited, 3);
    let register =
        Register { inventory: Some(inventory("node-a", 8)), unrecorded: vec![exited], ..Register::default() };
    let mut again = FakeAgent::register(channel, register).await;
    let Down::Recorded(r) = again.next().await else { panic!("expected the unrecorded report acknowledged") };
    assert_eq!(r.seqs, [3]);
    wait_state(&mut jobs, ids[0], JobState::Succeeded).await;
    wait_state(&mut jobs, ids[1], JobState::Cancelled).await;
    replica.stop().await;
}

/// Hostile bytes on the gRPC port: connections that send random garbage, the HTTP/2 preface
/// followed by garbage, and 300 held open half-way through the preface (600 descriptors in this
/// process, both ends, under the usual limit of 1,024). The replica stays
/// up, keeps answering a real client while they are open, and its state is what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_leaves_the_replica_serving_and_its_state_unchanged() {
    use rand::{Rng, SeedableRng};
    use tokio::io::AsyncWriteExt;
    let replica = Replica::start(&[1], 64 * 1024);
    let (_, mut admin, mut jobs) = serving(&replica).await;
    jobs.submit(SubmitRequest { jobs: vec![job("kept", 1)], request_id: String::new() }).await.unwrap();
    let hash = |s: ClusterStatusResponse| (s.leader_id, s.state_hash);
    let before = hash(admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for i in 0..70 {
        let mut garbage = vec![0u8; 4096];
        rng.fill(&mut garbage[..]);
        let mut tcp = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
        if i % 2 == 0 {
            let _ = tcp.write_all(preface).await;
        }
        let _ = tcp.write_all(&garbage).await;
    }
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
        tcp.write_all(&preface[..10]).await.unwrap();
        held.push(tcp);
    }
    let listed = tokio::time::timeout(Duration::from_secs(10), jobs.list(ListJobsRequest::default()))
        .await
        .expect("the replica answers while the connections are held")
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1, "a real client is served while the half-open connections are held");
    drop(held);
    let after = hash(admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner());
    assert_eq!(after, before, "the replica leads with the same state");
    replica.stop().await;
}

/// Thousands of streams held open (4,000 watches over four connections, then one connection
/// filled to its cap) leave the replica serving a real client, whose change every watcher
/// hears; a stream past a connection's cap waits rather than being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_open_streams_leave_the_replica_serving_and_a_connection_is_capped() {
    use qm_scheduler::server::MAX_STREAMS_PER_CONNECTION;
    let replica = Replica::start(&[1], 64 * 1024);
    let (_, _, mut jobs) = serving(&replica).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut watcher = JobServiceClient::new(replica.channel().await);
        for _ in 0..1_000 {
            held.push(watcher.watch(WatchJobsRequest::default()).await.unwrap().into_inner());
        }
    }
    let mut full = JobServiceClient::new(replica.channel().await);
    for _ in 0..MAX_STREAMS_PER_CONNECTION {
        held.push(full.watch(WatchJobsRequest::default()).await.unwrap().into_inner());
    }
    let past_cap = tokio::time::timeout(Duration::from_millis(500), full.watch(WatchJobsRequest::default())).await;
    assert!(past_cap.is_err(), "a stream past the connection's cap waits");
    let submitted = tokio::time::timeout(
        Duration::from_secs(10),
        jobs.submit(SubmitRequest { jobs: vec![job("heard", 1)], request_id: String::new() }),
    )
    .await
    .expect("the replica answers a real client meanwhile")
    .unwrap()
    .into_inner()
    .job_ids[0];
    let last = held.len() - 1;
    for i in [0, last] {
        let stream = &mut held[i];
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.job_id, submitted, "the watchers hear the change");
    }
    drop(held);
    let listed = jobs.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 1);
    replica.stop().await;
}
