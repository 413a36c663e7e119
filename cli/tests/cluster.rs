//! Three `qm server` processes on loopback. Several clients submit 1,000 jobs concurrently, the
//! leader is killed with SIGKILL mid-stream and restarted. Every acknowledged job must be on
//! every replica exactly once, the replicas must converge to one state hash, a new leader must
//! accept writes, and no device may be held by two jobs. A replica whose disk is lost is
//! replaced, and a cluster that lost its majority is rebuilt, with the commands and in the
//! order that docs/operations.md gives.

use qm_proto::auth::{authed, Authed, Bearer};
use qm_proto::build::{gpu_inventory, gpu_job, gpu_team};
use qm_proto::tls::Dialer;
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: usize = 1_000;
const CLIENTS: usize = 8;
const MODEL: &str = "nvidia-h100-80gb-hbm3";

struct Cluster {
    addrs: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    procs: BTreeMap<u64, Child>,
    /// The bootstrap admin token, as the operations guide finds it: in the data directory of
    /// the replica that led first.
    secret: String,
}

/// A replica's address with the token its clients send and how they dial it.
#[derive(Clone)]
struct Ep {
    addr: String,
    bearer: Bearer,
    dialer: Dialer,
}

impl Cluster {
    /// Three replicas with the certificates `qm admin certs` makes, once one of them wrote the
    /// bootstrap token and it is accepted.
    async fn new() -> Self {
        let addrs: Vec<SocketAddr> =
            (0..3).map(|_| qm_benches::nemesis::procs::free_addr().expect("a free port")).collect();
        let mut c = Self { addrs, dir: tempfile::tempdir().unwrap(), procs: BTreeMap::new(), secret: String::new() };
        let mut certs = Command::new(env!("CARGO_BIN_EXE_qm"));
        certs.args(["admin", "certs", "--dir", c.certs().to_str().unwrap()]);
        for (i, a) in c.addrs.iter().enumerate() {
            certs.args(["--replica", &format!("{}={}", i + 1, a.ip())]);
        }
        let made = certs.output().expect("qm admin certs runs");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        for id in 1..=3 {
            c.start(id);
        }
        c.secret = c.bootstrap_token().await;
        c
    }

    /// The token of the first `admin.token` file that a replica accepts.
    async fn bootstrap_token(&self) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            for id in 1..=3u64 {
                let Ok(secret) = std::fs::read_to_string(self.dir.path().join(id.to_string()).join("admin.token"))
                else {
                    continue;
                };
                let bearer = Bearer::new(Some(&secret)).unwrap();
                for other in 1..=3u64 {
                    let ep = Ep { bearer: bearer.clone(), ..self.endpoint(other) };
                    if let Some(channel) = connect(&ep).await {
                        if AdminServiceClient::new(channel).who_am_i(WhoAmIRequest {}).await.is_ok() {
                            return secret.trim().to_owned();
                        }
                    }
                }
            }
            assert!(Instant::now() < until, "no bootstrap token was written and accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start(&mut self, id: u64) {
        self.start_with(id, &[]);
    }

    /// Starts replica `id` with `extra` flags besides the usual ones.
    fn start_with(&mut self, id: u64, extra: &[&str]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qm"));
        cmd.args(["server", "--id", &id.to_string(), "--listen", &self.addrs[id as usize - 1].to_string()]);
        for (i, a) in self.addrs.iter().enumerate() {
            cmd.args(["--peer", &format!("{}={a}", i + 1)]);
        }
        let data = self.dir.path().join(id.to_string());
        cmd.args([
            "--data",
            data.to_str().unwrap(),
            "--tick-ms",
            "20",
            "--snapshot-every",
            "200",
            "--keep-entries",
            "20",
        ]);
        let certs = self.certs();
        let file = |name: String| certs.join(name).to_str().unwrap().to_owned();
        cmd.args(["--tls-cert", &file(format!("replica-{id}.pem")), "--tls-key", &file(format!("replica-{id}.key"))]);
        cmd.args(["--tls-ca", &file("ca.pem".into())]);
        cmd.args(["--node-lease-ms", "600000"]).args(extra);
        let log = std::fs::File::create(self.dir.path().join(format!("{id}.log"))).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("qm server starts");
        self.procs.insert(id, child);
    }

    fn kill(&mut self, id: u64) {
        let mut child = self.procs.remove(&id).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn endpoint(&self, id: u64) -> Ep {
        let dialer = Dialer::trusting(Some(&std::fs::read(self.ca()).unwrap()));
        let bearer = Bearer::new(Some(&self.secret)).unwrap();
        Ep { addr: self.addrs[id as usize - 1].to_string(), bearer, dialer }
    }

    /// Where the certificates are.
    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("certs")
    }

