//! The client commands (`qm submit`, `qm jobs`, `qm job`, `qm cancel`, `qm why`, `qm nodes`,
//! `qm teams`, `qm quota set`, `qm status`): gRPC calls to any replica of `--server`, failing
//! over to the next address when one is down or has no quorum, or dies under a request that is
//! safe to send twice (`Resend`). Tables by default, `--json` for scripts. `admin.rs` holds the
//! operators' commands (nodes, teams and quotas, status, members, backups).

mod admin;

use admin::{admin, nodes, quota_set, status, teams};
pub use admin::{AdminCommand, QuotaCommand};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use qm_core::scenario::JobsFile;
use qm_proto::convert::{flavor_to, job_spec_to};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use serde_json::json;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Where the replicas are.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Replica addresses (HOST:PORT), comma-separated or repeated; tried in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7070", global = true)]
    server: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Target {
    /// Whether `--json` asks for JSON instead of tables (every command that prints a table
    /// honours it).
    pub fn json(&self) -> bool {
        self.json
    }
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submits a job from flags, or every `[[job]]` of a TOML file.
    Submit(SubmitArgs),
    /// Lists jobs.
    Jobs {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
        /// Only jobs in this state (pending, running, succeeded, ...).
        #[arg(long)]
        state: Option<String>,
    },
    /// Shows one job.
    Job {
        /// The job id.
        id: u64,
    },
    /// Cancels a job.
    Cancel {
        /// The job id.
        id: u64,
    },
    /// Says why a job is pending.
    Why {
        /// The job id.
        id: u64,
    },
    /// Lists nodes.
    Nodes,
    /// Lists teams with usage.
    Teams,
    /// Sets a team's quota for one flavor (creating the team if needed).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Members, leader, term, commit and applied index.
    Status,
    /// Cluster administration: members and nodes.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Flags of `qm submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A TOML file of `[[job]]` entries (the format of examples/jobs.toml).
    #[arg(long, conflicts_with_all = ["team", "command"])]
    file: Option<std::path::PathBuf>,
    /// The team.
    #[arg(long)]
    team: Option<String>,
    /// Job name.
    #[arg(long, default_value = "job")]
    name: String,
    /// Devices per replica.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Replicas (a gang: all start together or none).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Acceptable models, preferred first.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Priority class.
    #[arg(long)]
    priority_class: Option<String>,
    /// Retry token: a retried submission with the same token is not created twice.
    #[arg(long)]
    request_id: Option<String>,
    /// The command to run.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs a client command.
pub fn run(target: &Target, command: &ClientCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(dispatch(target, command))
}

async fn dispatch(t: &Target, command: &ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Submit(args) => submit(t, args).await,
        ClientCommand::Jobs { team, state } => jobs(t, team.clone(), state.as_deref()).await,
        ClientCommand::Job { id } => job(t, *id).await,
        ClientCommand::Cancel { id } => {
            let r = call(t, |c| async move { jobs_client(c).cancel(CancelJobRequest { job_id: *id }).await }).await?;
            print_or_json(t, json!({ "job_id": id, "state": state_name(r.state) }), || {
                format!("job {id}: {}", state_name(r.state))
            });
            Ok(())
        }
        ClientCommand::Why { id } => {
            let r = call(t, |c| async move { jobs_client(c).why(WhyRequest { job_id: *id }).await }).await?;
            print_or_json(t, json!({ "job_id": id, "text": r.text }), || r.text.clone());
            Ok(())
        }
        ClientCommand::Nodes => nodes(t).await,
        ClientCommand::Teams => teams(t).await,
        ClientCommand::Quota(QuotaCommand::Set { team, flavor, nominal, borrowing_limit, lending_limit }) => {
            let flavor: qm_core::Flavor = flavor.parse().map_err(|e| anyhow::anyhow!("--flavor: {e}"))?;
            let q = FlavorQuota {
                flavor: Some(flavor_to(&flavor)),
                nominal: *nominal,
                borrowing_limit: *borrowing_limit,
                lending_limit: *lending_limit,
            };
            quota_set(t, team, q).await
        }
        ClientCommand::Status => status(t).await,
        ClientCommand::Admin(cmd) => admin(t, cmd).await,
    }
}

fn jobs_client(c: Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(c)
}

fn admin_client(c: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(c)
}

/// Whether a request may be sent again when its connection failed after it was sent and
/// before the answer came: the replica may have applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Sending it twice does no more than sending it once: reads, submissions (their request id
    /// makes the second a no-op), cancels (a cancelled job's cancel is a no-op), quotas and node
    /// settings (absolute values).
    Safe,
    /// A second may be refused although the first was applied (membership changes): the
    /// client reports that the outcome is unknown instead.
    Never,
}

/// Calls `f` on each replica in turn until one answers: `Unavailable` and connection failures
/// move on to the next, for up to 10 s; so does a connection that failed under the request
/// (the replica died mid-request), since this request is safe to send again.
async fn call<T, F, Fut>(t: &Target, f: F) -> Result<T>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    call_with(t, Resend::Safe, f).await
}

