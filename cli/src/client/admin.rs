//! The operators' commands: nodes, teams and quotas, cluster status, members, backups.

use super::connect::{call, call_with, endpoint, Resend};
use super::words::{self, table};
use super::{admin_client, print_or_json, Target};
use crate::out::{say, Failure};
use anyhow::{Context, Result};
use clap::Subcommand;
use qm_proto::auth::{authed, Bearer};
use qm_proto::convert::flavor_to;
use qm_proto::tls::Dialer;
use qm_proto::v1::*;
use serde_json::json;
use std::time::Duration;

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
    /// Bearer tokens: create, list, revoke, and which one this command sends.
    #[command(subcommand)]
    Tokens(super::tokens::TokensCommand),
    /// The audit trail: who asked for which change, when, and whether it was applied.
    Audit(super::audit::AuditArgs),
    /// Makes a CA and certificates for replicas and agents (offline; for a test or small
    /// cluster, or to see what a certificate must hold).
    Certs(crate::certs::CertsArgs),
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
    /// Sets a team's quota for one flavor (creating the team if needed).
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
        /// The team's fair-share weight (kept when absent; 1 for a new team).
        #[arg(long)]
        weight: Option<f64>,
    },
    /// Lists every team's quotas and usage, one row per team and flavor.
    List,
    /// Shows one team's weight, quotas and usage.
    Get {
        /// The team.
        team: String,
    },
    /// Sets a team's idle policy: its running jobs whose devices all read under the idle
    /// threshold (`qm server --idle-below-pct`, 5% by default) for `--after` are flagged (an
    /// event on the job, `qm jobs --idle`, a metric); with `--requeue-after-warning`, they are
    /// then stopped and requeued that long later unless their devices got busy again.
    Idle {
        /// The team.
        team: String,
        /// How long every device must read idle before the job is flagged (`30m`, `2h`).
        #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "off")]
        after: Option<std::time::Duration>,
        /// Stop and requeue a flagged job this long after the flag (`10m`); report only when
        /// absent.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "off")]
        requeue_after_warning: Option<std::time::Duration>,
        /// Remove the team's own policy (it gets the default: report after 30 minutes).
        #[arg(long, conflicts_with = "after")]
        off: bool,
    },
}

/// Writes a backup readable by its owner only (mode 0600): it holds the whole state, jobs'
/// environments included. Written aside and renamed, so that a backup is whole or absent.
fn write_backup(t: &Target, out: &std::path::Path, index: u64, data: &[u8]) -> Result<()> {
    write_private(out, data)?;
    print_or_json(t, json!({ "index": index, "bytes": data.len(), "file": out }), || {
        format!("snapshot at index {index}: {} bytes written to {}", data.len(), out.display())
    });
    Ok(())
}

