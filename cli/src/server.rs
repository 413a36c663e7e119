//! `qm server` (one replica of a cluster) and `qm dev` (a one-replica scheduler with its data in
//! a temporary directory).

use crate::certs::TlsArgs;
use crate::client::{agent_token, set_class, set_team, wait_for_nodes, wait_for_token, Target, DEFAULT_CLASSES};
use crate::out::say;
use anyhow::{bail, Context, Result};
use clap::Args;
use qm_agent::inventory::{collect, FakeGpus, Probe};
use qm_agent::nvml::{capture, NvmlProbe};
use qm_agent::nvml_real::RealNvml;
use qm_agent::session::AgentConfig;
use qm_agent::sysfs::SysfsProbe;
use qm_core::NodeSpec;
use qm_core::PolicyConfig;
use qm_proto::convert::flavor_to;
use qm_proto::tls::TlsFiles;
use qm_proto::v1::{FlavorQuota, Team};
use qm_scheduler::access::bootstrap::TOKEN_FILE;
use qm_scheduler::leader::LeaderConfig;
use qm_scheduler::node::NodeConfig;
use qm_scheduler::server::{run, run_notify, ServerConfig};
use qm_scheduler::service::admission::Admission;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `qm server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// This replica's Raft id (1, 2, ...).
    #[arg(long)]
    id: u64,
    /// Address for clients and peers.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// An initial member, as ID=HOST:PORT; repeat for each (this replica included).
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    peers: Vec<String>,
    /// Data directory.
    #[arg(long)]
    data: PathBuf,
    /// Join a running cluster instead of forming one: start with no configuration and wait
    /// for `qm admin members add` (the peers give the other members' addresses).
    #[arg(long)]
    join: bool,
    /// Start a new cluster from a backup (`qm admin snapshot save`); the data directory must
    /// be empty. Give every replica of the new cluster the same file.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    restore: Option<PathBuf>,
    /// Cluster id; replicas refuse Raft traffic of another cluster.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Raft tick in milliseconds (elections after 10 ticks without a leader).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Entries applied between two snapshots.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Entries kept before a snapshot for followers a little behind (older ones get the snapshot).
    #[arg(long, default_value_t = 1_000)]
    keep_entries: u64,
    /// Largest client request, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    /// A node whose agent is silent this long is lost and its jobs are requeued.
    #[arg(long, default_value_t = 10_000)]
    node_lease_ms: u64,
    /// The scheduling policy: a TOML file whose `[policy]` table sets any of the knobs of
    /// docs/concepts.md (other tables are ignored, so a teams file serves); defaults when absent.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Plaintext, and no tokens checked: every caller that reaches the port is an admin. For a
    /// network where every host is trusted, and for measuring; logged as a warning at start.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` (no token), and the
    /// dashboard at `/ui/` (sign in with a token), over plain HTTP on this address: bind it
    /// where only monitoring and operators reach, or behind a TLS proxy; not served when absent.
    #[arg(long, value_name = "HOST:PORT")]
    http_listen: Option<SocketAddr>,
    /// A device reading under this utilization (percent) is idle: a job whose devices all stay
    /// so for its team's idle time is flagged (`qm quota idle`, docs/observability.md).
    #[arg(long, value_name = "PCT", default_value_t = qm_scheduler::leader::idle::DEFAULT_BELOW_PCT,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    idle_below_pct: u32,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Admission limits of `qm server`: each may only lower the fixed ceiling it names.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Most jobs in one submission (ceiling 10,000).
    #[arg(long, default_value_t = Admission::default().max_batch)]
    max_batch: usize,
    /// Most replicas of one job (ceiling 4,096).
    #[arg(long, default_value_t = Admission::default().max_replicas)]
    max_replicas: u32,
    /// Most bytes of one job's command and arguments (ceiling 65,536).
    #[arg(long, default_value_t = Admission::default().max_command_bytes)]
    max_command_bytes: usize,
    /// Most bytes of one job's environment, names and values (ceiling 65,536).
    #[arg(long, default_value_t = Admission::default().max_env_bytes)]
    max_env_bytes: usize,
    /// Most pending jobs of one team.
    #[arg(long, default_value_t = Admission::default().max_pending_per_team)]
    max_pending_per_team: usize,
    /// Most teams.
    #[arg(long, default_value_t = Admission::default().max_teams)]
    max_teams: usize,
    /// Most nodes.
    #[arg(long, default_value_t = Admission::default().max_nodes)]
    max_nodes: usize,
}

