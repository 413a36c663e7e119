//! What a replica shows of itself: the gRPC health service (serving only while the replica
//! can serve), and an HTTP address with Prometheus metrics (`/metrics`), liveness (`/healthz`),
//! readiness (`/readyz`) and the web dashboard (`/ui/`).
//!
//! - `health`: whether the replica can serve, and the task that keeps the gRPC health
//!   service's answer up to date.
//! - `metrics`: the Prometheus registry, refreshed from the replica's state at each scrape.
//! - `teams`: each team's devices against quota (nominal, allocated, borrowed, lent).
//! - `dashboard`: the read-only web pages.
//! - `http`: the HTTP server.

pub mod dashboard;
pub mod health;
pub mod http;
pub mod metrics;
pub mod teams;
