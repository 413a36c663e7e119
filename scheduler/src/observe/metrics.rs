//! The replica's Prometheus metrics. Every value is read from the replica's state when
//! `/metrics` is scraped (the Raft status, the jobs, the teams' quotas and allocations), so
//! nothing is counted twice and a scrape sees one moment of the state. Names follow
//! Prometheus' conventions (`docs/observability.md` lists them).

use crate::node::measures::Measures;
use crate::node::Handle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use qm_core::plan::{Decisions, PreemptionRule};
use qm_core::{JobId, JobState};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Every metric a replica serves (a family's name: a counter's samples add `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`).
pub const NAMES: &[&str] = &[
    "qm_ready",
    "qm_raft_term",
    "qm_raft_is_leader",
    "qm_raft_commit_index",
    "qm_raft_applied_index",
    "qm_raft_snapshot_index",
    "qm_jobs",
    "qm_team_jobs_pending",
    "qm_team_jobs_idle",
    "qm_team_pending_oldest_seconds",
    "qm_team_devices_nominal",
    "qm_team_devices_allocated",
    "qm_team_devices_borrowed",
    "qm_team_devices_lent",
    "qm_scheduling_cycle_seconds",
    "qm_scheduling_placements_per_cycle",
    "qm_admissions",
    "qm_preemptions",
    "qm_expired",
    "qm_stale_decisions",
    "qm_raft_proposal_seconds",
    "qm_raft_apply_seconds",
    "qm_snapshot_save_seconds",
    "qm_snapshot_bytes",
    "qm_requeues",
];

/// A team and a flavor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamFlavor {
    team: String,
    flavor: String,
}

/// A team.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabel {
    team: String,
}

/// A job state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A preemption rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// What the scheduling loop counts on the replica while it leads.
#[derive(Debug)]
struct Scheduling {
    cycle_seconds: Histogram,
    placements: Histogram,
    admissions: Counter,
    preemptions: Family<RuleLabel, Counter>,
    expired: Counter,
    stale: Counter,
}

impl Scheduling {
    fn register(registry: &mut Registry) -> Self {
        let cycle_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let placements = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let s = Self {
            cycle_seconds,
            placements,
            admissions: Counter::default(),
            preemptions: Family::default(),
            expired: Counter::default(),
            stale: Counter::default(),
        };
        registry.register(
            "scheduling_cycle_seconds",
            "Time a scheduling cycle planned on the state (while leading)",
            s.cycle_seconds.clone(),
        );
        registry.register(
            "scheduling_placements_per_cycle",
            "Jobs placed by a cycle that decided something",
            s.placements.clone(),
        );
        registry.register("admissions", "Jobs placed by this replica's plans, as applied", s.admissions.clone());
        registry.register("preemptions", "Jobs preempted by this replica's plans, by rule", s.preemptions.clone());
        registry.register(
            "expired",
            "Jobs stopped at their maximum runtime by this replica's plans",
            s.expired.clone(),
        );
        registry.register("stale_decisions", "Decisions refused at apply because the state had moved", s.stale.clone());
        s
    }
}

/// The replica's metrics.
#[derive(Debug)]
pub struct Metrics {
    scheduling: Scheduling,
    registry: Registry,
    ready: Gauge,
    term: Gauge,
    is_leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    snapshot: Gauge,
    jobs: Family<StateLabel, Gauge>,
    pending: Family<TeamLabel, Gauge>,
    idle: Family<TeamLabel, Gauge>,
    oldest: Family<TeamLabel, Gauge<f64, AtomicU64>>,
    nominal: Family<TeamFlavor, Gauge>,
    allocated: Family<TeamFlavor, Gauge>,
    borrowed: Family<TeamFlavor, Gauge>,
    lent: Family<TeamFlavor, Gauge>,
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
        Self::of(&Measures::default())
    }
}

