//! What a replica shows of itself to the ecosystem's tools: the gRPC health service (serving
//! only while the replica can serve), and an HTTP address with Prometheus metrics
//! (`/metrics`), liveness (`/healthz`) and readiness (`/readyz`).
//!
//! - `health`: whether the replica can serve, and the task that keeps the gRPC health
//!   service's answer up to date.
//! - `metrics`: the Prometheus registry, refreshed from the replica's state at each scrape.
//! - `http`: the HTTP server.

pub mod health;
pub mod http;
pub mod metrics;
