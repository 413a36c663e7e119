//! The agent as a process: it serves its replicas' logs, and keeps one session with the
//! scheduler's leader. A session registers the node's inventory and the replicas still running,
//! heartbeats at the interval the scheduler gives (each heartbeat carries the devices' telemetry,
//! read then, which also feeds the running replicas' usage meters), sends inventory changes and
//! replica phases as they happen, and carries out start and stop orders. A lost session is opened again with
//! exponential backoff and jitter; a follower's `NotLeader` sends the agent to the leader at once.

use crate::cgroup::Cgroups;
use crate::env::replica_env;
use crate::executor::Executor;
use crate::inventory::{collect, host_resources, Probe};
use crate::logs::LogServer;
use crate::metrics::Observed;
use crate::outbox::Outbox;
use nix::sys::signal::Signal;
use qm_core::resource::ADDRESS_LABEL;
use qm_core::NodeSpec;
use qm_proto::convert::inventory_to;
use qm_proto::tls::{causes, Dialer, Identity, Loaded};
use qm_proto::v1::agent_message::Body as Up;
use qm_proto::v1::agent_service_client::AgentServiceClient;
use qm_proto::v1::replica_logs_server::ReplicaLogsServer;
use qm_proto::v1::scheduler_message::Body as Down;
use qm_proto::v1::*;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Everything an agent needs to start.
#[derive(Debug)]
pub struct AgentConfig {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// Scheduler replicas, `HOST:PORT` (or `http://HOST:PORT`), tried in turn.
    pub servers: Vec<String>,
    /// The node's labels (`rack=r1`).
    pub labels: BTreeMap<String, String>,
    /// Where the log service listens.
    pub listen: SocketAddr,
    /// The address other machines reach the log service at; the bound address when absent.
    pub advertise: Option<String>,
    /// Logs and working directories.
    pub data_dir: PathBuf,
    /// Where devices come from.
    pub probes: Vec<Box<dyn Probe>>,
    /// How often the inventory is read again.
    pub rescan: Duration,
    /// The cgroup v2 mount under which replicas get CPU and memory limits; none when absent.
    pub cgroup_root: Option<PathBuf>,
    /// The bearer token sent to the scheduler (an agent token for this node).
    pub bearer: qm_proto::auth::Bearer,
    /// This node's certificate and the cluster's CA: the agent dials the scheduler and serves
    /// logs over TLS with it. Plaintext without (a scheduler started `--insecure`).
    pub tls: Option<Loaded>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over HTTP; nowhere when absent.
    pub http: Option<SocketAddr>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The log service could not listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate does not name this node, or TLS cannot be set up with it.
    #[error("--tls-cert: {0}")]
    Tls(String),
    /// The data directory could not be made.
    #[error("{path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Between two HTTP/2 pings to the scheduler, and how long one may go unanswered: a replica
/// that stopped answering (paused, or its host gone) ends the session within twice this,
/// rather than holding the agent (whose heartbeats it no longer reads) while the others
/// elect a leader and, after the node lease, declare the node lost.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// Longest wait between two attempts to reach the scheduler.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs an agent until `shutdown` completes; `ready` gets the log service's bound address.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), AgentError> {
    let path = config.data_dir.display().to_string();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir { path, source })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen { addr: config.listen, source })?;
    let bound = listener.local_addr().map_err(|source| AgentError::Listen { addr: config.listen, source })?;
    let http = match config.http {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| AgentError::Listen { addr, source })?)
        }
        None => None,
    };
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let mut executor = Executor::new(&config.data_dir, &boot_id(), reports_tx);
    if let Some(mount) = &config.cgroup_root {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        match Cgroups::setup(mount, &own, std::process::id()) {
            Ok(cgroups) => executor = executor.with_cgroups(cgroups),
            Err(why) => tracing::info!("replicas run without CPU and memory limits: {why}"),
        }
    }
    executor.recover(&boot_id());
    let dialer = Dialer::of(config.tls.as_ref());
    let logs = LogServer::new(config.data_dir.clone(), executor.clone(), config.servers.clone(), dialer.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let serving =
        tokio::spawn(log_server(&config)?.add_service(ReplicaLogsServer::new(logs)).serve_with_incoming(incoming));
    let mut labels = config.labels.clone();
    labels.insert(ADDRESS_LABEL.to_owned(), config.advertise.clone().unwrap_or_else(|| bound.to_string()));
    tracing::info!(node = %config.name, logs = %bound, "agent started");
    ready(bound);
    let observed = Observed::default();
    let http = http.map(|l| tokio::spawn(crate::metrics::serve(l, observed.clone(), executor.clone())));
    let node = Node { config, dialer, labels, executor, reports, outbox: Outbox::default(), observed };
    node.sessions(Box::pin(shutdown)).await;
    serving.abort();
    if let Some(h) = http {
        h.abort();
    }
    Ok(())
}

