//! `qm usage`: device-hours per team and flavor (or per flavor, or per job), against quota, as
//! a table, `--json` or `--csv` (what `sreport` gives Slurm users). For each job that ended in
//! the window, and each job running now when the window reaches now:
//!
//! - allocated: the device-time its replicas ran (`Job.attained_device_ms`, summed over its
//!   attempts; a running attempt counts its devices x the time since it started);
//! - utilization: the mean its agents measured (over the devices of its latest attempt whose
//!   replicas exited; a running job has none yet);
//! - used = allocated x utilization, idle = allocated - used, for measured jobs; unmeasured:
//!   the allocated device-hours of jobs without a measurement (devices without telemetry, or
//!   still running);
//! - quota: for `--by team`, the team's nominal quota of the flavor over the window.

use super::admin::list_teams;
use super::audit::when;
use super::jobs::list_all;
use super::words::{self, table};
use super::Target;
use crate::out::say;
use anyhow::Result;
use clap::Args;
use qm_proto::v1::{Job, JobState};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const HOUR_MS: f64 = 3_600_000.0;

/// Flags of `qm usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this team's jobs.
    #[arg(long)]
    team: Option<String>,
    /// The window's start: this long ago (`90s`, `15m`, `2h`, `7d`) or this time (RFC 3339).
    #[arg(long, value_name = "WHEN", default_value = "1d")]
    since: String,
    /// The window's end, likewise; now when absent (running jobs count only then).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// One row per team and flavor, per flavor, or per job.
    #[arg(long, default_value = "team", value_parser = ["team", "flavor", "job"])]
    by: String,
    /// Print comma-separated values with a header line.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
}

/// Device-milliseconds of one row.
#[derive(Debug, Default, Clone, Copy)]
struct Account {
    allocated: f64,
    measured: f64,
    used: f64,
}

/// A job's device-milliseconds, `now` ending a running attempt.
fn account(j: &Job, now: u64) -> Account {
    let devices = words::devices(j);
    let running = match (JobState::try_from(j.state), j.started_ms) {
        (Ok(JobState::Running | JobState::Preempted | JobState::Stopping), Some(s)) => now.saturating_sub(s),
        _ => 0,
    };
    let allocated = (j.attained_device_ms + running * u64::from(devices)) as f64;
    let (samples, sum) =
        j.usage.iter().fold((0, 0), |(n, s), d| (n + d.utilization_samples, s + d.utilization_pct_sum));
    match samples {
        0 => Account { allocated, ..Account::default() },
        _ => Account { allocated, measured: allocated, used: allocated * sum as f64 / samples as f64 / 100.0 },
    }
}

/// Whether a job counts in the window: it ended in it, or it has not ended, has run (now or in
/// an earlier attempt) and the window reaches now.
fn counts(j: &Job, since: u64, until: u64, now: u64) -> bool {
    match j.finished_ms {
        Some(end) => since <= end && end < until,
        None => until >= now && (j.started_ms.is_some() || j.attained_device_ms > 0),
    }
}

/// The flavor a job ran on: its assignment's while it holds devices; once it ended, the one
/// flavor of its team's quotas that its request accepts, or the request when it accepts several.
fn flavor(j: &Job, quotas: &Quotas) -> String {
    let asked = words::job_flavor(j);
    let Some(d) = j.spec.as_ref().and_then(|s| s.gang.as_ref()).and_then(|g| g.devices.as_ref()) else { return asked };
    if j.assignment.is_some() {
        return asked;
    }
    let team = j.spec.as_ref().map(|s| s.team.as_str()).unwrap_or_default();
    let kind = format!("{}/", words::kind(d.kind));
    let accepts = |f: &&String| {
        f.strip_prefix(&kind).is_some_and(|model| d.models.is_empty() || d.models.iter().any(|m| m == model))
    };
    let mut candidates = quotas.keys().filter(|k| k[0] == team).map(|k| &k[1]).filter(accepts);
    match (candidates.next(), candidates.next()) {
        (Some(one), None) => one.clone(),
        _ => asked,
    }
}

/// Each team's and flavor's nominal quota in device-milliseconds over the window.
type Quotas = BTreeMap<Vec<String>, f64>;

