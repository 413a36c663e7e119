//! What the agent shows of itself (`qm agent --http-listen`): Prometheus metrics per device
//! (health, utilization, memory in use, power, temperature, the job holding it) and whether the
//! agent has a session with the scheduler's leader; `/healthz` and `/readyz`.
//!
//! The session records what it last read (`Observed`): the inventory at registration and each
//! rescan, the telemetry at each heartbeat. A scrape renders that, with the devices' holders
//! from the executor at that moment, and reads no device itself.

use crate::executor::Executor;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qm_core::{Health, NodeSpec};
use qm_proto::v1::DeviceTelemetry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Every metric an agent serves.
pub const NAMES: &[&str] = &[
    "qm_agent_registered",
    "qm_device_healthy",
    "qm_device_utilization_ratio",
    "qm_device_memory_used_bytes",
    "qm_device_power_watts",
    "qm_device_temperature_celsius",
    "qm_device_allocated",
];

/// A device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
    flavor: String,
}

/// A device and the job holding it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabel {
    device: String,
    flavor: String,
    job: String,
}

/// What the session last saw.
#[derive(Debug, Default)]
struct Seen {
    devices: Vec<(String, String, Health)>,
    readings: BTreeMap<String, DeviceTelemetry>,
    registered: bool,
}

/// What the session last saw, shared with the HTTP address.
#[derive(Clone, Debug, Default)]
pub struct Observed(Arc<Mutex<Seen>>);

type Real = Family<DeviceLabel, Gauge<f64, AtomicU64>>;

impl Observed {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's devices as the probes last read them.
    pub fn inventory(&self, spec: &NodeSpec) {
        let devices = spec.devices.iter().map(|d| (d.id.as_str().to_owned(), d.flavor().to_string(), d.health));
        self.seen().devices = devices.collect();
    }

    /// The devices' latest readings.
    pub fn telemetry(&self, readings: &[DeviceTelemetry]) {
        self.seen().readings = readings.iter().map(|r| (r.device.clone(), r.clone())).collect();
    }

    /// Whether the agent has a session with the leader.
    pub fn registered(&self, yes: bool) {
        self.seen().registered = yes;
    }

    /// The metrics, with `holders` (device id to job id), in the OpenMetrics text format.
    pub fn render(&self, holders: &BTreeMap<String, u64>) -> String {
        let seen = self.seen();
        let mut registry = Registry::with_prefix("qm");
        let registered = Gauge::<i64>::default();
        registered.set(i64::from(seen.registered));
        registry.register("agent_registered", "1 while the agent has a session with the leader", registered);
        let healthy = Family::<DeviceLabel, Gauge>::default();
        let (utilization, memory, power, temperature) =
            (Real::default(), Real::default(), Real::default(), Real::default());
        let held = Family::<HeldLabel, Gauge>::default();
        for (id, flavor, health) in &seen.devices {
            let labels = DeviceLabel { device: id.clone(), flavor: flavor.clone() };
            healthy.get_or_create(&labels).set(i64::from(*health == Health::Healthy));
            if let Some(r) = seen.readings.get(id) {
                let set = |family: &Real, value: Option<f64>| {
                    if let Some(v) = value {
                        family.get_or_create(&labels).set(v);
                    }
                };
                set(&utilization, r.utilization_pct.map(|p| f64::from(p) / 100.0));
                set(&memory, r.memory_used_mib.map(|m| m as f64 * 1024.0 * 1024.0));
                set(&power, r.power_mw.map(|p| f64::from(p) / 1000.0));
                set(&temperature, r.temperature_c.map(f64::from));
            }
            if let Some(job) = holders.get(id) {
                held.get_or_create(&HeldLabel { device: id.clone(), flavor: flavor.clone(), job: job.to_string() })
                    .set(1);
            }
        }
        registry.register("device_healthy", "1 while the device is healthy, else 0", healthy);
        registry.register("device_utilization_ratio", "The device's utilization, 0 to 1", utilization);
        registry.register("device_memory_used_bytes", "The device's memory in use", memory);
        registry.register("device_power_watts", "The device's power draw", power);
        registry.register("device_temperature_celsius", "The device's temperature", temperature);
        registry.register("device_allocated", "1 for the job a replica of which holds the device", held);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// What the handlers read.
#[derive(Clone, Debug)]
struct Shared {
    observed: Observed,
    executor: Executor,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, observed: Observed, executor: Executor) {
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(http = %addr, "serving /metrics, /healthz and /readyz");
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { observed, executor });
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(http = %addr, "the HTTP address stopped: {e}");
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], s.observed.render(&s.executor.holders()))
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    match s.observed.seen().registered {
        true => (StatusCode::OK, "ready: registered with the leader\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no session with the scheduler's leader\n"),
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
