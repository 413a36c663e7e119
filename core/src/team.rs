//! Teams own quota per flavor; priority classes rank jobs within a team.

use crate::ids::TeamId;
use crate::job::DeviceRequest;
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

impl TeamSpec {
    /// Whether this team may use `flavor` for `request`: the flavor is of the requested kind,
    /// among the listed models if any are listed, and the team has quota for it. (The cycle
    /// tries the acceptable flavors most preferred first: the listed models in their order, or
    /// every flavor of the kind in flavor order; see `View::acceptable`.)
    pub fn accepts(&self, request: &DeviceRequest, flavor: &Flavor) -> bool {
        request.matches(flavor) && self.quotas.contains_key(flavor)
    }

    /// The flavors this team may use for `request` (see `accepts`), in flavor order.
    pub fn accepted<'a>(&'a self, request: &'a DeviceRequest) -> impl Iterator<Item = &'a Flavor> + 'a {
        self.quotas.keys().filter(move |f| self.accepts(request, f))
    }
}

/// A named priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityClass {
    /// Its name, e.g. `production`.
    pub name: String,
    /// Higher runs first and may preempt lower within the team.
    pub value: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::AcceleratorKind;
    use crate::testkit::team;
    use proptest::prelude::*;

    const MODELS: [&str; 3] = ["a100", "h100", "v100"];

    fn flavor(k: u8, m: usize) -> Flavor {
        let kind = if k == 0 { AcceleratorKind::Gpu } else { AcceleratorKind::Tpu };
        Flavor::new(kind, MODELS[m])
    }

    /// The acceptable flavors as DESIGN defines them, most preferred first: the listed models
    /// the team has quota for, or every flavor of the kind it has quota for.
    fn listed(spec: &TeamSpec, request: &DeviceRequest) -> Vec<Flavor> {
        if request.models.is_empty() {
            return spec.quotas.keys().filter(|f| f.kind == request.kind).cloned().collect();
        }
        request.models.iter().map(|m| Flavor::new(request.kind, m)).filter(|f| spec.quotas.contains_key(f)).collect()
    }

    proptest! {
        /// `accepts` and `accepted` answer what the definition lists, for any quotas and request.
        #[test]
        fn accepts_agrees_with_the_list(quotas in prop::collection::vec((0u8..2, 0usize..3), 0..6),
                                        kind in 0u8..2,
                                        models in prop::collection::vec(0usize..3, 0..3)) {
            let mut spec = team("t", 0, None);
            spec.quotas = quotas.iter().map(|&(k, m)| (flavor(k, m), FlavorQuota { nominal: 0, borrowing_limit: None, lending_limit: None })).collect();
            let request = DeviceRequest {
                kind: flavor(kind, 0).kind,
                models: models.iter().map(|&m| MODELS[m].to_owned()).collect(),
                count: 1,
            };
            let list = listed(&spec, &request);
            for k in 0..2 {
                for m in 0..3 {
                    let f = flavor(k, m);
                    prop_assert_eq!(spec.accepts(&request, &f), list.contains(&f));
                }
            }
            let mut listed = list.clone();
            listed.sort();
            listed.dedup();
            prop_assert_eq!(spec.accepted(&request).cloned().collect::<Vec<_>>(), listed);
        }
    }
}
