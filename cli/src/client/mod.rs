//! The client commands: gRPC calls to any replica of `--server` (or `QM_SERVER`), with tables
//! by default and `--json` for scripts.
//!
//! Module map:
//! - `connect`: addresses, one call tried on each replica in turn, failover, fast refusal.
//! - `jobs`: the ML engineer's commands (`submit`, `jobs`, `job`, `cancel`, `why`).
//! - `admin`: the operators' commands (nodes, teams and quotas, status, members, backups).
//! - `tokens`: `qm admin tokens` (create, list, revoke, whoami).
//! - `audit`: `qm admin audit`, the audit trail.
//! - `classes`: priority classes, and `qm apply` of a teams file.
//! - `logs`: `qm logs`, a replica's output read from its node's agent.
//! - `live`: `qm events` and `qm jobs --watch`, on the stream of job changes.
//! - `accounting`: `qm usage`, device-hours allocated, used and idle per team and flavor.
//! - `top`: `qm top`, the cluster, teams and the jobs holding the most devices, refreshed.
//! - `usage`: how a job used its devices, as `qm job` shows it.
//! - `words`: the words, times and tables the commands print.

mod accounting;
mod admin;
mod audit;
mod classes;
mod connect;
mod jobs;
mod live;
mod logs;
mod tokens;
mod top;
mod usage;
pub(crate) mod words;

pub use admin::{set_team, wait_for_nodes};
pub use classes::{set_class, DEFAULT_CLASSES};
pub use tokens::{agent_token, wait_for_token};

use crate::out::say;
use crate::out::Failure;
use admin::{AdminCommand, QuotaCommand};
use anyhow::Result;
use clap::{Args, Subcommand};
use classes::{ApplyArgs, ClassCommand};
use jobs::{JobRef, JobsArgs, SubmitArgs};
use qm_proto::auth::{Authed, Bearer};
use qm_proto::tls::Dialer;
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;

/// Where the replicas are, and how to print: the flags every client command takes.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Replica addresses (HOST:PORT, https://HOST:PORT or, for an insecure cluster,
    /// http://HOST:PORT), comma-separated or repeated; tried in turn.
    #[arg(long, env = "QM_SERVER", value_delimiter = ',', default_value = "127.0.0.1:7070", global = true)]
    server: Vec<String>,
    /// The CA certificate (PEM) the replicas' certificates are checked against; HOST:PORT
    /// addresses are then dialled with TLS. Without it, https:// addresses are checked against
    /// the system's roots, and others dialled in plaintext (an --insecure cluster).
    #[arg(long, env = "QM_TLS_CA", value_name = "FILE", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A file holding the bearer token (else `QM_TOKEN`, else the file `QM_TOKEN_FILE` names).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Print JSON instead of a table (errors too, on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// What this command learnt of the replicas so far.
    #[arg(skip)]
    seen: std::sync::Arc<std::sync::Mutex<connect::Seen>>,
}

impl Target {
    /// A target of these addresses, printing tables.
    pub fn new(server: Vec<String>) -> Self {
        Self { server, token_file: None, tls_ca: None, json: false, seen: Default::default() }
    }

    /// This target, checking the replicas' certificates against the CA in `file`.
    pub fn with_tls_ca(self, file: std::path::PathBuf) -> Self {
        Self { tls_ca: Some(file), ..self }
    }

    /// How to dial the replicas and agents: TLS trusting `--tls-ca` when given, TLS trusting the
    /// system's roots when an address says https://, else plaintext.
    pub fn dialer(&self) -> Result<Dialer> {
        if let Some(file) = &self.tls_ca {
            let pem = std::fs::read(file).map_err(|e| Failure::usage(format!("--tls-ca {}: {e}", file.display())))?;
            return Ok(Dialer::trusting(Some(&pem)));
        }
        if self.server.iter().any(|s| s.trim().starts_with("https://")) {
            return Ok(Dialer::trusting(None));
        }
        Ok(Dialer::plain())
    }

    /// This target, sending the token in `file`.
    pub fn with_token_file(self, file: std::path::PathBuf) -> Self {
        Self { token_file: Some(file), ..self }
    }

    /// The token to send: from `--token-file`, else `QM_TOKEN`, else the file `QM_TOKEN_FILE`
    /// names; none when none is set.
    pub fn bearer(&self) -> Result<Bearer> {
        bearer(self.token_file.as_deref())
    }