    /// The CA's certificate, which clients check the replicas against.
    fn ca(&self) -> std::path::PathBuf {
        self.certs().join("ca.pem")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn connect(endpoint: &Ep) -> Option<Authed> {
    let channel = endpoint.dialer.endpoint(&endpoint.addr).ok()?.connect_timeout(Duration::from_millis(300));
    Some(authed(channel.connect().await.ok()?, endpoint.bearer.clone()))
}

async fn status(endpoint: &Ep) -> Option<ClusterStatusResponse> {
    let mut admin = AdminServiceClient::new(connect(endpoint).await?);
    admin.cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
}

async fn leader(c: &Cluster) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        for id in c.procs.keys() {
            if let Some(s) = status(&c.endpoint(*id)).await {
                if s.leader_id != 0 && c.procs.contains_key(&s.leader_id) {
                    return s.leader_id;
                }
            }
        }
        assert!(Instant::now() < until, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits until acknowledged, rotating over the replicas; the request id makes retries safe.
/// A request in flight to the replica that is killed ends `Cancelled` (its connection closed)
/// or `Unknown`; one to a replica without a leader ends `Unavailable`: all are retried.
async fn submit(endpoints: &[Ep], name: String, start: usize) -> u64 {
    use tonic::Code::{Cancelled, Unavailable, Unknown};
    let req = SubmitRequest { jobs: vec![gpu_job(&name, "research", 1, &["train"])], request_id: name.clone() };
    for attempt in 0..400 {
        let endpoint = &endpoints[(start + attempt) % endpoints.len()];
        if let Some(channel) = connect(endpoint).await {
            match JobServiceClient::new(channel).submit(req.clone()).await {
                Ok(r) => return r.into_inner().job_ids[0],
                Err(s) if matches!(s.code(), Unavailable | Unknown | Cancelled) => {}
                Err(s) => panic!("{name}: {s:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} was never acknowledged")
}

async fn register_node(endpoint: &Ep, name: &str) {
    let inventory = gpu_inventory(name, 8, MODEL);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage { body: Some(Up::Register(Register { inventory: Some(inventory), ..Register::default() })) })
        .await
        .unwrap();
    let mut agent = AgentServiceClient::new(connect(endpoint).await.unwrap());
    let mut down = agent.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(down.message().await.unwrap().is_some(), "registered");
}

async fn all_jobs(endpoint: &Ep) -> Vec<Job> {
    let mut jobs = JobServiceClient::new(connect(endpoint).await.unwrap());
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let req = ListJobsRequest {
            page_size: 300,
            page_token: token.clone(),
            consistency: ReadConsistency::Stale as i32,
            ..ListJobsRequest::default()
        };
        let r = jobs.list(req).await.unwrap().into_inner();
        out.extend(r.jobs);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

/// Waits for a leader and gives it the team `research` with 16 GPUs; returns the leader.
async fn with_team(c: &Cluster) -> u64 {
    let first = leader(c).await;
    let mut admin = AdminServiceClient::new(connect(&c.endpoint(first)).await.unwrap());
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 16)) }).await.unwrap();
    first
}

/// `qm ARGS` (a client command) with the admin token in `QM_TOKEN`, which must succeed.
async fn qm_ok(c: &Cluster, args: Vec<String>) {
    let (token, ca) = (c.secret.clone(), c.ca());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_qm")).args(&args).env("QM_TOKEN", token).env("QM_TLS_CA", ca).output()
    })
    .await
    .unwrap()
    .expect("qm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `qm status --json` through the replica at `addr`: whether each member answered.
async fn qm_status_reachable(c: &Cluster, addr: &str) -> BTreeMap<u64, bool> {
    let server = format!("--server={addr}");
    let (token, ca) = (c.secret.clone(), c.ca());
    let out = tokio::task::spawn_blocking(move || {
        let mut qm = Command::new(env!("CARGO_BIN_EXE_qm"));
        qm.args(["status", "--json", &server]).env("QM_TOKEN", token).env("QM_TLS_CA", ca).output().expect("qm runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let members = status["members"].as_array().expect("members");
    members.iter().map(|m| (m["id"].as_u64().unwrap(), m["reachable"].as_bool().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_survive_a_leader_killed_mid_stream() {
    let mut c = Cluster::new().await;
    let first = leader(&c).await;
    let lead = c.endpoint(first);
    let mut admin = AdminServiceClient::new(connect(&lead).await.unwrap());
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 16)) }).await.unwrap();
    register_node(&lead, "node-a").await;
    register_node(&lead, "node-b").await;

    let endpoints: Vec<Ep> = (1..=3).map(|id| c.endpoint(id)).collect();
    let acked = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let count = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (endpoints, acked, count) = (endpoints.clone(), acked.clone(), count.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..JOBS / CLIENTS {
                let name = format!("c{client}-{i:04}");
                let id = submit(&endpoints, name.clone(), client).await;
                acked.lock().unwrap().insert(name, id);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while count.load(Ordering::Relaxed) < (JOBS / 3) as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill(first);
    let at_kill = count.load(Ordering::Relaxed);
    let second = leader(&c).await;
    assert_ne!(second, first);
    let reachable = qm_status_reachable(&c, &c.addrs[second as usize - 1].to_string()).await;
    let expected: BTreeMap<u64, bool> = (1..=3).map(|id| (id, id != first)).collect();
    assert_eq!(reachable, expected, "qm status marks the killed replica unreachable");
    for client in clients {
        client.await.unwrap();
    }
    assert!(count.load(Ordering::Relaxed) > at_kill, "the new leader accepted writes");
    c.start(first);

    let until = Instant::now() + Duration::from_secs(30);
    let statuses = loop {
        let mut s = Vec::new();
        for id in 1..=3 {
            s.extend(status(&c.endpoint(id)).await);
        }
        let same = s.len() == 3
            && s.windows(2).all(|w| w[0].applied_index == w[1].applied_index && w[0].state_hash == w[1].state_hash);
        if same {
            break s;
        }
        assert!(Instant::now() < until, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(statuses.iter().all(|s| s.leader_id == statuses[0].leader_id && s.leader_id != 0));

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), JOBS);
    for id in 1..=3 {
        let jobs = all_jobs(&c.endpoint(id)).await;
        let mut by_name: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for j in &jobs {
            by_name.entry(j.spec.clone().unwrap().name).or_default().push(j.id);
        }
        for (name, job_id) in &acked {
            assert_eq!(by_name.get(name), Some(&vec![*job_id]), "replica {id}: {name} must be present exactly once");
        }
        let mut held = BTreeSet::new();
        for j in &jobs {
            for r in j.assignment.iter().flat_map(|a| &a.replicas) {
                for d in &r.devices {
                    assert!(held.insert((r.node.clone(), d.clone())), "replica {id}: device {d} held twice");
                }
            }
        }
        assert_eq!(held.len(), 16, "replica {id}: the two nodes' 16 GPUs are all in use");
    }
    let log = std::fs::read_to_string(c.dir.path().join("2.log")).unwrap();
    let started = log.lines().find(|l| l.contains("replica started")).expect("qm server logs its start by default");
    assert!(started.contains(&format!("listen={}", c.addrs[1])), "{started}");
}

/// docs/operations.md, "Recovery", a replica whose disk is lost: "stop it and remove its id from
/// the cluster first (`qm admin members remove`), then empty its data directory, start it with
/// `--join`, and add it again (`qm admin members add`)". Done with those commands, in that
/// order; the replacement catches up to the others' state and serves writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_disk_is_lost_is_replaced_as_the_operations_guide_says() {
    let mut c = Cluster::new().await;
    let first = with_team(&c).await;
    let endpoints: Vec<Ep> = (1..=3).map(|id| c.endpoint(id)).collect();
    for i in 0..300 {
        submit(&endpoints, format!("before-{i}"), i).await;
    }
    let lost = (1..=3).find(|&id| id != first).unwrap();
    c.kill(lost);
    let servers = format!("--server={}", c.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
    qm_ok(&c, vec!["admin".into(), "members".into(), "remove".into(), format!("--id={lost}"), servers.clone()]).await;
    std::fs::remove_dir_all(c.dir.path().join(lost.to_string())).unwrap();
    c.start_with(lost, &["--join"]);
    let address = format!("--address={}", c.addrs[lost as usize - 1]);
    qm_ok(&c, vec!["admin".into(), "members".into(), "add".into(), format!("--id={lost}"), address, servers]).await;

    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (ours, theirs) = (status(&c.endpoint(lost)).await, status(&c.endpoint(first)).await);
        if let (Some(a), Some(b)) = (&ours, &theirs) {
            if a.applied_index == b.applied_index && a.state_hash == b.state_hash && a.leader_id != 0 {
                break;
            }
        }
        let brief =
            |s: &Option<ClusterStatusResponse>| s.as_ref().map(|s| (s.leader_id, s.applied_index, s.members.len()));
        assert!(Instant::now() < until, "the replacement did not catch up: {:?} vs {:?}", brief(&ours), brief(&theirs));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = submit(&[c.endpoint(lost)], "after".into(), 0).await;
    let mut jobs = JobServiceClient::new(connect(&c.endpoint(lost)).await.unwrap());
    let job = jobs.get(GetJobRequest { job_id: after, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.spec.unwrap().name, "after", "the replacement serves writes and reads");
}

/// docs/operations.md, "Recovery", the majority is lost: "Stop the survivor with the highest
/// applied index (`qm status --server` on each, stale), export its data directory offline, and
/// start a new cluster from the file: `qm admin snapshot export --data ... --out rescue.qmrs`,
/// then `qm server ... --restore rescue.qmrs` on every new replica." Every job acknowledged
/// before the loss is in the new cluster, which serves writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_lost_its_majority_is_rebuilt_as_the_operations_guide_says() {
    let mut c = Cluster::new().await;
    let first = with_team(&c).await;
    let endpoints: Vec<Ep> = (1..=3).map(|id| c.endpoint(id)).collect();
    let mut acked = BTreeSet::new();
    for i in 0..50 {
        submit(&endpoints, format!("acked-{i}"), i).await;
        acked.insert(format!("acked-{i}"));
    }
    let survivor = (1..=3).find(|&id| id != first).unwrap();
    for id in (1..=3).filter(|&id| id != survivor) {
        c.kill(id);
    }
    qm_ok(&c, vec!["status".into(), format!("--server={}", c.addrs[survivor as usize - 1])]).await;
    c.kill(survivor);
    let rescue = c.dir.path().join("rescue.qmrs");
    let data = c.dir.path().join(survivor.to_string());
    let (data, out) = (data.to_str().unwrap().to_owned(), rescue.to_str().unwrap().to_owned());
    qm_ok(
        &c,
        vec!["admin".into(), "snapshot".into(), "export".into(), format!("--data={data}"), format!("--out={out}")],
    )
    .await;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&rescue).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a backup holds every job's environment: its owner alone reads it");
    for id in 1..=3 {
        std::fs::remove_dir_all(c.dir.path().join(id.to_string())).unwrap();
        c.start_with(id, &["--restore", &out]);
    }
    let second = leader(&c).await;
    let names: BTreeSet<String> =
        all_jobs(&c.endpoint(second)).await.into_iter().map(|j| j.spec.unwrap().name).collect();
    assert!(acked.is_subset(&names), "every acknowledged job is in the new cluster");
    let endpoints: Vec<Ep> = (1..=3).map(|id| c.endpoint(id)).collect();
    submit(&endpoints, "after".into(), 0).await;
}

/// A token created through one replica is accepted at once by every replica (a replica that
/// has not applied it yet looks again after a read barrier); a token revoked through one
/// replica is refused at once by every replica, for reads and for writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_created_and_revoked_through_one_replica_hold_on_every_replica_at_once() {
    let c = Cluster::new().await;
    let first = with_team(&c).await;
    let follower = (1..=3).find(|&id| id != first).unwrap();
    let mut admin = AdminServiceClient::new(connect(&c.endpoint(follower)).await.unwrap());
    let req = CreateTokenRequest {
        name: "ci".into(),
        role: Role::Member as i32,
        teams: vec!["research".into()],
        node: "".into(),
    };
    let secret = admin.create_token(req).await.unwrap().into_inner().secret;
    let as_ci = |id: u64| Ep { bearer: Bearer::new(Some(&secret)).unwrap(), ..c.endpoint(id) };
    for id in 1..=3 {
        let mut jobs = JobServiceClient::new(connect(&as_ci(id)).await.unwrap());
        let job = SubmitRequest {
            jobs: vec![gpu_job(&format!("ci-{id}"), "research", 1, &["t"])],
            request_id: String::new(),
        };
        jobs.submit(job).await.unwrap_or_else(|s| panic!("replica {id}: {s:?}"));
    }
    admin.revoke_token(RevokeTokenRequest { name: "ci".into() }).await.unwrap();
    for id in 1..=3 {
        let mut jobs = JobServiceClient::new(connect(&as_ci(id)).await.unwrap());
        let read = jobs.list(ListJobsRequest::default()).await.unwrap_err();
        assert_eq!(read.code(), tonic::Code::Unauthenticated, "replica {id}: {read:?}");
        let job = SubmitRequest { jobs: vec![gpu_job("late", "research", 1, &["t"])], request_id: String::new() };
        let write = jobs.submit(job).await.unwrap_err();
        assert_eq!(write.code(), tonic::Code::Unauthenticated, "replica {id}: {write:?}");
    }
    let names: BTreeSet<String> =
        all_jobs(&c.endpoint(first)).await.into_iter().map(|j| j.spec.unwrap().name).collect();
    assert_eq!(names, ["ci-1", "ci-2", "ci-3"].map(String::from).into());
}
