//! How a job used its devices, as `qm job` shows it: per replica and device, the mean and peak
//! utilization and memory in use over the samples its agent took (reported when each replica
//! exits, for the job's latest attempt that reported).

use super::words::table;
use qm_proto::v1::{DeviceUsage, Job, JobState};
use serde_json::{json, Value};

fn mean(sum: u64, samples: u64) -> Option<f64> {
    (samples > 0).then(|| sum as f64 / samples as f64)
}

/// `qm job --json`'s `usage`: null until a replica reported.
pub fn usage_json(j: &Job) -> Value {
    if j.usage.is_empty() {
        return Value::Null;
    }
    let device = |d: &DeviceUsage| {
        json!({"replica": d.replica, "node": d.node, "device": d.device,
            "utilization_samples": d.utilization_samples,
            "utilization_pct_mean": mean(d.utilization_pct_sum, d.utilization_samples),
            "utilization_pct_peak": (d.utilization_samples > 0).then_some(d.utilization_pct_peak),
            "memory_samples": d.memory_samples,
            "memory_used_mib_mean": mean(d.memory_used_mib_sum, d.memory_samples),
            "memory_used_mib_peak": (d.memory_samples > 0).then_some(d.memory_used_mib_peak)})
    };
    json!({"attempt": j.usage_attempt, "devices": j.usage.iter().map(device).collect::<Vec<_>>()})
}

/// MiB as people read them: GiB with one decimal from 1 GiB up.
fn memory(mib: f64) -> String {
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// `qm job`'s usage lines: a table when replicas reported, else why there is none yet.
pub fn usage_lines(j: &Job) -> Vec<String> {
    if j.usage.is_empty() {
        let state = JobState::try_from(j.state).unwrap_or(JobState::Unspecified);
        let why = match state {
            JobState::Pending | JobState::Unspecified => return Vec::new(),
            JobState::Succeeded | JobState::Failed | JobState::Cancelled if j.attempt > 0 => {
                "none reported (its devices offer no telemetry)"
            }
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => return Vec::new(),
            _ => "reported as each replica exits",
        };
        return vec![format!("Usage    {why}")];
    }
    let samples = j.usage.iter().map(|d| d.utilization_samples.max(d.memory_samples)).max().unwrap_or(0);
    let mut out =
        vec![format!("Usage    attempt {} (mean and peak over up to {samples} sample(s) per device)", j.usage_attempt)];
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}%"));
    let rows = j.usage.iter().map(|d| {
        let util_peak = (d.utilization_samples > 0).then_some(f64::from(d.utilization_pct_peak));
        let mem_peak = (d.memory_samples > 0).then_some(d.memory_used_mib_peak as f64);
        vec![
            d.replica.to_string(),
            d.node.clone(),
            d.device.clone(),
            pct(mean(d.utilization_pct_sum, d.utilization_samples)),
            pct(util_peak),
            mean(d.memory_used_mib_sum, d.memory_samples).map_or("-".to_owned(), memory),
            mem_peak.map_or("-".to_owned(), memory),
        ]
    });
    let header = ["REPLICA", "NODE", "DEVICE", "UTIL MEAN", "UTIL PEAK", "MEM MEAN", "MEM PEAK"];
    let right = ["REPLICA", "UTIL MEAN", "UTIL PEAK", "MEM MEAN", "MEM PEAK"];
    out.extend(table(&header, &right, rows).lines().map(|l| format!("  {l}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_job_shows_means_and_peaks_per_device() {
        let d = DeviceUsage {
            replica: 1,
            node: "n1".into(),
            device: "GPU-a".into(),
            utilization_samples: 4,
            utilization_pct_sum: 350,
            utilization_pct_peak: 100,
            memory_samples: 4,
            memory_used_mib_sum: 4 * 9_203,
            memory_used_mib_peak: 9_500,
        };
        let j = Job { usage: vec![d], usage_attempt: 2, state: JobState::Succeeded as i32, ..Job::default() };
        let lines = usage_lines(&j);
        assert_eq!(lines[0], "Usage    attempt 2 (mean and peak over up to 4 sample(s) per device)");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row, ["1", "n1", "GPU-a", "88%", "100%", "9.0", "GiB", "9.3", "GiB"]);
        let v = usage_json(&j);
        assert_eq!(v["devices"][0]["utilization_pct_mean"], 87.5);
        assert_eq!(v["devices"][0]["memory_used_mib_peak"], 9_500);
    }

    #[test]
    fn a_job_without_reports_says_why() {
        let ended = Job { state: JobState::Succeeded as i32, attempt: 1, ..Job::default() };
        assert_eq!(usage_lines(&ended), ["Usage    none reported (its devices offer no telemetry)"]);
        let running = Job { state: JobState::Running as i32, attempt: 1, ..Job::default() };
        assert_eq!(usage_lines(&running), ["Usage    reported as each replica exits"]);
        assert!(usage_lines(&Job { state: JobState::Pending as i32, ..Job::default() }).is_empty());
        assert_eq!(usage_json(&ended), Value::Null);
    }
}
