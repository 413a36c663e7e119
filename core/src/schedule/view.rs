//! The scheduler's scratch view of a `State`: per-node device masks, an index of nodes by free
//! devices per flavor, and per-team usage, all updated as the cycle places jobs. The node part
//! is a copy of the index the state keeps between cycles (`nodes.rs`): building a view copies
//! plain vectors instead of walking every node; every lookup during the cycle is O(1) or
//! O(log n).

use crate::ids::{JobId, NodeId, TeamId};
use crate::job::{DeviceRequest, Job};
use crate::quota::Ledger;
use crate::resource::Flavor;
use crate::state::State;
use crate::team::{FlavorQuota, TeamSpec};

use super::nodes::span;
pub(crate) use super::nodes::{FlavorIndex, FlavorIx, FlavorSlot, NodeView};

/// The per-cycle scratch view.
#[derive(Debug)]
pub(crate) struct View<'s> {
    pub state: &'s State,
    pub node_ids: &'s [NodeId],
    pub nodes: Vec<NodeView>,
    pub slots: Vec<FlavorSlot>,
    groups: &'s [u64],
    pub flavors: Vec<Flavor>,
    pub index: Vec<FlavorIndex>,
    /// Teams in name order; team `t`'s usage and quota per interned flavor are its rows of
    /// `usage` and `quota` (flat: one allocation each per cycle, not two per team).
    pub teams: Vec<&'s TeamSpec>,
    /// Devices each team holds, per flavor: row `t` is `usage[t * flavors.len()..][..flavors.len()]`.
    usage: Vec<u32>,
    /// Each team's quota per flavor, laid out like `usage`.
    quota: Vec<Option<FlavorQuota>>,
    pub ledgers: Vec<Ledger>,
    /// Nodes that hold releasing devices.
    pub releasing_nodes: Vec<u32>,
}

impl<'s> View<'s> {
    pub fn build(state: &'s State) -> Self {
        let nodes = state.node_index();
        let mut view = View {
            state,
            node_ids: &nodes.ids,
            nodes: nodes.nodes.clone(),
            slots: nodes.slots.clone(),
            groups: &nodes.groups,
            flavors: nodes.flavors.clone(),
            index: nodes.index.clone(),
            teams: Vec::new(),
            usage: Vec::new(),
            quota: Vec::new(),
            ledgers: Vec::new(),
            releasing_nodes: Vec::new(),
        };
        view.place_slots();
        view.build_teams();
        view.mark_releasing();
        view
    }

    /// Records in each indexed slot its position in its bucket (the cycle moves nodes between
    /// buckets by position).
    fn place_slots(&mut self) {
        for (f, index) in self.index.iter().enumerate() {
            for bucket in &index.buckets {
                for (pos, &n) in bucket.iter().enumerate() {
                    let s = self.slot_of(n, f as FlavorIx).expect("indexed nodes have the flavor");
                    self.slots[s].pos = pos as u32;
                }
            }
        }
    }

    /// Node `n`'s locality groups as device masks.
    pub fn groups_of(&self, n: u32) -> &'s [u64] {
        &self.groups[span(self.nodes[n as usize].groups)]
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
        let width = self.flavors.len();
        let teams = self.state.teams();
        self.teams = teams.values().collect();
        self.usage = Vec::with_capacity(teams.len() * width);
        self.quota = Vec::with_capacity(teams.len() * width);
        for (id, spec) in teams {
            let usage = self.state.usage.get(id);
            for f in &self.flavors {
                self.usage.push(usage.and_then(|u| u.get(f)).copied().unwrap_or(0));
                self.quota.push(spec.quotas.get(f).copied());
            }
        }
    }

    /// Devices team `t` holds of flavor `f`.
    pub fn usage(&self, t: usize, f: FlavorIx) -> u32 {
        self.usage[t * self.flavors.len() + f as usize]
    }

    /// Team `t`'s quota of flavor `f`, if it has one.
    pub fn quota(&self, t: usize, f: FlavorIx) -> Option<FlavorQuota> {
        self.quota[t * self.flavors.len() + f as usize]
    }

    /// Team `t`'s usage of every flavor, in flavor order.
    pub fn usage_row(&self, t: usize) -> &[u32] {
        let w = self.flavors.len();
        &self.usage[t * w..(t + 1) * w]
    }

    /// Team `t`'s quota of every flavor, in flavor order.
    pub fn quota_row(&self, t: usize) -> &[Option<FlavorQuota>] {
        let w = self.flavors.len();
        &self.quota[t * w..(t + 1) * w]
    }

    /// The row of a team, by position in team order.
    pub fn team_ix(&self, id: &TeamId) -> Option<usize> {
        self.teams.binary_search_by(|t| t.name.cmp(id)).ok()
    }

    /// The flavors `team` may use for `request`, most preferred first (see
    /// `TeamSpec::acceptable_flavors`), interned.
    pub fn acceptable(&self, team: usize, request: &DeviceRequest) -> Vec<FlavorIx> {
        let has_quota = |f: &FlavorIx| self.quota(team, *f).is_some();
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

    /// The position in `slots` of node `n`'s devices of flavor `f`, if it has any.
    fn slot_of(&self, n: u32, f: FlavorIx) -> Option<usize> {
        span(self.nodes[n as usize].slots).find(|&s| self.slots[s].flavor == f)
    }

    /// Node `n`'s devices of flavor `f`.
    pub fn mask_of(&self, n: u32, f: FlavorIx) -> u64 {
        self.slot_of(n, f).map_or(0, |s| self.slots[s].mask)
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
            let Ok(n) = self.node_ids.binary_search(&r.node) else { continue };
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
        let q = self.quota(t, f).expect("charged flavors have quota");
        let at = t * self.flavors.len() + f as usize;
        let before = self.usage[at];
        self.usage[at] += devices;
        self.ledgers[f as usize].update(&q, before, before + devices);
    }

    /// The slot range of node `n` and its free devices; an empty range when the node is not
    /// schedulable (it is not indexed).
    fn indexed_range(&self, n: u32) -> (std::ops::Range<usize>, u64) {
        let node = &self.nodes[n as usize];
        if !node.schedulable {
            return (0..0, 0);
        }
        (span(node.slots), node.free)
    }

    fn index_node(&mut self, n: u32) {
        let (range, free) = self.indexed_range(n);
        for s in range {
            let count = (self.slots[s].mask & free).count_ones() as usize;
            let bucket = &mut self.index[self.slots[s].flavor as usize].buckets[count];
            bucket.push(n);
            self.slots[s].pos = (bucket.len() - 1) as u32;
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
                let i = self.slot_of(moved, f as FlavorIx).expect("indexed node has the flavor");
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