/// The row a job counts in.
fn key(j: &Job, by: &str, quotas: &Quotas) -> Vec<String> {
    let spec = j.spec.clone().unwrap_or_default();
    let flavor = flavor(j, quotas);
    match by {
        "flavor" => vec![flavor],
        "job" => vec![j.id.to_string(), spec.name, spec.team, flavor],
        _ => vec![spec.team, flavor],
    }
}

/// Runs `qm usage`.
pub async fn usage(t: &Target, args: &UsageArgs) -> Result<()> {
    let now = words::now_ms();
    let since = when("--since", &args.since)?;
    let until = args.until.as_deref().map(|u| when("--until", u)).transpose()?.unwrap_or(now);
    let quota = quotas(t, until.saturating_sub(since)).await?;
    let mut rows: BTreeMap<Vec<String>, Account> = BTreeMap::new();
    for j in list_all(t, args.team.as_deref(), vec![]).await?.iter().filter(|j| counts(j, since, until, now)) {
        let (a, row) = (account(j, now), rows.entry(key(j, &args.by, &quota)).or_default());
        (row.allocated, row.measured, row.used) =
            (row.allocated + a.allocated, row.measured + a.measured, row.used + a.used);
    }
    let names: &[&str] = match args.by.as_str() {
        "flavor" => &["flavor"],
        "job" => &["job", "name", "team", "flavor"],
        _ => &["team", "flavor"],
    };
    let by_team = args.by == "team";
    let values: Vec<Value> =
        rows.iter().map(|(k, a)| row(names, k, a, quota.get(k).copied().filter(|_| by_team))).collect();
    print(t, args, names, &values);
    Ok(())
}

/// Each team's and flavor's nominal quota in device-milliseconds over a window of `span_ms`.
async fn quotas(t: &Target, span_ms: u64) -> Result<Quotas> {
    let mut out = BTreeMap::new();
    for ts in list_teams(t).await? {
        let team = ts.team.unwrap_or_default();
        for q in &team.quotas {
            out.insert(
                vec![team.name.clone(), words::flavor(q.flavor.as_ref())],
                f64::from(q.nominal) * span_ms as f64,
            );
        }
    }
    Ok(out)
}

fn row(names: &[&str], key: &[String], a: &Account, quota: Option<f64>) -> Value {
    let hours = |ms: f64| ms / HOUR_MS;
    let mut v = json!({"allocated_device_hours": hours(a.allocated), "used_device_hours": hours(a.used),
        "idle_device_hours": hours(a.measured - a.used), "unmeasured_device_hours": hours(a.allocated - a.measured),
        "utilization_pct": (a.measured > 0.0).then(|| (a.used / a.measured * 1000.0).round() / 10.0)});
    for (n, k) in names.iter().zip(key) {
        v[*n] = json!(k);
    }
    if let Some(q) = quota {
        v["quota_device_hours"] = json!(hours(q));
    }
    v
}

/// The number columns: key in the JSON, header.
const COLUMNS: [(&str, &str); 6] = [
    ("allocated_device_hours", "ALLOCATED"),
    ("used_device_hours", "USED"),
    ("idle_device_hours", "IDLE"),
    ("unmeasured_device_hours", "UNMEASURED"),
    ("utilization_pct", "UTIL%"),
    ("quota_device_hours", "QUOTA"),
];

fn cell(v: &Value, csv: bool) -> String {
    match v {
        Value::Null if csv => String::new(),
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) if csv => n.to_string(),
        Value::Number(n) => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

fn print(t: &Target, args: &UsageArgs, names: &[&str], rows: &[Value]) {
    if t.json {
        say!("{}", Value::Array(rows.to_vec()));
        return;
    }
    let numbers = COLUMNS.iter().filter(|(k, _)| *k != "quota_device_hours" || args.by == "team");
    let columns: Vec<(&str, String)> =
        names.iter().map(|n| (*n, n.to_uppercase())).chain(numbers.map(|(k, h)| (*k, (*h).to_owned()))).collect();
    let lines = rows.iter().map(|r| columns.iter().map(|(k, _)| cell(&r[*k], args.csv)).collect::<Vec<_>>());
    if args.csv {
        say!("{}", columns.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(","));
        for line in lines {
            say!("{}", line.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
        }
        return;
    }
    let header: Vec<&str> = columns.iter().map(|(_, h)| h.as_str()).collect();
    let right: Vec<&str> = COLUMNS.iter().map(|(_, h)| *h).collect();
    say!("{}", table(&header, &right, lines));
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