impl Default for LimitArgs {
    fn default() -> Self {
        let a = Admission::default();
        Self {
            max_batch: a.max_batch,
            max_replicas: a.max_replicas,
            max_command_bytes: a.max_command_bytes,
            max_env_bytes: a.max_env_bytes,
            max_pending_per_team: a.max_pending_per_team,
            max_teams: a.max_teams,
            max_nodes: a.max_nodes,
        }
    }
}

impl LimitArgs {
    fn admission(&self) -> Result<Admission> {
        let a = Admission {
            max_batch: self.max_batch,
            max_replicas: self.max_replicas,
            max_command_bytes: self.max_command_bytes,
            max_env_bytes: self.max_env_bytes,
            max_pending_per_team: self.max_pending_per_team,
            max_teams: self.max_teams,
            max_nodes: self.max_nodes,
        };
        a.check().map_err(|e| crate::out::Failure::usage(e.to_string()))?;
        Ok(a)
    }
}

/// A file with a `[policy]` table.
#[derive(Debug, serde::Deserialize)]
struct PolicyFile {
    #[serde(default)]
    policy: PolicyConfig,
}

fn read_policy(path: &std::path::Path) -> Result<PolicyConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--policy {}", path.display()))?;
    let file: PolicyFile =
        toml::from_str(&text).map_err(|e| crate::out::Failure::usage(format!("--policy {}: {e}", path.display())))?;
    Ok(file.policy)
}

fn parse_peer(s: &str) -> Result<(u64, String)> {
    let (id, addr) = s.split_once('=').with_context(|| format!("--peer {s:?}: expected ID=HOST:PORT"))?;
    let id: u64 = id.parse().with_context(|| format!("--peer {s:?}: the id is not a number"))?;
    if id == 0 {
        bail!("--peer {s:?}: ids start at 1");
    }
    addr.parse::<SocketAddr>().with_context(|| format!("--peer {s:?}: {addr:?} is not HOST:PORT"))?;
    Ok((id, addr.to_owned()))
}

fn config(args: &ServerArgs) -> Result<ServerConfig> {
    if args.id == 0 {
        bail!("--id: ids start at 1");
    }
    let mut peers = args.peers.iter().map(|p| parse_peer(p)).collect::<Result<Vec<_>>>()?;
    if peers.is_empty() {
        peers.push((args.id, args.listen.to_string()));
    }
    if !args.join && !peers.iter().any(|(id, _)| *id == args.id) {
        bail!("--peer: this replica (--id {}) must be one of the peers (or use --join)", args.id);
    }
    let voters = if args.join { vec![] } else { peers.iter().map(|(id, _)| *id).collect() };
    let mut node = NodeConfig::new(args.id, voters);
    node.peers = peers;
    node.tick = Duration::from_millis(args.tick_ms.max(1));
    node.snapshot_every = args.snapshot_every.max(1);
    node.keep_entries = args.keep_entries;
    Ok(ServerConfig {
        node,
        cluster_id: args.cluster_id,
        listen: args.listen,
        data_dir: args.data.clone(),
        leader: match &args.policy {
            Some(path) => LeaderConfig {
                policy: PolicyConfig { explain: false, ..read_policy(path)? },
                ..LeaderConfig::default()
            },
            None => LeaderConfig::default(),
        },
        max_message_bytes: args.max_message_bytes,
        heartbeat: Duration::from_secs(1),
        node_lease: Duration::from_millis(args.node_lease_ms.max(1)),
        restore: match &args.restore {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("--restore {}", path.display()))?),
            None => None,
        },
        insecure: args.insecure,
        tls: args.tls.files(),
        admission: args.limits.admission()?,
        http: args.http_listen,
        idle_below_pct: args.idle_below_pct,
    })
}

/// Completes on Ctrl-C or SIGTERM, for a clean stop (the storage is flushed and closed).
pub(crate) async fn ctrl_c() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs `qm server`.
pub fn serve(args: &ServerArgs) -> Result<()> {
    args.tls.load(args.insecure)?;
    let config = config(args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(config, ctrl_c()))?;
    Ok(())
}

