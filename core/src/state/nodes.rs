//! The scheduler's node index, kept in the `State` between cycles: every node as the cycle sees
//! it (device masks, free devices, host resources) and, per flavor, the schedulable nodes
//! bucketed by how many devices of that flavor they have free. A cycle starts from a copy of it
//! instead of walking every node.
//!
//! A node with no free device of a flavor is in none of its buckets (bucket 0 stays empty): no
//! request asks for fewer than one device, so nothing would read it, and on a busy cluster it
//! was the largest bucket, moved into and out of on nearly every placement and exit.
//!
//! Upkeep: a device held or freed (`State::charge`) updates its node and moves it between
//! buckets; any command that changes nodes themselves (registration, loss, cordon, drain) and
//! loading a snapshot rebuild the index. Buckets are kept sorted by node position, so the index
//! is a function of the state alone (equal states have equal indexes, whatever their history),
//! and a cycle sees exactly what building it from scratch would give.

use crate::ids::NodeId;
use crate::resource::{Flavor, Node, NodeStatus};
use crate::state::{NodeAlloc, NodeAllocs};
use std::collections::BTreeMap;

/// An interned flavor: its place in the cycle's flavor list (a node index's slots, the team
/// rows and the ledgers are indexed by it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlavorIx(pub u16);

impl FlavorIx {
    /// Its place, to index a list by.
    pub fn ix(self) -> usize {
        usize::from(self.0)
    }

    /// The flavor at place `i` (at most 65,535 flavors: `MAX_DEVICES_PER_NODE` per node bounds
    /// them far below).
    pub fn at(i: usize) -> Self {
        Self(i as u16)
    }
}

/// The devices of one flavor on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlavorSlot {
    pub flavor: FlavorIx,
    pub mask: u64,
}

/// A node as the cycle sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeView {
    pub schedulable: bool,
    pub lost: bool,
    pub rack: Option<u32>,
    pub healthy: u64,
    /// Healthy devices nobody holds or reserved.
    pub free: u64,
    /// Devices held by jobs that were told to stop, not yet claimed by a waiting job.
    pub releasing: u64,
    pub cpu_total: u64,
    pub mem_total: u64,
    pub cpu_free: u64,
    pub mem_free: u64,
    /// This node's range in `slots`.
    pub slots: (u32, u8),
    /// This node's locality groups (NVLink domain, NUMA node) as device masks: its range in
    /// `groups`.
    pub groups: (u32, u8),
}

/// The positions a `(start, len)` pair of a `NodeView` covers in `slots` or `groups`.
pub(crate) fn span((start, len): (u32, u8)) -> std::ops::Range<usize> {
    start as usize..start as usize + len as usize
}

/// Nodes bucketed by how many free devices of one flavor they have; the buckets of a flavor
/// reach the most devices of it any node has, so a count never falls outside them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlavorIndex {
    pub buckets: Vec<Vec<u32>>,
}

/// Every node, in id order (node `n` is the `n`th id of `NodeAllocs`), with the free-device
/// index per flavor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeIndex {
    pub nodes: Vec<NodeView>,
    pub slots: Vec<FlavorSlot>,
    pub groups: Vec<u64>,
    /// Flavors in order of first appearance on the nodes.
    pub flavors: Vec<Flavor>,
    /// Distinct `rack` labels (a node's `rack` is below this).
    pub racks: u32,
    pub index: Vec<FlavorIndex>,
}

impl NodeIndex {
    /// Builds the index of `nodes`, whose holders and host usage are in `allocs`.
    pub fn build(nodes: &BTreeMap<NodeId, Node>, allocs: &NodeAllocs) -> Self {
        debug_assert!(nodes.keys().eq(allocs.ids()), "every node has an allocation, in the same order");
        let mut out = Self::default();
        let mut racks: BTreeMap<&str, u32> = BTreeMap::new();
        for (node, alloc) in nodes.values().zip(allocs.values()) {
            let layout = &alloc.layout;
            let rack = layout.rack.as_deref().map(|r| {
                let next = racks.len() as u32;
                *racks.entry(r).or_insert(next)
            });
            let start = out.slots.len() as u32;
            for (flavor, mask) in &layout.slots {
                let f = out.intern(flavor, mask.count_ones() as usize);
                out.slots.push(FlavorSlot { flavor: f, mask: *mask });
            }
            let group_start = out.groups.len() as u32;
            out.groups.extend_from_slice(&layout.groups);
            out.nodes.push(NodeView {
                schedulable: node.schedulable(),
                lost: node.status == NodeStatus::Lost,
                rack,
                healthy: layout.healthy,
                free: layout.healthy & !alloc.held,
                releasing: 0,
                cpu_total: node.spec.cpu_millis,
                mem_total: node.spec.mem_mib,
                cpu_free: node.spec.cpu_millis.saturating_sub(alloc.cpu_used),
                mem_free: node.spec.mem_mib.saturating_sub(alloc.mem_used),
                slots: (start, layout.slots.len() as u8),
                groups: (group_start, layout.groups.len() as u8),
            });
        }
        out.racks = racks.len() as u32;
        for n in 0..out.nodes.len() as u32 {
            let free = out.nodes[n as usize].free;
            out.each_indexed_slot(n, |buckets, mask| {
                let k = (mask & free).count_ones() as usize;
                if k > 0 {
                    buckets[k].push(n);
                }
            });
        }
        out
    }

    /// The flavor's position, interned on first sight; its buckets reach `devices` free.
    fn intern(&mut self, flavor: &Flavor, devices: usize) -> FlavorIx {
        let f = match self.flavors.iter().position(|f| f == flavor) {
            Some(f) => f,
            None => {
                self.flavors.push(flavor.clone());
                self.index.push(FlavorIndex::default());
                self.flavors.len() - 1
            }
        };
        let buckets = &mut self.index[f].buckets;
        if buckets.len() <= devices {
            buckets.resize_with(devices + 1, Vec::new);
        }
        FlavorIx::at(f)
    }

    /// Calls `f` with the buckets and device mask of each flavor of node `n`, if the node is
    /// schedulable (only those are indexed).
    fn each_indexed_slot(&mut self, n: u32, mut f: impl FnMut(&mut Vec<Vec<u32>>, u64)) {
        let node = &self.nodes[n as usize];
        if !node.schedulable {
            return;
        }
        for slot in &self.slots[span(node.slots)] {
            f(&mut self.index[slot.flavor.ix()].buckets, slot.mask);
        }
    }

    /// Refreshes the node at position `n` (in id order, as in `NodeAllocs`) after devices or
    /// host resources were held or freed on it.
    pub fn update(&mut self, n: usize, alloc: &NodeAlloc) {
        let node = &mut self.nodes[n];
        node.cpu_free = node.cpu_total.saturating_sub(alloc.cpu_used);
        node.mem_free = node.mem_total.saturating_sub(alloc.mem_used);
        let (old, new) = (node.free, node.healthy & !alloc.held);
        node.free = new;
        let n = n as u32;
        self.each_indexed_slot(n, |buckets, mask| {
            let (from, to) = ((mask & old).count_ones() as usize, (mask & new).count_ones() as usize);
            if from != to {
                if let Ok(i) = buckets[from].binary_search(&n) {
                    buckets[from].remove(i);
                }
                if to == 0 {
                    return;
                }
                if let Err(i) = buckets[to].binary_search(&n) {
                    buckets[to].insert(i, n);
                }
            }
        });
    }
}
