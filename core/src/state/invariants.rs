//! `State::check_invariants`: every fact the state keeps twice agrees with itself. Devices: each
//! is held by at most one job, and the nodes' holders are the jobs' assignments. Quotas: no team
//! holds more than its nominal plus its borrowing limit. Derived indexes (holders, accounts,
//! queues, capacity, the running, stopping and deadline sets, the node index, the quota totals,
//! the team rows, the global queues): each equals what rebuilding it from the persistent part
//! gives. The property tests call it after every command, and the simulator after every event
//! when its checks are on.

use super::State;
use crate::ids::{DeviceId, NodeId};
use std::collections::BTreeSet;

impl State {
    /// Checks every invariant; the first one broken, in words.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_holders()?;
        self.check_quotas()?;
        self.check_derived()
    }

    fn check_holders(&self) -> Result<(), String> {
        let mut held: BTreeSet<(NodeId, DeviceId)> = BTreeSet::new();
        for j in self.jobs().values().filter(|j| j.state.holds_devices()) {
            let a = j.assignment.as_ref().ok_or_else(|| format!("job {} holds devices without an assignment", j.id))?;
            for r in &a.replicas {
                for d in r.devices.iter() {
                    if !held.insert((r.node.clone(), d.clone())) {
                        return Err(format!("device {d} on node {} is held by two jobs (one is {})", r.node, j.id));
                    }
                    let alloc =
                        self.alloc(&r.node).ok_or_else(|| format!("job {} holds node {}, unknown", j.id, r.node))?;
                    let i = alloc
                        .layout
                        .device_index(d)
                        .ok_or_else(|| format!("job {} holds {d}, not on {}", j.id, r.node))?;
                    if alloc.holders[i] != Some(j.id) {
                        return Err(format!(
                            "device {d} on {} is in job {}'s assignment, held by {:?}",
                            r.node, j.id, alloc.holders[i]
                        ));
                    }
                }
            }
        }
        let marked: usize =
            self.nodes().keys().filter_map(|n| self.alloc(n)).map(|a| a.holders.iter().flatten().count()).sum();
        if marked != held.len() {
            return Err(format!("{marked} devices marked held, {} in assignments", held.len()));
        }
        Ok(())
    }

    fn check_quotas(&self) -> Result<(), String> {
        for (name, team) in self.teams() {
            for (f, q) in &team.quotas {
                let usage = self.usage(name, f);
                if u64::from(usage) > q.ceiling() {
                    return Err(format!("team {name} holds {usage} of {f}, above nominal + borrowing limit"));
                }
            }
        }
        Ok(())
    }

    fn check_derived(&self) -> Result<(), String> {
        let fresh = Self::rebuild(self.data.clone());
        let differs = |what: &str| Err(format!("the {what} drifted from the state"));
        if self.allocs != fresh.allocs {
            return differs("device holders");
        }
        if self.accounts != fresh.accounts {
            return differs("accounts (devices held per team, free per flavor)");
        }
        if self.queues != fresh.queues || self.pending != fresh.pending {
            return differs("team queues");
        }
        if !self.queues.levels_consistent() {
            return differs("service-level index of the team queues");
        }
        if self.capacity != fresh.capacity {
            return differs("capacity");
        }
        if self.stopping != fresh.stopping || self.running != fresh.running {
            return differs("running and stopping sets");
        }
        if self.deadlines != fresh.deadlines || self.deadline_of != fresh.deadline_of {
            return differs("deadlines");
        }
        if self.times != fresh.times {
            return differs("submission and start times");
        }
        if self.node_index() != fresh.node_index() {
            return differs("node index");
        }
        if self.node_index().index.iter().any(|f| f.buckets.first().is_some_and(|b| !b.is_empty())) {
            return Err("a node with no free device of a flavor is in one of its buckets".to_owned());
        }
        if self.ledgers() != fresh.ledgers() {
            return differs("quota totals");
        }
        if self.team_rows() != fresh.team_rows() {
            return differs("team rows");
        }
        if self.fifo() != fresh.fifo() || self.shortest() != fresh.shortest() {
            return differs("global queues");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::PolicyConfig;
    use crate::testkit::{cluster, cycle, h100, job, submit};

    #[test]
    fn a_drifted_index_or_a_device_held_twice_is_named() {
        let mut s = cluster(1, &[("a", 8, None)]);
        let id = submit(&mut s, job("a", 1, 4), 0);
        submit(&mut s, job("a", 1, 2), 0);
        cycle(&mut s, &PolicyConfig::default(), 0);
        assert_eq!(s.check_invariants(), Ok(()));
        let mut drifted = s.clone();
        *drifted.capacity.entry(h100()).or_default() += 1;
        assert_eq!(drifted.check_invariants(), Err("the capacity drifted from the state".to_owned()));
        let mut twice = s.clone();
        let other = twice.jobs().values().find(|j| j.id != id).unwrap().id;
        let a = twice.job(id).unwrap().assignment.clone();
        twice.data.jobs.get_mut(&other).unwrap().assignment = a;
        let err = twice.check_invariants().unwrap_err();
        assert!(err.contains("is held by two jobs"), "{err}");
    }
}
