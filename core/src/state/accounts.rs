//! Devices held per team and free per flavor, on dense slots: every job that starts or stops
//! holding devices moves one team's count and one flavor's free count, so these are the
//! state's hottest counters. A team gets a slot when it is set (and no other team gets one), a
//! flavor when a team has quota for it or a node brings it; both keep it for the life of the
//! state (a count that falls to zero stays, as zero), so `charge` updates two vector cells
//! instead of two ordered maps keyed by names. The accounts also remember each team's quotas by
//! flavor slot, which is what a submission, a plan's verification and the strict FIFO check
//! before a cycle ask.
//!
//! Slots follow history, so two states with the same facts may number them differently:
//! equality, and everything read out by name, goes through the names.

use crate::ids::TeamId;
use crate::job::{DeviceRequest, Job};
use crate::layout::PositionHint;
use crate::resource::Flavor;
use crate::team::{FlavorQuota, TeamSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A flavor's slot in the accounts (given in the order flavors first appear, never reused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlavorNo(pub u32);

/// A team's slot in the accounts (given in the order teams are set, never reused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TeamNo(pub u32);

impl FlavorNo {
    /// Its place, to index a list by.
    pub fn ix(self) -> usize {
        self.0 as usize
    }

    /// The slot at place `i`.
    pub fn at(i: usize) -> Self {
        Self(i as u32)
    }
}

impl TeamNo {
    /// Its place, to index a list by.
    pub fn ix(self) -> usize {
        self.0 as usize
    }

    /// The slot at place `i`.
    pub fn at(i: usize) -> Self {
        Self(i as u32)
    }
}

/// Devices each team holds and devices free, per flavor.
#[derive(Clone, Debug, Default)]
pub(crate) struct Accounts {
    flavors: Vec<Flavor>,
    teams: Vec<TeamId>,
    /// Team slots by the hash of their names (`name_hash`), for lookups by name: a submission
    /// finds its team comparing numbers, and one string at the end, instead of comparing names
    /// that often share their first bytes.
    by_hash: Vec<(u64, TeamNo)>,
    /// Devices each team holds: `held[team][flavor]` (rows grow as flavors appear).
    held: Vec<Vec<u32>>,
    /// Healthy devices nobody holds on schedulable nodes, by flavor slot.
    free: Vec<u64>,
    /// Each team's quota per flavor slot, by team slot (as last set).
    quotas: Vec<Vec<(FlavorNo, FlavorQuota)>>,
}

impl Accounts {
    /// The flavors, by slot.
    pub fn flavors(&self) -> &[Flavor] {
        &self.flavors
    }

    /// The slot of a flavor seen before.
    pub fn flavor(&self, flavor: &Flavor) -> Option<FlavorNo> {
        self.flavors.iter().position(|f| f == flavor).map(FlavorNo::at)
    }

    /// The slot of a flavor, given one on first sight.
    pub fn flavor_slot(&mut self, flavor: &Flavor) -> FlavorNo {
        self.flavor(flavor).unwrap_or_else(|| {
            self.flavors.push(flavor.clone());
            self.free.push(0);
            FlavorNo::at(self.flavors.len() - 1)
        })
    }

    /// The slot of a team seen before.
    pub fn team(&self, team: &TeamId) -> Option<TeamNo> {
        let h = name_hash(team);
        let same = &self.by_hash[self.by_hash.partition_point(|&(x, _)| x < h)..];
        same.iter().take_while(|&&(x, _)| x == h).map(|&(_, t)| t).find(|&t| self.teams[t.ix()] == *team)
    }

    /// The slot of a team, trying `hint` first: it holds when the team there shares the
    /// name's string (the state's jobs share their team's).
    pub fn team_hinted(&self, hint: PositionHint, team: &TeamId) -> Option<TeamNo> {
        match hint.0.map(TeamNo) {
            Some(t) if self.teams.get(t.ix()).is_some_and(|x| Arc::ptr_eq(&x.0, &team.0)) => Some(t),
            _ => self.team(team),
        }
    }

    /// The slot of a job's team, through the job's hint.
    pub fn team_of(&self, job: &Job) -> Option<TeamNo> {
        self.team_hinted(job.team_slot, &job.spec.team)
    }

    /// The slot of a team, given one on first sight.
    fn team_slot(&mut self, team: &TeamId) -> TeamNo {
        if let Some(t) = self.team(team) {
            return t;
        }
        let t = TeamNo::at(self.teams.len());
        self.teams.push(team.clone());
        self.held.push(Vec::new());
        let entry = (name_hash(team), t);
        let at = self.by_hash.partition_point(|e| *e < entry);
        self.by_hash.insert(at, entry);
        t
    }

    /// Gives a team and the flavors it has quota for their slots, so that the scheduler's team
    /// rows find them, and records its quotas by flavor slot.
    pub fn open(&mut self, team: &TeamSpec) {
        let t = self.team_slot(&team.name).ix();
        let quotas = team.quotas.iter().map(|(f, q)| (self.flavor_slot(f), *q)).collect();
        if self.quotas.len() <= t {
            self.quotas.resize(t + 1, Vec::new());
        }
        self.quotas[t] = quotas;
    }

    /// Team slot `t`'s quotas, by flavor slot.
    fn quotas_of(&self, t: TeamNo) -> &[(FlavorNo, FlavorQuota)] {
        self.quotas.get(t.ix()).map_or(&[], Vec::as_slice)
    }

    /// Team slot `t`'s quota of flavor slot `f`, if it has one.
    pub fn quota(&self, t: TeamNo, f: FlavorNo) -> Option<FlavorQuota> {
        self.quotas_of(t).iter().find(|(x, _)| *x == f).map(|(_, q)| *q)
    }

    /// Team slot `t`'s quota of flavor slot `f` if the team may use that flavor for `request`:
    /// the flavor is of the requested kind, among the listed models if any are listed, and the
    /// team has quota for it. (The cycle tries the acceptable flavors most preferred first: the
    /// listed models in their order, or every flavor of the kind in flavor order; see
    /// `View::acceptable`.)
    pub fn quota_for(&self, t: TeamNo, f: FlavorNo, request: &DeviceRequest) -> Option<FlavorQuota> {
        self.quota(t, f).filter(|_| request.matches(&self.flavors[f.ix()]))
    }

    /// The flavor slots that team slot `t` may use for `request` (see `quota_for`).
    fn usable<'a>(&'a self, t: TeamNo, request: &'a DeviceRequest) -> impl Iterator<Item = usize> + 'a {
        self.quotas_of(t).iter().map(|&(f, _)| f.ix()).filter(|&f| request.matches(&self.flavors[f]))
    }

    /// Whether team slot `t` has quota for some flavor that `request` matches.
    pub fn accepts_any(&self, t: TeamNo, request: &DeviceRequest) -> bool {
        self.usable(t, request).next().is_some()
    }

    /// The name of team slot `t`.
    pub fn team_id(&self, t: TeamNo) -> &TeamId {
        &self.teams[t.ix()]
    }

    /// Free devices of the flavors that team slot `t` has quota for and `request` matches.
    pub fn free_for(&self, t: TeamNo, request: &DeviceRequest) -> u64 {
        self.usable(t, request).map(|f| self.free[f]).sum()
    }

    /// Devices of `flavor` that `team` holds.
    pub fn held(&self, team: &TeamId, flavor: &Flavor) -> u32 {
        self.held_by(self.team(team), flavor)
    }

    /// Devices of `flavor` that team slot `t` holds (none for no slot).
    pub fn held_by(&self, t: Option<TeamNo>, flavor: &Flavor) -> u32 {
        t.zip(self.flavor(flavor)).map_or(0, |(t, f)| self.held_at(t, f))
    }

    /// Devices of every flavor that `team` holds.
    pub fn held_total(&self, team: &TeamId) -> u32 {
        self.team(team).map_or(0, |t| self.held[t.ix()].iter().sum())
    }

    /// Devices of flavor slot `f` that team slot `t` holds.
    pub fn held_at(&self, t: TeamNo, f: FlavorNo) -> u32 {
        self.held[t.ix()].get(f.ix()).copied().unwrap_or(0)
    }

    /// Changes what team slot `t` holds of flavor slot `f` with `change`; returns it before and
    /// after.
    pub fn change_held(&mut self, t: TeamNo, f: FlavorNo, change: impl FnOnce(u32) -> u32) -> (u32, u32) {
        let row = &mut self.held[t.ix()];
        if row.len() <= f.ix() {
            row.resize(f.ix() + 1, 0);
        }
        let cell = &mut row[f.ix()];
        let before = *cell;
        *cell = change(before);
        (before, *cell)
    }

    /// Adds `delta` to the free devices of flavor slot `f`.
    pub fn add_free(&mut self, f: FlavorNo, delta: i64) {
        let cell = &mut self.free[f.ix()];
        *cell = cell.saturating_add_signed(delta);
    }

    /// Free devices of `flavor`.
    pub fn free(&self, flavor: &Flavor) -> u64 {
        self.flavor(flavor).map_or(0, |f| self.free[f.ix()])
    }

    /// Whether no device at all is free.
    pub fn none_free(&self) -> bool {
        self.free.iter().all(|&c| c == 0)
    }

    /// Free devices per flavor, flavors with none left out.
    pub fn free_by_flavor(&self) -> BTreeMap<Flavor, u64> {
        self.flavors.iter().zip(&self.free).filter(|(_, &c)| c > 0).map(|(f, &c)| (f.clone(), c)).collect()
    }

    /// Devices held per team and flavor, zeros left out.
    fn held_by_name(&self) -> BTreeMap<(&TeamId, &Flavor), u32> {
        let mut out = BTreeMap::new();
        for (team, row) in self.teams.iter().zip(&self.held) {
            for (flavor, &n) in self.flavors.iter().zip(row).filter(|(_, &n)| n > 0) {
                out.insert((team, flavor), n);
            }
        }
        out
    }
}

impl PartialEq for Accounts {
    fn eq(&self, other: &Self) -> bool {
        self.free_by_flavor() == other.free_by_flavor() && self.held_by_name() == other.held_by_name()
    }
}

impl Eq for Accounts {}

/// FNV-1a of a team's name: a function of the name alone, so lookups are the same on every
/// replica (they decide no order; equal hashes fall back to comparing the names).
fn name_hash(team: &TeamId) -> u64 {
    team.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::AcceleratorKind;
    use crate::testkit::team;
    use proptest::prelude::*;

    fn flavor(model: &str) -> Flavor {
        Flavor::new(AcceleratorKind::Gpu, model)
    }

    #[test]
    fn slots_are_kept_and_lookups_go_by_name() {
        let mut a = Accounts::default();
        let (b, c) = (a.team_slot(&"b".into()), a.team_slot(&"a".into()));
        assert_eq!((b, c), (TeamNo(0), TeamNo(1)), "slots in order of first sight");
        assert_eq!(a.team_slot(&"b".into()), TeamNo(0));
        assert_eq!(a.team(&"a".into()), Some(TeamNo(1)));
        assert_eq!(a.team(&"c".into()), None);
        let (h, l) = (a.flavor_slot(&flavor("h100")), a.flavor_slot(&flavor("l4")));
        assert_eq!((h, l), (FlavorNo(0), FlavorNo(1)));
        assert_eq!(a.change_held(c, l, |n| n + 3), (0, 3));
        assert_eq!(a.change_held(c, l, |n| n - 1), (3, 2));
        assert_eq!(a.held(&"a".into(), &flavor("l4")), 2);
        a.change_held(c, h, |_| 5);
        assert_eq!(a.held_total(&"a".into()), 7, "every flavor");
        assert_eq!(a.held(&"b".into(), &flavor("l4")), 0, "a row shorter than the flavors reads zero");
        assert_eq!(a.held(&"zz".into(), &flavor("nope")), 0);
    }

    const MODELS: [&str; 3] = ["a100", "h100", "v100"];

    fn kind_flavor(k: u8, m: usize) -> Flavor {
        let kind = if k == 0 { AcceleratorKind::Gpu } else { AcceleratorKind::Tpu };
        Flavor::new(kind, MODELS[m])
    }

    /// The acceptable flavors as docs/design.md defines them, most preferred first: the listed models
    /// the team has quota for, or every flavor of the kind it has quota for.
    fn listed(spec: &TeamSpec, request: &DeviceRequest) -> Vec<Flavor> {
        if request.models.is_empty() {
            return spec.quotas.keys().filter(|f| f.kind == request.kind).cloned().collect();
        }
        request.models.iter().map(|m| Flavor::new(request.kind, m)).filter(|f| spec.quotas.contains_key(f)).collect()
    }

    proptest! {
        /// `quota_for` and the usable flavors answer what the definition lists, for any quotas
        /// and request.
        #[test]
        fn acceptance_agrees_with_the_list(quotas in prop::collection::vec((0u8..2, 0usize..3), 0..6),
                                           kind in 0u8..2,
                                           models in prop::collection::vec(0usize..3, 0..3)) {
            let mut spec = team("t", 0, None);
            let q = FlavorQuota { nominal: 0, borrowing_limit: None, lending_limit: None };
            spec.quotas = quotas.iter().map(|&(k, m)| (kind_flavor(k, m), q)).collect();
            let mut a = Accounts::default();
            a.open(&spec);
            let t = a.team(&spec.name).expect("opened");
            let request = DeviceRequest {
                kind: kind_flavor(kind, 0).kind,
                models: models.iter().map(|&m| MODELS[m].to_owned()).collect(),
                count: 1,
            };
            let list = listed(&spec, &request);
            for k in 0..2 {
                for m in 0..3 {
                    let f = kind_flavor(k, m);
                    let accepted = a.flavor(&f).and_then(|s| a.quota_for(t, s, &request)).is_some();
                    prop_assert_eq!(accepted, list.contains(&f));
                }
            }
            let mut listed = list.clone();
            listed.sort();
            listed.dedup();
            let mut usable: Vec<Flavor> = a.usable(t, &request).map(|f| a.flavors()[f].clone()).collect();
            usable.sort();
            prop_assert_eq!(usable, listed);
            prop_assert_eq!(a.accepts_any(t, &request), !list.is_empty());
        }
    }

    #[test]
    fn many_teams_are_each_found_by_name_and_strangers_are_not() {
        let mut a = Accounts::default();
        let names: Vec<TeamId> = (0..2000).map(|i| TeamId::from(format!("vc{i:x}").as_str())).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(a.team_slot(n), TeamNo::at(i));
        }
        for (i, n) in names.iter().enumerate() {
            let fresh = TeamId::from(n.as_str());
            assert_eq!(a.team(&fresh), Some(TeamNo::at(i)), "found by its string, not its address");
            assert_eq!(a.team_slot(&fresh), TeamNo::at(i), "no second slot");
            assert_eq!(a.team(&TeamId::from(format!("{n}.").as_str())), None);
        }
    }

    #[test]
    fn a_hint_holds_only_for_the_same_shared_name() {
        let mut a = Accounts::default();
        let (x, y) = (TeamId::from("x"), TeamId::from("y"));
        let (tx, ty) = (a.team_slot(&x), a.team_slot(&y));
        assert_eq!(a.team_hinted(PositionHint(Some(ty.0)), &y), Some(ty));
        assert_eq!(a.team_hinted(PositionHint(Some(ty.0)), &x), Some(tx), "a wrong hint falls back to the name");
        assert_eq!(a.team_hinted(PositionHint(Some(7)), &x), Some(tx), "a hint out of range too");
        assert_eq!(a.team_hinted(PositionHint(None), &TeamId::from("z")), None);
    }

    #[test]
    fn free_counts_read_by_flavor_without_zeros() {
        let mut a = Accounts::default();
        let (h, l) = (a.flavor_slot(&flavor("h100")), a.flavor_slot(&flavor("l4")));
        assert!(a.none_free());
        a.add_free(h, 8);
        a.add_free(l, 2);
        a.add_free(l, -2);
        assert_eq!(a.free(&flavor("h100")), 8);
        assert_eq!(a.free_by_flavor(), BTreeMap::from([(flavor("h100"), 8)]));
        assert!(!a.none_free());
    }

    #[test]
    fn equal_facts_compare_equal_whatever_the_slots() {
        let (mut x, mut y) = (Accounts::default(), Accounts::default());
        let (ta, tb) = (TeamId::from("a"), TeamId::from("b"));
        let fx = (x.team_slot(&ta), x.team_slot(&tb), x.flavor_slot(&flavor("h100")));
        let fy = (y.team_slot(&tb), y.team_slot(&ta), y.flavor_slot(&flavor("l4")), y.flavor_slot(&flavor("h100")));
        x.change_held(fx.1, fx.2, |_| 4);
        y.change_held(fy.0, fy.3, |_| 4);
        y.change_held(fy.1, fy.2, |_| 0);
        assert_eq!(x, y, "held 4 h100 by b in both; a zero is no fact");
        y.add_free(fy.3, 1);
        assert_ne!(x, y);
        x.add_free(fx.2, 1);
        assert_eq!(x, y);
        x.change_held(fx.0, fx.2, |_| 1);
        assert_ne!(x, y);
    }
}
