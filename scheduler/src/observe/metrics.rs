//! The replica's Prometheus metrics. Every value is read from the replica's state when
//! `/metrics` is scraped (the Raft status, the jobs, the teams' quotas and allocations), so
//! nothing is counted twice and a scrape sees one moment of the state. Names follow
//! Prometheus' conventions (`docs/observability.md` lists them).

use crate::node::Handle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qm_core::JobState;
use std::collections::BTreeMap;

/// A team and a flavor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamFlavor {
    team: String,
    flavor: String,
}

/// A job state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The replica's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ready: Gauge,
    term: Gauge,
    is_leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    snapshot: Gauge,
    jobs: Family<StateLabel, Gauge>,
    nominal: Family<TeamFlavor, Gauge>,
    allocated: Family<TeamFlavor, Gauge>,
    borrowed: Family<TeamFlavor, Gauge>,
}

/// Every job state, so that a state with no job reads 0 rather than vanishing.
const STATES: [JobState; 8] = [
    JobState::Pending,
    JobState::Starting,
    JobState::Running,
    JobState::Preempted,
    JobState::Stopping,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qm");
        let gauge = Gauge::default;
        let (ready, term, is_leader, commit, applied, snapshot) =
            (gauge(), gauge(), gauge(), gauge(), gauge(), gauge());
        registry.register("ready", "1 while the replica can serve (it knows a leader), else 0", Gauge::clone(&ready));
        registry.register("raft_term", "The replica's Raft term", Gauge::clone(&term));
        registry.register("raft_is_leader", "1 while this replica is the leader, else 0", Gauge::clone(&is_leader));
        registry.register("raft_commit_index", "The replica's Raft commit index", Gauge::clone(&commit));
        registry.register("raft_applied_index", "The last log index the replica applied", Gauge::clone(&applied));
        registry.register("raft_snapshot_index", "The log index of the replica's latest snapshot", snapshot.clone());
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register("jobs", "Jobs in the replicated state, by state", jobs.clone());
        let family = Family::<TeamFlavor, Gauge>::default;
        let (nominal, allocated, borrowed) = (family(), family(), family());
        registry.register(
            "team_devices_nominal",
            "A team's nominal quota of a flavor, in devices",
            Family::clone(&nominal),
        );
        registry.register(
            "team_devices_allocated",
            "Devices of a flavor a team's jobs hold",
            Family::clone(&allocated),
        );
        registry.register(
            "team_devices_borrowed",
            "Devices of a flavor a team holds beyond its nominal quota",
            Family::clone(&borrowed),
        );
        Self { registry, ready, term, is_leader, commit, applied, snapshot, jobs, nominal, allocated, borrowed }
    }
}

impl Metrics {
    /// The metrics of the replica behind `handle` now, in Prometheus' text format.
    pub fn scrape(&self, handle: &Handle) -> String {
        self.refresh(handle);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn refresh(&self, handle: &Handle) {
        let status = handle.status();
        self.ready.set(i64::from(super::health::can_serve(&status)));
        self.term.set(gauge(status.term));
        self.is_leader.set(i64::from(status.leader != 0 && status.leader == status.id));
        self.commit.set(gauge(status.commit));
        self.applied.set(gauge(status.applied));
        self.snapshot.set(gauge(status.snapshot_index));
        let fsm = handle.fsm();
        let state = &fsm.state;
        let mut by_state: BTreeMap<&str, i64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
        for job in state.jobs().values() {
            *by_state.entry(job.state.as_str()).or_default() += 1;
        }
        for (name, count) in by_state {
            self.jobs.get_or_create(&StateLabel { state: name.to_owned() }).set(count);
        }
        for family in [&self.nominal, &self.allocated, &self.borrowed] {
            family.clear();
        }
        for (id, spec) in state.teams() {
            for (flavor, quota) in &spec.quotas {
                let labels = TeamFlavor { team: id.as_str().to_owned(), flavor: flavor.to_string() };
                let used = state.usage(id, flavor);
                self.nominal.get_or_create(&labels).set(i64::from(quota.nominal));
                self.allocated.get_or_create(&labels).set(i64::from(used));
                self.borrowed.get_or_create(&labels).set(i64::from(used.saturating_sub(quota.nominal)));
            }
        }
    }
}

/// A counter of the state as a gauge's value.
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
