//! `qm usage`: device-hours per team and flavor (or per flavor, or per job), against quota, as
//! a table, `--json` or `--csv` (what `sreport` gives Slurm users). Each attempt of a job that
//! held devices (`Job.attempts`, kept on the replicated record when it ends, and the running
//! one up to now) counts for the part of it within the window, on the flavor it ran on:
//!
//! - allocated: its devices x that time;
//! - utilization: the mean its agents measured over the attempt (a running attempt has none
//!   until its replicas exit);
//! - used = allocated x utilization, idle = allocated - used, for measured attempts;
//!   unmeasured: the allocated device-hours of attempts without a measurement (devices without
//!   telemetry, or still running);
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

/// A stretch of time a job held devices: one attempt.
#[derive(Debug, Clone)]
struct Stretch {
    start: u64,
    end: u64,
    devices: u32,
    flavor: String,
    /// Utilization samples and their sum in percent; (0, 0) unmeasured.
    utilization: (u64, u64),
}

impl Stretch {
    /// What the part of it within [`since`, `until`) accounts for.
    fn within(&self, since: u64, until: u64) -> Option<Account> {
        let overlap = self.end.min(until).checked_sub(self.start.max(since)).filter(|o| *o > 0)?;
        let allocated = overlap as f64 * f64::from(self.devices);
        Some(match self.utilization {
            (0, _) => Account { allocated, ..Account::default() },
            (n, sum) => Account { allocated, measured: allocated, used: allocated * sum as f64 / n as f64 / 100.0 },
        })
    }
}

/// Each attempt of `j` that held devices, the running one ending `now`. A job that ended
/// before its record kept attempts counts as one stretch ending when it ended, as long as its
/// device-time, on the flavor its team's quotas let it run.
fn stretches(j: &Job, now: u64, quotas: &Quotas) -> Vec<Stretch> {
    let mut out: Vec<Stretch> = j
        .attempts
        .iter()
        .map(|a| Stretch {
            start: a.started_ms,
            end: a.ended_ms,
            devices: a.devices,
            flavor: words::flavor(a.flavor.as_ref()),
            utilization: (a.utilization_samples, a.utilization_pct_sum),
        })
        .collect();
    let measured = |attempt: u32| -> (u64, u64) {
        if j.usage_attempt != attempt {
            return (0, 0);
        }
        j.usage.iter().fold((0, 0), |(n, s), d| (n + d.utilization_samples, s + d.utilization_pct_sum))
    };
    let devices = words::devices(j);
    match (JobState::try_from(j.state), j.started_ms, j.finished_ms) {
        (Ok(JobState::Running | JobState::Preempted | JobState::Stopping), Some(start), _) => {
            let flavor = words::job_flavor(j);
            out.push(Stretch { start, end: now, devices, flavor, utilization: measured(j.attempt) });
        }
        (_, _, Some(end)) if out.is_empty() && j.attained_device_ms > 0 && devices > 0 => {
            let start = end.saturating_sub(j.attained_device_ms / u64::from(devices));
            let flavor = flavor(j, quotas);
            out.push(Stretch { start, end, devices, flavor, utilization: measured(j.attempt) });
        }
        _ => {}
    }
    out
}

/// The flavor a job that ended ran on, for a record without attempts: the one flavor of its
/// team's quotas that its request accepts, or the request when it accepts several.
fn flavor(j: &Job, quotas: &Quotas) -> String {
    let asked = words::job_flavor(j);
    let Some(d) = j.spec.as_ref().and_then(|s| s.gang.as_ref()).and_then(|g| g.devices.as_ref()) else { return asked };
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

/// The row a job's stretch on `flavor` counts in.
fn key(j: &Job, by: &str, flavor: String) -> Vec<String> {
    let spec = j.spec.clone().unwrap_or_default();
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
    for j in list_all(t, args.team.as_deref(), vec![]).await? {
        for stretch in stretches(&j, now, &quota) {
            let Some(a) = stretch.within(since, until) else { continue };
            let row = rows.entry(key(&j, &args.by, stretch.flavor)).or_default();
            (row.allocated, row.measured, row.used) =
                (row.allocated + a.allocated, row.measured + a.measured, row.used + a.used);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use qm_proto::v1::{AttemptRecord, Flavor, JobSpec};

    fn h100() -> Option<Flavor> {
        Some(Flavor { kind: qm_proto::v1::AcceleratorKind::Gpu as i32, model: "h100".into() })
    }

    /// A job of team `t` whose first attempt ran on 2 GPUs from 1 s to 5 s at 50%, and whose
    /// second has run on 4 since 8 s.
    fn requeued() -> Job {
        let first = AttemptRecord {
            attempt: 1,
            started_ms: 1_000,
            ended_ms: 5_000,
            devices: 2,
            flavor: h100(),
            utilization_samples: 4,
            utilization_pct_sum: 200,
        };
        Job {
            id: 7,
            spec: Some(JobSpec { team: "t".into(), ..JobSpec::default() }),
            state: JobState::Running as i32,
            attempt: 2,
            started_ms: Some(8_000),
            attempts: vec![first],
            ..Job::default()
        }
    }

    #[test]
    fn each_attempt_counts_for_its_part_of_the_window_on_its_flavor() {
        let spans = stretches(&requeued(), 10_000, &Quotas::new());
        assert_eq!(spans.len(), 2, "the ended attempt and the running one");
        assert_eq!((spans[0].flavor.as_str(), spans[0].utilization), ("gpu/h100", (4, 200)));
        let part = spans[0].within(3_000, 20_000).unwrap();
        assert_eq!((part.allocated, part.measured, part.used), (4_000.0, 4_000.0, 2_000.0), "2 s of 2 GPUs, half used");
        assert!(spans[0].within(5_000, 8_000).is_none(), "it ended when the window starts");
        assert_eq!((spans[1].start, spans[1].end), (8_000, 10_000), "the running attempt, up to now");
        assert_eq!(spans[1].within(0, 20_000).unwrap().measured, 0.0, "unmeasured until its replicas exit");
    }
}
