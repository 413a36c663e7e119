//! Each team's devices against its quota, per flavor: what the metrics and the dashboard show.
//! A team lends what others borrow out of its idle nominal: per flavor, the devices borrowed
//! beyond the capacity no team owns come out of the teams' idle lendable nominal, apportioned
//! to each team by its share of it (rounded down, so the teams' lent never exceeds what is
//! borrowed).

use qm_core::quota::{lendable_unused, Ledger};
use qm_core::state::State;
use qm_core::{Flavor, JobState, TeamId};
use std::collections::BTreeMap;

/// One team's standing on one flavor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamFlavorRow {
    /// The team.
    pub team: TeamId,
    /// The flavor.
    pub flavor: Flavor,
    /// Its nominal quota.
    pub nominal: u32,
    /// Devices its jobs hold.
    pub allocated: u32,
    /// Devices held beyond the nominal.
    pub borrowed: u32,
    /// Devices of its idle nominal that other teams hold now.
    pub lent: u32,
}

/// Every team's rows, by team then flavor.
pub fn rows(state: &State) -> Vec<TeamFlavorRow> {
    let ledgers = state.ledgers();
    let mut out = Vec::new();
    for (team, spec) in state.teams() {
        for (flavor, quota) in &spec.quotas {
            let allocated = state.usage(team, flavor);
            let ledger = ledgers.get(flavor).copied().unwrap_or_default();
            out.push(TeamFlavorRow {
                team: team.clone(),
                flavor: flavor.clone(),
                nominal: quota.nominal,
                allocated,
                borrowed: allocated.saturating_sub(quota.nominal),
                lent: lent(&ledger, lendable_unused(quota, allocated)),
            });
        }
    }
    out
}

/// The share of `ledger`'s borrowed devices taken from a team whose idle lendable nominal is
/// `lendable`.
fn lent(ledger: &Ledger, lendable: u64) -> u32 {
    let taken = ledger.borrowed.saturating_sub(ledger.unowned()).min(ledger.lendable_unused);
    if ledger.lendable_unused == 0 {
        return 0;
    }
    u32::try_from(u128::from(lendable) * u128::from(taken) / u128::from(ledger.lendable_unused)).unwrap_or(u32::MAX)
}

/// Pending jobs per team, and the submission time of the oldest.
pub fn pending(state: &State) -> BTreeMap<TeamId, (u64, u64)> {
    let mut out: BTreeMap<TeamId, (u64, u64)> = BTreeMap::new();
    for job in state.jobs().values().filter(|j| j.state == JobState::Pending) {
        let w = out.entry(job.spec.team.clone()).or_insert((0, u64::MAX));
        (w.0, w.1) = (w.0 + 1, w.1.min(job.submitted_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_core::team::FlavorQuota;

    fn ledger(capacity: u64, teams: &[(u32, u32)]) -> Ledger {
        let mut l = Ledger { capacity, ..Ledger::default() };
        for (nominal, usage) in teams {
            l.add_team(&FlavorQuota { nominal: *nominal, borrowing_limit: None, lending_limit: None }, *usage);
        }
        l
    }

    #[test]
    fn borrowing_first_takes_capacity_no_team_owns() {
        // 10 devices, nominal 4 + 4: 2 unowned. The second team holds 6: 2 borrowed, all unowned.
        let l = ledger(10, &[(4, 0), (4, 6)]);
        assert_eq!(lent(&l, 4), 0);
        // It holds 8: 4 borrowed, 2 of them out of the first team's idle nominal.
        let l = ledger(10, &[(4, 0), (4, 8)]);
        assert_eq!(lent(&l, 4), 2);
    }

    #[test]
    fn what_is_taken_is_shared_by_idle_nominal_and_never_exceeds_it() {
        // 12 devices, three teams of nominal 4, none unowned; the third holds 8 (4 borrowed)
        // out of the first's 3 idle and the second's 1 idle.
        let l = ledger(12, &[(4, 1), (4, 3), (4, 8)]);
        assert_eq!((lent(&l, 3), lent(&l, 1)), (3, 1));
        // Unequal shares round down: 3 taken from idle 2 + 2 lends 1 each, not 4.
        let l = ledger(12, &[(4, 2), (4, 2), (4, 7)]);
        assert_eq!(lent(&l, 2), 1);
    }
}
