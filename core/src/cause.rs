//! The root cause of a waiting job in one line: what `qm why` says first. It reads the state
//! and the job's placement report of a cycle, and names the first thing an operator or the user
//! would have to change: no node at all, the nodes that have the flavor cordoned or lost, a
//! gang that can never fit, quota, borrowing, a preemption under way, or the queue.

use crate::ids::JobId;
use crate::job::JobState;
use crate::plan::{AttemptOutcome, FlavorAttempt, NodeFilterCounts, PendingReason, PlacementReport, QuotaDenial};
use crate::render::{node_counts, quota_denial};
use crate::state::State;

/// The root cause of job `id` waiting (or what it is doing when it does not wait), given its
/// report from a cycle (`None` when the cycle placed it or did not reach it) and whether that
/// cycle placed it.
pub fn cause(state: &State, id: JobId, report: Option<&PlacementReport>, placed: bool) -> String {
    let Some(job) = state.job(id) else {
        return format!("job {id} does not exist");
    };
    if job.state != JobState::Pending {
        return format!("job {id} is {}: it is not waiting", job.state.as_str());
    }
    if state.nodes().is_empty() {
        return "no node agent has registered: no accelerator is known to the cluster; start `qm agent` on a \
                node (or `qm dev` for a local one)"
            .to_owned();
    }
    if placed {
        return "the next scheduling cycle places it".to_owned();
    }
    let Some(report) = report else {
        return "it waits in the queue behind earlier jobs; the cycle stopped before it".to_owned();
    };
    match &report.reason {
        PendingReason::Preempting { victims } => {
            format!("preempting {victims} job(s) to make room; it starts once they exit")
        }
        PendingReason::WaitingForRelease => "devices of preempted jobs are being released for it".to_owned(),
        PendingReason::Unschedulable => unschedulable(&report.attempts, report.preemption.as_deref()),
        PendingReason::Reserved { devices, starts_within_ms } => format!(
            "{}; it waited long, so {devices} free device(s) of the nodes it needs are held for it as others free up{}",
            unschedulable(&report.attempts, report.preemption.as_deref()),
            crate::render::reserved_start(*starts_within_ms)
        ),
    }
}

/// The cause for a job that no flavor admitted or fitted: the most fundamental refusal over its
/// flavors (never fits, then nodes unavailable, then quota, then borrowing, then busy devices).
fn unschedulable(attempts: &[FlavorAttempt], preemption: Option<&str>) -> String {
    let rank = |a: &FlavorAttempt| match &a.outcome {
        AttemptOutcome::NeverFits(c) if unavailable(c) => 1,
        AttemptOutcome::NeverFits(_) => 0,
        AttemptOutcome::NoFit(c) if unavailable(c) => 1,
        AttemptOutcome::Quota(QuotaDenial::NoQuota) => 2,
        AttemptOutcome::Quota(QuotaDenial::NoLendableCapacity { .. }) => 4,
        AttemptOutcome::Quota(_) => 3,
        AttemptOutcome::NoFit(_) => 5,
    };
    // The cause is the one every flavor shares at least: the least fundamental refusal.
    let Some(attempt) = attempts.iter().max_by_key(|a| rank(a)) else {
        return "no flavor was tried".to_owned();
    };
    let flavor = &attempt.flavor;
    let mut out = match &attempt.outcome {
        AttemptOutcome::NeverFits(c) | AttemptOutcome::NoFit(c) if unavailable(c) => {
            format!("no node in service has {flavor}: {} cordoned or draining, {} lost", c.cordoned, c.not_ready)
        }
        AttemptOutcome::NeverFits(c) => format!("it can never fit this cluster on {flavor}: {}", node_counts(c)),
        AttemptOutcome::Quota(QuotaDenial::NoQuota) => format!("quota: the team has no quota for {flavor}"),
        AttemptOutcome::Quota(d @ QuotaDenial::NoLendableCapacity { .. }) => {
            format!("borrowing on {flavor}: {}", quota_denial(d))
        }
        AttemptOutcome::Quota(d) => format!("quota on {flavor}: {}", quota_denial(d)),
        AttemptOutcome::NoFit(c) => format!("waiting for free devices of {flavor}: {}", node_counts(c)),
    };
    if attempts.len() > 1 {
        out.push_str(&format!(" (and {} other flavor(s) refused)", attempts.len() - 1));
    }
    if let Some(p) = preemption {
        out.push_str(&format!("; preemption cannot help: {p}"));
    }
    out
}

/// Whether no node in service has the flavor while some nodes are out of service (cordoned,
/// draining or lost): bringing those back is then the first thing to try.
pub(crate) fn unavailable(c: &NodeFilterCounts) -> bool {
    let in_service = c.nodes - c.not_ready - c.cordoned;
    c.not_ready + c.cordoned > 0 && c.no_flavor == in_service
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::policy::PolicyConfig;
    use crate::testkit::*;

    /// The cause the next cycle gives for `id`.
    fn why(s: &State, id: JobId) -> String {
        let plan = crate::schedule(s, &PolicyConfig { explain: true, ..PolicyConfig::default() }, 10);
        let placed = plan.decisions.placements.iter().any(|p| p.job == id);
        cause(s, id, plan.reports.iter().find(|r| r.job == id), placed)
    }

    #[test]
    fn no_node_is_named_before_anything_else() {
        let mut s = cluster(0, &[("vision", 8, None)]);
        let id = submit(&mut s, job("vision", 1, 1), 0);
        assert!(why(&s, id).starts_with("no node agent has registered"), "{}", why(&s, id));
    }

    #[test]
    fn each_cause_in_its_words() {
        let mut s = cluster(1, &[("vision", 16, Some(0)), ("audio", 0, Some(0))]);
        let huge = submit(&mut s, job("vision", 2, 8), 0);
        assert!(why(&s, huge).starts_with("it can never fit this cluster on gpu/"), "{}", why(&s, huge));
        let over = submit(&mut s, job("audio", 1, 1), 0);
        assert!(why(&s, over).starts_with("quota on gpu/"), "{}", why(&s, over));
        let fits = submit(&mut s, job("vision", 1, 8), 0);
        assert_eq!(why(&s, fits), "the next scheduling cycle places it");
        cycle(&mut s, &PolicyConfig::default(), 10);
        assert_eq!(why(&s, fits), format!("job {fits} is running: it is not waiting"));
        s.apply(Command::Cordon { node: "n0".into(), cordoned: true }).unwrap();
        let small = submit(&mut s, job("vision", 1, 1), 20);
        assert!(why(&s, small).starts_with("no node in service has gpu/"), "{}", why(&s, small));
        assert_eq!(why(&s, JobId(99)), "job 99 does not exist");
    }
}
