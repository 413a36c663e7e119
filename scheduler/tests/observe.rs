//! What a replica shows the ecosystem's tools: Prometheus metrics that agree with the API, the
//! gRPC health service (serving only while the replica can serve, no token needed), server
//! reflection (with a token), `/healthz` and `/readyz`.

mod common;

use common::Replica;
use qm_proto::auth::Authed;
use qm_proto::build::{gpu_inventory, gpu_job, gpu_team};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const MODEL: &str = "nvidia-h100-80gb-hbm3";

/// The value of the sample `name{labels}` (labels as the text format writes them) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Opens a node's agent session with 8 GPUs and keeps it open.
async fn register(channel: Authed, node: &str) -> tokio::sync::mpsc::Sender<AgentMessage> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let register = Register { inventory: Some(gpu_inventory(node, 8, MODEL)), ..Register::default() };
    tx.send(AgentMessage { body: Some(Up::Register(register)) }).await.unwrap();
    let mut client = AgentServiceClient::new(channel);
    let mut down = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
    tx
}

/// The health service's answer for `service`.
async fn health(replica: &Replica, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(replica.connect().await);
    let answer = client.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
    answer.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_api_and_the_probes_say_ready() {
    let replica = Replica::start(&[1], 4 << 20);
    let channel = replica.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 8)) }).await.unwrap();
    let _agent = register(channel.clone(), "node-a").await;
    let mut jobs = JobServiceClient::new(channel.clone());
    let batch = vec![
        gpu_job("big", "research", 6, &["x"]),
        gpu_job("small", "research", 1, &["x"]),
        gpu_job("waits", "research", 4, &["x"]),
    ];
    jobs.submit(SubmitRequest { jobs: batch, request_id: String::new() }).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let (code, body) = replica.get("/metrics").await;
        assert_eq!(code, 200);
        // The leader counts a plan once its proposal returns, a moment after it applied.
        let allocated =
            sample(&body, r#"qm_team_devices_allocated{team="research",flavor="gpu/nvidia-h100-80gb-hbm3"}"#);
        if allocated == Some(7.0) && sample(&body, "qm_admissions_total") == Some(2.0) {
            break body;
        }
        assert!(Instant::now() < until, "the jobs were never placed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(sample(&scrape, "qm_raft_term"), Some(status.term as f64));
    assert_eq!(sample(&scrape, "qm_raft_is_leader"), Some(1.0));
    assert_eq!(sample(&scrape, "qm_ready"), Some(1.0));
    assert!(sample(&scrape, "qm_scheduling_cycle_seconds_count").is_some_and(|n| n >= 1.0), "{scrape}");
    assert_eq!(sample(&scrape, "qm_scheduling_placements_per_cycle_sum"), Some(2.0));
    assert!(sample(&scrape, "qm_raft_applied_index").is_some_and(|a| a >= 1.0 && a <= status.applied_index as f64));
    let listed = jobs.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    let starting = listed.iter().filter(|j| j.state == JobState::Starting as i32).count();
    assert_eq!(sample(&scrape, r#"qm_jobs{state="starting"}"#), Some(starting as f64), "{scrape}");
    assert_eq!(sample(&scrape, r#"qm_jobs{state="failed"}"#), Some(0.0), "every state has a series");
    assert_eq!(sample(&scrape, r#"qm_jobs{state="pending"}"#), Some(1.0));
    assert_eq!(sample(&scrape, r#"qm_team_jobs_pending{team="research"}"#), Some(1.0));
    let waited = sample(&scrape, r#"qm_team_pending_oldest_seconds{team="research"}"#);
    assert!(waited.is_some_and(|s| (0.0..60.0).contains(&s)), "{scrape}");
    let research = r#"{team="research",flavor="gpu/nvidia-h100-80gb-hbm3"}"#;
    assert_eq!(sample(&scrape, &format!("qm_team_devices_nominal{research}")), Some(8.0));
    assert_eq!(sample(&scrape, &format!("qm_team_devices_borrowed{research}")), Some(0.0));
    assert_eq!(sample(&scrape, &format!("qm_team_devices_lent{research}")), Some(0.0));
    assert_eq!(sample(&scrape, r#"qm_team_jobs_idle{team="research"}"#), Some(0.0));
    // The submissions and the team were proposed here, each applied in a batch or more.
    let proposals = sample(&scrape, "qm_raft_proposal_seconds_count").unwrap_or(0.0);
    assert!(proposals >= 3.0, "the team, the node and the submissions: {scrape}");
    assert!(sample(&scrape, "qm_raft_apply_seconds_count").is_some_and(|n| n >= 1.0), "{scrape}");
    assert_eq!(sample(&scrape, "qm_requeues_total"), Some(0.0), "nothing went back to the queue");
    assert!(scrape.contains("# HELP qm_team_devices_allocated ") && scrape.ends_with("# EOF\n"), "{scrape}");
    assert_eq!(replica.get("/healthz").await.0, 200);
    let (code, body) = replica.get("/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready: leader 1\n"));
    assert_eq!(health(&replica, "").await, ServingStatus::Serving, "no token is needed");
    assert_eq!(health(&replica, "quartermaster.v1.JobService").await, ServingStatus::Serving);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_leader_is_alive_but_not_ready() {
    let replica = Replica::start_insecure(&[1, 2, 3], 4 << 20);
    assert_eq!(replica.get("/healthz").await.0, 200, "alive");
    let (code, body) = replica.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no leader known"), "{body}");
    assert_eq!(health(&replica, "").await, ServingStatus::NotServing);
    assert_eq!(sample(&replica.get("/metrics").await.1, "qm_ready"), Some(0.0));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_to_a_caller_with_a_token() {
    let replica = Replica::start(&[1], 4 << 20);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(replica.channel().await);
    let mut answers = client.server_reflection_info(tokio_stream::iter([list.clone()])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services")
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    for service in ["quartermaster.v1.JobService", "quartermaster.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    let mut anonymous = ServerReflectionClient::new(replica.connect().await);
    let refused = anonymous.server_reflection_info(tokio_stream::iter([list])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    replica.stop().await;
}
