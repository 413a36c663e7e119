//! The devices' latest readings per node, as the agents' heartbeats bring them to the leader:
//! kept in this replica's memory only (never replicated: they change every second and are
//! worthless a minute later), and shown with the nodes by `ListNodes` and `Cordon`'s answer.

use qm_core::NodeId;
use qm_proto::v1::{DeviceTelemetry, Node};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Each node's latest readings, with when they came.
type Latest = HashMap<NodeId, (Instant, Vec<DeviceTelemetry>)>;

/// The latest readings of each node, shared by the agent and admin services of a replica.
#[derive(Debug, Clone, Default)]
pub struct Readings(Arc<Mutex<Latest>>);

impl Readings {
    fn map(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `readings` as `node`'s latest (a heartbeat without any leaves the last ones).
    pub fn put(&self, node: &NodeId, readings: Vec<DeviceTelemetry>) {
        if !readings.is_empty() {
            self.map().insert(node.clone(), (Instant::now(), readings));
        }
    }

    /// `f` of every node's latest readings and when they came, under the lock (the dashboard
    /// reads them without copying).
    pub fn visit<R>(&self, f: impl FnOnce(&HashMap<NodeId, (Instant, Vec<DeviceTelemetry>)>) -> R) -> R {
        f(&self.map())
    }

    /// Adds the latest readings of `node`'s devices to its wire form.
    pub fn fill(&self, node: &mut Node) {
        let Some(name) = node.inventory.as_ref().map(|i| i.name.as_str()) else { return };
        if let Some((at, readings)) = self.map().get(&NodeId::from(name)) {
            node.telemetry = readings.clone();
            node.telemetry_age_ms = Some(at.elapsed().as_millis() as u64);
        }
    }
}
