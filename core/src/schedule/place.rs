//! Placement: filters and scorers, assembled here in one place.
//!
//! Filters (a node is a candidate for one replica only if all pass): the node is ready and not
//! cordoned or draining; it has devices of the flavor; enough of them are healthy and free; it
//! has the CPU and memory one replica asks. Scorers (applied in this order to the candidates):
//! 1. the rack (label `rack`) that can hold the most of the gang comes first;
//! 2. nodes that can hold a replica inside one NVLink/NUMA group come first;
//! 3. bin-packing (fewest free devices first) or spreading (most free first);
//! 4. scan order, which is deterministic.
//!
//! Model preference is the flavor order tried by the cycle (see `mod.rs`).

use super::view::{FlavorIx, NodeView, View};
use crate::plan::NodeFilterCounts;
use crate::policy::PlacementStrategy;

/// What one gang needs, with the flavor fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Shape {
    pub flavor: FlavorIx,
    pub replicas: u32,
    pub count: u32,
    pub cpu: u64,
    pub mem: u64,
    /// All replicas in one rack, or not placed (`RackPlacement::Required`, on a cluster with
    /// racks).
    pub one_rack: bool,
}

/// One replica's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    pub node: u32,
    pub mask: u64,
}

/// A candidate as `assign` ranks it: (outside the best rack, split across groups, packing).
#[derive(Debug)]
struct Ranked {
    key: (bool, bool, u32),
    node: u32,
    avail: u64,
    fits: u32,
    rack: usize,
}

/// The buffers of a placement, kept between cycles in the `Scratch` (a placement used to
/// allocate three lists): the candidates found, the candidates ranked, and the picks.
#[derive(Debug, Default)]
pub(crate) struct Placing {
    pub candidates: Vec<u32>,
    ranked: Vec<Ranked>,
    pub picks: Vec<Pick>,
}

fn per(resource: u64, need: u64) -> u64 {
    resource.checked_div(need).unwrap_or(u64::MAX)
}

/// Replicas of `shape` that fit in `devices` free devices and the given CPU and memory.
pub(crate) fn replicas_fit(shape: &Shape, devices: u32, cpu: u64, mem: u64) -> u32 {
    let by_devices = u64::from(devices / shape.count);
    by_devices.min(per(cpu, shape.cpu)).min(per(mem, shape.mem)) as u32
}

/// The lowest `k` set bits of `mask`.
pub(crate) fn lowest_bits(mut mask: u64, k: u32) -> u64 {
    let mut out = 0;
    for _ in 0..k {
        let bit = mask & mask.wrapping_neg();
        out |= bit;
        mask ^= bit;
    }
    out
}

/// Chooses `count` devices out of `avail`: inside the tightest locality group that holds them
/// all, else from the fullest groups first.
fn pick_devices(avail: u64, groups: &[u64], count: u32) -> Option<u64> {
    if avail.count_ones() < count {
        return None;
    }
    let tight = groups.iter().map(|g| avail & g).filter(|m| m.count_ones() >= count).min_by_key(|m| m.count_ones());
    if let Some(m) = tight {
        return Some(lowest_bits(m, count));
    }
    let mut by_size: Vec<u64> = groups.iter().map(|g| avail & g).filter(|m| *m != 0).collect();
    by_size.sort_by_key(|m| std::cmp::Reverse(m.count_ones()));
    let mut out = 0u64;
    for m in by_size {
        let left = count - out.count_ones();
        out |= lowest_bits(m, left.min(m.count_ones()));
        if out.count_ones() == count {
            break;
        }
    }
    (out.count_ones() == count).then_some(out)
}

/// The rack that can hold the most of a gang of `replicas` (capped at the gang), ties to the
/// rack the scan reached first, from the candidates' (rack, replicas that fit) in scan order.
fn best_rack(cands: impl Iterator<Item = (usize, u32)> + Clone, replicas: u32) -> Option<usize> {
    let mut first = cands.clone();
    let (rack, _) = first.next()?;
    if first.all(|(r, _)| r == rack) {
        return Some(rack);
    }
    // (rack, the candidate that reached it first, replicas), merged per rack.
    let mut per_rack: Vec<(usize, usize, u32)> = cands.enumerate().map(|(i, (r, fits))| (r, i, fits)).collect();
    per_rack.sort_unstable();
    let mut best: Option<((u32, std::cmp::Reverse<usize>), usize)> = None;
    for group in per_rack.chunk_by(|a, b| a.0 == b.0) {
        let capacity = group.iter().fold(0u32, |sum, c| sum.saturating_add(c.2));
        let key = (capacity.min(replicas), std::cmp::Reverse(group[0].1));
        if best.is_none_or(|(k, _)| key > k) {
            best = Some((key, group[0].0));
        }
    }
    best.map(|(_, rack)| rack)
}

