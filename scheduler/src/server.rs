//! A replica as a process: sled storage in a data directory, the Raft node with the gRPC
//! transport, the leader loop, node liveness, and one tonic server for `JobService`,
//! `AdminService`, `AgentService` and `RaftService` behind the access layer (bearer tokens,
//! unless `insecure`). A secure replica serves TLS only, with client certificates checked
//! against the cluster's CA, and dials its peers with its own certificate; an insecure one
//! speaks plaintext. `run` returns when `shutdown` completes or the node stops on an error.

use crate::access::bootstrap;
use crate::access::layer::{AccessLayer, Gate};
use crate::leader::{self, LeaderConfig};
use crate::node::{self, NodeConfig};
use crate::observe;
use crate::service::admin::AdminServer;
use crate::service::admission::Admission;
use crate::service::agent::AgentServer;
use crate::service::jobs::JobServer;
use crate::service::raft::RaftServer;
use crate::service::readings::Readings;
use crate::storage::{SledStore, StorageError};
use crate::transport::grpc::GrpcTransport;
use qm_proto::tls::{Dialer, Identity, Loaded, TlsFiles};
use qm_proto::v1::admin_service_server::AdminServiceServer;
use qm_proto::v1::agent_service_server::AgentServiceServer;
use qm_proto::v1::job_service_server::JobServiceServer;
use qm_proto::v1::raft_service_server::RaftServiceServer;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic_reflection::server::v1::{ServerReflection as ServesV1, ServerReflectionServer as ReflectionV1};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServesV1alpha, ServerReflectionServer as ReflectionV1alpha,
};

/// How long a stopping replica lets open streams (watches, agent sessions) finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything a replica needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Raft settings (id, initial voters and their addresses, timing).
    pub node: NodeConfig,
    /// A replica refuses Raft traffic of another cluster.
    pub cluster_id: u64,
    /// Where clients and peers connect.
    pub listen: SocketAddr,
    /// Data directory (sled).
    pub data_dir: PathBuf,
    /// The leader loop.
    pub leader: LeaderConfig,
    /// Largest request accepted, in bytes.
    pub max_message_bytes: usize,
    /// How often agents heartbeat.
    pub heartbeat: Duration,
    /// A node not heard from this long is lost and its jobs requeued.
    pub node_lease: Duration,
    /// A backup to start a new cluster from (the data directory must be empty).
    pub restore: Option<Vec<u8>>,
    /// Serve every caller as an admin, without tokens or TLS (`--insecure`).
    pub insecure: bool,
    /// This replica's certificate, key and the cluster's CA; required unless `insecure`.
    pub tls: Option<TlsFiles>,
    /// Limits on what the API admits.
    pub admission: Admission,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over HTTP; nowhere when absent.
    pub http: Option<SocketAddr>,
    /// A device reading under this utilization, percent, is idle (`leader::idle`).
    pub idle_below_pct: u32,
}

/// Why a replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage could not be opened or is corrupt.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serve: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The Raft node stopped on an error.
    #[error("{0}")]
    Node(String),
    /// The backup could not be restored.
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    /// An admission limit is out of its range.
    #[error(transparent)]
    Limit(#[from] crate::service::admission::BadLimit),
    /// A certificate file is missing, unreadable or wrong for this replica.
    #[error(transparent)]
    Tls(#[from] qm_proto::tls::TlsError),
    /// TLS is asked for and refused at once, or neither.
    #[error("{0}")]
    Security(String),
}

/// Runs a replica until `shutdown` completes.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    run_notify(config, shutdown, |_, _| {}).await
}

/// Connections the kernel completes and queues before the server accepts them. Tokio's `bind`
/// asks for 128: a thousand clients connecting at once overflowed it, and each dropped SYN
/// cost its client the kernel's 1 s retransmission. The kernel caps it at `net.core.somaxconn`
/// (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Streams one connection may hold open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`): a
/// client that opens more waits for one to end. Enough for a dashboard's or a script's
/// watches; a client opening streams without end holds one connection's worth of them.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;

/// Server reflection (v1 and v1alpha, which older `grpcurl` asks for) of our services and the
/// health service.
fn reflection() -> Result<(ReflectionV1<impl ServesV1>, ReflectionV1alpha<impl ServesV1alpha>), ServerError> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(qm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(|e| ServerError::Security(format!("reflection: {e}")))?;
    let v1alpha = builder().build_v1alpha().map_err(|e| ServerError::Security(format!("reflection: {e}")))?;
    Ok((v1, v1alpha))
}

/// The replica's storage in its data directory, seeded with the backup when one is given.
fn open_store(config: &ServerConfig) -> Result<SledStore, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| StorageError::Io(e.into()))?;
    let store = SledStore::open(&config.data_dir)?;
    if let Some(backup) = &config.restore {
        let index = crate::restore::seed(&store, backup, &config.node.peers)?;
        tracing::info!(index, "restored a backup");
    }
    Ok(store)
}

