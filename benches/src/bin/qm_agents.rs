//! `qm_agents`: many simulated agents against one replica. It starts a one-replica `qm server`
//! (from `--qm`, a release build) and opens `--agents` agent sessions (8 fake GPUs each, over
//! `--connections` HTTP/2 connections), each heartbeating at the interval the server gives with
//! its 8 devices' telemetry, and answering start orders like a real agent (started at once,
//! exited with 0 after `--run-ms`, with a usage summary of the devices it held).
//! It prints `qm_agents_*=` lines: the time to register them all; the leader's CPU share and
//! resident memory while the cluster idles; and, under `--rate` one-GPU submissions per second
//! for `--seconds`, placement to start (the job's `starting` to its `running` event) p50 and p99.
//! With `--dashboard-jobs N`, it then queues N jobs and loads the dashboard's pages
//! (`pages.rs`).

#[path = "qm_agents/pages.rs"]
mod pages;

use qm_benches::procfs::{cpu_seconds, percentile, rss_kib};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const MODEL: &str = "nvidia-h100-80gb-hbm3";

/// Simulated agents against one replica.
#[derive(clap::Parser, Debug)]
struct Args {
    /// The `qm` binary to start (a release build).
    #[arg(long, default_value = "target/release/qm")]
    qm: String,
    /// Simulated agents, one session each.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// HTTP/2 connections the sessions share.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Seconds to measure the idle cluster for.
    #[arg(long, default_value_t = 20)]
    idle_s: u64,
    /// Submissions per second of the loaded phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the loaded phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// How long a simulated job runs, ms.
    #[arg(long, default_value_t = 5_000)]
    run_ms: u64,
    /// Jobs to queue for the dashboard phase (none: no dashboard phase).
    #[arg(long, default_value_t = 0)]
    dashboard_jobs: usize,
    /// Clients loading the dashboard's pages.
    #[arg(long, default_value_t = 8)]
    page_clients: usize,
    /// Seconds of the dashboard phase.
    #[arg(long, default_value_t = 20)]
    page_seconds: u64,
}

