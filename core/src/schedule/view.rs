//! The scheduler's scratch view of a `State`: per-node device masks, an index of nodes by free
//! devices per flavor, and per-team usage, all updated as the cycle places jobs. Building it is
//! O(nodes); every lookup during the cycle is O(1) or O(log n).

use crate::ids::{JobId, NodeId, TeamId};
use crate::job::Job;
use crate::quota::Ledger;
use crate::resource::{Flavor, Health, Node};
use crate::state::{NodeAlloc, State};
use crate::team::TeamSpec;
use std::collections::BTreeMap;

/// Interned flavor.
pub(crate) type FlavorIx = u16;

/// The devices of one flavor on a node.
#[derive(Clone, Debug)]
pub(crate) struct FlavorSlot {
    pub flavor: FlavorIx,
    pub mask: u64,
    /// Position in the flavor index bucket, if indexed.
    pub pos: u32,
}

/// A node as the cycle sees it.
#[derive(Clone, Debug)]
pub(crate) struct NodeView {
    pub schedulable: bool,
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
    pub slots: Vec<FlavorSlot>,
    /// Locality groups (NVLink domain, else NUMA node) as device masks.
    pub groups: Vec<u64>,
}

impl NodeView {
    pub fn mask_of(&self, f: FlavorIx) -> u64 {
        self.slots.iter().find(|s| s.flavor == f).map_or(0, |s| s.mask)
    }
}

/// Nodes bucketed by how many free devices of one flavor they have.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlavorIndex {
    pub buckets: Vec<Vec<u32>>,
}

/// The per-cycle scratch view.
#[derive(Debug)]
pub(crate) struct View<'s> {
    pub state: &'s State,
    pub node_ids: Vec<&'s NodeId>,
    pub nodes: Vec<NodeView>,
    pub flavors: Vec<Flavor>,
    pub index: Vec<FlavorIndex>,
    pub usage: BTreeMap<TeamId, BTreeMap<Flavor, u32>>,
    pub ledgers: BTreeMap<Flavor, Ledger>,
    /// Nodes that hold releasing devices.
    pub releasing_nodes: Vec<u32>,
}

impl<'s> View<'s> {
    pub fn build(state: &'s State) -> Self {
        let mut view = View {
            state,
            node_ids: Vec::with_capacity(state.nodes().len()),
            nodes: Vec::with_capacity(state.nodes().len()),
            flavors: Vec::new(),
            index: Vec::new(),
            usage: state.usage.clone(),
            ledgers: state.ledgers(),
            releasing_nodes: Vec::new(),
        };
        let mut racks: BTreeMap<&str, u32> = BTreeMap::new();
        for (id, node) in state.nodes() {
            let alloc = state.alloc(id).expect("alloc exists for every node");
            let next = racks.len() as u32;
            let rack = node.spec.rack().map(|r| *racks.entry(r).or_insert(next));
            let nv = view.node_view(node, alloc, rack);
            view.node_ids.push(id);
            view.nodes.push(nv);
        }
        view.mark_releasing();
        for n in 0..view.nodes.len() {
            view.index_node(n as u32);
        }
        view
    }

    fn intern(&mut self, node: &Node, device: usize) -> FlavorIx {
        let d = &node.spec.devices[device];
        if let Some(i) = self.flavors.iter().position(|f| d.is_flavor(f)) {
            return i as FlavorIx;
        }
        self.flavors.push(d.flavor());
        self.index.push(FlavorIndex::default());
        (self.flavors.len() - 1) as FlavorIx
    }

    fn node_view(&mut self, node: &Node, alloc: &NodeAlloc, rack: Option<u32>) -> NodeView {
        let mut slots: Vec<FlavorSlot> = Vec::new();
        let (mut healthy, mut free) = (0u64, 0u64);
        let mut group_keys: Vec<(Option<&str>, Option<u32>)> = Vec::new();
        let mut groups: Vec<u64> = Vec::new();
        for (i, d) in node.spec.devices.iter().enumerate() {
            let bit = 1u64 << i;
            let f = match slots.last() {
                Some(s) if d.is_flavor(&self.flavors[s.flavor as usize]) => s.flavor,
                _ => self.intern(node, i),
            };
            match slots.iter_mut().find(|s| s.flavor == f) {
                Some(s) => s.mask |= bit,
                None => slots.push(FlavorSlot { flavor: f, mask: bit, pos: u32::MAX }),
            }
            if d.health == Health::Healthy {
                healthy |= bit;
                if alloc.holders[i].is_none() {
                    free |= bit;
                }
            }
            let key = (d.interconnect_group.as_deref(), d.numa_node);
            match group_keys.iter().position(|k| *k == key) {
                Some(g) => groups[g] |= bit,
                None => {
                    group_keys.push(key);
                    groups.push(bit);
                }
            }
        }
        NodeView {
            schedulable: node.schedulable(),
            rack,
            healthy,
            free,
            releasing: 0,
            cpu_total: node.spec.cpu_millis,
            mem_total: node.spec.mem_mib,
            cpu_free: node.spec.cpu_millis.saturating_sub(alloc.cpu_used),
            mem_free: node.spec.mem_mib.saturating_sub(alloc.mem_used),
            slots,
            groups,
        }
    }

