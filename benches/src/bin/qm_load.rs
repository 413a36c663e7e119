//! `qm_load`: a load driver for a 3-replica `qm server` cluster on loopback, the counterpart of
//! `benches/peers/etcd/etcd_bench.sh` (same shapes: one sequential client, 64 concurrent
//! clients over 64 connections, the leader killed with SIGKILL). It starts the replicas itself
//! (from `--qm`, a release build), measures, stops them, and prints `qm_*=` lines:
//! - sequential submissions, one job per request: rate, p50 and p99 latency;
//! - 64 clients, one job per request: acknowledged durable submissions per second, p50, p99,
//!   over all replicas and on the leader only;
//! - 64 clients, 100 jobs per request (reported separately: jobs per second);
//! - 64 clients reading one job, stale, from the leader: the most requests per second that
//!   gRPC alone allows on this machine, with the driver on the same cores;
//! - for each of these, the CPU time the replicas and the driver spent per request, and how
//!   long the clients took to connect (before the phase's clock starts; `--clients 1000` opens
//!   a thousand connections at once);
//! - time from SIGKILL of the leader to the next acknowledged write;
//! - submission to placement decision at a fixed rate (p50, p99), with fake nodes registered;
//! - resident memory of the leader holding 100,000 jobs;
//! - with `--phases large`: twelve clients submitting 15 MB each at once (125 jobs whose command
//!   and environment hold 60,000 bytes each), half through a follower: the time until all are
//!   acknowledged, the retries, and the elections meanwhile (there should be none).
//! - with `--phases access`: the 64-client submission rate secure (TLS on every link, tokens
//!   checked) and `--insecure`, on fresh clusters taken in turn (three rounds), and the ratio
//!   of the medians.
//! - with `--phases scrape`: the same rate with a scraper reading the leader's `/metrics` once a
//!   second and without, on fresh clusters taken in turn (three rounds), and the ratio of the
//!   medians. Every replica serves its HTTP address on its port plus 3.
//!
//! The replicas are secure (the default of `qm server`: TLS with certificates the driver makes
//! for them, and tokens; the driver sends the bootstrap admin token) unless `--insecure` is
//! given.

use qm_benches::procfs::{cpu_seconds, percentile, rss_kib};
use qm_proto::auth::{authed, Authed, Bearer};
use qm_proto::build::{gpu_inventory, gpu_job, gpu_team};
use qm_proto::certs::{Authority, Validity};
use qm_proto::tls::{Dialer, Identity};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const MODEL: &str = "nvidia-h100-80gb-hbm3";

/// Drives a 3-replica `qm server` cluster on loopback and prints `qm_*=` lines.
#[derive(clap::Parser, Debug)]
struct Args {
    /// The `qm` binary to start (a release build).
    #[arg(long, default_value = "target/release/qm")]
    qm: String,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the concurrent phases.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Submissions per second of the placement phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// First of the loopback ports the replicas listen on (each cluster takes 3 and their HTTP
    /// addresses 3 more, 10 apart).
    #[arg(long, default_value_t = 7301)]
    base_port: u16,
    /// Which phases to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "throughput,placement,memory")]
    phases: Vec<Phase>,
    /// Keep each replica's log (stderr) in this directory, as `PORT.log`; discarded otherwise.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
    /// Start the replicas with `--insecure` (no tokens checked).
    #[arg(long)]
    insecure: bool,
}

/// A group of measurements, each on its own fresh cluster.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sequential, 64 clients (all replicas, leader only), batched, then the failover.
    Throughput,
    /// Submission to placement at `--rate` with fake nodes registered.
    Placement,
    /// The leader's resident memory with 100,000 jobs.
    Memory,
    /// Twelve clients submitting 15 MB each at once, half of them through a follower.
    Large,
    /// The 64-client submission rate with and without token checks.
    Access,
    /// The 64-client submission rate with a scraper reading the leader's `/metrics` each
    /// second and without.
    Scrape,
}

/// A replica's address, the token its clients send and how they dial it.
#[derive(Clone, Debug)]
struct Ep {
    addr: String,
    bearer: Bearer,
    dialer: Dialer,
}

