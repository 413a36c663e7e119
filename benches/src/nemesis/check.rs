//! What must hold once the faults are healed: every replica holds every acknowledged job once,
//! unchanged; acknowledged cancels stand; no device is held by two jobs; the replicas agree.

use super::clients::{channel, History, Violation};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Every job replica `endpoint` holds (a stale read: the caller waited for agreement).
pub async fn all_jobs(endpoint: &str) -> Result<Vec<Job>, String> {
    let ch = channel(endpoint).await.ok_or_else(|| format!("{endpoint} does not answer"))?;
    let mut jobs = JobServiceClient::new(ch);
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let req = ListJobsRequest {
            page_size: 500,
            page_token: token.clone(),
            consistency: ReadConsistency::Stale as i32,
            ..ListJobsRequest::default()
        };
        let r = jobs.list(req).await.map_err(|s| format!("list on {endpoint}: {}", s.message()))?.into_inner();
        out.extend(r.jobs);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// The replicas' status, once every one answers with the same leader, applied index and state
/// hash; an error naming what differed when that does not happen within `within`.
pub async fn agreement(endpoints: &[String], within: Duration) -> Result<ClusterStatusResponse, String> {
    let until = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for e in endpoints {
            if let Some(ch) = channel(e).await {
                if let Ok(s) = AdminServiceClient::new(ch).cluster_status(ClusterStatusRequest {}).await {
                    seen.push(s.into_inner());
                }
            }
        }
        let key = |s: &ClusterStatusResponse| (s.leader_id, s.applied_index, s.state_hash.clone());
        if seen.len() == endpoints.len() && seen[0].leader_id != 0 && seen.iter().all(|s| key(s) == key(&seen[0])) {
            return Ok(seen.swap_remove(0));
        }
        if Instant::now() > until {
            let brief: Vec<_> = seen.iter().map(|s| (s.leader_id, s.applied_index)).collect();
            return Err(format!("the replicas did not agree within {within:?}: (leader, applied) {brief:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// States in which a job holds its devices.
fn holds_devices(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Starting | JobState::Running | JobState::Preempted | JobState::Stopping)
    )
}

/// Holds the jobs of replica `replica` to the history; a line per violation.
pub fn jobs_against(replica: u64, jobs: &[Job], h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
    for j in jobs {
        let name = j.spec.as_ref().map_or("", |s| s.name.as_str());
        by_name.entry(name).or_default().push(j);
    }
    for (name, id) in &h.submitted {
        match by_name.get(name.as_str()).map(Vec::as_slice) {
            None | Some([]) => out.push(Violation::new(
                "lost",
                format!("replica {replica}: acknowledged job {name} (id {id}) is missing"),
            )),
            Some([j]) if j.id != *id => {
                out.push(Violation::new("changed", format!("replica {replica}: job {name} has id {}, not {id}", j.id)))
            }
            _ => {}
        }
    }
    for (name, js) in &by_name {
        if js.len() > 1 {
            out.push(Violation::new(
                "duplicated",
                format!("replica {replica}: job {name} is there {} times", js.len()),
            ));
        }
    }
    let state_of: BTreeMap<u64, i32> = jobs.iter().map(|j| (j.id, j.state)).collect();
    for id in &h.cancelled {
        let state = state_of.get(id).map(|s| JobState::try_from(*s).unwrap_or_default());
        if !matches!(state, Some(JobState::Cancelled | JobState::Stopping)) {
            out.push(Violation::new(
                "cancel undone",
                format!("replica {replica}: job {id} was cancelled, and is {state:?}"),
            ));
        }
    }
    let mut held = BTreeSet::new();
    for j in jobs.iter().filter(|j| holds_devices(j.state)) {
        for r in j.assignment.iter().flat_map(|a| &a.replicas) {
            for d in &r.devices {
                if !held.insert((r.node.as_str(), d.as_str())) {
                    let what = format!("replica {replica}: device {d} of {} is held by two jobs", r.node);
                    out.push(Violation::new("device twice", what));
                }
            }
        }
    }
    out
}
