//! The invariants of docs/design.md, checked after every event when `RunConfig::check` is on (the
//! tests turn it on): no device is held by two jobs, no team holds more than nominal + borrowing
//! limit, and every job is accounted for.

use crate::engine::Sim;
use std::collections::BTreeSet;

pub(crate) fn invariants(sim: &Sim<'_>) -> Result<(), String> {
    let state = &sim.state;
    let mut held = BTreeSet::new();
    let (mut pending, mut holding, mut ended) = (0usize, 0usize, 0usize);
    for job in state.jobs().values() {
        match job.state {
            s if s.holds_devices() => {
                holding += 1;
                let a = job
                    .assignment
                    .as_ref()
                    .ok_or_else(|| format!("job {} holds devices without an assignment", job.id))?;
                for r in &a.replicas {
                    for d in r.devices.iter() {
                        if !held.insert((r.node.clone(), d.clone())) {
                            return Err(format!(
                                "device {d} on node {} is held by two jobs (one is {})",
                                r.node, job.id
                            ));
                        }
                    }
                }
            }
            qm_core::JobState::Pending => pending += 1,
            _ => ended += 1,
        }
        let record = &sim.out.records[sim.trace_of[job.id.0 as usize - 1]];
        if job.state.is_terminal() != record.end_ms.is_some() {
            return Err(format!(
                "job {} is {:?} but its record says ended = {}",
                job.id,
                job.state,
                record.end_ms.is_some()
            ));
        }
    }
    if pending + holding + ended != sim.arrived() || pending != state.pending_count() {
        return Err(format!(
            "jobs unaccounted for: {} arrived, {pending} pending, {holding} holding, {ended} ended",
            sim.arrived()
        ));
    }
    let total_held: usize =
        sim.node_ids().filter_map(|n| state.alloc(n)).map(|a| a.holders.iter().flatten().count()).sum();
    if total_held != held.len() {
        return Err(format!("{total_held} devices marked held, {} in assignments", held.len()));
    }
    for (name, team) in state.teams() {
        for (f, q) in &team.quotas {
            if u64::from(state.usage(name, f)) > q.ceiling() {
                return Err(format!(
                    "team {name} holds {} of {f}, above nominal + borrowing limit",
                    state.usage(name, f)
                ));
            }
        }
    }
    Ok(())
}
