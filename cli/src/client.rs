//! The client commands (`qm submit`, `qm jobs`, `qm job`, `qm cancel`, `qm why`, `qm nodes`,
//! `qm teams`, `qm quota set`, `qm status`): gRPC calls to any replica of `--server`, failing
//! over to the next address when one is down or has no quorum. Tables by default, `--json` for
//! scripts.

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

/// `qm admin`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Adds or removes a scheduler replica (a Raft configuration change).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Stops placing new work on a node.
    Cordon {
        /// The node.
        node: String,
    },
    /// Places work on a node again (also ends a drain).
    Uncordon {
        /// The node.
        node: String,
    },
    /// Cordons a node and stops its jobs; they are requeued without losing an attempt.
    Drain {
        /// The node.
        node: String,
    },
    /// Backups of the replicated state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `qm admin snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Writes a snapshot of the replicated state to a file (`qm server --restore` reads it).
    Save {
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Writes the committed state of a stopped replica's data directory to a file, offline
    /// (when no quorum is left to answer `save`).
    Export {
        /// The replica's data directory (the replica must be stopped).
        #[arg(long)]
        data: std::path::PathBuf,
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// `qm admin members`.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Adds a voter; start it first with `qm server --join`.
    Add {
        /// Its Raft id.
        #[arg(long)]
        id: u64,
        /// Its address, HOST:PORT.
        #[arg(long)]
        address: String,
    },
    /// Removes a voter.
    Remove {
        /// Its Raft id.
        #[arg(long)]
        id: u64,
    },
}

/// `qm quota`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Sets a team's quota for one flavor.
    Set {
        /// The team.
        #[arg(long)]
        team: String,
        /// The flavor, KIND/MODEL (e.g. gpu/nvidia-h100-80gb-hbm3).
        #[arg(long)]
        flavor: String,
        /// Devices guaranteed.
        #[arg(long)]
        nominal: u32,
        /// Most devices above nominal (unlimited when absent).
        #[arg(long)]
        borrowing_limit: Option<u32>,
        /// Most idle nominal others may borrow (all when absent).
        #[arg(long)]
        lending_limit: Option<u32>,
    },
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

fn write_backup(t: &Target, out: &std::path::Path, index: u64, data: &[u8]) -> Result<()> {
    let partial = out.with_extension("partial");
    std::fs::write(&partial, data).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("{}", out.display()))?;
    print_or_json(t, json!({ "index": index, "bytes": data.len(), "file": out }), || {
        format!("snapshot at index {index}: {} bytes written to {}", data.len(), out.display())
    });
    Ok(())
}

async fn save_snapshot(t: &Target, out: &std::path::Path) -> Result<()> {
    let (index, data) = call(t, |c| async move {
        let mut stream = admin_client(c).save_snapshot(SaveSnapshotRequest {}).await?.into_inner();
        let (mut index, mut data) = (0, Vec::new());
        while let Some(chunk) = stream.message().await? {
            index = chunk.index;
            data.extend(chunk.data);
        }
        Ok(tonic::Response::new((index, data)))
    })
    .await?;
    write_backup(t, out, index, &data)
}

async fn admin(t: &Target, cmd: &AdminCommand) -> Result<()> {
    let members = match cmd {
        AdminCommand::Snapshot(SnapshotCommand::Save { out }) => return save_snapshot(t, out).await,
        AdminCommand::Snapshot(SnapshotCommand::Export { data, out }) => {
            let (index, bytes) = qm_scheduler::restore::export(data)?;
            return write_backup(t, out, index, &bytes);
        }
        AdminCommand::Members(MembersCommand::Add { id, address }) => {
            let req = AddMemberRequest { id: *id, address: address.clone(), learner: false };
            call(t, |c| {
                let req = req.clone();
                async move { admin_client(c).add_member(req).await }
            })
            .await?
            .members
        }
        AdminCommand::Members(MembersCommand::Remove { id }) => {
            call(t, |c| async move { admin_client(c).remove_member(RemoveMemberRequest { id: *id }).await })
                .await?
                .members
        }
        AdminCommand::Cordon { node } | AdminCommand::Uncordon { node } | AdminCommand::Drain { node } => {
            let req = NodeRequest { node: node.clone() };
            let r = call(t, |c| {
                let (req, cmd) = (req.clone(), cmd);
                async move {
                    let mut a = admin_client(c);
                    match cmd {
                        AdminCommand::Cordon { .. } => a.cordon(req).await,
                        AdminCommand::Uncordon { .. } => a.uncordon(req).await,
                        _ => a.drain(req).await,
                    }
                }
            })
            .await?;
            let n = r.node.unwrap_or_default();
            print_or_json(t, json!({ "node": node, "cordoned": n.cordoned, "draining": n.draining }), || {
                format!("node {node}: cordoned {}, draining {}", n.cordoned, n.draining)
            });
            return Ok(());
        }
    };
    let rows: Vec<serde_json::Value> = members.iter().map(|m| json!({ "id": m.id, "address": m.address })).collect();
    print_or_json(t, json!(rows), || {
        members.iter().map(|m| format!("member {} {}", m.id, m.address)).collect::<Vec<_>>().join("\n")
    });
    Ok(())
}

