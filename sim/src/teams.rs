//! Finding a job's team among a run's team names. A trace's jobs share one name per team (the
//! readers intern them), so the answer for a name is remembered by the address of its string:
//! a run of 80,000 jobs from 15 teams compares names 15 times instead of 80,000 times (these
//! comparisons were a tenth of a run's instructions outside its events). Only the lookups go by
//! address; every order and every output still goes by name.

use qm_core::TeamId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Positions of teams in a list of names, remembered per shared name.
pub(crate) struct TeamLookup<'a> {
    names: Vec<&'a str>,
    /// By the address of a name's string: the name (held, so that no other name can take the
    /// address while it is remembered) and its position.
    seen: BTreeMap<usize, (TeamId, Option<usize>)>,
}

impl<'a> TeamLookup<'a> {
    /// A lookup in `names`, in their order.
    pub fn new(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self { names: names.into_iter().collect(), seen: BTreeMap::new() }
    }

    /// The position of `team` among the names, if it is one of them.
    pub fn position(&mut self, team: &TeamId) -> Option<usize> {
        let address = Arc::as_ptr(&team.0).cast::<u8>() as usize;
        if let Some((_, position)) = self.seen.get(&address) {
            return *position;
        }
        let position = self.names.iter().position(|n| *n == team.as_str());
        self.seen.insert(address, (team.clone(), position));
        position
    }
}

/// The distinct names of `teams`, each once, in name order; a shared name is read once.
pub(crate) fn distinct<'a>(teams: impl Iterator<Item = &'a TeamId>) -> Vec<String> {
    let mut by_address: BTreeMap<usize, &str> = BTreeMap::new();
    for team in teams {
        by_address.entry(Arc::as_ptr(&team.0).cast::<u8>() as usize).or_insert(team.as_str());
    }
    let mut names: Vec<&str> = by_address.into_values().collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_separate_names_find_the_same_position() {
        let (a, b) = (TeamId::from("a"), TeamId::from("b"));
        let mut lookup = TeamLookup::new(["b", "a"]);
        assert_eq!(lookup.position(&a), Some(1));
        assert_eq!(lookup.position(&a.clone()), Some(1), "the shared name, remembered");
        assert_eq!(lookup.position(&TeamId::from("a")), Some(1), "a separate string of the same name");
        assert_eq!(lookup.position(&b), Some(0));
        assert_eq!(lookup.position(&TeamId::from("c")), None);
    }

    #[test]
    fn distinct_names_are_sorted_and_unique_whether_shared_or_not() {
        let a = TeamId::from("a");
        let teams = [TeamId::from("c"), a.clone(), a, TeamId::from("c"), TeamId::from("b")];
        assert_eq!(distinct(teams.iter()), ["a", "b", "c"]);
    }
}
