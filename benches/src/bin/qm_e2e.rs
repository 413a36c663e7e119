//! `qm_e2e`: jobs end to end on real processes. It starts a 3-replica `qm server` cluster and
//! `--agents` `qm agent` processes with `--gpus` fake GPUs each on loopback (all from `--qm`, a
//! release build), submits `--jobs` one-GPU jobs that run `true`, and prints `qm_e2e_*=` lines:
//! - jobs per second from the first submission to the last job's success;
//! - placement to process started (the job's `starting` event to its `running` event, both
//!   stamped by the leader), p50 and p99;
//! - CPU seconds per job of the replicas and of the agents;
//! - each agent's resident memory, and its CPU while idle (after the jobs).

use qm_benches::procfs::{cpu_seconds, percentile, rss_kib};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Jobs end to end through replicas and agents on loopback.
#[derive(clap::Parser, Debug)]
struct Args {
    /// The `qm` binary to start (a release build).
    #[arg(long, default_value = "target/release/qm")]
    qm: String,
    /// Agents.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Fake GPUs per agent.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Jobs to run.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Jobs per submission request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to measure the idle agents for.
    #[arg(long, default_value_t = 10)]
    idle_s: u64,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

fn start(qm: &str, args: &[String]) -> Child {
    Command::new(qm)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qm starts (build it with --release)")
}

async fn connect(addr: &SocketAddr) -> Option<Channel> {
    Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .ok()
}

/// The leader's address, once there is one.
async fn leader(addrs: &[SocketAddr]) -> SocketAddr {
    loop {
        for a in addrs {
            let Some(c) = connect(a).await else { continue };
            if let Ok(s) = AdminServiceClient::new(c).cluster_status(ClusterStatusRequest {}).await {
                let s = s.into_inner();
                if let Some(m) = s.members.iter().find(|m| m.id == s.leader_id) {
                    return m.address.parse().expect("a member address");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cpu_of(procs: &[Child]) -> f64 {
    procs.iter().map(|p| cpu_seconds(&p.id().to_string())).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Args = clap::Parser::parse();
    let dir = tempfile::tempdir().expect("a temp dir");
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, x)| format!("--peer={}={x}", i + 1)).collect();
    let servers = Procs(
        (0..3)
            .map(|i| {
                let data = dir.path().join(format!("s{i}")).display().to_string();
                let mut args: Vec<String> =
                    ["server", "--id", &(i + 1).to_string(), "--listen", &addrs[i].to_string(), "--data", &data]
                        .map(String::from)
                        .to_vec();
                args.extend(peers.iter().cloned());
                args.push("--insecure".into());
                start(&a.qm, &args)
            })
            .collect(),
    );
    let lead = leader(&addrs).await;
    let channel = connect(&lead).await.expect("the leader answers");
    let flavor = Flavor { kind: AcceleratorKind::Gpu as i32, model: "fake-gpu".into() };
    let quota = FlavorQuota {
        flavor: Some(flavor),
        nominal: a.gpus * a.agents as u32,
        borrowing_limit: None,
        lending_limit: None,
    };
    let team = Team { name: "bench".into(), weight: 1.0, quotas: vec![quota] };
    AdminServiceClient::new(channel.clone()).set_team(SetTeamRequest { team: Some(team) }).await.expect("team set");
    let server_list = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let agents = Procs(
        (0..a.agents)
            .map(|n| {
                let data = dir.path().join(format!("a{n}")).display().to_string();
                let args = [
                    "agent",
                    "--server",
                    &server_list,
                    "--name",
                    &format!("node{n}"),
                    "--fake-gpus",
                    &a.gpus.to_string(),
                ];
                let mut args: Vec<String> = args.map(String::from).to_vec();
                args.extend(
                    ["--no-nvml", "--no-pci", "--no-cgroups", "--insecure", "--listen", "127.0.0.1:0", "--data", &data]
                        .map(String::from),
                );
                start(&a.qm, &args)
            })
            .collect(),
    );
    let mut admin = AdminServiceClient::new(channel.clone());
    while admin.list_nodes(ListNodesRequest::default()).await.map_or(0, |r| r.into_inner().nodes.len()) < a.agents {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events =
        JobServiceClient::new(channel.clone()).watch(WatchJobsRequest::default()).await.expect("watch").into_inner();
    let (cpu_servers, cpu_agents) = (cpu_of(&servers.0), cpu_of(&agents.0));
    let started = Instant::now();
    let submitter = tokio::spawn({
        let (channel, jobs, batch) = (channel.clone(), a.jobs, a.batch);
        async move {
            let mut client = JobServiceClient::new(channel);
            for (b, chunk) in (0..jobs).collect::<Vec<_>>().chunks(batch).enumerate() {
                let specs =
                    chunk.iter().map(|i| qm_proto::build::gpu_job(&format!("j{i}"), "bench", 1, &["true"])).collect();
                let mut specs: Vec<JobSpec> = specs;
                for s in &mut specs {
                    if let Some(d) = s.gang.as_mut().and_then(|g| g.devices.as_mut()) {
                        d.models = vec!["fake-gpu".into()];
                    }
                }
                client.submit(SubmitRequest { jobs: specs, request_id: format!("e2e-{b}") }).await.expect("submitted");
            }
        }
    });
    let (mut placed, mut latencies, mut done) = (BTreeMap::new(), Vec::new(), 0usize);
    while done < a.jobs {
        let Some(e) = events.message().await.expect("the watch stays open") else { break };
        match JobState::try_from(e.state) {
            Ok(JobState::Starting) => {
                placed.insert(e.job_id, e.at_ms);
            }
            Ok(JobState::Running) => {
                if let Some(p) = placed.get(&e.job_id) {
                    latencies.push(Duration::from_millis(e.at_ms.saturating_sub(*p)));
                }
            }
            Ok(JobState::Succeeded | JobState::Failed) => done += 1,
            _ => {}
        }
    }
    let wall = started.elapsed().as_secs_f64();
    submitter.await.expect("the submitter ends");
    let (cpu_servers, cpu_agents) = (cpu_of(&servers.0) - cpu_servers, cpu_of(&agents.0) - cpu_agents);
    latencies.sort();
    println!(
        "# {} replicas, {} agents x {} fake GPUs, {} jobs of `true`, {} per request",
        3, a.agents, a.gpus, a.jobs, a.batch
    );
    println!("qm_e2e_jobs_per_s={:.0}", a.jobs as f64 / wall);
    println!(
        "qm_e2e_placed_to_started_ms p50={:.1} p99={:.1} n={}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    println!(
        "qm_e2e_cpu_ms_per_job replicas={:.2} agents={:.2}",
        cpu_servers * 1000.0 / a.jobs as f64,
        cpu_agents * 1000.0 / a.jobs as f64
    );
    let before = cpu_of(&agents.0);
    tokio::time::sleep(Duration::from_secs(a.idle_s)).await;
    let idle = (cpu_of(&agents.0) - before) / a.idle_s as f64 / a.agents as f64;
    let rss: Vec<u64> = agents.0.iter().map(|c| rss_kib(c.id()) / 1024).collect();
    println!("qm_e2e_agent_idle_core_share={:.4} agent_rss_mib={rss:?}", idle);
}