/// `call`, saying whether the request may be sent again after a connection failed under it.
async fn call_with<T, F, Fut>(t: &Target, resend: Resend, f: F) -> Result<T>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("no --server given");
    loop {
        for addr in &t.server {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .with_context(|| format!("--server: {addr:?} is not HOST:PORT"))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(10));
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            match f(channel).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable => last = format!("{addr}: {}", s.message()),
                Err(s) if connection_lost(&s) => match resend {
                    Resend::Safe => last = format!("{addr}: connection lost: {}", s.message()),
                    Resend::Never => bail!(
                        "{addr}: the connection failed before the answer came ({}); the change may or may not \
                         have been applied: check with `qm status`",
                        s.message()
                    ),
                },
                Err(s) => bail!("{}", s.message()),
            }
        }
        if Instant::now() >= until {
            bail!("no replica answered: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a status is this client's own report of a connection that failed under the request
/// (its source is the transport's error) rather than an answer a replica sent (no source).
fn connection_lost(s: &tonic::Status) -> bool {
    use tonic::Code::{Cancelled, Internal, Unknown};
    std::error::Error::source(s).is_some() && matches!(s.code(), Cancelled | Unknown | Internal)
}

fn print_or_json(t: &Target, value: serde_json::Value, table: impl FnOnce() -> String) {
    if t.json {
        println!("{value}");
    } else {
        println!("{}", table());
    }
}

fn state_name(raw: i32) -> String {
    JobState::try_from(raw)
        .map_or_else(|_| raw.to_string(), |s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
}

async fn submit(t: &Target, args: &SubmitArgs) -> Result<()> {
    let specs = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            let file: JobsFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
            file.jobs
                .iter()
                .enumerate()
                .map(|(i, j)| {
                    j.spec().map(|s| job_spec_to(&s)).map_err(|e| anyhow::anyhow!("{}: job[{i}].{e}", path.display()))
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => vec![flag_spec(args)?],
    };
    let request_id = args.request_id.clone().unwrap_or_else(fresh_request_id);
    let req = SubmitRequest { jobs: specs, request_id };
    let r = call(t, |c| {
        let req = req.clone();
        async move { jobs_client(c).submit(req).await }
    })
    .await?;
    print_or_json(t, json!({ "job_ids": r.job_ids }), || {
        r.job_ids.iter().map(|id| format!("submitted job {id}")).collect::<Vec<_>>().join("\n")
    });
    Ok(())
}

fn flag_spec(args: &SubmitArgs) -> Result<JobSpec> {
    let team = args.team.clone().context("--team: required (or --file)")?;
    Ok(JobSpec {
        name: args.name.clone(),
        team,
        priority_class: args.priority_class.clone(),
        gang: Some(GangSpec {
            replicas: args.replicas,
            devices: Some(DeviceRequest {
                kind: AcceleratorKind::Gpu as i32,
                models: args.models.clone(),
                count: args.gpus,
            }),
            cpu_millis: 0,
            mem_mib: 0,
        }),
        command: args.command.clone(),
        ..JobSpec::default()
    })
}

/// A token unique to this invocation, so that the client's own retries are not submitted twice.
fn fresh_request_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("qm-{}-{nanos}", std::process::id())
}

fn devices(j: &Job) -> u32 {
    j.spec.as_ref().and_then(|s| s.gang.as_ref()).map_or(0, |g| g.replicas * g.devices.as_ref().map_or(0, |d| d.count))
}

async fn jobs(t: &Target, team: Option<String>, state: Option<&str>) -> Result<()> {
    let states = match state {
        None => vec![],
        Some(s) => {
            let name = format!("JOB_STATE_{}", s.to_uppercase());
            vec![JobState::from_str_name(&name).with_context(|| format!("--state: unknown state {s:?}"))? as i32]
        }
    };
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let req = ListJobsRequest {
            team: team.clone().unwrap_or_default(),
            states: states.clone(),
            page_size: 1000,
            page_token: token.clone(),
            consistency: 0,
        };
        let r = call(t, |c| {
            let req = req.clone();
            async move { jobs_client(c).list(req).await }
        })
        .await?;
        all.extend(r.jobs);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|j| {
            let spec = j.spec.clone().unwrap_or_default();
            json!({ "id": j.id, "name": spec.name, "team": spec.team, "state": state_name(j.state), "devices": devices(j), "message": j.message })
        })
        .collect();
    print_or_json(t, json!(rows), || {
        let mut out = format!("{:>6}  {:<24} {:<14} {:<10} {:>7}", "ID", "NAME", "TEAM", "STATE", "DEVICES");
        for j in &all {
            let spec = j.spec.clone().unwrap_or_default();
            out += &format!(
                "\n{:>6}  {:<24} {:<14} {:<10} {:>7}",
                j.id,
                spec.name,
                spec.team,
                state_name(j.state),
                devices(j)
            );
        }
        out
    });
    Ok(())
}

async fn job(t: &Target, id: u64) -> Result<()> {
    let r = call(t, |c| async move { jobs_client(c).get(GetJobRequest { job_id: id, consistency: 0 }).await }).await?;
    let j = r.job.context("the server sent no job")?;
    let spec = j.spec.clone().unwrap_or_default();
    let value = json!({ "id": j.id, "name": spec.name, "team": spec.team, "state": state_name(j.state),
        "devices": devices(&j), "attempt": j.attempt, "preemptions": j.preemptions, "failures": j.failures,
        "submitted_ms": j.submitted_ms, "message": j.message });
    print_or_json(t, value.clone(), || {
        value
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k:>12}: {v}")).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    });
    Ok(())
}