struct Cluster {
    qm: String,
    logs: Option<std::path::PathBuf>,
    addrs: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    procs: BTreeMap<u64, Child>,
    insecure: bool,
    bearer: Bearer,
    dialer: Dialer,
}

/// A CA and the three replicas' certificates in `dir/certs`; the clients' dialer, trusting the
/// CA.
fn certificates(dir: &std::path::Path, addrs: &[SocketAddr]) -> Dialer {
    let certs = dir.join("certs");
    let ca = Authority::open_or_create(&certs, "qm_load CA", Validity::days(1)).expect("a CA");
    for (i, a) in addrs.iter().enumerate() {
        let who = Identity::Replica(i as u64 + 1);
        ca.issue_to(&certs, &who, &[a.ip().to_string()], Validity::days(1)).expect("a certificate");
    }
    Dialer::trusting(Some(ca.cert_pem().as_bytes()))
}

impl Cluster {
    /// Three replicas, with tokens unless `insecure`; ready once the bootstrap admin token (in
    /// the first leader's data directory) is accepted.
    async fn start(a: &Args, base_port: u16, insecure: bool) -> Self {
        let addrs: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], base_port + i))).collect();
        let dir = tempfile::tempdir().expect("a temp dir");
        let (qm, logs, procs, bearer) = (a.qm.clone(), a.logs.clone(), BTreeMap::new(), Bearer::default());
        let dialer = if insecure { Dialer::plain() } else { certificates(dir.path(), &addrs) };
        let mut c = Self { qm, logs, addrs, dir, procs, insecure, bearer, dialer };
        for id in 1..=3 {
            c.spawn(id);
        }
        if !insecure {
            c.bearer = c.bootstrap_token().await;
        }
        c
    }

    /// The bearer of the first `admin.token` a replica accepts.
    async fn bootstrap_token(&self) -> Bearer {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            for id in 1..=3u64 {
                let file = self.dir.path().join(id.to_string()).join("admin.token");
                let Ok(secret) = std::fs::read_to_string(file) else { continue };
                let bearer = Bearer::new(Some(&secret)).expect("an ASCII token");
                let ep = Ep { bearer: bearer.clone(), ..self.endpoint(id) };
                if let Some(ch) = connect(&ep).await {
                    if AdminServiceClient::new(ch).who_am_i(WhoAmIRequest {}).await.is_ok() {
                        return bearer;
                    }
                }
            }
            assert!(Instant::now() < until, "no bootstrap token accepted within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn(&mut self, id: u64) {
        let mut cmd = Command::new(&self.qm);
        cmd.args(["server", "--id", &id.to_string(), "--listen", &self.addrs[id as usize - 1].to_string()]);
        for (i, a) in self.addrs.iter().enumerate() {
            cmd.args(["--peer", &format!("{}={a}", i + 1)]);
        }
        let data = self.dir.path().join(id.to_string());
        cmd.args(["--data", data.to_str().expect("utf-8 temp path"), "--node-lease-ms", "3600000"]);
        cmd.args(["--http-listen", &self.http(id).to_string()]);
        if self.insecure {
            cmd.arg("--insecure");
        } else {
            let certs = self.dir.path().join("certs");
            let file = |name: String| certs.join(name).display().to_string();
            cmd.args([
                "--tls-cert",
                &file(format!("replica-{id}.pem")),
                "--tls-key",
                &file(format!("replica-{id}.key")),
            ]);
            cmd.args(["--tls-ca", &file("ca.pem".into())]);
        }
        let stderr = match &self.logs {
            Some(dir) => {
                let path = dir.join(format!("{}.log", self.addrs[id as usize - 1].port()));
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
                Stdio::from(file.unwrap_or_else(|e| panic!("--logs: cannot open {}: {e}", path.display())))
            }
            None => Stdio::null(),
        };
        let child =
            cmd.stdout(Stdio::null()).stderr(stderr).spawn().expect("qm server starts (build it with --release)");
        self.procs.insert(id, child);
    }

    fn endpoint(&self, id: u64) -> Ep {
        let addr = self.addrs[id as usize - 1].to_string();
        Ep { addr, bearer: self.bearer.clone(), dialer: self.dialer.clone() }
    }

    /// Replica `id`'s HTTP address: its port plus 3 (a cluster takes ten ports).
    fn http(&self, id: u64) -> SocketAddr {
        let a = self.addrs[id as usize - 1];
        SocketAddr::new(a.ip(), a.port() + 3)
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// CPU seconds the running replicas have used, together.
    fn cpu_seconds(&self) -> f64 {
        self.procs.values().map(|p| cpu_seconds(&p.id().to_string())).sum()
    }

    fn rss_kib(&self, id: u64) -> u64 {
        rss_kib(self.procs[&id].id())
    }

    async fn leader(&self) -> u64 {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            for id in self.procs.keys() {
                if let Some(s) = status(&self.endpoint(*id)).await {
                    if s.leader_id != 0 && self.procs.contains_key(&s.leader_id) {
                        return s.leader_id;
                    }
                }
            }
            assert!(Instant::now() < until, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn connect(endpoint: &Ep) -> Option<Authed> {
    let channel = endpoint
        .dialer
        .endpoint(&endpoint.addr)
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()?;
    Some(authed(channel, endpoint.bearer.clone()))
}

async fn status(endpoint: &Ep) -> Option<ClusterStatusResponse> {
    AdminServiceClient::new(connect(endpoint).await?)
        .cluster_status(ClusterStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn job(name: String) -> JobSpec {
    gpu_job(&name, "bench", 1, &["train"])
}

/// What one measured load gave.
struct Run {
    /// Latencies of the acknowledged requests, sorted.
    latencies: Vec<Duration>,
    /// Seconds from the first request to the last answer.
    wall: f64,
    /// CPU seconds (user and system) the replicas used meanwhile, all three together.
    replicas_cpu: f64,
    /// CPU seconds the load driver used meanwhile.
    driver_cpu: f64,
}

/// Prints the rate (jobs per second), the request latency percentiles of a phase, and the CPU
/// microseconds the replicas and the driver spent per acknowledged request: on a machine whose
/// speed varies from one minute to the next (a shared VM), the CPU spent per request moves far
/// less than the rate.
fn report(name: &str, run: &Run, jobs_per_request: usize) {
    let requests = run.latencies.len();
    let rate = (requests * jobs_per_request) as f64 / run.wall;
    let (p50, p99) = (percentile(&run.latencies, 0.5), percentile(&run.latencies, 0.99));
    let per_request = |cpu: f64| cpu * 1e6 / requests.max(1) as f64;
    println!(
        "qm_{name}_jobs_per_s={rate:.0} qm_{name}_p50_ms={p50:.2} qm_{name}_p99_ms={p99:.2} \
         qm_{name}_replicas_cpu_us={:.0} qm_{name}_driver_cpu_us={:.0}",
        per_request(run.replicas_cpu),
        per_request(run.driver_cpu)
    );
}

/// What each client of a load sends, one request after the other.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// A submission of this many jobs.
    Submit(usize),
    /// A stale read of one job: served by the replica it reaches, without Raft, so the rate
    /// it reaches is what gRPC alone allows on this machine, driver included.
    StaleRead,
}

/// Sends `ask` from `clients` connections for `seconds`, to every replica in turn.
async fn load(c: &Cluster, clients: usize, ask: Ask, seconds: u64, tag: &str) -> Run {
    let endpoints: Vec<Ep> = c.procs.keys().map(|id| c.endpoint(*id)).collect();
    load_on(c, endpoints, clients, ask, seconds, tag).await
}

/// `load` on the given replicas only. Every client connects before the clock starts: opening
/// a thousand connections at once is measured on its own (`qm_TAG_connect_s`), not as part of
/// the rate.
async fn load_on(c: &Cluster, endpoints: Vec<Ep>, clients: usize, ask: Ask, seconds: u64, tag: &str) -> Run {
    let connecting = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for client in 0..clients {
        let endpoint = endpoints[client % endpoints.len()].clone();
        opening.spawn(async move { (client, connect_patiently(&endpoint).await) });
    }
    let mut channels: Vec<(usize, Authed)> = Vec::new();
    while let Some(opened) = opening.join_next().await {
        let (client, channel) = opened.expect("a connecting task");
        channels.push((client, channel.unwrap_or_else(|| panic!("client {client}: no replica answered within 10 s"))));
    }
    println!("qm_{tag}_connect_s={:.3}", connecting.elapsed().as_secs_f64());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let cpu_before = (c.cpu_seconds(), cpu_seconds("self"));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (client, channel) in channels {
        let latencies = latencies.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut jobs = JobServiceClient::new(channel);
            let mut mine = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                if send(&mut jobs, ask, &format!("{tag}-{client}-{n}")).await {
                    mine.push(t.elapsed());
                }
                n += 1;
            }
            latencies.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.expect("a client task");
    }
    let wall = start.elapsed().as_secs_f64();
    let (replicas_cpu, driver_cpu) = (c.cpu_seconds() - cpu_before.0, cpu_seconds("self") - cpu_before.1);
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    Run { latencies, wall, replicas_cpu, driver_cpu }
}

/// A connection to `endpoint`, waiting out a dropped SYN (the kernel sends it again after 1 s):
/// attempts of 3 s each for 10 s.
async fn connect_patiently(endpoint: &Ep) -> Option<Authed> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let e = endpoint.dialer.endpoint(&endpoint.addr).ok()?;
        if let Ok(c) = e.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true).connect().await {
            return Some(authed(c, endpoint.bearer.clone()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Sends one request; true when it was answered with success.
async fn send(jobs: &mut JobServiceClient<Authed>, ask: Ask, name: &str) -> bool {
    match ask {
        Ask::Submit(per_request) => {
            let batch = (0..per_request).map(|i| job(format!("{name}-{i}"))).collect();
            jobs.submit(SubmitRequest { jobs: batch, request_id: name.to_owned() }).await.is_ok()
        }
        Ask::StaleRead => {
            let req = GetJobRequest { job_id: 1, consistency: ReadConsistency::Stale as i32 };
            jobs.get(req).await.is_ok()
        }
    }
}

async fn set_team(endpoint: &Ep, nominal: u32) {
    let team = gpu_team("bench", MODEL, nominal);
    let mut admin = AdminServiceClient::new(connect(endpoint).await.expect("leader answers"));
    admin.set_team(SetTeamRequest { team: Some(team) }).await.expect("set team");
}

async fn register_nodes(endpoint: &Ep, nodes: usize) {
    let mut agent = AgentServiceClient::new(connect(endpoint).await.expect("leader answers"));
    for n in 0..nodes {
        let inventory = gpu_inventory(&format!("node-{n:05}"), 8, MODEL);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx
            .send(AgentMessage {
                body: Some(Up::Register(Register { inventory: Some(inventory), ..Register::default() })),
            })
            .await;
        let mut down =
            agent.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("session").into_inner();
        let _ = down.message().await;
    }
}

/// Submits at `rate` per second for `seconds` and measures, from the Watch stream, the time
/// from sending each submission to its placement (state `Starting`).
async fn placement_latency(endpoint: &Ep, rate: u64, seconds: u64) -> Vec<Duration> {
    let channel = connect(endpoint).await.expect("leader answers");
    let mut watch =
        JobServiceClient::new(channel.clone()).watch(WatchJobsRequest::default()).await.expect("watch").into_inner();
    let sent: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let placed: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let watcher = {
        let placed = placed.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = watch.message().await {
                if e.state == JobState::Starting as i32 {
                    placed.lock().await.insert(e.job_id, Instant::now());
                }
            }
        })
    };
    let total = rate * seconds;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (mut jobs, sent) = (JobServiceClient::new(channel.clone()), sent.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            if let Ok(r) =
                jobs.submit(SubmitRequest { jobs: vec![job(format!("p{i}"))], request_id: String::new() }).await
            {
                sent.lock().await.insert(r.into_inner().job_ids[0], t);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let (sent, placed) = (sent.lock().await, placed.lock().await);
    let mut l: Vec<Duration> =
        sent.iter().filter_map(|(id, t)| placed.get(id).map(|p| p.saturating_duration_since(*t))).collect();
    println!("qm_placement_jobs={} qm_placement_placed={}", sent.len(), l.len());
    l.sort();
    l
}

async fn failover(c: &mut Cluster) -> f64 {
    let leader = c.leader().await;
    let endpoints: Vec<Ep> = c.procs.keys().filter(|id| **id != leader).map(|id| c.endpoint(*id)).collect();
    c.kill(leader);
    let killed = Instant::now();
    let mut n = 0;
    loop {
        for e in &endpoints {
            if let Some(ch) = connect(e).await {
                let req =
                    SubmitRequest { jobs: vec![job(format!("failover-{n}"))], request_id: format!("failover-{n}") };
                if JobServiceClient::new(ch).submit(req).await.is_ok() {
                    return killed.elapsed().as_secs_f64();
                }
            }
            n += 1;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no write accepted within 30 s of the kill");
    }
}

#[tokio::main]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    if a.phases.contains(&Phase::Throughput) {
        throughput(&a).await;
    }
    if a.phases.contains(&Phase::Placement) {
        placement(&a).await;
    }
    if a.phases.contains(&Phase::Memory) {
        memory(&a).await;
    }
    if a.phases.contains(&Phase::Large) {
        large(&a).await;
    }
    if a.phases.contains(&Phase::Access) {
        access(&a).await;
    }
    if a.phases.contains(&Phase::Scrape) {
        scrape(&a).await;
    }
}

/// The 64-client submission rate without and with a scraper reading the leader's `/metrics`
/// once a second, on fresh clusters in turn (three rounds): each rate, and the medians' ratio.
async fn scrape(a: &Args) {
    let variants = [("scrape_off", a.insecure, false), ("scrape_on", a.insecure, true)];
    let (off, on) = paired(a, 110, variants).await;
    println!(
        "qm_scrape_off_median={off:.0} qm_scrape_on_median={on:.0} qm_scrape_cost_pct={:.1}",
        (1.0 - on / off) * 100.0
    );
}

/// Three rounds of the 64-client submission rate on fresh clusters, the two `variants` (tag,
/// `--insecure`, a scraper of the leader's `/metrics`) in turn; the two medians.
async fn paired(a: &Args, offset: u16, variants: [(&str, bool, bool); 2]) -> (f64, f64) {
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..3u16 {
        for (i, (tag, insecure, scraping)) in variants.into_iter().enumerate() {
            let c = Cluster::start(a, a.base_port + offset + 10 * (2 * round + i as u16), insecure).await;
            let leader = c.leader().await;
            set_team(&c.endpoint(leader), 1_000_000).await;
            let scraper = scraping.then(|| tokio::spawn(scrape_every_second(c.http(leader))));
            let run = load(&c, a.clients, Ask::Submit(1), a.seconds, tag).await;
            if let Some(s) = scraper {
                s.abort();
            }
            report(tag, &run, 1);
            rates[i].push(run.latencies.len() as f64 / run.wall);
        }
    }
    (median(&mut rates[0]), median(&mut rates[1]))
}

/// `GET /metrics` on `addr` once a second, reading each answer whole, until aborted.
async fn scrape_every_second(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { continue };
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_ok() {
            let mut body = Vec::new();
            let _ = stream.read_to_end(&mut body).await;
        }
    }
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The 64-client submission rate secure (TLS and tokens) and `--insecure`, on fresh clusters in
/// turn (secure first, then insecure, three rounds): each rate, and the medians' ratio.
async fn access(a: &Args) {
    let variants = [("access_secure", false, false), ("access_insecure", true, false)];
    let (secure, insecure) = paired(a, 40, variants).await;
    println!(
        "qm_access_secure_median={secure:.0} qm_access_insecure_median={insecure:.0} qm_access_cost_pct={:.1}",
        (1.0 - secure / insecure) * 100.0
    );
}

async fn throughput(a: &Args) {
    let mut c = Cluster::start(a, a.base_port, a.insecure).await;
    let leader = c.leader().await;
    set_team(&c.endpoint(leader), 1_000_000).await;

    report("seq", &load(&c, 1, Ask::Submit(1), a.seconds, "seq").await, 1);
    let conc = load(&c, a.clients, Ask::Submit(1), a.seconds, "conc").await;
    println!("qm_conc_clients={}", a.clients);
    report("conc", &conc, 1);
    let leader_only = vec![c.endpoint(c.leader().await)];
    report("leader_only", &load_on(&c, leader_only.clone(), a.clients, Ask::Submit(1), a.seconds, "lead").await, 1);
    report("stale_reads", &load_on(&c, leader_only, a.clients, Ask::StaleRead, a.seconds, "read").await, 1);
    report("batched_100_jobs", &load(&c, a.clients, Ask::Submit(100), a.seconds, "batch").await, 100);
    let secs = failover(&mut c).await;
    println!("qm_failover_s={secs:.3}");
}

async fn placement(a: &Args) {
    let c = Cluster::start(a, a.base_port + 10, a.insecure).await;
    let leader = c.leader().await;
    let endpoint = c.endpoint(leader);
    let need = (a.rate * a.seconds) as usize;
    set_team(&endpoint, need as u32 + 8).await;
    register_nodes(&endpoint, need.div_ceil(8)).await;
    let l = placement_latency(&endpoint, a.rate, a.seconds).await;
    println!(
        "qm_placement_rate={} qm_placement_p50_ms={:.2} qm_placement_p99_ms={:.2}",
        a.rate,
        percentile(&l, 0.5),
        percentile(&l, 0.99)
    );
}

async fn memory(a: &Args) {
    let c = Cluster::start(a, a.base_port + 20, a.insecure).await;
    let leader = c.leader().await;
    let endpoint = c.endpoint(leader);
    set_team(&endpoint, 1_000_000).await;
    let mut jobs = JobServiceClient::new(connect(&endpoint).await.expect("leader answers"));
    for b in 0..100 {
        let batch = (0..1000).map(|i| job(format!("m{b}-{i}"))).collect();
        jobs.submit(SubmitRequest { jobs: batch, request_id: format!("m{b}") }).await.expect("a batch of 1,000");
    }
    let held = status(&endpoint).await.map_or(0, |s| s.pending_jobs);
    println!("qm_memory_jobs={held} qm_leader_rss_mib={:.0}", c.rss_kib(leader) as f64 / 1024.0);
}

async fn large(a: &Args) {
    let c = Cluster::start(a, a.base_port + 30, a.insecure).await;
    let leader = c.leader().await;
    let lead = c.endpoint(leader);
    set_team(&lead, 16).await;
    let term = status(&lead).await.expect("the leader answers").term;
    let follower = c.endpoint(*c.procs.keys().find(|&&id| id != leader).expect("a follower"));
    let started = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|client| {
            let endpoint = if client % 2 == 0 { lead.clone() } else { follower.clone() };
            tokio::spawn(async move { submit_large(&endpoint, client).await })
        })
        .collect();
    let mut retries = 0;
    for client in clients {
        retries += client.await.expect("a client");
    }
    let secs = started.elapsed().as_secs_f64();
    let after = status(&lead).await.expect("the leader answers");
    println!(
        "qm_large_s={secs:.2} qm_large_retries={retries} qm_large_elections={} qm_large_leader_kept={}",
        after.term - term,
        after.leader_id == leader
    );
}

/// Submits one 15 MB request until acknowledged (retrying with its request id while the
/// replica answers `Unavailable`); returns the retries.
async fn submit_large(endpoint: &Ep, client: usize) -> u32 {
    let jobs = (0..125)
        .map(|i| {
            let mut job = job(format!("large-{client}-{i}"));
            job.command.push("c".repeat(60_000));
            job.env.insert("PAYLOAD".into(), "e".repeat(60_000));
            job
        })
        .collect();
    let request = SubmitRequest { jobs, request_id: format!("large-{client}") };
    for retries in 0..20 {
        let mut jobs = JobServiceClient::new(connect(endpoint).await.expect("a replica answers"));
        match jobs.submit(request.clone()).await {
            Ok(_) => return retries,
            Err(s) if s.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("large submission {client}: {s:?}"),
        }
    }
    panic!("large submission {client}: not acknowledged after 20 tries")
}