/// Flags of `qm dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address for clients (port 0 picks a free port; the banner prints it).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// HTTP address for the dashboard (/ui/), /metrics and the probes (port 0 picks a free
    /// port; the banner prints it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    http_listen: SocketAddr,
    /// The local agent reports this many fake GPUs (model `fake-gpu`) instead of the machine's
    /// own; 0 runs no agent. By default it runs on the NVIDIA GPUs NVML finds, or on 4 fake GPUs
    /// when there are none.
    #[arg(long, value_name = "N")]
    fake_gpus: Option<u32>,
    /// The local agent reads NVIDIA GPUs from a capture (see `qm agent --nvml-capture`), as if
    /// it ran on the captured machine.
    #[arg(long, value_name = "FILE", conflicts_with = "fake_gpus")]
    nvml_capture: Option<PathBuf>,
}

/// The local agent's probes and the inventory they read once.
type Local = (Vec<Box<dyn Probe>>, NodeSpec);

/// The local agent's probes and the inventory they read once: the capture when given, else the
/// machine's accelerators (NVML, PCI) unless fake GPUs are asked for or no healthy device is
/// found; none with `--fake-gpus 0`.
fn dev_probes(args: &DevArgs) -> Result<Option<Local>> {
    let read = |probes: Vec<Box<dyn Probe>>| {
        let (spec, _) = collect(DEV_NODE, &BTreeMap::new(), &probes, (0, 0));
        Some((probes, spec))
    };
    if let Some(path) = &args.nvml_capture {
        let source = capture(path).map_err(|e| anyhow::anyhow!("--nvml-capture: {e}"))?;
        return Ok(read(vec![Box::new(NvmlProbe::new(source))]));
    }
    let fake = args.fake_gpus;
    if fake == Some(0) {
        return Ok(None);
    }
    if fake.is_none() {
        let real = read(vec![
            Box::new(NvmlProbe::new(RealNvml::load())),
            Box::new(SysfsProbe::new(std::path::Path::new("/"))),
        ]);
        if real.as_ref().is_some_and(|r| r.1.devices.iter().any(|d| d.health == qm_core::Health::Healthy)) {
            return Ok(real);
        }
    }
    Ok(read(vec![Box::new(FakeGpus { count: fake.unwrap_or(4) })]))
}

/// The team `qm dev` creates, with quota for the local agent's GPUs.
const DEV_TEAM: &str = "dev";
/// The local agent's node.
const DEV_NODE: &str = "dev-node";

