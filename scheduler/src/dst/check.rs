//! The guarantees, checked as the run goes: every acknowledged job on every replica that has
//! applied past its acknowledgement, under the name it was submitted with, and once only; an
//! acknowledged cancel never undone; no device held by two jobs; one state per applied index
//! (equal hashes); reads that see every write acknowledged before they were asked; and at the
//! end, every replica at the same index with the same state.

use super::world::World;
use super::Failure;
use qm_core::{JobId, JobState, State};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// An acknowledged submission: the job, and an applied index at or past its entry.
#[derive(Clone, Debug)]
struct Ack {
    name: String,
    job: JobId,
    index: u64,
}

/// What the clients were told, and what the replicas were seen to hold.
#[derive(Default)]
pub(super) struct Checker {
    acks: Vec<Ack>,
    by_name: BTreeMap<String, JobId>,
    /// Acknowledged cancels: the job and an applied index at or past the cancel.
    cancels: Vec<(JobId, u64)>,
    /// The state's hash at an applied index, as the first replica seen there had it.
    hashes: BTreeMap<u64, [u8; 32]>,
    /// Per replica: the applied index checked last.
    seen: BTreeMap<u64, u64>,
}

impl Checker {
    /// How many submissions were acknowledged.
    pub fn acknowledged_count(&self) -> usize {
        self.acks.len()
    }

    /// An acknowledged job, drawn from `rng`.
    pub fn some_acknowledged(&self, rng: &mut StdRng) -> Option<JobId> {
        (!self.acks.is_empty()).then(|| self.acks[rng.random_range(0..self.acks.len())].job)
    }
}

/// An applied index of `replica` at or past every entry it has answered for: its own, or, if
/// it has just gone down, the one it was last checked at.
fn applied_of(w: &World, replica: u64) -> u64 {
    let seen = w.check.seen.get(&replica).copied().unwrap_or(0);
    w.replicas.get(&replica).and_then(|r| r.handle()).map_or(seen, |h| h.fsm().applied.max(seen))
}

/// A client was told that job `name` is `job`.
pub(super) fn acknowledged(w: &mut World, replica: u64, name: String, job: JobId) -> Result<(), Failure> {
    if let Some(before) = w.check.by_name.get(&name) {
        if *before != job {
            return Err(w.failure(format!("submission {name} was acknowledged as job {before}, then as job {job}")));
        }
        return Ok(());
    }
    let index = applied_of(w, replica);
    w.trace(format!("acknowledged {name} as job {job} by replica {replica} at index {index}"));
    w.check.by_name.insert(name.clone(), job);
    w.check.acks.push(Ack { name, job, index });
    w.report.acknowledged += 1;
    Ok(())
}

/// A client was told that its cancel of `job` was applied.
pub(super) fn cancelled(w: &mut World, replica: u64, job: JobId) {
    let index = applied_of(w, replica);
    w.trace(format!("cancel of job {job} acknowledged by replica {replica} at index {index}"));
    w.check.cancels.push((job, index));
    w.report.cancelled += 1;
}

/// A linearizable read on `replica`: it must see the first `acked` acknowledged jobs.
pub(super) fn read(w: &mut World, replica: u64, acked: usize) -> Result<(), Failure> {
    let missing = {
        let Some(h) = w.replicas.get(&replica).and_then(|r| r.handle()) else { return Ok(()) };
        let fsm = h.fsm();
        w.check.acks[..acked].iter().find(|a| fsm.state.job(a.job).is_none_or(|j| j.spec.name != a.name)).cloned()
    };
    if let Some(a) = missing {
        return Err(w.failure(format!("a linearizable read on replica {replica} missed job {} ({})", a.job, a.name)));
    }
    w.report.reads += 1;
    Ok(())
}

