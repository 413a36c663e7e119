//! Who may do what, over real gRPC against one replica with tokens: every RPC of the `.proto`
//! files has a row in the access table; every RPC against every kind of caller is admitted or
//! refused as its row says; members act on their own teams only and see other teams' jobs
//! without command and environment; an agent token registers its own node only; a revoked token
//! is refused at once; the bootstrap token file is private.

mod common;

use common::Replica;
use protobuf::Message as _;
use qm_proto::auth::{authed, Authed, Bearer};
use qm_proto::build::{gpu_inventory, gpu_job, gpu_team};
use qm_proto::certs::{Authority, Validity};
use qm_proto::tls::{Dialer, Identity, TlsFiles};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::raft_service_client::RaftServiceClient;
use qm_proto::v1::*;
use qm_scheduler::access::rules::{path, Rule, RULES};
use raft::eraftpb::{Message, MessageType};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};
use tonic::transport::Channel;
use tonic::Code;

const MODEL: &str = "nvidia-h100-80gb-hbm3";

/// Services of the `.proto` files that agents serve, not replicas.
const SERVED_BY_AGENTS: &[&str] = &["ReplicaLogs"];

/// Replica 1 of a one-replica cluster with tokens, and its bootstrap admin token once it is
/// accepted.
async fn replica() -> (Replica, String) {
    let replica = Replica::start(&[1], 4 << 20);
    replica.channel().await;
    let token = replica.token().await;
    (replica, token)
}

/// Creates a token and returns its secret.
async fn create(admin: &mut AdminServiceClient<Authed>, name: &str, role: Role, teams: &[&str], node: &str) -> String {
    let req = CreateTokenRequest {
        name: name.into(),
        role: role as i32,
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        node: node.into(),
    };
    admin.create_token(req).await.unwrap().into_inner().secret
}

/// The `(service, method)` of every `rpc` in the `.proto` files.
fn rpcs_in_protos() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto/quartermaster/v1");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_owned);
            } else if let (Some(rest), Some(s)) = (line.strip_prefix("rpc "), &service) {
                found.insert((s.clone(), rest.split('(').next().unwrap().trim().to_owned()));
            }
        }
    }
    found
}

#[test]
fn every_rpc_of_the_protos_has_exactly_one_access_rule() {
    let protos: BTreeSet<_> =
        rpcs_in_protos().into_iter().filter(|(s, _)| !SERVED_BY_AGENTS.contains(&s.as_str())).collect();
    assert!(protos.len() >= 20, "the parser found the RPCs: {protos:?}");
    // Rows of the standard services (health, reflection) name them in full; the matrix below
    // calls them.
    let ours = RULES.iter().filter(|(s, ..)| !s.contains('.'));
    let rules: Vec<(String, String)> = ours.map(|(s, m, _)| ((*s).to_owned(), (*m).to_owned())).collect();
    let distinct: BTreeSet<_> = rules.iter().cloned().collect();
    assert_eq!(distinct.len(), rules.len(), "a row twice");
    let missing: Vec<_> = protos.difference(&distinct).collect();
    let stale: Vec<_> = distinct.difference(&protos).collect();
    assert!(missing.is_empty() && stale.is_empty(), "without a rule: {missing:?}; rules of no RPC: {stale:?}");
}

/// Calls `path` with one empty message (a valid encoding of every request type): the code the
/// call ends with when it is refused before a response starts, or `Ok`.
async fn call(channel: Channel, token: Option<&str>, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter([()]));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let parsed = path.parse().unwrap();
    match tokio::time::timeout(Duration::from_secs(5), grpc.streaming(request, parsed, codec)).await {
        Ok(Ok(_)) => tonic::Status::ok(""),
        Ok(Err(s)) => s,
        Err(_) => panic!("{path} did not answer"),
    }
}

/// What each rule means, written out apart from the code that enforces it.
fn admits(rule: Rule, who: &str) -> bool {
    matches!(
        (rule, who),
        (Rule::Peer, "peer")
            | (Rule::Open, _)
            | (Rule::Admin | Rule::Member | Rule::Agent | Rule::AnyToken, "admin")
            | (Rule::Member, "member")
            | (Rule::Agent, "agent")
            | (Rule::AnyToken, "member" | "agent")
    )
}

