//! The operators' commands: nodes, teams and quotas, cluster status, members, backups.

use super::{admin_client, call, call_with, print_or_json, Resend, Target};
use anyhow::{Context, Result};
use clap::Subcommand;
use qm_proto::v1::*;
use serde_json::json;

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

pub(super) async fn admin(t: &Target, cmd: &AdminCommand) -> Result<()> {
    let members = match cmd {
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

pub(super) async fn nodes(t: &Target) -> Result<()> {
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

pub(super) async fn teams(t: &Target) -> Result<()> {
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

pub(super) async fn quota_set(t: &Target, team: &str, quota: FlavorQuota) -> Result<()> {
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

pub(super) async fn status(t: &Target) -> Result<()> {
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
