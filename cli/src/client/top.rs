//! `qm top`: the cluster at a glance, refreshed: the leader and the capacity per flavor, the
//! teams against their quotas, and the jobs holding the most devices with how much they use
//! them (the mean utilization of their devices from the agents' latest readings, as the leader
//! heard them).

use super::admin::{all_nodes, list_teams, quota_rows};
use super::connect::call;
use super::jobs::list_all;
use super::words::{self, table};
use super::{admin_client, Target};
use crate::out::say;
use anyhow::Result;
use clap::Args;
use qm_proto::v1::{ClusterStatusRequest, JobState, Node};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

/// Flags of `qm top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between two refreshes (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this many refreshes (for scripts); runs until interrupted otherwise.
    #[arg(long, value_name = "N")]
    iterations: Option<u64>,
    /// How many of the jobs holding the most devices to show.
    #[arg(long, default_value_t = 10)]
    jobs: usize,
}

/// A job's devices and the mean utilization of those that report it.
#[derive(Debug, Default)]
struct Held {
    devices: u32,
    nodes: Vec<String>,
    utilization: Vec<u32>,
}

/// What the jobs hold, by job id, from the nodes' inventories and latest readings.
fn held(nodes: &[Node]) -> BTreeMap<u64, Held> {
    let mut out: BTreeMap<u64, Held> = BTreeMap::new();
    for n in nodes {
        let inv = n.inventory.clone().unwrap_or_default();
        for d in &inv.devices {
            let Some(job) = d.held_by_job else { continue };
            let h = out.entry(job).or_default();
            h.devices += 1;
            if !h.nodes.contains(&inv.name) {
                h.nodes.push(inv.name.clone());
            }
            h.utilization.extend(n.telemetry.iter().filter(|r| r.device == d.id).filter_map(|r| r.utilization_pct));
        }
    }
    out
}

/// One refresh, as JSON.
async fn frame(t: &Target, most: usize) -> Result<Value> {
    let status = call(t, |c| async move { admin_client(c).cluster_status(ClusterStatusRequest {}).await }).await?;
    let teams = quota_rows(&list_teams(t).await?);
    let held = held(&all_nodes(t).await?);
    let running = list_all(t, None, vec![JobState::Running as i32]).await?;
    let mut jobs: Vec<Value> = running
        .iter()
        .filter_map(|j| {
            let h = held.get(&j.id)?;
            let spec = j.spec.clone().unwrap_or_default();
            let mean = (!h.utilization.is_empty())
                .then(|| h.utilization.iter().map(|&u| f64::from(u)).sum::<f64>() / h.utilization.len() as f64);
            Some(json!({"id": j.id, "name": spec.name, "team": spec.team, "devices": h.devices,
                "utilization_pct": mean, "nodes": h.nodes}))
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j["devices"].as_u64()));
    jobs.truncate(most);
    let capacity: Vec<Value> = status
        .capacity
        .iter()
        .map(|c| json!({"flavor": words::flavor(c.flavor.as_ref()), "total": c.total, "used": c.used}))
        .collect();
    Ok(json!({"leader": status.leader_id, "term": status.term, "applied_index": status.applied_index,
        "pending_jobs": status.pending_jobs, "running_jobs": status.running_jobs, "capacity": capacity,
        "teams": teams, "jobs": jobs}))
}

/// A frame as three tables.
fn render(f: &Value) -> String {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let head = format!(
        "leader {} | term {} | applied {} | pending {} | running {}",
        f["leader"], f["term"], f["applied_index"], f["pending_jobs"], f["running_jobs"]
    );
    let rows = |key: &str| f[key].as_array().cloned().unwrap_or_default();
    let capacity =
        rows("capacity").into_iter().map(|c| vec![text(&c["flavor"]), c["used"].to_string(), c["total"].to_string()]);
    let capacity = table(&["FLAVOR", "USED", "TOTAL"], &["USED", "TOTAL"], capacity);
    let teams = rows("teams").into_iter().map(|r| {
        let cells = ["team", "flavor", "used", "nominal", "borrowed", "pending_jobs"];
        cells.iter().map(|k| text(&r[*k])).collect()
    });
    let teams = table(
        &["TEAM", "FLAVOR", "USED", "NOMINAL", "BORROWED", "PENDING"],
        &["USED", "NOMINAL", "BORROWED", "PENDING"],
        teams,
    );
    let jobs = rows("jobs").into_iter().map(|j| {
        let util = j["utilization_pct"].as_f64().map_or("-".to_owned(), |u| format!("{u:.0}%"));
        let nodes: Vec<String> = j["nodes"].as_array().into_iter().flatten().map(text).collect();
        vec![j["id"].to_string(), text(&j["name"]), text(&j["team"]), j["devices"].to_string(), util, nodes.join(",")]
    });
    let jobs = table(&["ID", "NAME", "TEAM", "DEVICES", "UTIL", "NODES"], &["ID", "DEVICES", "UTIL"], jobs);
    format!("{head}\n\n{capacity}\n\n{teams}\n\n{jobs}")
}

/// Runs `qm top`.
pub async fn top(t: &Target, args: &TopArgs) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0;
    loop {
        let f = frame(t, args.jobs).await?;
        match (t.json, terminal) {
            (true, _) => say!("{f}"),
            (false, true) => say!("\x1b[2J\x1b[H{}", render(&f)),
            (false, false) => say!("{}\n", render(&f)),
        }
        shown += 1;
        if args.iterations.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::time::sleep(args.interval).await;
    }
}