/// Whether the access layer refused the call (a service's own refusals name their field).
fn refused_by_access(s: &tonic::Status) -> bool {
    s.code() == Code::Unauthenticated || (s.code() == Code::PermissionDenied && s.message().contains("may not call"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_roles_its_rule_names() {
    let (replica, admin_secret) = replica().await;
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 8)) }).await.unwrap();
    let member = create(&mut admin, "alice", Role::Member, &["research"], "").await;
    let agent = create(&mut admin, "node-a", Role::Agent, &[], "node-a").await;
    let user = replica.connect().await;
    let (node_a, peer) =
        (replica.connect_as(&Identity::Node("node-a".into())).await, replica.connect_as(&Identity::Replica(2)).await);
    let callers: [(&str, Option<&str>, &Channel); 6] = [
        ("admin", Some(&admin_secret), &user),
        ("member", Some(&member), &user),
        ("agent", Some(&agent), &node_a),
        ("peer", None, &peer),
        ("no token", None, &user),
        ("unknown token", Some("qm_0000"), &user),
    ];
    let mut cells = 0;
    for (service, method, rule) in RULES {
        let path = path(service, method);
        for (who, token, channel) in &callers {
            let status = call((*channel).clone(), *token, &path).await;
            assert_eq!(!refused_by_access(&status), admits(*rule, who), "{who} calling {path}: {status:?}");
            if (who.ends_with("token") && *rule != Rule::Open) || (*rule == Rule::Peer && *who != "peer") {
                assert_eq!(status.code(), Code::Unauthenticated, "{who} calling {path}");
            }
            cells += 1;
        }
    }
    assert_eq!(cells, RULES.len() * callers.len());
    let unknown = call(replica.connect().await, Some(&admin_secret), "/quartermaster.v1.JobService/Drop").await;
    assert_eq!(unknown.code(), Code::PermissionDenied, "an RPC without a rule is refused to everyone: {unknown:?}");
    let denied = call(replica.connect().await, Some(&member), "/quartermaster.v1.AdminService/SetTeam").await;
    assert_eq!(denied.message(), "member token \"alice\" may not call AdminService/SetTeam");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_act_on_their_own_teams_and_see_no_other_teams_secrets() {
    let (replica, admin_secret) = replica().await;
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    for team in ["research", "prod"] {
        admin.set_team(SetTeamRequest { team: Some(gpu_team(team, MODEL, 8)) }).await.unwrap();
    }
    let alice = create(&mut admin, "alice", Role::Member, &["research"], "").await;
    let mut as_admin = JobServiceClient::new(replica.with(Some(&admin_secret)).await);
    let mut secret_job = gpu_job("deploy", "prod", 1, &["serve", "--key=hunter2"]);
    secret_job.env.insert("API_KEY".into(), "hunter2".into());
    let prod = as_admin.submit(SubmitRequest { jobs: vec![secret_job], request_id: String::new() }).await.unwrap();
    let prod = prod.into_inner().job_ids[0];

    let mut jobs = JobServiceClient::new(replica.with(Some(&alice)).await);
    let own = jobs
        .submit(SubmitRequest { jobs: vec![gpu_job("train", "research", 1, &["python"])], request_id: String::new() });
    let own = own.await.unwrap().into_inner().job_ids[0];
    let other = jobs.submit(SubmitRequest {
        jobs: vec![gpu_job("a", "research", 1, &["x"]), gpu_job("b", "prod", 1, &["x"])],
        request_id: String::new(),
    });
    let other = other.await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(other.message(), "jobs[1].team: member token \"alice\" may not submit jobs of team \"prod\"");
    let cancel = jobs.cancel(CancelJobRequest { job_id: prod }).await.unwrap_err();
    assert_eq!(cancel.code(), Code::PermissionDenied, "{cancel:?}");
    let listed = jobs.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 2, "the cluster-wide view, without the refused batch");
    let theirs = listed.iter().find(|j| j.id == prod).unwrap();
    let spec = theirs.spec.as_ref().unwrap();
    assert!(theirs.redacted && spec.command.is_empty() && spec.env.is_empty(), "{theirs:?}");
    assert!(!format!("{listed:?}").contains("hunter2"));
    let mine = listed.iter().find(|j| j.id == own).unwrap();
    assert!(!mine.redacted && mine.spec.as_ref().unwrap().command == ["python"]);
    let got = jobs.get(GetJobRequest { job_id: prod, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    assert!(got.redacted && !format!("{got:?}").contains("hunter2"));
    let why = jobs.why(WhyRequest { job_id: prod }).await.unwrap().into_inner();
    assert!(!format!("{:?}", why.job).contains("hunter2"));
    let full = as_admin.get(GetJobRequest { job_id: prod, consistency: 0 }).await.unwrap().into_inner().job.unwrap();
    assert!(!full.redacted && full.spec.unwrap().env["API_KEY"] == "hunter2", "admins see everything");
    jobs.cancel(CancelJobRequest { job_id: own }).await.unwrap();
    replica.stop().await;
}

/// Opens an agent session that registers `node`: the first message from the scheduler, or the
/// refusal.
async fn register(channel: Authed, node: &str) -> Result<SchedulerMessage, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let register = Register { inventory: Some(gpu_inventory(node, 8, MODEL)), ..Register::default() };
    tx.send(AgentMessage { body: Some(Up::Register(register)) }).await.unwrap();
    let mut down = AgentServiceClient::new(channel).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
    let first = down.get_mut().message().await?.expect("an answer");
    std::mem::forget(tx);
    Ok(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_registers_its_own_node_only() {
    let (replica, admin_secret) = replica().await;
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    let a = create(&mut admin, "agent-a", Role::Agent, &[], "node-a").await;
    let as_b = register(replica.agent("node-a", &a).await, "node-b").await.unwrap_err();
    assert_eq!(as_b.code(), Code::PermissionDenied);
    assert_eq!(as_b.message(), "agent token \"agent-a\" may not report for node \"node-b\"");
    let with_b_cert = register(replica.agent("node-b", &a).await, "node-b").await.unwrap_err();
    assert_eq!(with_b_cert.code(), Code::PermissionDenied);
    assert_eq!(
        with_b_cert.message(),
        "agent token \"agent-a\" of node \"node-a\" may call AgentService/Session only over a connection whose \
         certificate names that node (this one's names node \"node-b\")"
    );
    let no_cert = register(replica.with(Some(&a)).await, "node-a").await.unwrap_err();
    assert_eq!(no_cert.code(), Code::PermissionDenied);
    assert!(no_cert.message().ends_with("(this one's names no one)"), "{no_cert:?}");
    let nodes = admin.list_nodes(ListNodesRequest::default()).await.unwrap().into_inner().nodes;
    assert!(nodes.is_empty(), "the refused registration left no node: {nodes:?}");
    let as_a = register(replica.agent("node-a", &a).await, "node-a").await.unwrap();
    assert!(matches!(as_a.body, Some(scheduler_message::Body::Registered(_))), "{as_a:?}");
    let mut jobs = JobServiceClient::new(replica.with(Some(&a)).await);
    let err = jobs.list(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.message(), "agent token \"agent-a\" may not call JobService/List");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_once_and_the_bootstrap_file_is_private() {
    let (replica, admin_secret) = replica().await;
    let mode = std::fs::metadata(replica.dir.path().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 8)) }).await.unwrap();
    let ci = create(&mut admin, "ci", Role::Member, &["research"], "").await;
    let mut jobs = JobServiceClient::new(replica.with(Some(&ci)).await);
    jobs.list(ListJobsRequest::default()).await.unwrap();
    let again =
        admin.create_token(CreateTokenRequest { name: "ci".into(), role: Role::Admin as i32, ..Default::default() });
    assert_eq!(again.await.unwrap_err().code(), Code::AlreadyExists);
    let listed = admin.list_tokens(ListTokensRequest {}).await.unwrap().into_inner().tokens;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["bootstrap", "ci"]);
    assert_eq!(listed[1].created_by, "bootstrap");
    assert!(!format!("{listed:?}").contains(&ci), "listings never hold secrets");
    admin.revoke_token(RevokeTokenRequest { name: "ci".into() }).await.unwrap();
    let refused = jobs.list(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let gone = admin.revoke_token(RevokeTokenRequest { name: "ci".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bad =
        admin.create_token(CreateTokenRequest { name: "x".into(), role: Role::Member as i32, ..Default::default() });
    assert_eq!(bad.await.unwrap_err().message(), "teams: a member token needs at least one team");
    replica.stop().await;
}

#[test]
fn the_security_guide_lists_every_rule_as_the_table_has_it() {
    let guide = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md"));
    let guide = guide.unwrap();
    for (service, method, rule) in RULES {
        let word = match rule {
            Rule::Admin => "admin",
            Rule::Member => "member",
            Rule::Agent => "agent",
            Rule::AnyToken => "any token",
            Rule::Peer => "peer",
            Rule::Open => "open",
        };
        let row = format!("| `{service}/{method}` | {word} |");
        assert!(guide.contains(&row), "docs/security.md has no row {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_names_who_asked_for_each_change_and_how_it_ended() {
    let (replica, admin_secret) = replica().await;
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    admin.set_team(SetTeamRequest { team: Some(gpu_team("research", MODEL, 8)) }).await.unwrap();
    let alice = create(&mut admin, "alice", Role::Member, &["research"], "").await;
    let mut jobs = JobServiceClient::new(replica.with(Some(&alice)).await);
    let batch = (0..3).map(|i| gpu_job(&format!("j{i}"), "research", 1, &["x"])).collect();
    jobs.submit(SubmitRequest { jobs: batch, request_id: String::new() }).await.unwrap();
    jobs.cancel(CancelJobRequest { job_id: 77 }).await.unwrap_err();
    let denied = jobs.submit(SubmitRequest { jobs: vec![gpu_job("p", "prod", 1, &["x"])], request_id: String::new() });
    denied.await.unwrap_err();

    let all = admin.list_audit(ListAuditRequest::default()).await.unwrap().into_inner();
    let trail: Vec<(&str, &str, &str, Option<&str>)> =
        all.records.iter().map(|r| (&*r.token, &*r.role, &*r.what, r.error.as_deref())).collect();
    assert_eq!(
        trail,
        [
            ("bootstrap", "admin", "set team research", None),
            ("bootstrap", "admin", "create token alice (member of research)", None),
            ("alice", "member", "submit 3 job(s) of team research: jobs 1, 2, 3", None),
            ("alice", "member", "cancel job 77", Some("unknown job 77")),
        ],
        "a call refused before it reaches the log (another team) is not a change"
    );
    assert!(all.records.windows(2).all(|w| w[0].index < w[1].index && w[0].at_ms <= w[1].at_ms));
    let ask = |req: ListAuditRequest| {
        let mut admin = admin.clone();
        async move { admin.list_audit(req).await.map(|r| r.into_inner().records) }
    };
    let hers = ask(ListAuditRequest { token: "alice".into(), ..Default::default() }).await.unwrap();
    assert_eq!(hers.len(), 2);
    let refused = ask(ListAuditRequest { refused_only: true, ..Default::default() }).await.unwrap();
    assert_eq!(refused.iter().map(|r| r.what.as_str()).collect::<Vec<_>>(), ["cancel job 77"]);
    let newest = ask(ListAuditRequest { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(newest[0].what, "cancel job 77");
    let later = ask(ListAuditRequest { since_ms: all.records[3].at_ms + 1, ..Default::default() }).await.unwrap();
    assert!(later.is_empty());
    let bad = ask(ListAuditRequest { limit: 10_001, ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.message(), "limit: at most 10000, got 10001");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registering_an_absurd_inventory_is_refused_and_changes_nothing() {
    let (replica, admin_secret) = replica().await;
    let mut admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    let a = create(&mut admin, "agent-a", Role::Agent, &[], "node-a").await;
    let before = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().state_hash;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut inventory = gpu_inventory("node-a", 10_000, MODEL);
    inventory.labels = (0..1_000).map(|i| (format!("k{i}"), "v".repeat(100))).collect();
    tx.send(AgentMessage { body: Some(Up::Register(Register { inventory: Some(inventory), ..Register::default() })) })
        .await
        .unwrap();
    let mut agent = AgentServiceClient::new(replica.agent("node-a", &a).await);
    let refused = agent.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("register.inventory.devices: 10000 devices, more than 64"),
        "the field is named: {}",
        refused.message()
    );
    let after = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(after.state_hash, before, "nothing of the inventory was accepted");
    assert!(
        register(replica.agent("node-a", &a).await, "node-a").await.is_ok(),
        "the replica serves the node's next session"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limits_refuse_what_passes_them_naming_field_and_flag() {
    use qm_scheduler::service::admission::Admission;
    let limits = Admission {
        max_batch: 3,
        max_replicas: 2,
        max_command_bytes: 20,
        max_env_bytes: 10,
        max_pending_per_team: 4,
        max_teams: 2,
        max_nodes: 1,
    };
    let replica = Replica::start_admitting(&[1], limits);
    let mut admin = AdminServiceClient::new(replica.channel().await);
    let jobs = JobServiceClient::new(replica.channel().await);
    for team in ["research", "prod", "research"] {
        admin.set_team(SetTeamRequest { team: Some(gpu_team(team, MODEL, 8)) }).await.unwrap();
    }
    let third = admin.set_team(SetTeamRequest { team: Some(gpu_team("third", MODEL, 8)) }).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert_eq!(third.message(), "team.name: the cluster has 2 teams, the most it admits (--max-teams)");
    let submit = |specs: Vec<JobSpec>| {
        let mut jobs = jobs.clone();
        async move { jobs.submit(SubmitRequest { jobs: specs, request_id: String::new() }).await }
    };
    let job = |name: &str| gpu_job(name, "research", 1, &["python"]);
    let refused = |r: Result<tonic::Response<SubmitResponse>, tonic::Status>| r.unwrap_err().message().to_owned();
    let four = refused(submit(vec![job("a"), job("b"), job("c"), job("d")]).await);
    assert_eq!(four, "jobs: 4 jobs in one submission, more than the 3 this cluster admits (--max-batch)");
    let mut wide = job("wide");
    wide.gang.as_mut().unwrap().replicas = 3;
    let wide = refused(submit(vec![job("a"), wide]).await);
    assert_eq!(wide, "jobs[1].gang.replicas: 3 replicas, more than the 2 this cluster admits (--max-replicas)");
    let long = refused(submit(vec![gpu_job("long", "research", 1, &["python", "train-for-a-long-while.py"])]).await);
    assert!(long.starts_with("jobs[0].command: 31 bytes, more than the 20"), "{long}");
    let mut noisy = job("env");
    noisy.env.insert("SEED".into(), "1234567".into());
    let noisy = refused(submit(vec![noisy]).await);
    assert!(noisy.starts_with("jobs[0].env: 11 bytes, more than the 10"), "{noisy}");
    submit(vec![job("a"), job("b"), job("c")]).await.unwrap();
    let before = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().state_hash;
    let full = submit(vec![job("d"), job("e")]).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().starts_with("jobs: team \"research\" has 3 pending job(s); 2 more would pass the 4"),
        "{}",
        full.message()
    );
    let after = admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().state_hash;
    assert_eq!(after, before, "a refused submission changes nothing");
    submit(vec![job("d")]).await.unwrap();
    assert!(register(replica.channel().await, "node-a").await.is_ok());
    let second = register(replica.channel().await, "node-b").await.unwrap_err();
    assert_eq!(second.message(), "register.inventory.name: the cluster has 1 nodes, the most it admits (--max-nodes)");
    assert!(register(replica.channel().await, "node-a").await.is_ok(), "a known node registers again");
    replica.stop().await;
}

/// Sends one batch of `messages` as replica `from` over `channel`: the answer (`CODE: message`),
/// or `the connection failed: ...`.
async fn raft_batch(channel: Result<Channel, String>, from: u64, messages: Vec<Message>) -> Result<(), String> {
    let channel = channel?;
    let messages = messages.iter().map(|m| m.write_to_bytes().unwrap()).collect();
    let batch = RaftBatch { cluster_id: 1, from, to: 1, messages, chunk: None };
    let mut client = RaftServiceClient::new(channel);
    let answer = client.stream(tokio_stream::iter([batch])).await;
    answer.map(drop).map_err(|s| match std::error::Error::source(&s) {
        Some(cause) => format!("the connection failed: {}", qm_proto::tls::causes(cause)),
        None => format!("{:?}: {}", s.code(), s.message()),
    })
}

/// A heartbeat of a far higher term, from `from`.
fn heartbeat(from: u64) -> Message {
    let mut m = Message::default();
    (m.msg_type, m.from, m.to, m.term, m.commit) = (MessageType::MsgHeartbeat, from, 1, 1_000, 0);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_replica_certificate_of_the_cluster_ca_speaks_raft_and_only_as_itself() {
    let (replica, admin_secret) = replica().await;
    let admin = AdminServiceClient::new(replica.with(Some(&admin_secret)).await);
    let term = || {
        let mut admin = admin.clone();
        async move { admin.cluster_status(ClusterStatusRequest {}).await.unwrap().into_inner().term }
    };
    let before = term().await;
    let dir = replica.certs.path();
    let other = Authority::open_or_create(&dir.join("other"), "another CA", Validity::days(1)).unwrap();
    let foreign = other.issue_to(&dir.join("other"), &Identity::Replica(2), &common::local(), Validity::days(1));
    let expired = Validity { from: SystemTime::now() - 2 * DAY, until: SystemTime::now() - DAY };
    let stale = replica.ca.issue_to(&dir.join("expired"), &Identity::Replica(2), &common::local(), expired).unwrap();
    let valid = replica.ca.issue_to(&dir.join("valid"), &Identity::Replica(2), &common::local(), Validity::days(1));
    let refused = "Unauthenticated: RaftService/Stream: only a replica may call it";
    // The handshake refuses these two: the client sees the server's alert (UnknownCA, Expired)
    // or, when it wrote its request before reading the alert, a broken pipe.
    let attempts = [
        ("no certificate", Ok(replica.connect().await), refused),
        ("an agent's certificate", Ok(replica.connect_as(&Identity::Node("n".into())).await), refused),
        ("a certificate of another CA", presenting(&replica, &foreign.unwrap()).await, "the connection failed"),
        ("an expired certificate", presenting(&replica, &stale).await, "the connection failed"),
    ];
    for (what, channel, why) in attempts {
        let err = raft_batch(channel, 1, vec![heartbeat(1)]).await.unwrap_err();
        assert!(err.starts_with(why), "{what}: {err}");
    }
    let two = presenting(&replica, &valid.unwrap()).await.unwrap();
    let forged = raft_batch(Ok(two.clone()), 1, vec![heartbeat(1)]).await.unwrap_err();
    assert_eq!(forged, "PermissionDenied: from: replica 2 may not send as replica 1");
    let inner = raft_batch(Ok(two), 2, vec![heartbeat(1)]).await.unwrap_err();
    assert_eq!(inner, "InvalidArgument: messages: a message from 1 in a batch from 2");
    assert_eq!(term().await, before, "no refused message moved the term");
    replica.stop().await;
}

const DAY: Duration = Duration::from_secs(86_400);

/// A channel that checks the replica against the cluster's CA and presents the certificate in
/// `files` as it is (loading would refuse an expired one).
async fn presenting(replica: &Replica, files: &TlsFiles) -> Result<Channel, String> {
    let (cert, key) = (std::fs::read(&files.cert).unwrap(), std::fs::read(&files.key).unwrap());
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(replica.ca.cert_pem()))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let url = format!("https://{}", replica.addr);
    let endpoint = tonic::transport::Endpoint::from_shared(url).unwrap().tls_config(config).unwrap();
    endpoint.connect().await.map_err(|e| format!("the connection failed: {}", qm_proto::tls::causes(&e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_and_one_trusting_another_ca_reach_nothing() {
    let (replica, admin_secret) = replica().await;
    let who_am_i = |dialer: Dialer| {
        let (addr, secret) = (replica.addr.to_string(), admin_secret.clone());
        async move {
            let channel = dialer.endpoint(&addr).unwrap().connect().await.map_err(|e| qm_proto::tls::causes(&e))?;
            let mut admin = AdminServiceClient::new(authed(channel, Bearer::new(Some(&secret)).unwrap()));
            admin.who_am_i(WhoAmIRequest {}).await.map(drop).map_err(|s| match std::error::Error::source(&s) {
                Some(cause) => format!("the connection failed: {}", qm_proto::tls::causes(cause)),
                None => format!("answered {:?}: {}", s.code(), s.message()),
            })
        }
    };
    let plain = who_am_i(Dialer::plain()).await.unwrap_err();
    assert!(plain.starts_with("the connection failed"), "the replica hangs up on plaintext: {plain}");
    let other = Authority::new("another CA", Validity::days(1)).unwrap();
    let wrong = who_am_i(Dialer::trusting(Some(other.cert_pem().as_bytes()))).await.unwrap_err();
    assert!(wrong.contains("UnknownIssuer"), "the client does not trust the replica: {wrong}");
    let right = Dialer::trusting(Some(replica.ca.cert_pem().as_bytes()));
    assert_eq!(who_am_i(right).await, Ok(()), "the same call with the cluster's CA");
    replica.stop().await;
}
