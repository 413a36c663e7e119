//! Reservations, the guard against starving large jobs, and backfill around them (after
//! Slurm's backfill scheduler).
//!
//! A job within its team's nominal that has waited `reserve_after_ms` for free devices, and
//! that preemption could not help, gets the nodes where it can start soonest: those whose
//! running jobs' maximum runtimes free enough devices earliest, then those with the most free
//! devices of its flavor. Their free devices are held back from later jobs of the cycle, so
//! that small jobs behind it cannot take each device as it frees: the devices add up until the
//! reserved job fits. Reservations are recomputed every cycle (the job stays at the head of its
//! team's queue, so it keeps them).
//!
//! When every job the reservation waits for has a maximum runtime, the reservation has a start:
//! the time by which enough of them have ended, at the latest. A later job with a maximum
//! runtime that ends by then may run on the held devices (backfill): it cannot delay the
//! reserved job, since the scheduler stops it at its maximum runtime. Without that bound no job
//! is let in.

use super::place::{lowest_bits, replicas_fit, Pick, Shape};
use super::view::FlavorIx;
use super::{Cycle, Failure};
use crate::ids::JobId;
use crate::job::{Job, JobState};
use crate::plan::{AttemptOutcome, Placement};
use crate::quota::Admission;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Devices held back this cycle for a reserved job.
pub(super) struct Held {
    flavor: FlavorIx,
    /// Every node it counts on, and the free devices held there (possibly none).
    picks: Vec<Pick>,
    /// When the reserved job can start at the latest; `None` if some job it waits for has no
    /// maximum runtime.
    start_ms: Option<u64>,
}

/// Devices, CPU and memory on one node.
struct Room {
    devices: u32,
    cpu: u64,
    mem: u64,
}

impl Room {
    fn covers(&self, need: &Room) -> bool {
        self.devices >= need.devices && self.cpu >= need.cpu && self.mem >= need.mem
    }

    fn add(&mut self, more: &Room) {
        self.devices += more.devices;
        self.cpu = self.cpu.saturating_add(more.cpu);
        self.mem = self.mem.saturating_add(more.mem);
    }
}

/// A node's place in a reservation's order, smallest first: when it has room, its free
/// devices (most first), its index, and the replicas it can hold.
type NodeKey = (u64, Reverse<u32>, u32, u32);

/// A reservation made for a job: the devices held, and its start (see `Held`).
pub(super) struct Reservation {
    pub devices: u32,
    pub start_ms: Option<u64>,
}

impl<'s> Cycle<'s> {
    /// Reserves devices for `job` (of team row `t`, which failed on `flavors` as `failure` says)
    /// if it qualifies.
    pub(super) fn reserve_for_waiting(
        &mut self,
        job: &Job,
        t: usize,
        flavors: &[FlavorIx],
        failure: &Failure,
    ) -> Option<Reservation> {
        let policy = self.policy;
        if self.held.len() >= policy.max_reservations_per_cycle as usize
            || self.now_ms.saturating_sub(job.submitted_ms) < policy.reserve_after_ms
        {
            return None;
        }
        let busy = |f: FlavorIx| {
            let flavor = &self.view.flavors[f.ix()];
            failure.attempts.iter().any(|a| &a.flavor == flavor && matches!(a.outcome, AttemptOutcome::NoFit(_)))
        };
        let f = flavors.iter().copied().find(|&f| busy(f) && self.admit(job, t, f) == Ok(Admission::WithinNominal))?;
        let shape = self.shape(job, f);
        let (picks, start_ms) = self.reserved_nodes(&shape)?;
        let devices = picks.iter().map(|p| p.mask.count_ones()).sum();
        self.view.commit(&Shape { cpu: 0, mem: 0, ..shape }, &picks);
        self.held.push(Held { flavor: f, picks, start_ms });
        Some(Reservation { devices, start_ms })
    }

    /// The nodes in service that can hold the gang once their jobs end, those that free enough
    /// devices soonest first, then those with the most free devices of the flavor; the free
    /// devices on them that the gang would use, and when they all have room at the latest.
    fn reserved_nodes(&self, shape: &Shape) -> Option<(Vec<Pick>, Option<u64>)> {
        let timed = self.timed_nodes();
        let room_at = |n: u32, replicas: u32| self.room_at(n, shape, replicas, timed.contains(&n));
        let (mut left, mut picks, mut start) = (shape.replicas, Vec::new(), Some(self.now_ms));
        for (_, _, n, fits) in self.reservable(shape, &timed) {
            if left == 0 {
                break;
            }
            let replicas = fits.min(left);
            left -= replicas;
            let ready = room_at(n, replicas);
            start = start.zip(ready).map(|(a, b)| a.max(b));
            let free = self.view.mask_of(n, shape.flavor) & self.view.node(n).free;
            picks.push(Pick { node: n, mask: lowest_bits(free, replicas * shape.count) });
        }
        (left == 0).then_some((picks, start))
    }