fn fits_one_group(avail: u64, groups: &[u64], count: u32) -> bool {
    groups.iter().any(|g| (avail & g).count_ones() >= count)
}

impl View<'_> {
    /// Candidate nodes from the free-device index: scanned in bin-pack (or spread) order until
    /// they can hold the gang and at least `extra` nodes were seen (and, for a gang on a cluster
    /// with racks, one rack's candidates hold it whole, or every node was seen), or until ranking
    /// more could not change the assignment (see `settles`).
    pub fn fast_candidates(&self, shape: &Shape, strategy: PlacementStrategy, extra: u32, out: &mut Vec<u32>) {
        out.clear();
        let (low, top) = (shape.count as usize, self.bucket_count(shape.flavor));
        let mut total = 0u32;
        let racks = self.rack_count();
        let mut settled = racks == 0 || shape.replicas == 1;
        // Replicas each rack's candidates hold (a gang on a cluster with racks): the scan goes on
        // until one rack holds the whole gang, so that `assign` can keep it in one rack.
        let mut per_rack = vec![0u32; if settled { 0 } else { racks }];
        let mut one_rack = settled;
        for i in 0..top.saturating_sub(low) {
            let k = match strategy {
                PlacementStrategy::BinPack => low + i,
                PlacementStrategy::Spread => top - 1 - i,
            };
            for &n in self.bucket(shape.flavor, k) {
                let node = self.node(n);
                let fits = replicas_fit(shape, k as u32, node.cpu_free, node.mem_free);
                if fits > 0 {
                    out.push(n);
                    total = total.saturating_add(fits);
                    settled = settled && self.settles(n, shape);
                    if let Some(held) = node.rack.and_then(|r| per_rack.get_mut(r as usize)) {
                        *held = held.saturating_add(fits);
                        one_rack = one_rack || *held >= shape.replicas;
                    }
                    if total >= shape.replicas && (settled || (out.len() as u32 >= extra && one_rack)) {
                        return;
                    }
                }
            }
        }
    }

    /// Whether candidate `n` holds a replica inside one locality group. `assign` ranks
    /// candidates by (outside the best rack, split across groups, packing), stably, and the
    /// scan reaches them in packing order. So while every candidate so far holds a replica in
    /// one group, and racks cannot reorder them (the cluster has none, or the gang is one
    /// replica, whose best rack is that of the first candidate), these candidates come first in
    /// any ranking of a longer scan: once they hold the gang, scanning on changes nothing.
    fn settles(&self, n: u32, shape: &Shape) -> bool {
        let avail = self.node(n).free & self.mask_of(n, shape.flavor);
        fits_one_group(avail, self.groups_of(n), shape.count)
    }

    /// Assigns every replica of the gang on `candidates`, where `avail` gives each node's usable
    /// devices, into `out.picks`; false if the gang does not fit (the picks are then
    /// meaningless). Changes nothing else.
    pub fn assign(
        &self,
        shape: &Shape,
        candidates: &[u32],
        strategy: PlacementStrategy,
        avail: impl Fn(u32, &NodeView) -> u64,
        out: &mut Placing,
    ) -> bool {
        let Placing { ranked, picks, .. } = out;
        ranked.clear();
        picks.clear();
        // Racks are numbered by the node index; nodes without one share the number after them.
        let no_rack = self.rack_count();
        for &n in candidates {
            let node = self.node(n);
            let a = avail(n, node) & self.mask_of(n, shape.flavor);
            let fits = replicas_fit(shape, a.count_ones(), node.cpu_free, node.mem_free);
            if fits > 0 {
                let rack = node.rack.map_or(no_rack, |r| r as usize);
                let packing = match strategy {
                    PlacementStrategy::BinPack => a.count_ones(),
                    PlacementStrategy::Spread => 64 - a.count_ones(),
                };
                let split = !fits_one_group(a, self.groups_of(n), shape.count);
                ranked.push(Ranked { key: (false, split, packing), node: n, avail: a, fits, rack });
            }
        }
        let best_rack = best_rack(ranked.iter().map(|c| (c.rack, c.fits)), shape.replicas);
        for c in ranked.iter_mut() {
            c.key.0 = Some(c.rack) != best_rack;
        }
        // Stable: equal keys keep the scan order; most scans arrive sorted already.
        if !ranked.is_sorted_by_key(|c| c.key) {
            ranked.sort_by_key(|c| c.key);
        }
        for c in ranked.iter() {
            if shape.one_rack && picks.len() as u32 != shape.replicas && (c.key.0 || c.rack == no_rack) {
                return false;
            }
            let groups = self.groups_of(c.node);
            let mut left = c.avail;
            for _ in 0..c.fits {
                if picks.len() as u32 == shape.replicas {
                    return true;
                }
                let Some(mask) = pick_devices(left, groups, shape.count) else { return false };
                left &= !mask;
                picks.push(Pick { node: c.node, mask });
            }
        }
        picks.len() as u32 == shape.replicas
    }

    /// `assign` with buffers of its own, returning the picks: for the rarer searches (room
    /// among releasing devices, room after victims).
    pub fn picks(
        &self,
        shape: &Shape,
        candidates: &[u32],
        strategy: PlacementStrategy,
        avail: impl Fn(u32, &NodeView) -> u64,
    ) -> Option<Vec<Pick>> {
        let mut out = Placing::default();
        self.assign(shape, candidates, strategy, avail, &mut out).then_some(out.picks)
    }

    /// Takes the picked devices and host resources.
    pub fn commit(&mut self, shape: &Shape, picks: &[Pick]) {
        for p in picks {
            self.take(p.node, p.mask, shape.cpu, shape.mem);
        }
    }

    /// Counts, over every node, why it cannot take a replica; and whether the gang could fit
    /// at all on this cluster with every device free.
    pub fn filter_counts(&self, shape: &Shape) -> (NodeFilterCounts, bool) {
        let mut c = NodeFilterCounts::default();
        let mut replicas_empty = 0u32;
        // With `one_rack`, what each rack could hold empty: the gang never fits if no rack can.
        let mut per_rack = vec![0u32; if shape.one_rack { self.rack_count() } else { 0 }];
        for n in 0..self.node_count() {
            let node = self.node(n);
            c.nodes += 1;
            let mask = self.mask_of(n, shape.flavor);
            let healthy = (mask & node.healthy).count_ones();
            let free = (mask & node.free).count_ones();
            if node.lost {
                c.not_ready += 1;
                continue;
            }
            if !node.schedulable {
                c.cordoned += 1;
                continue;
            }
            let empty = replicas_fit(shape, healthy, node.cpu_total, node.mem_total);
            replicas_empty = replicas_empty.saturating_add(empty);
            if let Some(held) = node.rack.and_then(|r| per_rack.get_mut(r as usize)) {
                *held = held.saturating_add(empty);
            }
            if mask == 0 {
                c.no_flavor += 1;
            } else if mask.count_ones() < shape.count {
                c.too_small += 1;
            } else if healthy < shape.count {
                c.unhealthy += 1;
            } else if free < shape.count {
                c.busy += 1;
            } else if node.cpu_free < shape.cpu {
                c.cpu += 1;
            } else if node.mem_free < shape.mem {
                c.memory += 1;
            } else {
                c.fit += 1;
                c.replicas_fit = c.replicas_fit.saturating_add(replicas_fit(shape, free, node.cpu_free, node.mem_free));
            }
        }
        let never = if shape.one_rack {
            per_rack.iter().all(|&held| held < shape.replicas)
        } else {
            replicas_empty < shape.replicas
        };
        (c, never)
    }

    /// Whether the gang could not fit this cluster even with every device free: the answer of
    /// `filter_counts` without its counts, which a cycle that explains nothing does not need.
    /// It stops at the first nodes that could hold the gang, usually a few.
    pub fn never_fits(&self, shape: &Shape) -> bool {
        let mut replicas_empty = 0u32;
        let mut per_rack = vec![0u32; if shape.one_rack { self.rack_count() } else { 0 }];
        for n in 0..self.node_count() {
            let node = self.node(n);
            if node.lost || !node.schedulable {
                continue;
            }
            let healthy = (self.mask_of(n, shape.flavor) & node.healthy).count_ones();
            let empty = replicas_fit(shape, healthy, node.cpu_total, node.mem_total);
            replicas_empty = replicas_empty.saturating_add(empty);
            let held = node.rack.and_then(|r| per_rack.get_mut(r as usize));
            let enough = match held {
                Some(held) if shape.one_rack => {
                    *held = held.saturating_add(empty);
                    *held >= shape.replicas
                }
                _ => !shape.one_rack && replicas_empty >= shape.replicas,
            };
            if enough {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::schedule::view::Scratch;
    use crate::state::State;
    use crate::testkit::node;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn candidates(view: &View, shape: &Shape, strategy: PlacementStrategy, extra: u32) -> Vec<u32> {
        let mut out = Vec::new();
        view.fast_candidates(shape, strategy, extra, &mut out);
        out
    }

    /// The candidates of a scan that stops only once it holds the gang, saw `extra` nodes, and
    /// (a gang on a cluster with racks) holds the gang in one rack: `fast_candidates` without
    /// its early stop.
    fn full_scan(view: &View, shape: &Shape, strategy: PlacementStrategy, extra: u32) -> Vec<u32> {
        let (low, top) = (shape.count as usize, view.bucket_count(shape.flavor));
        let ks: Vec<usize> = match strategy {
            PlacementStrategy::BinPack => (low..top).collect(),
            PlacementStrategy::Spread => (low..top).rev().collect(),
        };
        let (mut out, mut total) = (Vec::new(), 0u32);
        let mut per_rack: BTreeMap<u32, u32> = BTreeMap::new();
        let gang_with_racks = view.rack_count() > 0 && shape.replicas > 1;
        for k in ks {
            for &n in view.bucket(shape.flavor, k) {
                let node = view.node(n);
                let fits = replicas_fit(shape, k as u32, node.cpu_free, node.mem_free);
                if fits > 0 {
                    out.push(n);
                    total += fits;
                    if let Some(r) = node.rack {
                        *per_rack.entry(r).or_default() += fits;
                    }
                    let one_rack = !gang_with_racks || per_rack.values().any(|&h| h >= shape.replicas);
                    if total >= shape.replicas && out.len() as u32 >= extra && one_rack {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Nodes of the given sizes and racks (`None`: no rack label).
    fn fleet(nodes: &[(u32, Option<u8>)]) -> State {
        let mut s = State::new();
        for (i, (gpus, rack)) in nodes.iter().enumerate() {
            let rack = rack.map(|r| format!("r{r}"));
            let spec = node(&format!("n{i:02}"), *gpus, rack.as_deref());
            s.apply(Command::RegisterNode { node: spec, at_ms: 0 }).unwrap();
        }
        s
    }

    #[test]
    fn a_one_replica_gang_stops_at_the_first_candidate_that_holds_it_in_one_group() {
        let s = fleet(&[(8, None), (8, None), (8, None)]);
        let mut scratch = Scratch::default();
        let mut view = View::build(&s, &mut scratch);
        view.take(1, 0b0111_1111, 0, 0);
        let shape = Shape { flavor: FlavorIx(0), replicas: 1, count: 1, cpu: 0, mem: 0, one_rack: false };
        assert_eq!(candidates(&view, &shape, PlacementStrategy::BinPack, 8), vec![1]);
        // Two devices on node 1 would span its two groups: the scan ranks the others too.
        let pair = Shape { count: 2, ..shape };
        view.take(1, 0b1000_0000, 0, 0);
        view.take(0, 0b0111_0111, 0, 0);
        assert_eq!(candidates(&view, &pair, PlacementStrategy::BinPack, 8), vec![0, 2]);
    }

    proptest! {
        /// Stopping the scan early never changes the assignment.
        #[test]
        fn the_early_stop_assigns_what_the_full_scan_assigns(
            nodes in prop::collection::vec((1..9u32, prop::option::of(0..3u8)), 1..12),
            racks in any::<bool>(),
            taken in prop::collection::vec(any::<u64>(), 12),
            replicas in 1..4u32,
            count in 1..9u32,
            spread in any::<bool>(),
            extra in 0..10u32,
        ) {
            let nodes: Vec<_> = nodes.into_iter().map(|(g, r)| (g, r.filter(|_| racks))).collect();
            let s = fleet(&nodes);
            let mut scratch = Scratch::default();
            let mut view = View::build(&s, &mut scratch);
            for (n, mask) in taken.iter().enumerate().take(nodes.len()) {
                view.take(n as u32, mask & view.node(n as u32).free, 0, 0);
            }
            let strategy = if spread { PlacementStrategy::Spread } else { PlacementStrategy::BinPack };
            let shape = Shape { flavor: FlavorIx(0), replicas, count, cpu: 0, mem: 0, one_rack: false };
            let fast = candidates(&view, &shape, strategy, extra);
            let full = full_scan(&view, &shape, strategy, extra);
            prop_assert!(full.starts_with(&fast));
            let free = |_, n: &NodeView| n.free;
            prop_assert_eq!(view.picks(&shape, &fast, strategy, free), view.picks(&shape, &full, strategy, free));
        }

        /// The early stop of `never_fits` answers what the full count answers, with racks,
        /// lost and cordoned nodes, and host resources that bind.
        #[test]
        fn never_fits_answers_what_the_full_count_answers(
            nodes in prop::collection::vec((1..9u32, prop::option::of(0..3u8), 0..4u8), 1..12),
            replicas in 1..12u32,
            count in 1..9u32,
            cpu in prop::option::of(1..64_000u64),
            one_rack in any::<bool>(),
        ) {
            let mut s = fleet(&nodes.iter().map(|&(g, r, _)| (g, r)).collect::<Vec<_>>());
            for (i, &(_, _, fate)) in nodes.iter().enumerate() {
                let node = crate::ids::NodeId(format!("n{i:02}").into());
                let command = match fate {
                    1 => Command::NodeLost { node, at_ms: 0 },
                    2 => Command::Cordon { node, cordoned: true },
                    _ => continue,
                };
                s.apply(command).unwrap();
            }
            let mut scratch = Scratch::default();
            let view = View::build(&s, &mut scratch);
            let one_rack = one_rack && view.rack_count() > 0;
            let shape = Shape { flavor: FlavorIx(0), replicas, count, cpu: cpu.unwrap_or(0), mem: 0, one_rack };
            prop_assert_eq!(view.never_fits(&shape), view.filter_counts(&shape).1);
        }
    }

    #[test]
    fn picks_inside_the_tightest_group() {
        let groups = [0b0000_1111, 0b1111_0000];
        let avail = 0b0110_0111;
        assert_eq!(pick_devices(avail, &groups, 2), Some(0b0110_0000));
        assert_eq!(pick_devices(avail, &groups, 3), Some(0b0000_0111));
    }

    #[test]
    fn spans_groups_only_when_no_group_holds_the_replica() {
        let groups = [0b0000_1111, 0b1111_0000];
        let avail = 0b0011_0111;
        let m = pick_devices(avail, &groups, 5).expect("five are free");
        assert_eq!(m, avail);
        assert_eq!(pick_devices(avail, &groups, 6), None);
    }

    #[test]
    fn the_rack_holding_most_of_the_gang_wins_ties_to_the_first_reached() {
        // Racks 5 and 2 can each hold 2 of a 2-replica gang: 5 was reached first.
        assert_eq!(best_rack([(5, 1), (2, 2), (5, 1), (7, 1)].into_iter(), 2), Some(5));
        // Rack 2 holds 3, more than rack 5's 2, but the gang needs only 2: a tie again.
        assert_eq!(best_rack([(5, 2), (2, 3)].into_iter(), 2), Some(5));
        assert_eq!(best_rack([(5, 1), (2, 3)].into_iter(), 3), Some(2));
        assert_eq!(best_rack([(4, 1), (4, 1)].into_iter(), 8), Some(4));
        assert_eq!(best_rack(std::iter::empty(), 1), None);
    }

    #[test]
    fn replicas_fit_is_bounded_by_every_resource() {
        let s = Shape { flavor: FlavorIx(0), replicas: 4, count: 2, cpu: 1000, mem: 0, one_rack: false };
        assert_eq!(replicas_fit(&s, 8, 3000, 10), 3);
        assert_eq!(replicas_fit(&s, 3, 9000, 10), 1);
    }
}