async fn connect(addr: SocketAddr) -> Channel {
    loop {
        let endpoint = Channel::from_shared(format!("http://{addr}")).expect("an address");
        if let Ok(c) = endpoint.connect_timeout(Duration::from_millis(300)).connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inventory(n: usize) -> NodeInventory {
    let mut inv = qm_proto::build::gpu_inventory(&format!("sim-{n:05}"), 8, MODEL);
    inv.labels.insert("rack".into(), format!("r{}", n / 32));
    inv
}

/// Readings of every device, as a real agent sends them with each heartbeat.
fn telemetry(inventory: &NodeInventory, seq: u64) -> Vec<DeviceTelemetry> {
    let reading = |(i, d): (usize, &Device)| DeviceTelemetry {
        device: d.id.clone(),
        utilization_pct: Some(((seq + i as u64) % 101) as u32),
        memory_used_mib: Some(1_000 + seq % 70_000),
        power_mw: Some(350_000),
        temperature_c: Some(45),
    };
    inventory.devices.iter().enumerate().map(reading).collect()
}

/// What a real agent reports of a replica that ran `run` on `devices`: a sample per second.
fn usage(replica: u32, devices: &[String], run: Duration) -> Vec<DeviceUsage> {
    let samples = run.as_secs().max(1);
    let used = |d: &String| DeviceUsage {
        replica,
        device: d.clone(),
        utilization_samples: samples,
        utilization_pct_sum: 90 * samples,
        utilization_pct_peak: 100,
        memory_samples: samples,
        memory_used_mib_sum: 60_000 * samples,
        memory_used_mib_peak: 70_000,
        ..DeviceUsage::default()
    };
    devices.iter().map(used).collect()
}

/// One simulated agent: registers, heartbeats, answers start orders.
async fn agent(channel: Channel, n: usize, run: Duration, registered: Arc<AtomicUsize>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let inventory = inventory(n);
    let register = Register { inventory: Some(inventory.clone()), agent_version: "sim".into(), ..Register::default() };
    let _ = tx.send(AgentMessage { body: Some(Up::Register(register)) }).await;
    let Ok(stream) = AgentServiceClient::new(channel).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await
    else {
        return;
    };
    let mut down = stream.into_inner();
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                seq += 1;
                let telemetry = telemetry(&inventory, seq);
                if tx.send(AgentMessage { body: Some(Up::Heartbeat(Heartbeat { seq, telemetry })) }).await.is_err() { return; }
            }
            m = down.message() => match m {
                Ok(Some(SchedulerMessage { body: Some(Down::Registered(r)) })) => {
                    beat = tokio::time::interval(Duration::from_millis(r.heartbeat_interval_ms.max(100)));
                    registered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(SchedulerMessage { body: Some(Down::Start(s)) })) => {
                    let phase = |p: ReplicaPhase| ReplicaStatus { job_id: s.job_id, replica: s.replica, attempt: s.attempt, phase: p as i32, ..ReplicaStatus::default() };
                    let _ = tx.send(AgentMessage { body: Some(Up::Status(phase(ReplicaPhase::Started))) }).await;
                    let exited = ReplicaStatus { usage: usage(s.replica, &s.devices, run), ..phase(ReplicaPhase::Exited) };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(run).await;
                        let _ = tx.send(AgentMessage { body: Some(Up::Status(exited)) }).await;
                    });
                }
                Ok(Some(_)) => {}
                _ => return,
            },
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Args = clap::Parser::parse();
    let dir = tempfile::tempdir().expect("a temp dir");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let (addr, http) = (free(), free());
    let data = dir.path().join("data");
    let mut server = Command::new(&a.qm)
        .args(["server", "--id", "1", "--listen", &addr.to_string(), "--data", data.to_str().expect("utf-8")])
        .args(["--http-listen", &http.to_string()])
        .arg("--insecure")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qm server starts (build it with --release)");
    let pid = server.id();
    let channel = connect(addr).await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let team = qm_proto::build::gpu_team("sim", MODEL, (a.agents * 8) as u32);
    while admin.set_team(SetTeamRequest { team: Some(team.clone()) }).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channels: Vec<Channel> = connections(a.connections, addr).await;
    let registered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for n in 0..a.agents {
        tokio::spawn(agent(
            channels[n % channels.len()].clone(),
            n,
            Duration::from_millis(a.run_ms),
            registered.clone(),
        ));
    }
    while registered.load(Ordering::Relaxed) < a.agents {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} of {} agents registered in 600 s",
            registered.load(Ordering::Relaxed),
            a.agents
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("# one replica, {} simulated agents x 8 GPUs over {} connections", a.agents, a.connections);
    println!("qm_agents_register_s={:.1}", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds(&pid.to_string());
    tokio::time::sleep(Duration::from_secs(a.idle_s)).await;
    let idle = (cpu_seconds(&pid.to_string()) - before) / a.idle_s as f64;
    println!("qm_agents_idle_leader_core_share={idle:.3} qm_agents_leader_rss_mib={}", rss_kib(pid) / 1024);
    let latencies = loaded(channel.clone(), a.rate, a.seconds).await;
    println!(
        "qm_agents_placed_to_started_ms p50={:.1} p99={:.1} n={} (at {}/s for {} s)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
        a.rate,
        a.seconds
    );
    if a.dashboard_jobs > 0 {
        pages::queue(channel, MODEL, a.dashboard_jobs).await;
        let jobs = a.rate * a.seconds + a.dashboard_jobs as u64;
        pages::load(http, pid, (a.agents, jobs), (a.page_clients, a.page_seconds)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// `count` connections to `addr`.
async fn connections(count: usize, addr: SocketAddr) -> Vec<Channel> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        out.push(connect(addr).await);
    }
    out
}

/// Submits one-GPU jobs at `rate` for `seconds` and returns each job's placement-to-start time.
async fn loaded(channel: Channel, rate: u64, seconds: u64) -> Vec<Duration> {
    let mut watch =
        JobServiceClient::new(channel.clone()).watch(WatchJobsRequest::default()).await.expect("watch").into_inner();
    let total = (rate * seconds) as usize;
    let submitter = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(total);
        for i in 0..total {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate as f64)).into()).await;
            let mut jobs = JobServiceClient::new(channel.clone());
            sent.push(tokio::spawn(async move {
                let job = qm_proto::build::gpu_job(&format!("s{i}"), "sim", 1, &["true"]);
                if let Err(e) = jobs.submit(SubmitRequest { jobs: vec![job], request_id: format!("s{i}") }).await {
                    eprintln!("qm_agents: submission {i}: {}", e.message());
                }
            }));
        }
        for s in sent {
            let _ = s.await;
        }
    });
    let (mut placed, mut latencies) = (BTreeMap::new(), Vec::with_capacity(total));
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while latencies.len() < total && Instant::now() < deadline {
        let e = match tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
            Ok(Ok(Some(e))) => e,
            Ok(Ok(None)) => {
                eprintln!("qm_agents: the watch stream closed");
                break;
            }
            Ok(Err(s)) => {
                eprintln!("qm_agents: the watch ended: {}", s.message());
                break;
            }
            Err(_) => {
                eprintln!("qm_agents: no job event for 5 s");
                break;
            }
        };
        match JobState::try_from(e.state) {
            Ok(JobState::Starting) => {
                placed.insert(e.job_id, e.at_ms);
            }
            Ok(JobState::Running) => {
                if let Some(p) = placed.remove(&e.job_id) {
                    latencies.push(Duration::from_millis(e.at_ms.saturating_sub(p)));
                }
            }
            _ => {}
        }
    }
    let _ = submitter.await;
    latencies.sort();
    latencies
}