/// Starts the local agent, gives the team `dev` quota for every flavor it has, and waits until
/// its node is registered; returns the flavors with their device counts.
async fn local_agent(
    target: &Target,
    server: SocketAddr,
    (data, tls): (PathBuf, TlsFiles),
    (probes, spec): Local,
) -> Result<Vec<(String, u32)>> {
    let mut flavors: BTreeMap<qm_core::Flavor, u32> = BTreeMap::new();
    for d in &spec.devices {
        *flavors.entry(d.flavor()).or_default() += 1;
    }
    let secret = agent_token(target, DEV_NODE).await?;
    let config = AgentConfig {
        name: DEV_NODE.into(),
        servers: vec![server.to_string()],
        labels: BTreeMap::new(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
        data_dir: data,
        probes,
        rescan: Duration::from_secs(10),
        cgroup_root: None,
        bearer: qm_proto::auth::Bearer::new(Some(&secret))?,
        tls: Some(tls.load()?),
        http: None,
    };
    tokio::spawn(async move {
        if let Err(e) = qm_agent::session::run(config, std::future::pending(), |_| {}).await {
            tracing::error!("the local agent stopped: {e}");
        }
    });
    let quotas = flavors
        .iter()
        .map(|(f, n)| FlavorQuota {
            flavor: Some(flavor_to(f)),
            nominal: *n,
            borrowing_limit: None,
            lending_limit: None,
        })
        .collect();
    wait_for_nodes(target, 1).await?;
    set_team(target, Team { name: DEV_TEAM.into(), weight: 1.0, quotas }).await?;
    Ok(flavors.into_iter().map(|(f, n)| (f.to_string(), n)).collect())
}

/// Waits for the bootstrap admin token, sets the usual priority classes and, with an agent
/// (which gets an agent token of its own), the team `dev`; then prints how to use the cluster.
async fn welcome(
    (addr, http): (SocketAddr, Option<SocketAddr>),
    data: PathBuf,
    agent_tls: TlsFiles,
    local: Option<Local>,
) -> Result<()> {
    let token = data.join("server").join(TOKEN_FILE);
    let ca = agent_tls.ca.clone();
    let target = Target::new(vec![addr.to_string()]).with_token_file(token.clone()).with_tls_ca(ca.clone());
    wait_for_token(&target, &token, Duration::from_secs(30)).await?;
    for (name, value) in DEFAULT_CLASSES {
        set_class(&target, name, value).await.with_context(|| format!("setting the priority class {name}"))?;
    }
    let flavors = match local {
        None => vec![],
        Some(probes) => local_agent(&target, addr, (data.join("agent"), agent_tls), probes)
            .await
            .context("starting the local agent")?,
    };
    let classes: Vec<String> = DEFAULT_CLASSES.iter().map(|(n, v)| format!("{n} ({v})")).collect();
    say!("qm dev: one replica on {addr}, data in {} (removed on exit).", data.display());
    say!("The admin token is in {} (mode 0600); every call needs a token.", token.display());
    say!("Every link is TLS; certificates are checked against the CA {}.", ca.display());
    say!("Priority classes: {}.", classes.join(", "));
    if let Some(http) = http {
        say!("Dashboard: http://{http}/ui/ (sign in with the admin token); metrics at http://{http}/metrics.");
    }
    if !flavors.is_empty() {
        let devices: Vec<String> = flavors.iter().map(|(f, n)| format!("{n} x {f}")).collect();
        say!("A local agent runs jobs on {}; team {DEV_TEAM} has quota for them.", devices.join(", "));
    }
    say!("In another terminal:");
    say!(
        "  export QM_SERVER=https://{addr} QM_TLS_CA={} QM_TEAM={DEV_TEAM} QM_TOKEN_FILE={}",
        ca.display(),
        token.display()
    );
    if !flavors.is_empty() {
        say!("  qm submit --gpus 1 -- python3 -c 'import os; print(os.environ[\"CUDA_VISIBLE_DEVICES\"])'");
        say!("  qm jobs");
        say!("  qm logs 1");
    }
    say!("  qm apply -f examples/teams.toml        # teams, quotas and classes of the example");
    say!("  qm why 1");
    say!("Ctrl-C stops.");
    Ok(())
}

/// Runs `qm dev`.
pub fn dev(args: &DevArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerArgs {
        id: 1,
        listen: args.listen,
        peers: vec![],
        join: false,
        restore: None,
        data: dir.path().join("server"),
        cluster_id: 1,
        tick_ms: 10,
        snapshot_every: 10_000,
        keep_entries: 1_000,
        max_message_bytes: 16 * 1024 * 1024,
        node_lease_ms: 10_000,
        policy: None,
        insecure: false,
        tls: TlsArgs::default(),
        http_listen: Some(args.http_listen),
        idle_below_pct: qm_scheduler::leader::idle::DEFAULT_BELOW_PCT,
        limits: LimitArgs::default(),
    };
    let (replica_tls, agent_tls) = crate::certs::dev(&dir.path().join("tls"), DEV_NODE)?;
    let config = ServerConfig { tls: Some(replica_tls), ..config(&server)? };
    let data = dir.path().to_owned();
    let local = dev_probes(args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let server = run_notify(config, ctrl_c(), move |addr, http| {
            let _ = bound_tx.send((addr, http));
        });
        tokio::pin!(server);
        let greeting = async move {
            let addr = bound_rx.await.context("the replica stopped before it served")?;
            welcome(addr, data, agent_tls, local).await
        };
        // A replica that cannot set its classes is not the one the banner promises: stop.
        tokio::select! {
            served = &mut server => return served.map_err(anyhow::Error::from),
            greeted = greeting => greeted?,
        }
        server.await.map_err(anyhow::Error::from)
    })
}
