//! Reservations, the guard against starving large jobs: a job within its team's nominal that has
//! waited `reserve_after_ms` for free devices, and that preemption could not help, gets the
//! nodes where it needs the fewest jobs to end (the most free devices of its flavor, enough
//! devices in all for its gang). Their free devices are held back from every later job of the
//! cycle, so that small jobs behind it cannot take each device as it frees: the devices add up
//! until the reserved job fits. Reservations are recomputed every cycle (the job stays at the
//! head of its team's queue, so it keeps them); there is no backfill, since the running jobs'
//! end times are not known.

use super::place::{lowest_bits, replicas_fit, Pick, Shape};
use super::view::FlavorIx;
use super::{Cycle, Failure};
use crate::job::Job;
use crate::plan::AttemptOutcome;
use crate::quota::Admission;
use std::cmp::Reverse;

impl<'s> Cycle<'s> {
    /// Reserves devices for `job` (of team row `t`, which failed on `flavors` as `failure` says)
    /// if it qualifies; the number of devices reserved.
    pub(super) fn reserve_for_waiting(
        &mut self,
        job: &Job,
        t: usize,
        flavors: &[FlavorIx],
        failure: &Failure,
    ) -> Option<u32> {
        let policy = self.policy;
        if self.reservations >= policy.max_reservations_per_cycle
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
        let picks = self.reserved_nodes(&shape)?;
        let devices = picks.iter().map(|p| p.mask.count_ones()).sum();
        self.view.commit(&Shape { cpu: 0, mem: 0, ..shape }, &picks);
        self.reservations += 1;
        Some(devices)
    }

    /// The nodes in service that can hold the gang once their jobs end, those with the most
    /// free devices of the flavor first, and the free devices on them that the gang would use.
    fn reserved_nodes(&self, shape: &Shape) -> Option<Vec<Pick>> {
        let mut nodes: Vec<(u32, u32, u32)> = (0..self.view.node_count())
            .filter_map(|n| {
                let node = self.view.node(n);
                let mask = self.view.mask_of(n, shape.flavor);
                if node.lost || !node.schedulable || mask == 0 {
                    return None;
                }
                let fits = replicas_fit(shape, (mask & node.healthy).count_ones(), node.cpu_total, node.mem_total);
                (fits > 0).then_some(((mask & node.free).count_ones(), n, fits))
            })
            .collect();
        nodes.sort_by_key(|&(free, n, _)| (Reverse(free), n));
        let mut left = shape.replicas;
        let mut picks = Vec::new();
        for (_, n, fits) in nodes {
            if left == 0 {
                break;
            }
            let replicas = fits.min(left);
            left -= replicas;
            let free = self.view.mask_of(n, shape.flavor) & self.view.node(n).free;
            let mask = lowest_bits(free, replicas * shape.count);
            if mask != 0 {
                picks.push(Pick { node: n, mask });
            }
        }
        (left == 0).then_some(picks)
    }
}
