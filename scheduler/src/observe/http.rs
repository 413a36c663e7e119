//! The replica's HTTP address (`qm server --http-listen`): `/metrics` (Prometheus, OpenMetrics
//! text), `/healthz` (200 while the process and its Raft node run) and `/readyz` (200 while the
//! replica can serve), without a token; and the dashboard under `/ui/`, which asks for one.
//! Plain HTTP: bind it to an address only the monitoring system and the operators reach, or
//! put a TLS proxy in front of it (docs/observability.md).

use super::dashboard::Dashboard;
use super::health::can_serve;
use super::metrics::Metrics;
use crate::node::Handle;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// What the handlers read.
#[derive(Clone, Debug)]
struct Shared {
    handle: Handle,
    metrics: Arc<Metrics>,
}

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the HTTP address on `listener` until the task is aborted; a failure is logged.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, dashboard: Dashboard) {
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(http = %addr, "serving /metrics, /healthz, /readyz and the dashboard at /ui/");
    let shared = Shared { handle: dashboard.handle.clone(), metrics };
    let router = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
        .merge(super::dashboard::routes(dashboard));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(http = %addr, "the HTTP address stopped: {e}");
    }
}

async fn scrape(State(s): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.scrape(&s.handle, crate::service::now_ms()))
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    match s.handle.status().fatal {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("the replica stopped: {why}\n")),
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, String) {
    let status = s.handle.status();
    if can_serve(&status) {
        return (StatusCode::OK, format!("ready: leader {}\n", status.leader));
    }
    let why = status.fatal.unwrap_or_else(|| "no leader known (an election, or no quorum)".to_owned());
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
}