/// Completes with the reason once the node stops on an error.
async fn fatal(handle: node::Handle) -> String {
    loop {
        if let Some(why) = handle.status().fatal {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A certificate that expires sooner than this is warned of at start.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The certificate files, loaded and checked against this replica's id; `None` for an insecure
/// replica.
fn load_tls(config: &ServerConfig) -> Result<Option<Loaded>, ServerError> {
    let files = match (&config.tls, config.insecure) {
        (None, true) => return Ok(None),
        (Some(_), true) => {
            return Err(ServerError::Security(
                "--insecure: serves plaintext without tokens; it cannot be given with --tls-cert".into(),
            ))
        }
        (None, false) => {
            return Err(ServerError::Security(
                "--tls-cert, --tls-key and --tls-ca: required unless --insecure (`qm admin certs` makes a CA and \
                 certificates; see docs/security.md)"
                    .into(),
            ))
        }
        (Some(files), false) => files,
    };
    let loaded = files.load()?;
    let me = Identity::Replica(config.node.id);
    if loaded.identity() != Some(&me) {
        let names = loaded.identity().map_or_else(|| "no replica".to_owned(), ToString::to_string);
        return Err(qm_proto::tls::TlsError {
            flag: "--tls-cert",
            path: files.cert.display().to_string(),
            why: format!("names {names}, but this is {me} (its URI must be {})", me.uri()),
        }
        .into());
    }
    if loaded.expires_in() < EXPIRY_WARNING {
        let days = loaded.expires_in().as_secs() / 86_400;
        tracing::warn!(cert = %files.cert.display(), "the replica's certificate expires in {days} days");
    }
    Ok(Some(loaded))
}

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `run`, calling `ready` with the addresses bound (the ports chosen where port 0 was asked
/// for): the API's, and the HTTP address's if there is one, once the replica serves requests.
pub async fn run_notify(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), ServerError> {
    config.admission.check()?;
    let tls = load_tls(&config)?;
    let dialer = Dialer::of(tls.as_ref());
    let listener = listen(config.listen).map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let http = match config.http {
        Some(addr) => Some(listen(addr).map_err(|source| ServerError::Listen { addr, source })?),
        None => None,
    };
    let http_bound = http.as_ref().and_then(|l| l.local_addr().ok());
    let store = open_store(&config)?;
    let runtime = tokio::runtime::Handle::current();
    let (id, cluster_id) = (config.node.id, config.cluster_id);
    let (handle, thread) =
        node::spawn(config.node.clone(), store, |inbox| GrpcTransport::new(id, cluster_id, inbox, runtime, dialer))?;
    tracing::info!(replica = id, listen = %bound, data = %config.data_dir.display(), "replica started");
    let metrics = std::sync::Arc::new(observe::metrics::Metrics::of(&handle.shared().measures));
    let mut tasks = vec![tokio::spawn(leader::run(handle.clone(), config.leader.clone(), metrics.clone()))];
    let max = config.max_message_bytes;
    let admission = std::sync::Arc::new(config.admission.clone());
    let jobs = JobServiceServer::new(JobServer::new(handle.clone(), config.leader.policy.clone(), admission.clone()))
        .max_decoding_message_size(max);
    let readings = Readings::new(config.idle_below_pct);
    tasks.push(tokio::spawn(leader::idle::run(handle.clone(), readings.clone())));
    let admin = AdminServiceServer::new(AdminServer::new(handle.clone(), readings.clone(), admission.clone()))
        .max_decoding_message_size(max);
    let dashboard_readings = readings.clone();
    let agents = AgentServer::new(handle.clone(), config.heartbeat, readings, admission);
    tasks.push(tokio::spawn(agents.clone().liveness(config.node_lease)));
    tasks.push(tokio::spawn(agents.clone().dispatch()));
    let agents = AgentServiceServer::new(agents).max_decoding_message_size(max);
    let raft = RaftServiceServer::new(RaftServer::new(id, cluster_id, handle.inbox().clone()))
        .max_decoding_message_size(64 * 1024 * 1024);
    let gate = if config.insecure {
        tracing::warn!("--insecure: plaintext, and every caller that reaches {bound} is an admin; no token is checked");
        Gate::Open
    } else {
        Gate::Tokens(handle.clone())
    };
    if !config.insecure {
        tasks.push(tokio::spawn(bootstrap::run(handle.clone(), config.data_dir.clone())));
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    tasks.push(tokio::spawn(observe::health::report(handle.clone(), reporter)));
    let dashboard = observe::dashboard::Dashboard {
        handle: handle.clone(),
        readings: dashboard_readings,
        insecure: config.insecure,
        reasons: observe::dashboard::reasons::Reasons::new(config.leader.policy.clone()),
        dialer: Dialer::of(tls.as_ref()),
        cache: observe::dashboard::Cache::default(),
    };
    tasks.extend(http.map(|listener| tokio::spawn(observe::http::serve(listener, metrics, dashboard))));
    let reflection = reflection()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server())?;
    }
    let serve = builder
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(AccessLayer(gate))
        .add_service(jobs)
        .add_service(admin)
        .add_service(agents)
        .add_service(raft)
        .add_service(health)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stop_rx.await;
        });
    let serving = tokio::spawn(serve);
    ready(bound, http_bound);
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        why = fatal(handle.clone()) => Err(ServerError::Node(why)),
    };
    let _ = stop_tx.send(());
    for task in &tasks {
        task.abort();
    }
    handle.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
        Ok(Ok(Err(e))) => return Err(ServerError::Serve(e)),
        Ok(_) => {}
        Err(_) => tracing::info!("streams still open after the shutdown grace period were cut"),
    }
    result
}