/// The job of `ack` in `state`, as acknowledged; the problem otherwise.
fn holds(state: &State, ack: &Ack) -> Option<String> {
    match state.job(ack.job) {
        None => Some(format!("acknowledged job {} ({}) is missing", ack.job, ack.name)),
        Some(j) if j.spec.name != ack.name => {
            Some(format!("acknowledged job {} is named {}, not {}", ack.job, j.spec.name, ack.name))
        }
        Some(_) => None,
    }
}

/// Problems of one replica's state at applied index `applied`.
fn problems(check: &Checker, state: &State, applied: u64) -> Option<String> {
    let acks = check.acks.iter().filter(|a| a.index <= applied);
    if let Some(p) = acks.filter_map(|a| holds(state, a)).next() {
        return Some(p);
    }
    for (job, index) in check.cancels.iter().filter(|(_, i)| *i <= applied) {
        let s = state.job(*job).map(|j| j.state);
        if !matches!(s, Some(JobState::Stopping | JobState::Cancelled)) {
            return Some(format!("job {job}, whose cancel was acknowledged at index {index}, is {s:?}"));
        }
    }
    let mut held = BTreeSet::new();
    for j in state.jobs().values().filter(|j| j.state.holds_devices()) {
        for r in j.assignment.iter().flat_map(|a| &a.replicas) {
            for d in r.devices.iter() {
                if !held.insert((r.node.clone(), d.clone())) {
                    return Some(format!("device {d} of node {} is held by two jobs (one is {})", r.node, j.id));
                }
            }
        }
    }
    None
}

/// Checks every running replica whose applied index moved since it was last checked.
pub(super) fn after_step(w: &mut World) -> Result<(), Failure> {
    let ids: Vec<u64> = w.replicas.keys().copied().collect();
    for id in ids {
        let Some(h) = w.replicas[&id].handle() else {
            w.check.seen.remove(&id);
            continue;
        };
        let fsm = h.fsm();
        if w.check.seen.get(&id) == Some(&fsm.applied) {
            continue;
        }
        let (applied, hash) = (fsm.applied, fsm.state.hash());
        let mut problem = problems(&w.check, &fsm.state, applied);
        drop(fsm);
        let first = *w.check.hashes.entry(applied).or_insert(hash);
        if first != hash {
            problem.get_or_insert_with(|| format!("another state at index {applied} than another replica had"));
        }
        if let Some(p) = problem {
            return Err(w.failure(format!("replica {id}: {p}")));
        }
        w.check.seen.insert(id, applied);
    }
    Ok(())
}

/// Whether the cluster recovered: no replacement under way, every replica running at the same
/// applied index, a leader, and every call decided.
pub(super) fn recovered(w: &World) -> bool {
    let applied: BTreeSet<Option<u64>> = w.replicas.values().map(|r| r.handle().map(|h| h.fsm().applied)).collect();
    !w.faults.replacing()
        && w.agents.settled()
        && applied.len() == 1
        && !applied.contains(&None)
        && w.leader().is_some()
        && w.clients.idle()
}

/// At the end: every replica holds every acknowledged job once, and the same state.
pub(super) fn at_end(w: &mut World) -> Result<(), Failure> {
    let mut states = BTreeMap::new();
    for (id, r) in &w.replicas {
        let Some(h) = r.handle() else { continue };
        let fsm = h.fsm();
        if let Some(p) = problems(&w.check, &fsm.state, u64::MAX) {
            return Err(w.failure(format!("replica {id} at the end: {p}")));
        }
        let mut names = BTreeMap::new();
        for j in fsm.state.jobs().values() {
            *names.entry(j.spec.name.clone()).or_insert(0) += 1;
        }
        if let Some((name, n)) = names.into_iter().find(|(_, n)| *n > 1) {
            return Err(w.failure(format!("replica {id} at the end holds {n} jobs named {name}")));
        }
        states.insert(fsm.state.hash(), *id);
    }
    if states.len() > 1 {
        return Err(w.failure(format!("the replicas end with {} different states", states.len())));
    }
    w.trace("every guarantee held".into());
    Ok(())
}
