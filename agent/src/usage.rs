//! How a running replica uses its devices: the telemetry samples of the devices it holds,
//! summed while it runs (count, sum and peak of utilization and of memory in use), and sent
//! with its exit report, so that the scheduler keeps the summary on the job's record.

use qm_proto::v1::{DeviceTelemetry, DeviceUsage};

/// The sums of one replica's samples, one entry per device it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    devices: Vec<DeviceUsage>,
}

impl Meter {
    /// A meter of `replica` over `devices`, with no sample yet.
    pub fn new(replica: u32, devices: &[String]) -> Self {
        let entry = |d: &String| DeviceUsage { replica, device: d.clone(), ..DeviceUsage::default() };
        Self { devices: devices.iter().map(entry).collect() }
    }

    /// Adds one sample of every device it meters that `samples` reads (others are left alone:
    /// a device without telemetry, or a reading it does not offer, adds no sample).
    pub fn observe(&mut self, samples: &[DeviceTelemetry]) {
        for d in &mut self.devices {
            let Some(s) = samples.iter().find(|s| s.device == d.device) else { continue };
            if let Some(u) = s.utilization_pct.map(|u| u.min(100)) {
                d.utilization_samples += 1;
                d.utilization_pct_sum += u64::from(u);
                d.utilization_pct_peak = d.utilization_pct_peak.max(u);
            }
            if let Some(m) = s.memory_used_mib {
                d.memory_samples += 1;
                d.memory_used_mib_sum = d.memory_used_mib_sum.saturating_add(m);
                d.memory_used_mib_peak = d.memory_used_mib_peak.max(m);
            }
        }
    }

    /// The summary to report: the devices that gave at least one sample.
    pub fn report(self) -> Vec<DeviceUsage> {
        self.devices.into_iter().filter(|d| d.utilization_samples + d.memory_samples > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(device: &str, util: Option<u32>, mem: Option<u64>) -> DeviceTelemetry {
        DeviceTelemetry { device: device.into(), utilization_pct: util, memory_used_mib: mem, ..Default::default() }
    }

    #[test]
    fn samples_of_held_devices_are_summed_and_others_ignored() {
        let mut m = Meter::new(2, &["GPU-a".into(), "GPU-b".into(), "fake-0".into()]);
        m.observe(&[
            sample("GPU-a", Some(40), Some(1_000)),
            sample("GPU-b", None, Some(7)),
            sample("GPU-x", Some(9), None),
        ]);
        m.observe(&[sample("GPU-a", Some(100), Some(3_000)), sample("GPU-b", Some(250), None)]);
        let expected = |device: &str, u: (u64, u64, u32), m: (u64, u64, u64)| DeviceUsage {
            replica: 2,
            node: String::new(),
            device: device.into(),
            utilization_samples: u.0,
            utilization_pct_sum: u.1,
            utilization_pct_peak: u.2,
            memory_samples: m.0,
            memory_used_mib_sum: m.1,
            memory_used_mib_peak: m.2,
        };
        assert_eq!(
            m.report(),
            vec![expected("GPU-a", (2, 140, 100), (2, 4_000, 3_000)), expected("GPU-b", (1, 100, 100), (1, 7, 7))],
            "a reading past 100% counts as 100%; fake-0 gave no sample and is left out"
        );
    }
}
