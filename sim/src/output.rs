//! Writing a run: `jobs.csv` (one row per job), `summary.json`, and the summary as a table.

use crate::metrics::Summary;
use crate::{Report, SimError};
use std::fmt::Write as _;
use std::path::Path;

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Io { path: path.display().to_string(), source })
}

/// Appends milliseconds as seconds with three decimals (`12.345`), or nothing: exactly what
/// `{:.3}` of the seconds as a float writes, at a fraction of its cost.
fn push_secs(out: &mut String, ms: Option<u64>) {
    if let Some(ms) = ms {
        push_int(out, ms / 1000);
        let frac = ms % 1000;
        out.extend(['.', digit(frac / 100), digit(frac / 10 % 10), digit(frac % 10)]);
    }
}

fn digit(d: u64) -> char {
    char::from(b'0' + d as u8)
}

fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// The per-job CSV.
pub fn jobs_csv(report: &Report) -> String {
    let mut out = String::with_capacity(64 * (report.output.records.len() + report.unfit.len() + 1));
    out.push_str("line,team,gpus,submit_s,start_s,end_s,wait_s,jct_s,completed,preemptions\n");
    for r in &report.output.records {
        let wait = r.start_ms.map(|s| s - r.submit_ms);
        let jct = r.end_ms.filter(|_| r.completed).map(|e| e - r.submit_ms);
        row_start(&mut out, r.line, r.team.as_str(), r.gpus, r.submit_ms);
        for t in [r.start_ms, r.end_ms, wait, jct] {
            out.push(',');
            push_secs(&mut out, t);
        }
        out.push_str(if r.completed { ",true," } else { ",false," });
        push_int(&mut out, r.preemptions);
        out.push('\n');
    }
    for u in &report.unfit {
        row_start(&mut out, u.job.line, u.job.team.as_str(), u.job.gpus, u.job.submit_ms);
        out.push_str(",,,,,false,0\n");
    }
    out
}

/// The first four fields of a row: line, team, GPUs, submission.
fn row_start(out: &mut String, line: usize, team: &str, gpus: u32, submit_ms: u64) {
    push_int(out, line);
    out.push(',');
    out.push_str(team);
    out.push(',');
    push_int(out, gpus);
    out.push(',');
    push_secs(out, Some(submit_ms));
}

/// The summary as the table `qm sim run` prints.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy {} | placement {} | seed {}", s.policy, s.placement, s.seed);
    let _ = writeln!(out, "teams: {}", s.teams_from);
    let rows: [(&str, String); 14] = [
        ("jobs", s.jobs.to_string()),
        ("jobs completed", s.jobs_completed.to_string()),
        ("jobs that never fit (left out)", s.jobs_unfit.to_string()),
        ("malformed lines skipped", s.lines_skipped.to_string()),
        ("average JCT", duration(s.avg_jct_s)),
        (
            "p50 / p95 / p99 JCT",
            format!("{} / {} / {}", duration(s.p50_jct_s), duration(s.p95_jct_s), duration(s.p99_jct_s)),
        ),
        ("average wait", duration(s.avg_wait_s)),
        ("p95 wait", duration(s.p95_wait_s)),
        ("makespan", duration(s.makespan_s)),
        ("GPU utilization", format!("{:.3}", s.gpu_utilization)),
        ("preemptions", s.preemptions.to_string()),
        ("GPU-hours lost to preemption", format!("{:.1}", s.gpu_hours_lost_to_preemption)),
        ("GPU-hours lost to failures", format!("{:.1}", s.gpu_hours_lost_to_failures)),
        ("Jain's fairness (teams)", format!("{:.3}", s.jain_fairness)),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<32} {v}");
    }
    let _ = writeln!(
        out,
        "  {:<16} {:>7} {:>11} {:>7} {:>8} {:>10} {:>10}",
        "team", "jobs", "GPU-hours", "share", "nominal", "avg wait", "p95 wait"
    );
    for t in &s.teams {
        let _ = writeln!(
            out,
            "  {:<16} {:>7} {:>11.1} {:>7.3} {:>8} {:>10} {:>10}",
            t.team,
            t.jobs,
            t.gpu_hours,
            t.share,
            t.nominal_devices,
            duration(t.avg_wait_s),
            duration(t.p95_wait_s)
        );
    }
    out
}

/// A time in seconds in one format by magnitude: seconds under an hour, hours under two days,
/// days beyond (`583.9 s`, `1.0 h`, `108.9 d`).
pub fn duration(s: f64) -> String {
    if s < 3600.0 {
        format!("{s:.1} s")
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

/// Several runs side by side, one column per policy.
pub fn comparison(summaries: &[Summary]) -> String {
    let mut out = format!("{:<22}", "");
    for s in summaries {
        let _ = write!(out, "{:>16}", s.policy);
    }
    out.push('\n');
    type Metric = (&'static str, fn(&Summary) -> String);
    let metrics: [Metric; 9] = [
        ("jobs completed", |s| s.jobs_completed.to_string()),
        ("avg JCT (h)", |s| format!("{:.2}", s.avg_jct_s / 3600.0)),
        ("p95 JCT (h)", |s| format!("{:.2}", s.p95_jct_s / 3600.0)),
        ("avg wait (h)", |s| format!("{:.2}", s.avg_wait_s / 3600.0)),
        ("p95 wait (h)", |s| format!("{:.2}", s.p95_wait_s / 3600.0)),
        ("makespan (h)", |s| format!("{:.1}", s.makespan_s / 3600.0)),
        ("GPU utilization", |s| format!("{:.3}", s.gpu_utilization)),
        ("preemptions", |s| s.preemptions.to_string()),
        ("Jain's fairness", |s| format!("{:.3}", s.jain_fairness)),
    ];
    for (name, f) in metrics {
        let _ = write!(out, "{name:<22}");
        for s in summaries {
            let _ = write!(out, "{:>16}", f(s));
        }
        out.push('\n');
    }
    out
}

/// Writes `summary.json` and `jobs.csv` into `dir`.
pub fn write_run(dir: &Path, report: &Report) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io { path: dir.display().to_string(), source })?;
    let json = serde_json::to_string_pretty(&report.summary).expect("a summary serializes");
    write(&dir.join("summary.json"), &(json + "\n"))?;
    write(&dir.join("jobs.csv"), &jobs_csv(report))
}

#[cfg(test)]
mod tests {
    use super::push_secs;
    use proptest::prelude::*;

    fn secs(ms: Option<u64>) -> String {
        let mut out = String::new();
        push_secs(&mut out, ms);
        out
    }

    proptest! {
        /// The integer formatting writes what formatting the seconds as a float did (the CSV
        /// stays byte for byte what it was), up to a billion seconds.
        #[test]
        fn secs_match_float_formatting(ms in 0u64..1_000_000_000_000) {
            prop_assert_eq!(secs(Some(ms)), format!("{:.3}", ms as f64 / 1000.0));
        }
    }

    #[test]
    fn no_time_is_an_empty_field() {
        assert_eq!(secs(None), "");
        assert_eq!(secs(Some(1_005)), "1.005");
        assert_eq!(secs(Some(0)), "0.000");
    }
}