/// Registers what the node measures of its own work.
fn register_node(registry: &mut Registry, m: &Measures) {
    registry.register(
        "raft_proposal_seconds",
        "Time from a proposal made on this replica to its outcome applied here (Raft round trip, flush and apply)",
        m.proposal.clone(),
    );
    registry.register("raft_apply_seconds", "Time to apply one batch of committed log entries", m.apply.clone());
    registry.register(
        "snapshot_save_seconds",
        "Time to encode and save one snapshot of the state",
        m.snapshot_save.clone(),
    );
    registry.register("snapshot_bytes", "Size of the last snapshot this replica saved", m.snapshot_bytes.clone());
    registry.register(
        "requeues",
        "Jobs that went back to the queue (preempted, drained, node lost, failed and retried, idle), as applied here",
        m.requeues.clone(),
    );
}

impl Metrics {
    /// The metrics of a replica whose node measures into `measures`.
    pub fn of(measures: &Measures) -> Self {
        let mut registry = Registry::with_prefix("qm");
        register_node(&mut registry, measures);
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
        let pending = Family::<TeamLabel, Gauge>::default();
        registry.register("team_jobs_pending", "A team's jobs waiting for devices", pending.clone());
        let idle = Family::<TeamLabel, Gauge>::default();
        registry.register(
            "team_jobs_idle",
            "A team's running jobs flagged idle: every device they hold read under the idle threshold for the team's idle time",
            idle.clone(),
        );
        let oldest = Family::<TeamLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "team_pending_oldest_seconds",
            "How long a team's longest-waiting pending job has waited since its submission",
            oldest.clone(),
        );
        let family = Family::<TeamFlavor, Gauge>::default;
        let (nominal, allocated, borrowed, lent) = (family(), family(), family(), family());
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
        registry.register(
            "team_devices_lent",
            "Devices of a team's idle nominal quota of a flavor that other teams hold now (docs/observability.md)",
            Family::clone(&lent),
        );
        let scheduling = Scheduling::register(&mut registry);
        Self {
            scheduling,
            pending,
            idle,
            oldest,
            registry,
            ready,
            term,
            is_leader,
            commit,
            applied,
            snapshot,
            jobs,
            nominal,
            allocated,
            borrowed,
            lent,
        }
    }
}

impl Metrics {
    /// A cycle that planned for `took`.
    pub fn cycle(&self, took: Duration) {
        self.scheduling.cycle_seconds.observe(took.as_secs_f64());
    }

    /// A plan applied, of which the decisions about the jobs in `rejected` were refused.
    pub fn applied(&self, decisions: &Decisions, rejected: &BTreeSet<JobId>) {
        let s = &self.scheduling;
        let placed = decisions.placements.iter().filter(|p| !rejected.contains(&p.job)).count() as u64;
        s.placements.observe(placed as f64);
        s.admissions.inc_by(placed);
        for p in decisions.preemptions.iter().filter(|p| !rejected.contains(&p.victim)) {
            s.preemptions.get_or_create(&RuleLabel { rule: rule_word(p.rule).to_owned() }).inc();
        }
        s.expired.inc_by(decisions.expired.iter().filter(|j| !rejected.contains(j)).count() as u64);
        s.stale.inc_by(rejected.len() as u64);
    }

