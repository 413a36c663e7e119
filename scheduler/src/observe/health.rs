//! A replica can serve while its node runs and it knows a leader: reads and writes then reach
//! the leader through it, or it is the leader. The gRPC health service (`grpc.health.v1`) says
//! `SERVING` for the whole server (`""`) and for each of the replica's services exactly then,
//! and `/readyz` answers 200 exactly then.

use crate::node::{Handle, Status};
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How often the health service's answer is brought up to date.
const POLL: Duration = Duration::from_millis(200);

/// The services whose health is reported besides the whole server's.
pub const SERVICES: [&str; 3] =
    ["quartermaster.v1.JobService", "quartermaster.v1.AdminService", "quartermaster.v1.AgentService"];

/// Whether a replica with this status can serve.
pub fn can_serve(status: &Status) -> bool {
    status.fatal.is_none() && status.leader != 0
}

/// Keeps `reporter`'s answers equal to `can_serve` of the replica, until aborted.
pub async fn report(handle: Handle, reporter: HealthReporter) {
    let mut last = None;
    loop {
        let now = if can_serve(&handle.status()) { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(now) {
            for service in std::iter::once("").chain(SERVICES) {
                reporter.set_service_status(service, now).await;
            }
            last = Some(now);
        }
        tokio::time::sleep(POLL).await;
    }
}
