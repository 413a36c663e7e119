//! Quota arithmetic for one flavor across all teams (one cohort), after Kueue:
//! a team always gets its nominal; above it, it borrows from capacity no team owns and from the
//! idle, lendable nominal of other teams, up to its borrowing limit.

use crate::plan::QuotaDenial;
use crate::resource::Flavor;
use crate::team::{FlavorQuota, TeamSpec};
use std::collections::BTreeMap;

/// Flavors whose teams' nominal quotas add up to more than `capacity` gives for the flavor:
/// (flavor, the sum, the capacity).
pub fn overcommitted<'a>(
    teams: impl IntoIterator<Item = &'a TeamSpec>,
    capacity: impl Fn(&Flavor) -> u64,
) -> Vec<(Flavor, u64, u64)> {
    let mut nominal: BTreeMap<&Flavor, u64> = BTreeMap::new();
    for (f, q) in teams.into_iter().flat_map(|t| &t.quotas) {
        *nominal.entry(f).or_default() += u64::from(q.nominal);
    }
    nominal
        .into_iter()
        .map(|(f, sum)| (f.clone(), sum, capacity(f)))
        .filter(|(_, sum, capacity)| sum > capacity)
        .collect()
}

/// How a request is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Usage + request stays within the team's nominal.
    WithinNominal,
    /// The team goes above nominal on borrowed capacity.
    Borrowing,
}

/// Idle nominal of a team that others may borrow.
pub fn lendable_unused(q: &FlavorQuota, usage: u32) -> u64 {
    u64::from(q.lendable().min(q.nominal.saturating_sub(usage)))
}

/// Devices a team holds above its nominal.
pub fn borrowed(q: &FlavorQuota, usage: u32) -> u64 {
    u64::from(usage.saturating_sub(q.nominal))
}

/// Totals over all teams for one flavor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Schedulable healthy devices of the flavor.
    pub capacity: u64,
    /// Sum of nominal quotas.
    pub nominal: u64,
    /// Sum of idle lendable nominal.
    pub lendable_unused: u64,
    /// Sum of devices held above nominal.
    pub borrowed: u64,
}

impl Ledger {
    /// Counts one team holding `usage` devices.
    pub fn add_team(&mut self, q: &FlavorQuota, usage: u32) {
        self.nominal += u64::from(q.nominal);
        self.lendable_unused += lendable_unused(q, usage);
        self.borrowed += borrowed(q, usage);
    }

    /// A team's usage moved from `old` to `new`.
    pub fn update(&mut self, q: &FlavorQuota, old: u32, new: u32) {
        self.lendable_unused = self.lendable_unused + lendable_unused(q, new) - lendable_unused(q, old);
        self.borrowed = self.borrowed + borrowed(q, new) - borrowed(q, old);
    }

    /// Capacity that belongs to no team's nominal.
    pub fn unowned(&self) -> u64 {
        self.capacity.saturating_sub(self.nominal)
    }

    /// Whether a team with quota `q` holding `usage` may take `request` more devices.
    pub fn admit(&self, q: &FlavorQuota, usage: u32, request: u32, borrowing: bool) -> Result<Admission, QuotaDenial> {
        let after = u64::from(usage) + u64::from(request);
        if after <= u64::from(q.nominal) {
            return Ok(Admission::WithinNominal);
        }
        if !borrowing {
            return Err(QuotaDenial::BorrowingDisabled { usage, request, nominal: q.nominal });
        }
        if after > q.ceiling() {
            return Err(QuotaDenial::OverBorrowingLimit {
                usage,
                request,
                nominal: q.nominal,
                borrowing_limit: q.borrowing_limit.unwrap_or(u32::MAX),
            });
        }
        let borrow_needed = after - u64::from(q.nominal);
        let others_lendable = self.lendable_unused - lendable_unused(q, usage);
        let others_borrowed = self.borrowed - borrowed(q, usage);
        let lendable = (self.unowned() + others_lendable).saturating_sub(others_borrowed);
        if borrow_needed > lendable {
            return Err(QuotaDenial::NoLendableCapacity { borrow_needed, lendable });
        }
        Ok(Admission::Borrowing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(nominal: u32, borrowing: Option<u32>, lending: Option<u32>) -> FlavorQuota {
        FlavorQuota { nominal, borrowing_limit: borrowing, lending_limit: lending }
    }

    fn ledger(teams: &[(FlavorQuota, u32)], capacity: u64) -> Ledger {
        let mut l = Ledger { capacity, ..Ledger::default() };
        for (quota, usage) in teams {
            l.add_team(quota, *usage);
        }
        l
    }

    #[test]
    fn within_nominal_is_always_admitted() {
        let a = q(8, Some(0), None);
        let l = ledger(&[(a, 4), (q(8, None, None), 12)], 16);
        assert_eq!(l.admit(&a, 4, 4, false), Ok(Admission::WithinNominal));
    }

    #[test]
    fn borrowing_is_bounded_by_the_borrowing_limit() {
        let a = q(8, Some(2), None);
        let l = ledger(&[(a, 8), (q(8, None, None), 0)], 16);
        assert_eq!(l.admit(&a, 8, 2, true), Ok(Admission::Borrowing));
        assert!(matches!(l.admit(&a, 8, 3, true), Err(QuotaDenial::OverBorrowingLimit { .. })));
        assert!(matches!(l.admit(&a, 8, 1, false), Err(QuotaDenial::BorrowingDisabled { .. })));
    }

    #[test]
    fn lending_limit_keeps_part_of_an_idle_nominal_back() {
        let a = q(8, None, None);
        let b = q(8, None, Some(3));
        let l = ledger(&[(a, 8), (b, 0)], 16);
        assert_eq!(l.admit(&a, 8, 3, true), Ok(Admission::Borrowing));
        assert_eq!(l.admit(&a, 8, 4, true), Err(QuotaDenial::NoLendableCapacity { borrow_needed: 4, lendable: 3 }));
    }

    #[test]
    fn unowned_capacity_is_lendable_and_others_borrowing_uses_it_up() {
        let a = q(4, None, None);
        let b = q(4, None, None);
        let l = ledger(&[(a, 4), (b, 6)], 12);
        assert_eq!(l.unowned(), 4);
        assert_eq!(l.admit(&a, 4, 2, true), Ok(Admission::Borrowing));
        assert!(l.admit(&a, 4, 3, true).is_err());
    }

    #[test]
    fn update_tracks_usage_changes() {
        let a = q(4, None, Some(2));
        let mut l = ledger(&[(a, 0)], 4);
        assert_eq!(l.lendable_unused, 2);
        l.update(&a, 0, 3);
        assert_eq!((l.lendable_unused, l.borrowed), (1, 0));
        l.update(&a, 3, 6);
        assert_eq!((l.lendable_unused, l.borrowed), (0, 2));
    }
}
