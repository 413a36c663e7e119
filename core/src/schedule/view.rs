//! The scheduler's scratch view of a `State`: per-node device masks, an index of nodes by free
//! devices per flavor, and per-team usage, all updated as the cycle places jobs. Building it is
//! O(nodes) with no allocation per node (the masks come precomputed in `NodeLayout`); every
//! lookup during the cycle is O(1) or O(log n).

use crate::ids::{JobId, NodeId, TeamId};
use crate::job::{DeviceRequest, Job};
use crate::quota::Ledger;
use crate::resource::{Flavor, NodeStatus};
use crate::state::State;
use crate::team::{FlavorQuota, TeamSpec};
use std::collections::BTreeMap;

/// Interned flavor.
pub(crate) type FlavorIx = u16;

/// The devices of one flavor on a node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlavorSlot {
    pub flavor: FlavorIx,
    pub mask: u64,
    /// Position in the flavor index bucket, if indexed.
    pub pos: u32,
}

/// A node as the cycle sees it.
#[derive(Clone, Debug)]
pub(crate) struct NodeView<'s> {
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
    /// This node's range in `View::slots`.
    pub slots: (u32, u8),
    /// Locality groups (NVLink domain, NUMA node) as device masks.
    pub groups: &'s [u64],
}

/// Nodes bucketed by how many free devices of one flavor they have.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlavorIndex {
    pub buckets: Vec<Vec<u32>>,
}

/// A team as the cycle sees it, with usage and quota indexed by interned flavor.
#[derive(Clone, Debug)]
pub(crate) struct TeamRow<'s> {
    pub spec: &'s TeamSpec,
    pub usage: Vec<u32>,
    pub quota: Vec<Option<FlavorQuota>>,
}

/// The per-cycle scratch view.
#[derive(Debug)]
pub(crate) struct View<'s> {
    pub state: &'s State,
    pub node_ids: Vec<&'s NodeId>,
    pub nodes: Vec<NodeView<'s>>,
    pub slots: Vec<FlavorSlot>,
    pub flavors: Vec<Flavor>,
    pub index: Vec<FlavorIndex>,
    pub teams: Vec<TeamRow<'s>>,
    pub ledgers: Vec<Ledger>,
    /// Nodes that hold releasing devices.
    pub releasing_nodes: Vec<u32>,
}

impl<'s> View<'s> {
    pub fn build(state: &'s State) -> Self {
        let n = state.nodes().len();
        let mut view = View {
            state,
            node_ids: Vec::with_capacity(n),
            nodes: Vec::with_capacity(n),
            slots: Vec::with_capacity(n),
            flavors: Vec::new(),
            index: Vec::new(),
            teams: Vec::new(),
            ledgers: Vec::new(),
            releasing_nodes: Vec::new(),
        };
        let mut racks: BTreeMap<&str, u32> = BTreeMap::new();
        let mut last_rack: Option<(&str, u32)> = None;
        for ((id, node), alloc) in state.nodes().iter().zip(state.allocs.values()) {
            let layout = &alloc.layout;
            let rack = layout.rack.as_deref().map(|r| match last_rack {
                Some((name, ix)) if name == r => ix,
                _ => {
                    let next = racks.len() as u32;
                    let ix = *racks.entry(r).or_insert(next);
                    last_rack = Some((r, ix));
                    ix
                }
            });
            let start = view.slots.len() as u32;
            for (flavor, mask) in &layout.slots {
                let f = view.intern(flavor);
                view.slots.push(FlavorSlot { flavor: f, mask: *mask, pos: u32::MAX });
            }
            view.node_ids.push(id);
            view.nodes.push(NodeView {
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
                groups: &layout.groups,
            });
        }
        view.build_teams();
        view.mark_releasing();
        for n in 0..view.nodes.len() {
            view.index_node(n as u32);
        }
        view
    }

    /// Interns every flavor teams have quota for, then fills the team rows and ledgers.
    fn build_teams(&mut self) {
        for spec in self.state.teams().values() {
            for f in spec.quotas.keys() {
                self.intern(f);
            }
        }
        let ledgers = self.state.ledgers();
        self.ledgers = self.flavors.iter().map(|f| ledgers.get(f).copied().unwrap_or_default()).collect();
        let flavors = &self.flavors;
        self.teams = self
            .state
            .teams()
            .iter()
            .map(|(id, spec)| TeamRow {
                spec,
                usage: flavors.iter().map(|f| self.state.usage(id, f)).collect(),
                quota: flavors.iter().map(|f| spec.quotas.get(f).copied()).collect(),
            })
            .collect();
    }

