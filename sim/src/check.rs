//! The invariants of docs/design.md, checked after every event when `RunConfig::check` is on (the
//! tests turn it on): the state's own (`State::check_invariants`: no device held by two jobs,
//! holders matching assignments, no team above nominal + borrowing limit, every derived index
//! equal to its rebuild), and the simulator's: every job is accounted for, and each job's record
//! agrees with its state.

use crate::engine::Sim;

pub(crate) fn invariants(sim: &Sim<'_>) -> Result<(), String> {
    let state = &sim.state;
    state.check_invariants()?;
    let (mut pending, mut holding, mut ended) = (0usize, 0usize, 0usize);
    for job in state.jobs().values() {
        match job.state {
            s if s.holds_devices() => holding += 1,
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
    Ok(())
}
