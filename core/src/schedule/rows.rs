//! The scheduler's team rows, kept in the `State` between cycles beside the node index: every
//! team's usage and quota per interned flavor, flat, so that a cycle copies one small vector
//! instead of looking up every team and flavor by name (that was half of building a view).
//!
//! Upkeep: `State::charge` sets a team's usage as devices are held and freed; node changes
//! (the flavors may change) and team changes drop the rows, built again when next asked for.

use super::nodes::NodeIndex;
use crate::ids::TeamId;
use crate::resource::Flavor;
use crate::team::{FlavorQuota, TeamSpec};
use std::collections::BTreeMap;

/// Teams in name order; team `t`'s row for flavor `f` is at `t * flavors.len() + f`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TeamRows {
    pub ids: Vec<TeamId>,
    /// The node index's flavors, then those only teams have quota for, in team order.
    pub flavors: Vec<Flavor>,
    /// Devices each team holds, per flavor.
    pub usage: Vec<u32>,
    /// Each team's quota per flavor.
    pub quota: Vec<Option<FlavorQuota>>,
    /// Each team's weight, in thousandths.
    pub weights: Vec<u32>,
}

impl TeamRows {
    /// The rows of `teams`, whose usage is in `usage`, over the flavors of `nodes`.
    pub fn build(
        nodes: &NodeIndex,
        teams: &BTreeMap<TeamId, TeamSpec>,
        usage: &BTreeMap<TeamId, BTreeMap<Flavor, u32>>,
    ) -> Self {
        let mut flavors = nodes.flavors.clone();
        for f in teams.values().flat_map(|spec| spec.quotas.keys()) {
            if !flavors.contains(f) {
                flavors.push(f.clone());
            }
        }
        let mut rows = Self {
            ids: teams.keys().cloned().collect(),
            weights: teams.values().map(|t| t.weight_milli).collect(),
            ..Self::default()
        };
        for (id, spec) in teams {
            let held = usage.get(id);
            for f in &flavors {
                rows.usage.push(held.and_then(|u| u.get(f)).copied().unwrap_or(0));
                rows.quota.push(spec.quotas.get(f).copied());
            }
        }
        rows.flavors = flavors;
        rows
    }

    /// Sets the devices of `flavor` that `team` holds; returns the team's quota of it, or
    /// `None` when the rows lack either.
    pub fn set_usage(&mut self, team: &TeamId, flavor: &Flavor, devices: u32) -> Option<Option<FlavorQuota>> {
        let t = self.ids.binary_search(team).ok()?;
        let f = self.flavors.iter().position(|x| x == flavor)?;
        let at = t * self.flavors.len() + f;
        self.usage[at] = devices;
        Some(self.quota[at])
    }
}