    /// The row of a team, by position in team order.
    pub fn team_ix(&self, id: &TeamId) -> Option<usize> {
        self.teams.binary_search_by(|t| t.spec.name.cmp(id)).ok()
    }

    /// The flavors `team` may use for `request`, most preferred first (see
    /// `TeamSpec::acceptable_flavors`), interned.
    pub fn acceptable(&self, team: usize, request: &DeviceRequest) -> Vec<FlavorIx> {
        let row = &self.teams[team];
        let has_quota = |f: &FlavorIx| row.quota[*f as usize].is_some();
        if request.models.is_empty() {
            let mut out: Vec<FlavorIx> = (0..self.flavors.len() as FlavorIx)
                .filter(|f| self.flavors[*f as usize].kind == request.kind)
                .collect();
            out.retain(has_quota);
            out.sort_by(|a, b| self.flavors[*a as usize].cmp(&self.flavors[*b as usize]));
            return out;
        }
        request
            .models
            .iter()
            .filter_map(|m| self.flavors.iter().position(|f| f.kind == request.kind && &f.model == m))
            .map(|i| i as FlavorIx)
            .filter(has_quota)
            .collect()
    }

    fn intern(&mut self, flavor: &Flavor) -> FlavorIx {
        if let Some(i) = self.flavors.iter().position(|f| f == flavor) {
            return i as FlavorIx;
        }
        self.flavors.push(flavor.clone());
        self.index.push(FlavorIndex::default());
        (self.flavors.len() - 1) as FlavorIx
    }

    /// The flavor slots of node `n`.
    pub fn slots_of(&self, n: u32) -> &[FlavorSlot] {
        let (start, len) = self.nodes[n as usize].slots;
        &self.slots[start as usize..start as usize + len as usize]
    }

    /// Node `n`'s devices of flavor `f`.
    pub fn mask_of(&self, n: u32, f: FlavorIx) -> u64 {
        self.slots_of(n).iter().find(|s| s.flavor == f).map_or(0, |s| s.mask)
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

    /// Charges `devices` more of flavor `f` to team `t`.
    pub fn charge(&mut self, t: usize, f: FlavorIx, devices: u32) {
        let row = &mut self.teams[t];
        let q = row.quota[f as usize].expect("charged flavors have quota");
        let before = row.usage[f as usize];
        row.usage[f as usize] += devices;
        self.ledgers[f as usize].update(&q, before, before + devices);
    }

    /// The slot range of node `n` and its free devices; an empty range when the node is not
    /// schedulable (it is not indexed).
    fn indexed_range(&self, n: u32) -> (std::ops::Range<usize>, u64) {
        let node = &self.nodes[n as usize];
        if !node.schedulable {
            return (0..0, 0);
        }
        let (start, len) = node.slots;
        (start as usize..start as usize + len as usize, node.free)
    }

    fn index_node(&mut self, n: u32) {
        let (range, free) = self.indexed_range(n);
        for s in range {
            let count = (self.slots[s].mask & free).count_ones() as usize;
            let buckets = &mut self.index[self.slots[s].flavor as usize].buckets;
            if buckets.len() <= count {
                buckets.resize_with(count + 1, Vec::new);
            }
            buckets[count].push(n);
            self.slots[s].pos = (buckets[count].len() - 1) as u32;
        }
    }

    fn unindex_node(&mut self, n: u32) {
        let (range, free) = self.indexed_range(n);
        for s in range {
            let count = (self.slots[s].mask & free).count_ones() as usize;
            let (f, pos) = (self.slots[s].flavor as usize, self.slots[s].pos as usize);
            let bucket = &mut self.index[f].buckets[count];
            bucket.swap_remove(pos);
            if let Some(&moved) = bucket.get(pos) {
                let (ms, ml) = self.nodes[moved as usize].slots;
                let i = (ms as usize..ms as usize + ml as usize)
                    .find(|&i| self.slots[i].flavor as usize == f)
                    .expect("indexed node has the flavor");
                self.slots[i].pos = pos as u32;
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
