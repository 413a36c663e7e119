//! The dashboard phase of `qm_agents` (`--dashboard-jobs N`): a queue of N more jobs of a team
//! without quota (pending for good: the queue page explains every one of them), then
//! `--page-clients` clients loading the dashboard's pages in turn for `--page-seconds`, each
//! waiting for its page before asking the next. It prints each page's latency p50 and p99, and
//! the leader's CPU share meanwhile.

use qm_benches::procfs::{cpu_seconds, percentile};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::{SetTeamRequest, SubmitRequest};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The team whose jobs wait.
const QUEUED: &str = "queued";
/// Jobs per submission.
const BATCH: usize = 5_000;

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<hyper::body::Bytes>,
>;

/// Submits `jobs` one-GPU jobs of a team with no quota and no borrowing.
pub async fn queue(channel: Channel, model: &str, jobs: usize) {
    let mut team = qm_proto::build::gpu_team(QUEUED, model, 0);
    team.quotas[0].borrowing_limit = Some(0);
    let mut admin = AdminServiceClient::new(channel.clone());
    admin.set_team(SetTeamRequest { team: Some(team) }).await.expect("the team of waiting jobs");
    let mut client = JobServiceClient::new(channel);
    let started = Instant::now();
    for first in (0..jobs).step_by(BATCH) {
        let specs = (first..jobs.min(first + BATCH))
            .map(|i| qm_proto::build::gpu_job(&format!("q{i}"), QUEUED, 1, &["true"]))
            .collect();
        client.submit(SubmitRequest { jobs: specs, request_id: String::new() }).await.expect("submitted");
    }
    println!("qm_agents_queued_jobs={jobs} in {:.1} s", started.elapsed().as_secs_f64());
}

/// The pages a client loads, in turn: every page kind, at the start and in the middle of the
/// lists.
fn pages(agents: usize, jobs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("cluster", "/ui/".to_owned()),
        ("queue", "/ui/queue".to_owned()),
        ("queue", format!("/ui/queue?after={}", jobs / 2)),
        ("nodes", "/ui/nodes".to_owned()),
        ("nodes", format!("/ui/nodes?from=sim-{:05}", agents / 2)),
        ("job", "/ui/jobs/1".to_owned()),
        ("job", format!("/ui/jobs/{}", jobs - 1)),
    ]
}

/// Loads the pages with `clients` clients for `seconds`; prints the latencies per page kind.
pub async fn load(http: SocketAddr, pid: u32, (agents, jobs): (usize, u64), (clients, seconds): (usize, u64)) {
    let client: Http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let pages = pages(agents, jobs);
    for (_, path) in &pages {
        let (status, _) = get(&client, http, path).await;
        assert_eq!(status, 200, "{path} answers");
    }
    let before = cpu_seconds(&pid.to_string());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, pages) = (client.clone(), pages.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(&'static str, Duration, usize)> = Vec::new();
            let mut i = c;
            while Instant::now() < until {
                let (kind, path) = &pages[i % pages.len()];
                let started = Instant::now();
                let (status, bytes) = get(&client, http, path).await;
                assert_eq!(status, 200, "{path}");
                seen.push((kind, started.elapsed(), bytes));
                i += 1;
            }
            seen
        }));
    }
    let mut by_kind: BTreeMap<&str, (Vec<Duration>, usize)> = BTreeMap::new();
    for t in tasks {
        for (kind, took, bytes) in t.await.expect("a client") {
            let entry = by_kind.entry(kind).or_default();
            entry.0.push(took);
            entry.1 = entry.1.max(bytes);
        }
    }
    let share = (cpu_seconds(&pid.to_string()) - before) / seconds as f64;
    println!("# dashboard: {clients} clients for {seconds} s; leader CPU {share:.2} cores");
    let mut all = Vec::new();
    for (kind, (mut took, bytes)) in by_kind {
        took.sort();
        println!(
            "qm_agents_page_ms page={kind} p50={:.1} p99={:.1} n={} largest_bytes={bytes}",
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            took.len()
        );
        all.extend(took);
    }
    all.sort();
    println!(
        "qm_agents_page_ms page=all p50={:.1} p99={:.1} n={}",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len()
    );
}

/// GETs `path`; the status and the body's length.
async fn get(client: &Http, http: SocketAddr, path: &str) -> (u16, usize) {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = format!("http://{http}{path}").parse().expect("a URI");
    let response = client.get(uri).await.expect("the page answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the whole page").to_bytes();
    (status, body.len())
}
