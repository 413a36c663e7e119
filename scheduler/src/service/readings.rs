//! The devices' latest readings per node, as the agents' heartbeats bring them to the leader:
//! kept in this replica's memory only (never replicated: they change every second and are
//! worthless a minute later), and shown with the nodes by `ListNodes` and `Cordon`'s answer.
//! With them, since when each device has read under the idle threshold (`leader::idle` flags
//! the jobs whose devices all have, long enough).

use qm_core::NodeId;
use qm_proto::v1::{DeviceTelemetry, Node};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Each node's latest readings, with when they came.
pub type Latest = HashMap<NodeId, (Instant, Vec<DeviceTelemetry>)>;

/// Since when (ms since the Unix epoch) each device of each node has read under the threshold,
/// for the devices whose last reading did.
pub type Quiet = HashMap<NodeId, HashMap<String, u64>>;

#[derive(Debug, Default)]
struct Inner {
    latest: Latest,
    quiet: Quiet,
}

/// The latest readings of each node, shared by the agent and admin services of a replica.
#[derive(Debug, Clone)]
pub struct Readings {
    inner: Arc<Mutex<Inner>>,
    /// A device reading under this utilization, percent, is idle.
    below_pct: u32,
}

impl Default for Readings {
    fn default() -> Self {
        Self::new(crate::leader::idle::DEFAULT_BELOW_PCT)
    }
}

impl Readings {
    /// Readings under which a device reading under `below_pct` percent is idle.
    pub fn new(below_pct: u32) -> Self {
        Self { inner: Arc::default(), below_pct }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The idle threshold, percent.
    pub fn below_pct(&self) -> u32 {
        self.below_pct
    }

    /// Keeps `readings` as `node`'s latest (a heartbeat without any leaves the last ones), at
    /// `now_ms`.
    pub fn put(&self, node: &NodeId, readings: Vec<DeviceTelemetry>, now_ms: u64) {
        if readings.is_empty() {
            return;
        }
        let mut inner = self.inner();
        let quiet = inner.quiet.entry(node.clone()).or_default();
        for r in &readings {
            match r.utilization_pct {
                Some(pct) if pct < self.below_pct => {
                    if !quiet.contains_key(&r.device) {
                        quiet.insert(r.device.clone(), now_ms);
                    }
                }
                _ => {
                    quiet.remove(&r.device);
                }
            }
        }
        inner.latest.insert(node.clone(), (Instant::now(), readings));
    }

    /// Forgets a node (its agent left, or its node was lost): its devices are idle no more.
    pub fn forget(&self, node: &NodeId) {
        let mut inner = self.inner();
        inner.latest.remove(node);
        inner.quiet.remove(node);
    }

    /// `f` of every node's latest readings and when they came, under the lock (the dashboard
    /// reads them without copying).
    pub fn visit<R>(&self, f: impl FnOnce(&Latest) -> R) -> R {
        f(&self.inner().latest)
    }

    /// `f` of since when each device has read idle, under the lock.
    pub fn quiet<R>(&self, f: impl FnOnce(&Quiet) -> R) -> R {
        f(&self.inner().quiet)
    }

    /// Adds the latest readings of `node`'s devices to its wire form.
    pub fn fill(&self, node: &mut Node) {
        let Some(name) = node.inventory.as_ref().map(|i| i.name.as_str()) else { return };
        if let Some((at, readings)) = self.inner().latest.get(&NodeId::from(name)) {
            node.telemetry = readings.clone();
            node.telemetry_age_ms = Some(at.elapsed().as_millis() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(device: &str, pct: Option<u32>) -> DeviceTelemetry {
        DeviceTelemetry { device: device.into(), utilization_pct: pct, ..DeviceTelemetry::default() }
    }

    #[test]
    fn a_device_is_quiet_from_its_first_reading_under_the_threshold_until_one_above() {
        let r = Readings::new(5);
        let n = NodeId::from("n1");
        r.put(&n, vec![reading("g0", Some(0)), reading("g1", Some(90)), reading("g2", None)], 1_000);
        r.put(&n, vec![reading("g0", Some(4)), reading("g1", Some(3)), reading("g2", None)], 2_000);
        let since = |d: &str| r.quiet(|q| q.get(&n).and_then(|m| m.get(d)).copied());
        assert_eq!((since("g0"), since("g1"), since("g2")), (Some(1_000), Some(2_000), None));
        r.put(&n, vec![reading("g0", Some(5))], 3_000);
        assert_eq!(since("g0"), None, "at the threshold is busy");
        r.forget(&n);
        assert_eq!(since("g1"), None);
        assert!(r.visit(|l| l.is_empty()));
    }
}
