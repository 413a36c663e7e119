//! The scheduler's team rows, kept in the `State` between cycles beside the node index: every
//! team's usage and quota per interned flavor, flat, so that a cycle copies one small vector
//! instead of looking up every team and flavor by name (that was half of building a view).
//!
//! Upkeep: `State::charge` sets a team's usage as devices are held and freed, found by the
//! team's and the flavor's slots in the state's accounts; node changes (the flavors may change)
//! and team changes drop the rows, built again when next asked for.

use super::nodes::{FlavorIx, NodeIndex};
use crate::accounts::{Accounts, FlavorNo, TeamNo};
use crate::ids::TeamId;
use crate::resource::Flavor;
use crate::team::{FlavorQuota, TeamSpec};
use std::collections::BTreeMap;

/// Teams in name order; team `t`'s row for flavor `f` is at `t * flavors.len() + f`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TeamRows {
    /// The node index's flavors, then those only teams have quota for, in team order.
    pub flavors: Vec<Flavor>,
    /// Devices each team holds, per flavor.
    pub usage: Vec<u32>,
    /// Each team's quota per flavor.
    pub quota: Vec<Option<FlavorQuota>>,
    /// Each team's weight, in thousandths.
    pub weights: Vec<u32>,
    /// Per team, the flavors it has quota for, in flavor order (`Flavor`'s: kind, then model):
    /// what a request naming no model accepts, once filtered by kind.
    pub with_quota: Vec<Vec<FlavorIx>>,
    /// The row of each team slot of the accounts, and the column of each flavor slot (a
    /// translation that depends on the accounts' history, so no part of equality).
    row_of: Vec<Option<u32>>,
    column_of: Vec<Option<FlavorIx>>,
}

impl PartialEq for TeamRows {
    fn eq(&self, other: &Self) -> bool {
        (&self.flavors, &self.usage, &self.quota, &self.weights)
            == (&other.flavors, &other.usage, &other.quota, &other.weights)
    }
}

impl Eq for TeamRows {}

impl TeamRows {
    /// The rows of `teams`, whose usage is in `accounts`, over the flavors of `nodes`.
    pub fn build(nodes: &NodeIndex, teams: &BTreeMap<TeamId, TeamSpec>, accounts: &Accounts) -> Self {
        let mut flavors = nodes.flavors.clone();
        for f in teams.values().flat_map(|spec| spec.quotas.keys()) {
            if !flavors.contains(f) {
                flavors.push(f.clone());
            }
        }
        let mut rows = Self { weights: teams.values().map(|t| t.weight_milli).collect(), ..Self::default() };
        let mut sorted: Vec<FlavorIx> = (0..flavors.len()).map(FlavorIx::at).collect();
        sorted.sort_by(|a, b| flavors[a.ix()].cmp(&flavors[b.ix()]));
        for (row, (id, spec)) in teams.iter().enumerate() {
            for f in &flavors {
                rows.usage.push(accounts.held(id, f));
                rows.quota.push(spec.quotas.get(f).copied());
            }
            let quota = &rows.quota[row * flavors.len()..];
            rows.with_quota.push(sorted.iter().copied().filter(|f| quota[f.ix()].is_some()).collect());
            if let Some(t) = accounts.team(id) {
                set_at(&mut rows.row_of, t.ix(), row as u32);
            }
        }
        for (column, f) in flavors.iter().enumerate() {
            if let Some(slot) = accounts.flavor(f) {
                set_at(&mut rows.column_of, slot.ix(), FlavorIx::at(column));
            }
        }
        rows.flavors = flavors;
        rows
    }

    /// The row of team slot `t`, if the rows have it.
    pub fn row(&self, t: TeamNo) -> Option<usize> {
        self.row_of.get(t.ix()).copied().flatten().map(|r| r as usize)
    }

    /// Sets the devices of flavor slot `f` that team slot `t` holds; returns the team's quota
    /// of it, or `None` when the rows lack either (a team or flavor given a slot since they
    /// were built).
    pub fn set_usage(&mut self, t: TeamNo, f: FlavorNo, devices: u32) -> Option<Option<FlavorQuota>> {
        let row = self.row(t)?;
        let column = (*self.column_of.get(f.ix())?)?.ix();
        let at = row * self.flavors.len() + column;
        self.usage[at] = devices;
        Some(self.quota[at])
    }
}

/// Sets `slots[i]`, growing `slots` with `None` as needed.
fn set_at<T: Copy>(slots: &mut Vec<Option<T>>, i: usize, value: T) {
    if slots.len() <= i {
        slots.resize(i + 1, None);
    }
    slots[i] = Some(value);
}