/// Writes `data` to `out` readable by its owner only (mode 0600): to a new file beside it
/// first (a leftover one is removed), synced, then renamed over `out`.
pub(super) fn write_private(out: &std::path::Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = out.with_extension("partial");
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
    .with_context(|| format!("removing the leftover {}", partial.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("{}", out.display()))?;
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

pub(super) async fn admin(t: &Target, cmd: &AdminCommand) -> Result<()> {
    let members = match cmd {
        AdminCommand::Tokens(c) => return super::tokens::tokens(t, c).await,
        AdminCommand::Audit(args) => return super::audit::audit(t, args).await,
        AdminCommand::Certs(args) => return crate::certs::certs(args),
        AdminCommand::Snapshot(SnapshotCommand::Save { out }) => return save_snapshot(t, out).await,
        AdminCommand::Snapshot(SnapshotCommand::Export { data, out }) => {
            let (index, bytes) = qm_scheduler::restore::export(data)?;
            return write_backup(t, out, index, &bytes);
        }
        AdminCommand::Members(MembersCommand::Add { id, address }) => {
            let req = AddMemberRequest { id: *id, address: address.clone(), learner: false };
            call_with(t, Resend::Never, |c| {
                let req = req.clone();
                async move { admin_client(c).add_member(req).await }
            })
            .await?
            .members
        }
        AdminCommand::Members(MembersCommand::Remove { id }) => {
            call_with(t, Resend::Never, |c| async move {
                admin_client(c).remove_member(RemoveMemberRequest { id: *id }).await
            })
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

/// A node as `qm nodes --json` shows it, with its devices' latest readings.
fn node_json(n: &Node) -> serde_json::Value {
    let inv = n.inventory.clone().unwrap_or_default();
    let status = NodeStatus::try_from(n.status)
        .map_or("?".into(), |s| s.as_str_name().trim_start_matches("NODE_STATUS_").to_lowercase());
    let flavors: std::collections::BTreeSet<String> =
        inv.devices.iter().map(|d| format!("{}/{}", words::kind(d.kind), d.model)).collect();
    let utils: Vec<u32> = n.telemetry.iter().filter_map(|r| r.utilization_pct).collect();
    let mean = (!utils.is_empty()).then(|| utils.iter().map(|&u| f64::from(u)).sum::<f64>() / utils.len() as f64);
    let readings: Vec<serde_json::Value> = n
        .telemetry
        .iter()
        .map(|r| {
            json!({"device": r.device, "utilization_pct": r.utilization_pct, "memory_used_mib": r.memory_used_mib,
            "power_mw": r.power_mw, "temperature_c": r.temperature_c})
        })
        .collect();
    json!({"node": inv.name, "status": status, "flavors": flavors.into_iter().collect::<Vec<_>>().join(","),
        "devices": inv.devices.len(), "used": inv.devices.iter().filter(|d| d.held_by_job.is_some()).count(),
        "cordoned": n.cordoned, "draining": n.draining, "utilization_pct": mean, "telemetry": readings,
        "telemetry_age_ms": n.telemetry_age_ms})
}

/// Every node, page by page (a page stays under what a client decodes).
pub async fn all_nodes(t: &Target) -> Result<Vec<Node>> {
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let req = ListNodesRequest { page_token: token, ..ListNodesRequest::default() };
        let r = call(t, |c| {
            let req = req.clone();
            async move { admin_client(c).list_nodes(req).await }
        })
        .await?;
        all.extend(r.nodes);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        token = r.next_page_token;
    }
}

pub(super) async fn nodes(t: &Target) -> Result<()> {
    let rows: Vec<serde_json::Value> = all_nodes(t).await?.iter().map(node_json).collect();
    if t.json {
        say!("{}", json!(rows));
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let lines = rows.iter().map(|r| {
        let sched = match (r["cordoned"].as_bool(), r["draining"].as_bool()) {
            (_, Some(true)) => "draining",
            (Some(true), _) => "cordoned",
            _ => "yes",
        };
        let util = r["utilization_pct"].as_f64().map_or("-".to_owned(), |u| format!("{u:.0}%"));
        let (devices, used) = (r["devices"].to_string(), r["used"].to_string());
        vec![text(&r["node"]), text(&r["status"]), sched.to_owned(), text(&r["flavors"]), devices, used, util]
    });
    let header = ["NODE", "STATUS", "SCHEDULABLE", "FLAVORS", "DEVICES", "USED", "UTIL"];
    say!("{}", table(&header, &["DEVICES", "USED", "UTIL"], lines));
    Ok(())
}

pub(super) async fn list_teams(t: &Target) -> Result<Vec<TeamStatus>> {
    Ok(call(t, |c| async move { admin_client(c).list_teams(ListTeamsRequest { consistency: 0 }).await }).await?.teams)
}

/// One row per team and flavor: quota, usage and pending jobs.
pub(super) fn quota_rows(teams: &[TeamStatus]) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for ts in teams {
        let team = ts.team.clone().unwrap_or_default();
        for q in &team.quotas {
            let flavor = words::flavor(q.flavor.as_ref());
            let used = ts.usage.iter().find(|u| words::flavor(u.flavor.as_ref()) == flavor).map_or(0, |u| u.used);
            rows.push(json!({"team": team.name, "weight": team.weight, "flavor": flavor, "nominal": q.nominal,
                "borrowing_limit": q.borrowing_limit, "lending_limit": q.lending_limit, "used": used,
                "borrowed": used.saturating_sub(q.nominal), "pending_jobs": ts.pending_jobs,
                "idle": ts.idle.as_ref().map(idle_json)}));
        }
    }
    rows
}

fn print_quotas(t: &Target, rows: Vec<serde_json::Value>) {
    if t.json {
        say!("{}", json!(rows));
        return;
    }
    let limit = |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    let lines = rows.iter().map(|r| {
        vec![
            r["team"].as_str().unwrap_or_default().to_owned(),
            r["weight"].to_string(),
            r["flavor"].as_str().unwrap_or_default().to_owned(),
            r["nominal"].to_string(),
            limit(&r["borrowing_limit"]),
            limit(&r["lending_limit"]),
            r["used"].to_string(),
            r["borrowed"].to_string(),
            r["pending_jobs"].to_string(),
        ]
    });
    let header = ["TEAM", "WEIGHT", "FLAVOR", "NOMINAL", "BORROW LIMIT", "LEND LIMIT", "USED", "BORROWED", "PENDING"];
    say!("{}", table(&header, &header[3..], lines));
}

pub(super) async fn teams(t: &Target) -> Result<()> {
    print_quotas(t, quota_rows(&list_teams(t).await?));
    Ok(())
}

pub(super) async fn quota(t: &Target, cmd: &QuotaCommand) -> Result<()> {
    match cmd {
        QuotaCommand::List => teams(t).await,
        QuotaCommand::Get { team } => {
            let teams = list_teams(t).await?;
            let found: Vec<TeamStatus> =
                teams.into_iter().filter(|s| s.team.as_ref().is_some_and(|x| &x.name == team)).collect();
            if found.is_empty() {
                return Err(Failure::new(crate::out::Exit::NotFound, format!("team: no team {team:?}")).into());
            }
            print_quotas(t, quota_rows(&found));
            Ok(())
        }
        QuotaCommand::Set { team, flavor, nominal, borrowing_limit, lending_limit, weight } => {
            let flavor: qm_core::Flavor = flavor.parse().map_err(|e| Failure::usage(format!("--flavor: {e}")))?;
            let q = FlavorQuota {
                flavor: Some(flavor_to(&flavor)),
                nominal: *nominal,
                borrowing_limit: *borrowing_limit,
                lending_limit: *lending_limit,
            };
            quota_set(t, team, q, *weight).await
        }
        QuotaCommand::Idle { team, after, requeue_after_warning, off: _ } => {
            let ms = |d: &std::time::Duration| d.as_millis() as u64;
            let policy = after.as_ref().map(|a| IdlePolicy {
                after_ms: ms(a),
                requeue_after_warning_ms: requeue_after_warning.as_ref().map(ms),
            });
            let req = SetIdlePolicyRequest { team: team.clone(), policy };
            call(t, |c| {
                let req = req.clone();
                async move { admin_client(c).set_idle_policy(req).await }
            })
            .await?;
            let span = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
            let said = match (after, requeue_after_warning) {
                (None, _) => format!("team {team}: no idle policy of its own (reported after 30m)"),
                (Some(a), None) => format!("team {team}: idle jobs reported after {}", span(a)),
                (Some(a), Some(w)) => {
                    format!(
                        "team {team}: idle jobs reported after {}, then stopped and requeued {} later",
                        span(a),
                        span(w)
                    )
                }
            };
            print_or_json(t, json!({ "team": team, "idle": policy.as_ref().map(idle_json) }), || said);
            Ok(())
        }
    }
}

/// An idle policy in JSON.
pub(super) fn idle_json(p: &IdlePolicy) -> serde_json::Value {
    json!({ "after_ms": p.after_ms, "requeue_after_warning_ms": p.requeue_after_warning_ms })
}

async fn quota_set(t: &Target, team: &str, quota: FlavorQuota, weight: Option<f64>) -> Result<()> {
    if let Some(w) = weight.filter(|w| !(w.is_finite() && *w > 0.0 && *w <= 1000.0)) {
        // The wire reads a weight of 0 as "absent" (1): refuse it here rather than set 1.
        return Err(Failure::usage(format!("--weight: must be in (0, 1000], got {w}")));
    }
    let existing = list_teams(t).await?.into_iter().filter_map(|s| s.team).find(|x| x.name == team);
    let mut spec = existing.unwrap_or(Team { name: team.to_owned(), weight: 1.0, quotas: vec![] });
    spec.quotas.retain(|q| q.flavor != quota.flavor);
    spec.quotas.push(quota);
    if let Some(w) = weight {
        spec.weight = w;
    }
    set_team(t, spec).await?;
    print_or_json(t, json!({ "team": team, "ok": true }), || format!("team {team}: quota set"));
    Ok(())
}

/// Waits until at least `count` nodes are registered (for up to 10 s).
pub async fn wait_for_nodes(t: &Target, count: usize) -> Result<()> {
    for _ in 0..100 {
        if all_nodes(t).await?.len() >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Failure::new(crate::out::Exit::Unavailable, format!("fewer than {count} node(s) registered within 10 s"))
        .into())
}

/// Creates or replaces a team; the server's warnings (overcommitted nominals) go to stderr.
pub async fn set_team(t: &Target, team: Team) -> Result<()> {
    let req = SetTeamRequest { team: Some(team) };
    let r = call(t, |c| {
        let req = req.clone();
        async move { admin_client(c).set_team(req).await }
    })
    .await?;
    for w in r.warnings {
        eprintln!("qm: warning: {w}");
    }
    Ok(())
}

/// Whether the replica at `address` answers a status request within a short time.
async fn answers(dialer: &Dialer, address: &str, bearer: &Bearer) -> bool {
    let Ok(endpoint) = endpoint(dialer, address) else { return false };
    let endpoint = endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(1));
    match endpoint.connect().await {
        Ok(c) => admin_client(authed(c, bearer.clone())).cluster_status(ClusterStatusRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

pub(super) async fn status(t: &Target) -> Result<()> {
    let r = call(t, |c| async move { admin_client(c).cluster_status(ClusterStatusRequest {}).await }).await?;
    let hash: String = r.state_hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut reachable = Vec::new();
    let (bearer, dialer) = (t.bearer()?, t.dialer()?);
    for m in &r.members {
        reachable.push(m.id == r.replica_id || answers(&dialer, &m.address, &bearer).await);
    }
    let role = |m: &Member| if m.id == r.leader_id { "leader" } else { "follower" };
    let members: Vec<serde_json::Value> = r
        .members
        .iter()
        .zip(&reachable)
        .map(|(m, ok)| json!({"id": m.id, "address": m.address, "role": role(m), "reachable": ok}))
        .collect();
    let capacity: Vec<serde_json::Value> = r
        .capacity
        .iter()
        .map(|c| json!({"flavor": words::flavor(c.flavor.as_ref()), "total": c.total, "used": c.used}))
        .collect();
    if t.json {
        say!(
            "{}",
            json!({ "replica": r.replica_id, "leader": r.leader_id, "term": r.term, "commit": r.commit_index,
            "applied": r.applied_index, "members": members, "capacity": capacity, "pending_jobs": r.pending_jobs,
            "running_jobs": r.running_jobs, "state_hash": hash })
        );
        return Ok(());
    }
    say!(
        "replica {} | leader {} | term {} | commit {} | applied {} | pending {} | running {} | state {hash}",
        r.replica_id,
        r.leader_id,
        r.term,
        r.commit_index,
        r.applied_index,
        r.pending_jobs,
        r.running_jobs
    );
    let rows = r.members.iter().zip(&reachable).map(|(m, ok)| {
        let reach = if *ok { "yes" } else { "UNREACHABLE" };
        vec![m.id.to_string(), m.address.clone(), role(m).to_owned(), reach.to_owned()]
    });
    say!("{}", table(&["MEMBER", "ADDRESS", "ROLE", "REACHABLE"], &["MEMBER"], rows));
    Ok(())
}
