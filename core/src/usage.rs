//! How well a job used what it held: per device, the agents' telemetry samples summed over an
//! attempt (utilization and memory, mean and peak), kept on the job's record. Integers only,
//! so that every replica holds the same bytes; means are computed when shown.

use crate::error::{ApplyError, FieldError};
use crate::ids::{DeviceId, JobId, NodeId};
use crate::limits::{name, MAX_DEVICES_PER_REPLICA};
use crate::resource::Flavor;
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One replica's use of one device during an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUsage {
    /// The replica that held it.
    pub replica: u32,
    /// Its node.
    pub node: NodeId,
    /// The device.
    pub device: DeviceId,
    /// Samples that carried a utilization.
    pub utilization_samples: u64,
    /// Their sum, percent.
    pub utilization_pct_sum: u64,
    /// The highest, percent.
    pub utilization_pct_peak: u32,
    /// Samples that carried the memory in use.
    pub memory_samples: u64,
    /// Their sum, MiB.
    pub memory_used_mib_sum: u64,
    /// The highest, MiB.
    pub memory_used_mib_peak: u64,
}

impl DeviceUsage {
    /// Mean utilization, percent; `None` without samples.
    pub fn mean_utilization_pct(&self) -> Option<f64> {
        (self.utilization_samples > 0).then(|| self.utilization_pct_sum as f64 / self.utilization_samples as f64)
    }

    /// Mean memory in use, MiB; `None` without samples.
    pub fn mean_memory_used_mib(&self) -> Option<f64> {
        (self.memory_samples > 0).then(|| self.memory_used_mib_sum as f64 / self.memory_samples as f64)
    }
}

/// One attempt that ran and ended, kept on the job's record for accounting: when it ran, on
/// how many devices of which flavor, and how busy its agents measured them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt.
    pub attempt: u32,
    /// When it was confirmed running, ms.
    pub started_ms: u64,
    /// When it exited (or its node was lost), ms.
    pub ended_ms: u64,
    /// Devices it held.
    pub devices: u32,
    /// Their flavor.
    pub flavor: Flavor,
    /// Utilization samples its replicas reported, and their sum in percent (0 and 0 when
    /// none reported: unmeasured).
    pub utilization: (u64, u64),
}

impl JobUsage {
    /// Utilization samples over every device, and their sum in percent.
    pub fn utilization(&self) -> (u64, u64) {
        self.devices.iter().fold((0, 0), |(n, s), d| (n + d.utilization_samples, s + d.utilization_pct_sum))
    }
}

/// The usage of a job's latest attempt that reported any, one entry per replica and device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// The attempt.
    pub attempt: u32,
    /// Sorted by replica, then device.
    pub devices: Vec<DeviceUsage>,
}

/// Checks one replica's report: at most one node's worth of devices, names within the limits,
/// percentages at most 100, and no peak above the sum of the samples it was among.
pub fn validate_usage(devices: &[DeviceUsage]) -> Result<(), FieldError> {
    if devices.len() > MAX_DEVICES_PER_REPLICA as usize {
        return Err(FieldError::new("devices", format!("more than {MAX_DEVICES_PER_REPLICA} devices")));
    }
    for (i, d) in devices.iter().enumerate() {
        let within = |e: FieldError| e.within(&format!("devices[{i}]"));
        name("node", d.node.as_str()).map_err(within)?;
        name("device", d.device.as_str()).map_err(within)?;
        if d.utilization_pct_peak > 100 {
            return Err(within(FieldError::new("utilization_pct_peak", "above 100")));
        }
        if d.utilization_samples > 0 && d.utilization_pct_sum > d.utilization_samples * 100 {
            return Err(within(FieldError::new("utilization_pct_sum", "above 100 per sample")));
        }
        if d.memory_samples > 0 && d.memory_used_mib_peak > d.memory_used_mib_sum {
            return Err(within(FieldError::new("memory_used_mib_peak", "above the sum of the samples")));
        }
    }
    Ok(())
}