    fn mark_releasing(&mut self) {
        let stopping: Vec<JobId> = self.state.stopping().iter().copied().collect();
        for id in stopping {
            let job = &self.state.jobs()[&id];
            self.add_releasing(job);
        }
    }

    /// Marks a job's devices as releasing (it was told to stop, or chosen as a victim).
    pub fn add_releasing(&mut self, job: &Job) {
        for (n, mask) in self.job_masks(job) {
            let node = &mut self.nodes[n as usize];
            if node.releasing == 0 {
                self.releasing_nodes.push(n);
            }
            node.releasing |= mask & node.healthy;
        }
    }

    /// The device masks a job holds, per node index.
    pub fn job_masks(&self, job: &Job) -> Vec<(u32, u64)> {
        let Some(a) = &job.assignment else { return Vec::new() };
        let mut out: Vec<(u32, u64)> = Vec::new();
        for r in &a.replicas {
            let Ok(n) = self.node_ids.binary_search(&&r.node) else { continue };
            let node = &self.state.nodes()[&r.node];
            let mask = r.devices.iter().filter_map(|d| node.device_index(d)).fold(0u64, |m, i| m | (1 << i));
            match out.iter_mut().find(|(x, _)| *x == n as u32) {
                Some(e) => e.1 |= mask,
                None => out.push((n as u32, mask)),
            }
        }
        out
    }

    pub fn flavor_ix(&self, f: &Flavor) -> Option<FlavorIx> {
        self.flavors.iter().position(|x| x == f).map(|i| i as FlavorIx)
    }

    pub fn team(&self, id: &TeamId) -> &'s TeamSpec {
        &self.state.teams()[id]
    }

    pub fn usage(&self, team: &TeamId, f: &Flavor) -> u32 {
        self.usage.get(team).and_then(|m| m.get(f)).copied().unwrap_or(0)
    }

    /// Charges `devices` more of `f` to `team`.
    pub fn charge(&mut self, team: &TeamId, f: &Flavor, devices: u32) {
        let q = self.team(team).quotas[f];
        let used = self.usage.entry(team.clone()).or_default().entry(f.clone()).or_insert(0);
        let before = *used;
        *used += devices;
        let after = *used;
        self.ledgers.entry(f.clone()).or_default().update(&q, before, after);
    }

    fn index_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        if !node.schedulable {
            return;
        }
        for s in 0..node.slots.len() {
            let node = &self.nodes[n as usize];
            let slot = &node.slots[s];
            let count = (slot.mask & node.free).count_ones() as usize;
            let buckets = &mut self.index[slot.flavor as usize].buckets;
            if buckets.len() <= count {
                buckets.resize_with(count + 1, Vec::new);
            }
            buckets[count].push(n);
            let pos = (buckets[count].len() - 1) as u32;
            self.nodes[n as usize].slots[s].pos = pos;
        }
    }

    fn unindex_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        if !node.schedulable {
            return;
        }
        for s in 0..node.slots.len() {
            let slot = &self.nodes[n as usize].slots[s];
            let count = (slot.mask & self.nodes[n as usize].free).count_ones() as usize;
            let (f, pos) = (slot.flavor as usize, slot.pos as usize);
            let bucket = &mut self.index[f].buckets[count];
            bucket.swap_remove(pos);
            if let Some(&moved) = bucket.get(pos) {
                let ms = self.nodes[moved as usize].slots.iter_mut().find(|x| x.flavor as usize == f);
                ms.expect("indexed node has the flavor").pos = pos as u32;
            }
        }
    }

    /// Takes devices, CPU and memory on a node, keeping the index in step.
    pub fn take(&mut self, n: u32, mask: u64, cpu: u64, mem: u64) {
        self.unindex_node(n);
        let node = &mut self.nodes[n as usize];
        node.free &= !mask;
        node.releasing &= !mask;
        node.cpu_free = node.cpu_free.saturating_sub(cpu);
        node.mem_free = node.mem_free.saturating_sub(mem);
        self.index_node(n);
    }
}