/// The log service's server: over TLS with the node's certificate, which must name the node.
fn log_server(config: &AgentConfig) -> Result<tonic::transport::Server, AgentError> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = &config.tls else { return Ok(builder) };
    let me = Identity::Node(config.name.clone());
    if tls.identity() != Some(&me) {
        let names = tls.identity().map_or_else(|| "no node".to_owned(), ToString::to_string);
        return Err(AgentError::Tls(format!("names {names}, but this agent is {me} (its URI must be {})", me.uri())));
    }
    builder.tls_config(tls.server()).map_err(|e| AgentError::Tls(e.to_string()))
}

/// How a session ended.
enum Ended {
    Shutdown,
    /// A follower answered; the leader's address, when it knows it.
    NotLeader(String),
    Lost(String),
}

struct Node {
    config: AgentConfig,
    dialer: Dialer,
    /// What the HTTP address shows.
    observed: Observed,
    labels: BTreeMap<String, String>,
    executor: Executor,
    reports: mpsc::UnboundedReceiver<ReplicaStatus>,
    /// Reports the scheduler has not recorded yet.
    outbox: Outbox,
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Node {
    fn inventory(&self) -> (NodeSpec, Vec<String>) {
        collect(&self.config.name, &self.labels, &self.config.probes, host_resources())
    }

    /// Every device's readings now, from every probe.
    fn telemetry(&self) -> Vec<DeviceTelemetry> {
        self.config.probes.iter().flat_map(|p| p.telemetry()).collect()
    }

    /// Opens sessions until shutdown: the leader named by a follower first, then each address.
    async fn sessions(mut self, mut shutdown: Shutdown) {
        let seed = self.config.name.bytes().fold(u64::from(std::process::id()), |h, b| h.rotate_left(5) ^ u64::from(b));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut backoff = Duration::from_millis(100);
        let mut leader: Option<String> = None;
        loop {
            let mut targets: Vec<String> = leader.take().into_iter().collect();
            targets.extend(self.config.servers.iter().cloned());
            for addr in targets {
                let ended = self.session(&addr, &mut shutdown).await;
                self.observed.registered(false);
                match ended {
                    Ended::Shutdown => return,
                    Ended::NotLeader(at) if !at.is_empty() => {
                        leader = Some(at);
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Ended::NotLeader(_) => {}
                    Ended::Lost(why) => tracing::warn!(server = %addr, "scheduler session: {why}"),
                }
            }
            if leader.is_some() {
                continue;
            }
            let jitter = rng.random_range(0..=backoff.as_millis() as u64 / 2);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One session with the replica at `addr`.
    async fn session(&mut self, addr: &str, shutdown: &mut Shutdown) -> Ended {
        let endpoint = match self.dialer.endpoint(addr) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(1))
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true),
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(format!("connect: {}", causes(&e))),
        };
        let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
        let (mut spec, notes) = self.inventory();
        self.observed.inventory(&spec);
        for n in &notes {
            tracing::info!(node = %self.config.name, "probe: {n}");
        }
        let register = Register {
            inventory: Some(inventory_to(&spec)),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: boot_id(),
            running: self.executor.running(),
            unrecorded: self.outbox.all(Instant::now()),
        };
        let _ = tx.send(AgentMessage { body: Some(Up::Register(register)) }).await;
        let mut client = AgentServiceClient::with_interceptor(channel, self.config.bearer.clone());
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ended::Lost(s.message().to_owned()),
        };
        let heartbeat = match inbound.message().await {
            Ok(Some(SchedulerMessage { body: Some(Down::Registered(r)) })) => {
                Duration::from_millis(r.heartbeat_interval_ms.max(100))
            }
            Ok(Some(SchedulerMessage { body: Some(Down::NotLeader(n)) })) => return Ended::NotLeader(n.leader_address),
            Ok(_) => return Ended::Lost("the scheduler answered the registration with something else".into()),
            Err(s) => return Ended::Lost(s.message().to_owned()),
        };
        tracing::info!(node = %self.config.name, server = %addr, "registered");
        self.observed.registered(true);
        let mut beat = tokio::time::interval(heartbeat);
        let mut rescan = tokio::time::interval(self.config.rescan);
        rescan.tick().await;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = &mut *shutdown => return Ended::Shutdown,
                _ = beat.tick() => {
                    seq += 1;
                    let telemetry = self.telemetry();
                    self.executor.observe(&telemetry);
                    self.observed.telemetry(&telemetry);
                    if tx.send(AgentMessage { body: Some(Up::Heartbeat(Heartbeat { seq, telemetry })) }).await.is_err() {
                        return Ended::Lost("the stream to the scheduler closed".into());
                    }
                    for r in self.outbox.due(Instant::now()) {
                        if tx.send(AgentMessage { body: Some(Up::Status(r)) }).await.is_err() {
                            return Ended::Lost("the stream to the scheduler closed".into());
                        }
                    }
                }
                _ = rescan.tick() => {
                    let (now, _) = self.inventory();
                    if now != spec {
                        tracing::info!(node = %self.config.name, devices = now.devices.len(), "inventory changed");
                        let _ = tx.send(AgentMessage { body: Some(Up::Inventory(inventory_to(&now))) }).await;
                        self.observed.inventory(&now);
                        spec = now;
                    }
                }
                Some(r) = self.reports.recv() => {
                    let r = self.outbox.add(r, Instant::now());
                    if tx.send(AgentMessage { body: Some(Up::Status(r)) }).await.is_err() {
                        return Ended::Lost("the stream to the scheduler closed".into());
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(SchedulerMessage { body: Some(order) })) => {
                        if let Some(ended) = self.obey(order, &spec) {
                            return ended;
                        }
                    }
                    Ok(_) => return Ended::Lost("the scheduler closed the session".into()),
                    Err(s) => return Ended::Lost(s.message().to_owned()),
                },
            }
        }
    }

    /// Carries out one order; a `NotLeader` ends the session.
    fn obey(&mut self, order: Down, spec: &NodeSpec) -> Option<Ended> {
        match order {
            Down::Start(start) if self.outbox.ended(start.job_id, start.replica, start.attempt) => {
                tracing::info!(job = start.job_id, attempt = start.attempt, "start of a replica that ended: ignored");
            }
            Down::Start(start) => {
                tracing::info!(job = start.job_id, replica = start.replica, attempt = start.attempt, "start");
                self.executor.start(&start, replica_env(&start, &spec.devices));
            }
            Down::Stop(stop) => {
                tracing::info!(job = stop.job_id, attempt = stop.attempt, grace_ms = stop.grace_ms, "stop");
                self.executor.stop(
                    stop.job_id,
                    stop.attempt,
                    signal_of(stop.signal),
                    Duration::from_millis(stop.grace_ms),
                );
            }
            Down::NotLeader(n) => return Some(Ended::NotLeader(n.leader_address)),
            Down::Recorded(r) => self.outbox.recorded(&r.seqs),
            Down::Registered(_) => {}
        }
        None
    }
}

/// The signal a stop order names; SIGTERM when it names none.
fn signal_of(raw: i32) -> Signal {
    match StopSignal::try_from(raw) {
        Ok(StopSignal::Int) => Signal::SIGINT,
        Ok(StopSignal::Usr1) => Signal::SIGUSR1,
        Ok(StopSignal::Usr2) => Signal::SIGUSR2,
        _ => Signal::SIGTERM,
    }
}

/// This boot of the host: replicas of an earlier boot are gone.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or_else(|_| String::new(), |s| s.trim().to_owned())
}