fn jobs_client(c: Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(c)
}

fn admin_client(c: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(c)
}

/// Calls `f` on each replica in turn until one answers; `Unavailable` and connection failures
/// move on to the next, for up to 10 s.
async fn call<T, F, Fut>(t: &Target, f: F) -> Result<T>
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
                Err(s) => bail!("{}", s.message()),
            }
        }
        if Instant::now() >= until {
            bail!("no replica answered: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

async fn nodes(t: &Target) -> Result<()> {
    let r = call(t, |c| async move { admin_client(c).list_nodes(ListNodesRequest { consistency: 0 }).await }).await?;
    let rows: Vec<(String, usize, bool, bool)> = r
        .nodes
        .iter()
        .map(|n| {
            let inv = n.inventory.clone().unwrap_or_default();
            (inv.name, inv.devices.len(), n.cordoned, n.draining)
        })
        .collect();
    let value = json!(rows
        .iter()
        .map(|(n, d, c, dr)| json!({"node": n, "devices": d, "cordoned": c, "draining": dr}))
        .collect::<Vec<_>>());
    print_or_json(t, value, || {
        let mut out = format!("{:<24} {:>7} {:>9} {:>8}", "NODE", "DEVICES", "CORDONED", "DRAINING");
        for (n, d, c, dr) in &rows {
            out += &format!("\n{n:<24} {d:>7} {c:>9} {dr:>8}");
        }
        out
    });
    Ok(())
}

async fn list_teams(t: &Target) -> Result<Vec<TeamStatus>> {
    Ok(call(t, |c| async move { admin_client(c).list_teams(ListTeamsRequest { consistency: 0 }).await }).await?.teams)
}

fn flavor_name(f: Option<&Flavor>) -> String {
    f.map_or_else(String::new, |f| {
        let kind = AcceleratorKind::try_from(f.kind)
            .map_or("?".into(), |k| k.as_str_name().trim_start_matches("ACCELERATOR_KIND_").to_lowercase());
        format!("{kind}/{}", f.model)
    })
}

async fn teams(t: &Target) -> Result<()> {
    let teams = list_teams(t).await?;
    let mut rows = Vec::new();
    for ts in &teams {
        let team = ts.team.clone().unwrap_or_default();
        for q in &team.quotas {
            let flavor = flavor_name(q.flavor.as_ref());
            let used = ts.usage.iter().find(|u| flavor_name(u.flavor.as_ref()) == flavor).map_or(0, |u| u.used);
            rows.push((team.name.clone(), flavor, q.nominal, q.borrowing_limit, used, ts.pending_jobs));
        }
    }
    let value = json!(rows.iter().map(|(n, f, nom, b, u, p)| json!({"team": n, "flavor": f, "nominal": nom, "borrowing_limit": b, "used": u, "pending_jobs": p})).collect::<Vec<_>>());
    print_or_json(t, value, || {
        let mut out =
            format!("{:<16} {:<32} {:>7} {:>9} {:>5} {:>7}", "TEAM", "FLAVOR", "NOMINAL", "BORROW", "USED", "PENDING");
        for (n, f, nom, b, u, p) in &rows {
            let b = b.map_or("-".to_owned(), |b| b.to_string());
            out += &format!("\n{n:<16} {f:<32} {nom:>7} {b:>9} {u:>5} {p:>7}");
        }
        out
    });
    Ok(())
}

async fn quota_set(t: &Target, team: &str, quota: FlavorQuota) -> Result<()> {
    let existing = list_teams(t).await?.into_iter().filter_map(|s| s.team).find(|x| x.name == team);
    let mut spec = existing.unwrap_or(Team { name: team.to_owned(), weight: 1.0, quotas: vec![] });
    spec.quotas.retain(|q| q.flavor != quota.flavor);
    spec.quotas.push(quota);
    let req = SetTeamRequest { team: Some(spec) };
    call(t, |c| {
        let req = req.clone();
        async move { admin_client(c).set_team(req).await }
    })
    .await?;
    print_or_json(t, json!({ "team": team, "ok": true }), || format!("team {team}: quota set"));
    Ok(())
}

async fn status(t: &Target) -> Result<()> {
    let r = call(t, |c| async move { admin_client(c).cluster_status(ClusterStatusRequest {}).await }).await?;
    let hash: String = r.state_hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let members: Vec<serde_json::Value> =
        r.members.iter().map(|m| json!({"id": m.id, "address": m.address, "leader": m.id == r.leader_id})).collect();
    let value = json!({ "replica": r.replica_id, "leader": r.leader_id, "term": r.term, "commit": r.commit_index,
        "applied": r.applied_index, "members": members, "pending_jobs": r.pending_jobs, "running_jobs": r.running_jobs, "state_hash": hash });
    print_or_json(t, value, || {
        let mut out = format!(
            "replica {} | leader {} | term {} | commit {} | applied {} | pending {} | running {} | state {hash}",
            r.replica_id, r.leader_id, r.term, r.commit_index, r.applied_index, r.pending_jobs, r.running_jobs
        );
        for m in &r.members {
            let role = if m.id == r.leader_id { "leader" } else { "follower" };
            out += &format!("\n  member {} {} {role}", m.id, m.address);
        }
        out
    });
    Ok(())
}