    /// The metrics of the replica behind `handle` now (`now_ms` on the wall clock, for the
    /// pending jobs' age), in Prometheus' text format.
    pub fn scrape(&self, handle: &Handle, now_ms: u64) -> String {
        self.refresh(handle, now_ms);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn refresh(&self, handle: &Handle, now_ms: u64) {
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
        let mut waiting: BTreeMap<&str, (i64, u64)> = state.teams().keys().map(|t| (t.as_str(), (0, now_ms))).collect();
        let mut idle: BTreeMap<&str, i64> = state.teams().keys().map(|t| (t.as_str(), 0)).collect();
        for job in state.jobs().values() {
            *by_state.entry(job.state.as_str()).or_default() += 1;
            if job.idle_since_ms.is_some() {
                *idle.entry(job.spec.team.as_str()).or_default() += 1;
            }
            if job.state == JobState::Pending {
                let w = waiting.entry(job.spec.team.as_str()).or_insert((0, now_ms));
                (w.0, w.1) = (w.0 + 1, w.1.min(job.submitted_ms));
            }
        }
        self.pending.clear();
        self.oldest.clear();
        self.idle.clear();
        for (team, count) in idle {
            self.idle.get_or_create(&TeamLabel { team: team.to_owned() }).set(count);
        }
        for (team, (count, since)) in waiting {
            let label = TeamLabel { team: team.to_owned() };
            self.pending.get_or_create(&label).set(count);
            self.oldest.get_or_create(&label).set(now_ms.saturating_sub(since) as f64 / 1000.0);
        }
        for (name, count) in by_state {
            self.jobs.get_or_create(&StateLabel { state: name.to_owned() }).set(count);
        }
        for family in [&self.nominal, &self.allocated, &self.borrowed, &self.lent] {
            family.clear();
        }
        for row in super::teams::rows(state) {
            let labels = TeamFlavor { team: row.team.as_str().to_owned(), flavor: row.flavor.to_string() };
            self.nominal.get_or_create(&labels).set(i64::from(row.nominal));
            self.allocated.get_or_create(&labels).set(i64::from(row.allocated));
            self.borrowed.get_or_create(&labels).set(i64::from(row.borrowed));
            self.lent.get_or_create(&labels).set(i64::from(row.lent));
        }
    }
}

fn rule_word(rule: PreemptionRule) -> &'static str {
    match rule {
        PreemptionRule::Reclaim => "reclaim",
        PreemptionRule::WithinTeam => "within_team",
        PreemptionRule::LeastAttained => "least_attained",
    }
}

/// A counter of the state as a gauge's value.
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_core::job::Assignment;
    use qm_core::plan::{Placement, Preemption};
    use qm_core::resource::{AcceleratorKind, Flavor};

    fn placed(job: u64) -> Placement {
        let flavor = Flavor::new(AcceleratorKind::Gpu, "m");
        Placement { job: JobId(job), assignment: Assignment { flavor, replicas: vec![] } }
    }

    fn preempted(victim: u64, rule: PreemptionRule) -> Preemption {
        Preemption { victim: JobId(victim), preemptor: JobId(1), rule }
    }

    #[test]
    fn applied_plans_count_what_was_not_refused_by_rule() {
        let m = Metrics::default();
        let decisions = Decisions {
            placements: vec![placed(1), placed(2), placed(3)],
            preemptions: vec![preempted(7, PreemptionRule::Reclaim), preempted(8, PreemptionRule::WithinTeam)],
            expired: vec![JobId(9)],
        };
        m.applied(&decisions, &BTreeSet::from([JobId(3), JobId(8)]));
        m.cycle(Duration::from_micros(300));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            "qm_admissions_total 2",
            "qm_preemptions_total{rule=\"reclaim\"} 1",
            "qm_expired_total 1",
            "qm_stale_decisions_total 2",
            "qm_scheduling_placements_per_cycle_sum 2.0",
            "qm_scheduling_cycle_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(!text.contains("within_team"), "the refused preemption is not counted: {text}");
    }

    #[test]
    fn the_list_of_names_is_every_family_registered() {
        let m = Metrics::default();
        let labels = TeamFlavor { team: "t".into(), flavor: "f".into() };
        for family in [&m.nominal, &m.allocated, &m.borrowed, &m.lent] {
            family.get_or_create(&labels).set(1);
        }
        m.jobs.get_or_create(&StateLabel { state: "pending".into() }).set(1);
        m.pending.get_or_create(&TeamLabel { team: "t".into() }).set(1);
        m.idle.get_or_create(&TeamLabel { team: "t".into() }).set(1);
        m.oldest.get_or_create(&TeamLabel { team: "t".into() }).set(1.0);
        let decisions = Decisions { preemptions: vec![preempted(7, PreemptionRule::Reclaim)], ..Decisions::default() };
        m.applied(&decisions, &BTreeSet::new());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        let types: BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
        assert_eq!(types, NAMES.iter().copied().collect::<BTreeSet<_>>());
    }
}
