//! Teams own quota per flavor; priority classes rank jobs within a team.

use crate::ids::TeamId;
use crate::resource::Flavor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A team's quota for one flavor (after Kueue's ClusterQueue resource quotas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorQuota {
    /// Devices guaranteed to the team.
    pub nominal: u32,
    /// How far above nominal it may go on idle capacity; `None` is unlimited.
    pub borrowing_limit: Option<u32>,
    /// How much of its idle nominal others may borrow; `None` is all of it.
    pub lending_limit: Option<u32>,
}

impl FlavorQuota {
    /// The most devices the team may hold when borrowing is possible.
    pub fn ceiling(&self) -> u64 {
        match self.borrowing_limit {
            Some(b) => u64::from(self.nominal) + u64::from(b),
            None => u64::MAX,
        }
    }

    /// The part of nominal others may borrow when idle.
    pub fn lendable(&self) -> u32 {
        self.lending_limit.map_or(self.nominal, |l| l.min(self.nominal))
    }
}

/// A team and its quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamSpec {
    /// Its name.
    pub name: TeamId,
    /// Fair-share weight in thousandths (1000 = weight 1.0); orders borrowing.
    pub weight_milli: u32,
    /// Quota per flavor. A team may only run flavors listed here (nominal may be 0).
    pub quotas: BTreeMap<Flavor, FlavorQuota>,
}

/// A named priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityClass {
    /// Its name, e.g. `production`.
    pub name: String,
    /// Higher runs first and may preempt lower within the team.
    pub value: i32,
}
