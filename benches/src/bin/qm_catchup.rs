//! `qm_catchup`: how long a replacement replica takes to catch up with a large state. Starts a
//! three-replica `qm server` cluster on loopback (from `--qm`, a release build) that snapshots
//! often and keeps few entries, fills its state with pending jobs carrying large commands and
//! environments until a backup of it (`SaveSnapshot`) reaches `--state-mb`, then replaces
//! a follower as docs/operations.md says (stop it, remove it, empty its directory, start it with
//! `--join`, add it) and times from the add until it has applied what the leader had committed. The leader sends it the snapshot in pieces (`RaftChunk`): a state over
//! the old 64 MiB message limit never reached a follower. Prints `qm_catchup_*=` lines.

use qm_proto::build::{gpu_job, gpu_team};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Bytes of one job's command argument and of its one environment value (under the limits).
const FIELD_BYTES: usize = 60_000;
/// Jobs per submission (about 7 MB, under the server's 16 MiB request limit).
const JOBS_PER_REQUEST: usize = 60;

#[derive(clap::Parser, Debug)]
struct Args {
    /// The `qm` binary to start (a release build).
    #[arg(long, default_value = "target/release/qm")]
    qm: String,
    /// Size of the state to reach, in MB (10^6 bytes), as a backup measures it.
    #[arg(long, default_value_t = 200)]
    state_mb: u64,
    /// First of the two loopback ports the replicas listen on.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
}

struct Replicas {
    qm: String,
    addrs: [SocketAddr; 3],
    dir: tempfile::TempDir,
    procs: [Option<Child>; 3],
}

impl Replicas {
    fn spawn(&mut self, id: usize, join: bool) {
        let mut cmd = Command::new(&self.qm);
        cmd.args(["server", "--id", &id.to_string(), "--listen", &self.addrs[id - 1].to_string(), "--insecure"]);
        for (i, a) in self.addrs.iter().enumerate() {
            cmd.args(["--peer", &format!("{}={a}", i + 1)]);
        }
        if join {
            cmd.arg("--join");
        }
        let data = self.data(id);
        cmd.args(["--data", data.to_str().expect("utf-8 temp path"), "--snapshot-every", "10", "--keep-entries", "2"]);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("qm server starts");
        self.procs[id - 1] = Some(child);
    }

    fn data(&self, id: usize) -> std::path::PathBuf {
        self.dir.path().join(id.to_string())
    }

    fn kill(&mut self, id: usize) {
        if let Some(mut c) = self.procs[id - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self, id: usize) -> String {
        format!("http://{}", self.addrs[id - 1])
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
    }
}

async fn channel(endpoint: &str) -> Channel {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = Channel::from_shared(endpoint.to_owned()).expect("an address").connect().await {
            return c;
        }
        assert!(Instant::now() < until, "{endpoint} does not answer within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(admin: &mut AdminServiceClient<Channel>) -> ClusterStatusResponse {
    admin.cluster_status(ClusterStatusRequest {}).await.expect("cluster status").into_inner()
}

fn big_job(n: usize) -> JobSpec {
    let mut job = gpu_job(&format!("big-{n}"), "bench", 1, &["train"]);
    job.command.push(format!("{n:08}").repeat(FIELD_BYTES / 8));
    job.env.insert("PAYLOAD".into(), format!("{:08}", n + 1).repeat(FIELD_BYTES / 8));
    job
}

/// Bytes of a backup of the state, as the admin API streams it.
async fn state_bytes(admin: &mut AdminServiceClient<Channel>) -> u64 {
    let mut stream = admin.save_snapshot(SaveSnapshotRequest {}).await.expect("save snapshot").into_inner();
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await.expect("snapshot chunk") {
        bytes += chunk.data.len() as u64;
    }
    bytes
}

#[tokio::main]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    let addrs = [0, 1, 2].map(|i| SocketAddr::from(([127, 0, 0, 1], a.base_port + i)));
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut r = Replicas { qm: a.qm.clone(), addrs, dir, procs: [None, None, None] };
    for id in 1..=3 {
        r.spawn(id, false);
    }
    let mut admin = AdminServiceClient::new(channel(&r.endpoint(1)).await);
    let leader = loop {
        match status(&mut admin).await.leader_id as usize {
            0 => tokio::time::sleep(Duration::from_millis(50)).await,
            id => break id,
        }
    };
    let replaced = if leader == 3 { 2 } else { 3 };
    let leader = channel(&r.endpoint(leader)).await;
    let mut admin = AdminServiceClient::new(leader.clone());
    admin.set_team(SetTeamRequest { team: Some(gpu_team("bench", "nvidia-h100-80gb-hbm3", 8)) }).await.expect("team");
    let filling = Instant::now();
    let mut jobs = JobServiceClient::new(leader);
    let (mut n, mut bytes) = (0, 0);
    while bytes < a.state_mb * 1_000_000 {
        let batch: Vec<JobSpec> = (n..n + JOBS_PER_REQUEST).map(big_job).collect();
        jobs.submit(SubmitRequest { jobs: batch, request_id: String::new() }).await.expect("submit");
        n += JOBS_PER_REQUEST;
        if n % (10 * JOBS_PER_REQUEST) == 0 {
            bytes = state_bytes(&mut admin).await;
        }
    }
    let fill_s = filling.elapsed().as_secs_f64();
    r.kill(replaced);
    admin.remove_member(RemoveMemberRequest { id: replaced as u64 }).await.expect("remove the replica");
    std::fs::remove_dir_all(r.data(replaced)).expect("empty the replica's directory");
    let commit = status(&mut admin).await.commit_index;
    r.spawn(replaced, true);
    let mut joiner = AdminServiceClient::new(channel(&r.endpoint(replaced)).await);
    let started = Instant::now();
    let add = AddMemberRequest { id: replaced as u64, address: r.addrs[replaced - 1].to_string(), learner: false };
    admin.add_member(add).await.expect("add the replica again");
    let until = started + Duration::from_secs(600);
    while joiner.cluster_status(ClusterStatusRequest {}).await.map_or(0, |s| s.into_inner().applied_index) < commit {
        assert!(Instant::now() < until, "the new replica did not catch up within 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catchup_s = started.elapsed().as_secs_f64();
    println!("qm_catchup_jobs={n} qm_catchup_state_bytes={bytes} qm_catchup_fill_s={fill_s:.1}");
    println!("qm_catchup_s={catchup_s:.2} qm_catchup_mb_per_s={:.0}", bytes as f64 / 1e6 / catchup_s);
}