    /// The replica addresses, as given.
    pub fn servers(&self) -> &[String] {
        &self.server
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, connect::Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A client command's own flags with the client flags.
#[derive(Debug, Args)]
pub struct On<A: Args> {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    args: A,
}

/// A group of client commands with the client flags, which its commands accept too.
#[derive(Debug, Args)]
pub struct Group<S: Subcommand> {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: S,
}

/// No flags of its own.
#[derive(Debug, Args)]
pub struct Nothing {}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submits a job from flags, or every `[[job]]` of a jobs file.
    Submit(On<SubmitArgs>),
    /// Lists jobs, newest last.
    Jobs(On<JobsArgs>),
    /// Shows one job: what it runs, where, and what happened to it.
    Job(On<JobRef>),
    /// Cancels a job (a cancelled job's cancel does nothing).
    Cancel(On<JobRef>),
    /// Says why a job waits: the root cause first, then each flavor tried.
    Why(On<JobRef>),
    /// Prints each job's change of state as it happens (`--team`, `--job`, `--count`).
    Events(On<live::EventsArgs>),
    /// The cluster, the teams against quota and the jobs holding the most devices, with how
    /// much they use them; refreshed.
    Top(On<top::TopArgs>),
    /// Device-hours allocated, used and idle per team and flavor (or `--by flavor|job`), against
    /// quota, for the jobs that ended in a window and those running.
    Usage(On<accounting::UsageArgs>),
    /// Prints a replica's output (stdout and stderr), read from the agent that ran it.
    Logs(On<logs::LogsArgs>),
    /// Lists nodes, their flavors and whether they take work.
    Nodes(On<Nothing>),
    /// Lists teams with their quotas and usage (as `qm quota list`).
    Teams(On<Nothing>),
    /// Teams' quotas: set one, list them, show one team's.
    #[command(subcommand_required = true)]
    Quota(Group<QuotaCommand>),
    /// Priority classes: set, list, delete.
    #[command(subcommand_required = true)]
    PriorityClass(Group<ClassCommand>),
    /// Sets the priority classes and teams of a teams file (as `qm plan --teams` reads it).
    Apply(On<ApplyArgs>),
    /// Members, leader, term, commit and applied index; marks replicas that do not answer.
    Status(On<Nothing>),
    /// Cluster administration: members, nodes, backups.
    #[command(subcommand_required = true)]
    Admin(Group<AdminCommand>),
}

impl ClientCommand {
    /// The client flags the command was given.
    pub fn target(&self) -> &Target {
        match self {
            Self::Submit(c) => &c.target,
            Self::Jobs(c) => &c.target,
            Self::Events(c) => &c.target,
            Self::Top(c) => &c.target,
            Self::Usage(c) => &c.target,
            Self::Job(c) | Self::Cancel(c) | Self::Why(c) => &c.target,
            Self::Logs(c) => &c.target,
            Self::Nodes(c) | Self::Teams(c) | Self::Status(c) => &c.target,
            Self::Quota(g) => &g.target,
            Self::PriorityClass(g) => &g.target,
            Self::Apply(c) => &c.target,
            Self::Admin(g) => &g.target,
        }
    }
}

/// Runs a client command.
pub fn run(command: &ClientCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(dispatch(command))
}

async fn dispatch(command: &ClientCommand) -> Result<()> {
    let t = command.target();
    match command {
        ClientCommand::Submit(c) => jobs::submit(t, &c.args).await,
        ClientCommand::Jobs(c) if c.args.watch => live::watch_jobs(t, &c.args).await,
        ClientCommand::Jobs(c) => jobs::jobs(t, &c.args).await,
        ClientCommand::Events(c) => live::events(t, &c.args).await,
        ClientCommand::Top(c) => top::top(t, &c.args).await,
        ClientCommand::Usage(c) => accounting::usage(t, &c.args).await,
        ClientCommand::Job(c) => jobs::job(t, c.args.id).await,
        ClientCommand::Cancel(c) => jobs::cancel(t, c.args.id).await,
        ClientCommand::Why(c) => jobs::why(t, c.args.id).await,
        ClientCommand::Logs(c) => logs::logs(t, &c.args).await,
        ClientCommand::Nodes(_) => admin::nodes(t).await,
        ClientCommand::Teams(_) => admin::teams(t).await,
        ClientCommand::Quota(g) => admin::quota(t, &g.command).await,
        ClientCommand::PriorityClass(g) => classes::classes(t, &g.command).await,
        ClientCommand::Apply(c) => classes::apply(t, &c.args).await,
        ClientCommand::Status(_) => admin::status(t).await,
        ClientCommand::Admin(g) => admin::admin(t, &g.command).await,
    }
}

/// The bearer of [`token`].
pub fn bearer(flag: Option<&std::path::Path>) -> Result<Bearer> {
    let (token, source) = token(flag)?;
    Bearer::new(token.as_deref()).map_err(|e| Failure::usage(format!("{source}: {e}")))
}

/// The token to send and where it came from: the file `flag` names (`--token-file`), else
/// `QM_TOKEN`, else the file `QM_TOKEN_FILE` names; none when none is set.
fn token(flag: Option<&std::path::Path>) -> Result<(Option<String>, &'static str)> {
    if let Some(file) = flag {
        return Ok((Some(read_token(file, "--token-file")?), "--token-file"));
    }
    if let Some(t) = std::env::var("QM_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Ok((Some(t.trim().to_owned()), "QM_TOKEN"));
    }
    match std::env::var_os("QM_TOKEN_FILE").filter(|f| !f.is_empty()) {
        Some(file) => Ok((Some(read_token(std::path::Path::new(&file), "QM_TOKEN_FILE")?), "QM_TOKEN_FILE")),
        None => Ok((None, "")),
    }
}

/// The token in `file` (`what` names where the path came from).
fn read_token(file: &std::path::Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("{what} {}: {e}", file.display())))?;
    match text.trim() {
        "" => Err(Failure::usage(format!("{what} {}: the file is empty", file.display()))),
        t => Ok(t.to_owned()),
    }
}

fn jobs_client(c: Authed) -> JobServiceClient<Authed> {
    JobServiceClient::new(c)
}

fn admin_client(c: Authed) -> AdminServiceClient<Authed> {
    AdminServiceClient::new(c)
}

fn print_or_json(t: &Target, value: serde_json::Value, table: impl FnOnce() -> String) {
    if t.json {
        say!("{value}");
    } else {
        say!("{}", table());
    }
}