    /// The nodes a reservation may count on, in its order (see `reserved_nodes`), found lazily:
    /// a node with no free device of the flavor and nothing ending at a known time has room at
    /// no known time, so it comes after every other, by index. The others (the nodes with
    /// free devices, and the `timed` ones) are ordered first, and the rest are read only when
    /// the gang needs them.
    fn reservable<'a>(
        &'a self,
        shape: &'a Shape,
        timed: &'a BTreeSet<u32>,
    ) -> impl Iterator<Item = NodeKey> + use<'a, 's> {
        let key = |n: u32| self.reservation_key(shape, n, timed.contains(&n));
        let last = (u64::MAX, Reverse(0), 0, 0);
        let mut near = self.partial_nodes(shape);
        near.extend(timed);
        near.sort();
        near.dedup();
        let mut first: BinaryHeap<Reverse<NodeKey>> =
            near.into_iter().filter_map(key).filter(|k| *k < last).map(Reverse).collect();
        let rest = (0..self.view.node_count()).filter_map(key).filter(move |k| *k >= last);
        std::iter::from_fn(move || first.pop().map(|Reverse(k)| k)).chain(rest)
    }

    /// Where node `n` stands for a reservation of `shape`: when it has room for the replicas
    /// it can hold (`u64::MAX`: not known), its free devices of the flavor (most first), the
    /// node, and the replicas it can hold when empty; `None` if it cannot take part.
    fn reservation_key(&self, shape: &Shape, n: u32, timed: bool) -> Option<NodeKey> {
        let node = self.view.node(n);
        let mask = self.view.mask_of(n, shape.flavor);
        if node.lost || !node.schedulable || mask == 0 || self.is_held(n) {
            return None;
        }
        let fits = replicas_fit(shape, (mask & node.healthy).count_ones(), node.cpu_total, node.mem_total);
        if fits == 0 {
            return None;
        }
        let ready = self.room_at(n, shape, fits.min(shape.replicas), timed).unwrap_or(u64::MAX);
        Some((ready, Reverse((mask & node.free).count_ones()), n, fits))
    }

    /// Whether an earlier reservation of this cycle counts on node `n` (reservations take
    /// disjoint nodes, so that two never count on the same job's devices).
    fn is_held(&self, n: u32) -> bool {
        self.held.iter().any(|h| h.picks.iter().any(|p| p.node == n))
    }

    /// The nodes where some job ends at a known time: those of running jobs with a maximum
    /// runtime, and those with devices being released. Elsewhere nothing is known to end.
    fn timed_nodes(&self) -> BTreeSet<u32> {
        let state = self.view.state;
        let running = state.deadlines.iter().map(|(_, id)| &state.jobs()[id]);
        let mut nodes: BTreeSet<u32> = running.flat_map(|j| self.view.job_masks(j)).map(|(n, _)| n).collect();
        nodes.extend(&self.view.releasing_nodes);
        nodes
    }

    /// When node `n` has room for `replicas` replicas of `shape` at the latest (devices, CPU and
    /// memory), by the maximum runtimes of the jobs on it; `None` if that is not known. Only a
    /// `timed` node (see `timed_nodes`) can have room later than now.
    fn room_at(&self, n: u32, shape: &Shape, replicas: u32, timed: bool) -> Option<u64> {
        let node = self.view.node(n);
        let mask = self.view.mask_of(n, shape.flavor) & node.healthy;
        let r = u64::from(replicas);
        let need = Room { devices: replicas * shape.count, cpu: r * shape.cpu, mem: r * shape.mem };
        let mut have = Room { devices: (mask & node.free).count_ones(), cpu: node.cpu_free, mem: node.mem_free };
        if have.covers(&need) {
            return Some(self.now_ms);
        }
        if !timed {
            return None;
        }
        let mut events: Vec<(u64, Room)> = self
            .holders_on(n)
            .into_iter()
            .map(|(id, held)| {
                let job = &self.view.state.jobs()[&id];
                let g = &job.spec.gang;
                let replicas = u64::from(held.count_ones() / g.devices.count.max(1));
                let releasing = held & node.healthy & !node.releasing == 0;
                let end = if releasing { Some(self.now_ms) } else { self.frees_at(job) };
                let room = Room {
                    devices: (held & mask).count_ones(),
                    cpu: replicas * g.cpu_millis,
                    mem: replicas * g.mem_mib,
                };
                (end.unwrap_or(u64::MAX), room)
            })
            .collect();
        events.sort_unstable_by_key(|e| e.0);
        for (end, room) in events.into_iter().take_while(|e| e.0 != u64::MAX) {
            have.add(&room);
            if have.covers(&need) {
                return Some(end.max(self.now_ms));
            }
        }
        None
    }

    /// The jobs holding devices on node `n` in the state, and their devices there (a node
    /// holds few jobs: a list beats a map).
    fn holders_on(&self, n: u32) -> Vec<(JobId, u64)> {
        let mut out: Vec<(JobId, u64)> = Vec::new();
        for (i, holder) in self.view.state.allocs.at(n as usize).holders.iter().enumerate() {
            let Some(id) = holder else { continue };
            match out.iter_mut().find(|(j, _)| j == id) {
                Some((_, mask)) => *mask |= 1 << i,
                None => out.push((*id, 1 << i)),
            }
        }
        out
    }

    /// When a job frees what it holds at the latest: a running one at its maximum runtime; one
    /// still starting, a victim of this cycle, or a stopping job whose devices a waiting job
    /// claimed: not known.
    fn frees_at(&self, job: &Job) -> Option<u64> {
        if self.victims.as_ref().is_some_and(|v| v.contains(&job.id)) {
            return None;
        }
        let max = job.spec.max_runtime_ms?;
        match (job.state, job.started_ms) {
            (JobState::Running, Some(start)) => Some(start.saturating_add(max)),
            _ => None,
        }
    }

    /// Whether `job` may be backfilled at all: it has a maximum runtime, and devices are held.
    pub(super) fn may_backfill(&self, job: &Job) -> bool {
        job.spec.max_runtime_ms.is_some() && !self.held.is_empty()
    }

    /// Places `job` (of team row `t`) partly or wholly on held devices, if it has a maximum
    /// runtime that ends by the start of each reservation it would use; true if it did.
    pub(super) fn backfill(&mut self, job: &Job, t: usize, flavors: &[FlavorIx]) -> bool {
        let Some(max) = job.spec.max_runtime_ms else { return false };
        let ends = self.now_ms.saturating_add(max);
        for &f in flavors {
            let mut extra: BTreeMap<u32, u64> = BTreeMap::new();
            for h in self.held.iter().filter(|h| h.flavor == f && h.start_ms.is_some_and(|s| s >= ends)) {
                for p in &h.picks {
                    *extra.entry(p.node).or_default() |= p.mask;
                }
            }
            if extra.is_empty() || self.admit(job, t, f).is_err() {
                continue;
            }
            let shape = self.shape(job, f);
            let mut base = self.partial_nodes(&shape);
            base.extend(extra.keys());
            base.sort_unstable();
            base.dedup();
            let avail = |n: u32, v: &super::view::NodeView| v.free | extra.get(&n).copied().unwrap_or(0);
            let Some(picks) = self.view.picks(&shape, &base, self.policy.placement, avail) else { continue };
            self.view.commit(&shape, &picks);
            self.view.charge(t, f, job.spec.gang.total_devices());
            for p in self.held.iter_mut().filter(|h| h.flavor == f).flat_map(|h| h.picks.iter_mut()) {
                p.mask &= !picks.iter().filter(|q| q.node == p.node).fold(0, |m, q| m | q.mask);
            }
            let assignment = self.assignment(f, &picks);
            self.plan.decisions.placements.push(Placement { job: job.id, assignment });
            self.plan.stats.backfilled += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use crate::schedule::proptests::{run_with, world};
    use crate::schedule::view::Scratch;
    use proptest::prelude::*;

    proptest! {
        /// The lazy order of the nodes a reservation may count on is the order of every node's
        /// key, sorted: on random clusters with free, releasing, lost and cordoned nodes and
        /// jobs with and without a maximum runtime, for gangs of every size.
        #[test]
        fn the_lazy_reservation_order_is_the_full_sort(w in world(), later_s in 0..7_200u64) {
            let policy = PolicyConfig { min_runtime_ms: 60_000, ..PolicyConfig::default() };
            let mut failure = Ok(());
            run_with(&w, &policy, |_, state, _| {
                let mut scratch = Scratch::default();
                let cycle = Cycle::new(state, &policy, later_s * 1000, &mut scratch);
                let timed = cycle.timed_nodes();
                for flavor in 0..cycle.view.flavors.len() {
                    for (replicas, count) in [(1, 1), (1, 8), (2, 4), (3, 2), (4, 8)] {
                        let shape = Shape { flavor: FlavorIx(flavor as u16), replicas, count, cpu: 0, mem: 0, one_rack: false };
                        let key = |n: u32| cycle.reservation_key(&shape, n, timed.contains(&n));
                        let mut full: Vec<NodeKey> = (0..cycle.view.node_count()).filter_map(key).collect();
                        full.sort_unstable();
                        let lazy: Vec<NodeKey> = cycle.reservable(&shape, &timed).collect();
                        if failure.is_ok() && lazy != full {
                            failure = Err(TestCaseError::fail(format!("{shape:?}: {lazy:?} != {full:?}")));
                        }
                    }
                }
            });
            failure?;
        }
    }
}
