//! Plain-text rendering of a plan and its placement reports, for `qm plan`, `qm why` and the
//! golden tests. Stable: the golden files pin it.

use crate::ids::JobId;
use crate::plan::{AttemptOutcome, NodeFilterCounts, PendingReason, PlacementReport, Plan, QuotaDenial};
use crate::state::State;
use std::fmt::Write;

fn job_label(state: &State, id: JobId) -> String {
    match state.job(id) {
        Some(j) => format!("job {id} {:?} (team {}, priority {})", j.spec.name, j.spec.team, j.priority),
        None => format!("job {id}"),
    }
}

/// The warning for a flavor whose nominal quotas add up past the cluster's devices.
pub fn overcommitted(flavor: &crate::resource::Flavor, nominal: u64, capacity: u64) -> String {
    format!(
        "{flavor}: the teams' nominal quotas add up to {nominal} device(s), more than the {capacity} \
         the cluster has: not every team can have its nominal at once"
    )
}

/// One line for a quota refusal.
pub fn quota_denial(d: &QuotaDenial) -> String {
    match d {
        QuotaDenial::OverBorrowingLimit { usage, request, nominal, borrowing_limit } => format!(
            "over quota: {usage} held or reserved + {request} requested > nominal {nominal} + borrowing limit {borrowing_limit}"
        ),
        QuotaDenial::BorrowingDisabled { usage, request, nominal } => {
            format!("over nominal and borrowing is off: {usage} held or reserved + {request} requested > nominal {nominal}")
        }
        QuotaDenial::NoLendableCapacity { borrow_needed, lendable } => {
            format!("would borrow {borrow_needed} but only {lendable} idle lendable device(s) exist")
        }
        QuotaDenial::NoQuota => "the team has no quota for this flavor".to_owned(),
        QuotaDenial::NotPreemptible { usage, request, nominal } => format!(
            "a job that may not be preempted may not borrow: {usage} held or reserved + {request} requested > nominal {nominal}"
        ),
    }
}

/// One line for the node filters.
pub fn node_counts(c: &NodeFilterCounts) -> String {
    let parts = [
        (c.not_ready, "lost"),
        (c.cordoned, "cordoned or draining"),
        (c.no_flavor, "without the flavor"),
        (c.too_small, "with fewer devices of the flavor than one replica needs"),
        (c.unhealthy, "too few healthy devices"),
        (c.busy, "too few free devices"),
        (c.cpu, "too little CPU"),
        (c.memory, "too little memory"),
    ];
    let mut out = format!("{} node(s)", c.nodes);
    for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
        let _ = write!(out, ", {n} {what}");
    }
    let _ = write!(out, "; {} fit, room for {} replica(s)", c.fit, c.replicas_fit);
    out
}

/// When a reserved job starts at the latest, and what that lets in; nothing when unknown.
pub fn reserved_start(starts_within_ms: Option<u64>) -> String {
    starts_within_ms.map_or_else(String::new, |ms| {
        format!(
            "; it starts within {} s at the latest, and jobs whose maximum runtime ends by then may use them",
            ms.div_ceil(1000)
        )
    })
}

/// The lines explaining why a job is pending.
pub fn report(state: &State, r: &PlacementReport) -> String {
    let mut out = String::new();
    let reason = match &r.reason {
        PendingReason::Unschedulable => "unschedulable".to_owned(),
        PendingReason::Preempting { victims } => format!("preempting {victims} job(s); starts once they exit"),
        PendingReason::WaitingForRelease => "waiting for preempted jobs to release devices reserved for it".to_owned(),
        PendingReason::Reserved { devices, starts_within_ms } => {
            format!(
                "waited long: {devices} free device(s) of the nodes it needs are held for it{}",
                reserved_start(*starts_within_ms)
            )
        }
    };
    let _ = writeln!(out, "  {} [queue position {}]: {reason}", job_label(state, r.job), r.position);
    for a in &r.attempts {
        let why = match &a.outcome {
            AttemptOutcome::Quota(d) => quota_denial(d),
            AttemptOutcome::NeverFits(c) | AttemptOutcome::NoFit(c) if crate::cause::unavailable(c) => {
                format!("no node in service has the flavor: {}", node_counts(c))
            }
            AttemptOutcome::NoFit(c) => format!("no fit: {}", node_counts(c)),
            AttemptOutcome::NeverFits(c) => format!("can never fit this cluster: {}", node_counts(c)),
        };
        let _ = writeln!(out, "    {}: {why}", a.flavor);
    }
    if let Some(p) = &r.preemption {
        let _ = writeln!(out, "    preemption: {p}");
    }
    out
}

/// The whole plan, as `qm plan` prints it.
pub fn plan(state: &State, plan: &Plan) -> String {
    let mut out = String::new();
    let s = &plan.stats;
    let backfilled = if s.backfilled > 0 { format!(" ({} backfilled)", s.backfilled) } else { String::new() };
    let _ = writeln!(
        out,
        "cycle at {} ms: {} pending, {} considered, {} placed{backfilled}, {} preempted",
        plan.at_ms, s.pending, s.considered, s.placed, s.victims
    );
    let d = &plan.decisions;
    let _ = writeln!(out, "placements ({}):", d.placements.len());
    for p in &d.placements {
        let _ = writeln!(out, "  {} on {}:", job_label(state, p.job), p.assignment.flavor);
        for (i, r) in p.assignment.replicas.iter().enumerate() {
            let devices: Vec<&str> = r.devices.iter().map(|d| d.as_str()).collect();
            let _ = writeln!(out, "    replica {i}: {} [{}]", r.node, devices.join(" "));
        }
    }
    let _ = writeln!(out, "preemptions ({}):", d.preemptions.len());
    for p in &d.preemptions {
        let _ = writeln!(out, "  {} for job {}: {:?}", job_label(state, p.victim), p.preemptor, p.rule);
    }
    if !d.expired.is_empty() {
        let _ = writeln!(out, "past maximum runtime ({}):", d.expired.len());
        for j in &d.expired {
            let _ = writeln!(out, "  {}", job_label(state, *j));
        }
    }
    let _ = writeln!(out, "pending ({}):", plan.reports.len());
    for r in &plan.reports {
        out.push_str(&report(state, r));
    }
    out
}