impl State {
    /// Records one replica's usage of attempt `attempt` of `id`: it replaces what that replica
    /// reported before for the attempt, and a report of a later attempt replaces the record.
    pub(crate) fn record_usage(
        &mut self,
        id: JobId,
        attempt: u32,
        replica: u32,
        devices: Vec<DeviceUsage>,
    ) -> Result<(), ApplyError> {
        validate_usage(&devices)?;
        let job = self.data.jobs.get_mut(&id).ok_or(ApplyError::UnknownJob(id))?;
        let mut usage = match job.usage.as_deref() {
            Some(u) if u.attempt == attempt => u.clone(),
            _ => JobUsage { attempt, devices: Vec::new() },
        };
        usage.devices.retain(|d| d.replica != replica);
        usage.devices.extend(devices.into_iter().map(|d| DeviceUsage { replica, ..d }));
        usage.devices.sort_by(|a, b| (a.replica, &a.device).cmp(&(b.replica, &b.device)));
        if let Some(ended) = job.attempts.last_mut().filter(|a| a.attempt == attempt) {
            ended.utilization = usage.utilization();
        }
        job.usage = Some(Arc::new(usage));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::policy::PolicyConfig;
    use crate::testkit::{cluster, cycle, job, submit};

    fn used(replica: u32, device: &str, util: &[u32], mem: &[u64]) -> DeviceUsage {
        DeviceUsage {
            replica,
            node: NodeId("n0".into()),
            device: DeviceId(device.into()),
            utilization_samples: util.len() as u64,
            utilization_pct_sum: util.iter().map(|&u| u64::from(u)).sum(),
            utilization_pct_peak: util.iter().copied().max().unwrap_or(0),
            memory_samples: mem.len() as u64,
            memory_used_mib_sum: mem.iter().sum(),
            memory_used_mib_peak: mem.iter().copied().max().unwrap_or(0),
        }
    }

    fn record(
        s: &mut State,
        job: JobId,
        attempt: u32,
        replica: u32,
        devices: Vec<DeviceUsage>,
    ) -> Result<(), ApplyError> {
        s.apply(Command::RecordUsage { job, attempt, replica, devices }).map(|_| ())
    }

    /// A running gang of two replicas of one GPU each.
    fn running_gang() -> (State, JobId) {
        let mut s = cluster(2, &[("a", 16, None)]);
        let id = submit(&mut s, job("a", 2, 1), 0);
        cycle(&mut s, &PolicyConfig::default(), 1);
        (s, id)
    }

    /// Each attempt that ran is kept when it ends, with its devices, flavor and times; a
    /// replica's report that comes after the exit still measures it; a requeued job's next
    /// attempt adds a record; and the records travel in the snapshot's third format.
    #[test]
    fn an_ended_attempt_is_kept_with_its_times_devices_and_measured_use() {
        let (mut s, id) = running_gang();
        record(&mut s, id, 1, 0, vec![used(0, "GPU-a", &[90, 70], &[1])]).unwrap();
        s.apply(Command::Drain { node: NodeId("n0".into()) }).unwrap();
        s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 61 }).unwrap();
        record(&mut s, id, 1, 1, vec![used(1, "GPU-b", &[20, 20], &[1])]).unwrap();
        let first = s.job(id).unwrap().attempts.clone();
        assert_eq!(first.len(), 1);
        let a = &first[0];
        assert_eq!((a.attempt, a.started_ms, a.ended_ms, a.devices), (1, 1, 61, 2));
        assert_eq!(a.utilization, (4, 200), "both replicas' samples, the late one included");
        assert_eq!(a.flavor.to_string(), "gpu/nvidia-h100-80gb-hbm3");
        s.apply(Command::Cordon { node: NodeId("n0".into()), cordoned: false }).unwrap();
        cycle(&mut s, &PolicyConfig::default(), 100);
        s.apply(Command::JobFinished { job: id, attempt: Some(2), at_ms: 160 }).unwrap();
        let both = &s.job(id).unwrap().attempts;
        assert_eq!(
            both.iter().map(|a| (a.attempt, a.utilization)).collect::<Vec<_>>(),
            vec![(1, (4, 200)), (2, (0, 0))]
        );
        let bytes = s.to_bytes();
        assert_eq!(&bytes[4..6], &3u16.to_le_bytes());
        assert_eq!(State::from_bytes(&bytes).unwrap().job(id).unwrap().attempts, *both);
    }

    /// A simulation keeps no attempts, and otherwise the same state.
    #[test]
    fn a_state_told_to_forget_attempts_keeps_none() {
        let (mut s, id) = running_gang();
        s.forget_attempts();
        s.apply(Command::JobFinished { job: id, attempt: Some(1), at_ms: 61 }).unwrap();
        let j = s.job(id).unwrap();
        assert_eq!((j.state, j.attempts.len()), (crate::JobState::Succeeded, 0));
    }

    #[test]
    fn replicas_report_their_devices_and_a_new_attempt_starts_a_new_record() {
        let (mut s, id) = running_gang();
        let attempt = s.job(id).unwrap().attempt;
        record(&mut s, id, attempt, 1, vec![used(0, "GPU-b", &[90, 100], &[100, 300])]).unwrap();
        record(&mut s, id, attempt, 0, vec![used(0, "GPU-a", &[50], &[10])]).unwrap();
        record(&mut s, id, attempt, 1, vec![used(0, "GPU-b", &[20], &[5])]).unwrap();
        let u = s.job(id).unwrap().usage.clone().unwrap();
        assert_eq!(u.attempt, attempt);
        let rows: Vec<(u32, &str, Option<f64>, u64)> = u
            .devices
            .iter()
            .map(|d| (d.replica, d.device.as_str(), d.mean_utilization_pct(), d.memory_used_mib_peak))
            .collect();
        assert_eq!(
            rows,
            vec![(0, "GPU-a", Some(50.0), 10), (1, "GPU-b", Some(20.0), 5)],
            "a replica's report replaces its last"
        );
        record(&mut s, id, attempt + 1, 0, vec![]).unwrap_err();
        s.data.jobs.get_mut(&id).unwrap().attempt += 1;
        record(&mut s, id, attempt + 1, 0, vec![used(0, "GPU-c", &[], &[])]).unwrap();
        let u = s.job(id).unwrap().usage.clone().unwrap();
        assert_eq!((u.attempt, u.devices.len()), (attempt + 1, 1));
        assert_eq!(u.devices[0].mean_utilization_pct(), None, "no samples, no mean");
        let stale = record(&mut s, id, attempt, 0, vec![used(0, "GPU-a", &[1], &[1])]).unwrap_err();
        assert!(matches!(stale, ApplyError::StaleAttempt { .. }), "{stale}");
    }

    #[test]
    fn impossible_reports_are_refused_naming_the_field_and_change_nothing() {
        let (mut s, id) = running_gang();
        let before = s.hash();
        let mut over = used(0, "GPU-a", &[100], &[1]);
        over.utilization_pct_peak = 101;
        let mut sum = used(0, "GPU-a", &[100, 100], &[1]);
        sum.utilization_pct_sum = 201;
        let mut peak = used(0, "GPU-a", &[1], &[4, 4]);
        peak.memory_used_mib_peak = 9;
        let blank = used(0, " ", &[1], &[1]);
        for (bad, field) in [
            (over, "devices[0].utilization_pct_peak: above 100"),
            (sum, "devices[0].utilization_pct_sum: above 100 per sample"),
            (peak, "devices[0].memory_used_mib_peak: above the sum"),
            (blank, "devices[0].device: must not be empty"),
        ] {
            let err = record(&mut s, id, 1, 0, vec![used(0, "GPU-ok", &[1], &[1]), bad]).unwrap_err().to_string();
            assert!(err.contains(&field.replace("[0]", "[1]")), "{err}");
        }
        let many = (0..=MAX_DEVICES_PER_REPLICA).map(|i| used(0, &format!("GPU-{i}"), &[1], &[1])).collect();
        assert!(record(&mut s, id, 1, 0, many).unwrap_err().to_string().contains("devices: more than"));
        assert!(matches!(record(&mut s, JobId(99), 1, 0, vec![]), Err(ApplyError::UnknownJob(_))));
        assert_eq!(s.hash(), before);
    }

    #[test]
    fn a_state_without_usage_keeps_the_first_format_and_usage_travels_in_the_second() {
        let (mut s, id) = running_gang();
        let first = s.to_bytes();
        assert_eq!(&first[4..6], &1u16.to_le_bytes(), "nothing to add: the first format, which older releases read");
        record(&mut s, id, 1, 0, vec![used(0, "GPU-a", &[70, 80], &[1_000, 2_000])]).unwrap();
        let second = s.to_bytes();
        assert_eq!(&second[4..6], &2u16.to_le_bytes());
        assert_eq!(&second[6..first.len()], &first[6..], "the second format is the first plus a trailer");
        let back = State::from_bytes(&second).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.job(id).unwrap().usage, s.job(id).unwrap().usage);
        assert_ne!(State::from_bytes(&first).unwrap(), s, "the usage made a difference");
        let mut future = second.clone();
        future[4] = 4;
        let err = State::from_bytes(&future).unwrap_err().to_string();
        assert!(err.contains("version 4 is not supported (this build reads 1 to 3)"), "{err}");
        let mut orphan = second;
        orphan.truncate(first.len());
        orphan.extend(postcard::to_allocvec(&vec![(JobId(42), JobUsage::default())]).unwrap());
        let err = State::from_bytes(&orphan).unwrap_err().to_string();
        assert!(err.contains("usage of job 42, which is not in the table"), "{err}");
    }
}
