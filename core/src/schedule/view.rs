//! The scheduler's scratch view of a `State`: per-node device masks, an index of nodes by free
//! devices per flavor, and per-team usage, all updated as the cycle places jobs. The node part
//! is the index the state keeps between cycles (`nodes.rs`) under an overlay of what this
//! cycle changed (`overlay.rs`): building a view copies nothing per node; every lookup during
//! the cycle is O(1) or O(log n).

use crate::accounts::TeamNo;
use crate::ids::{DeviceId, NodeId};
use crate::job::{DeviceRequest, Job};
use crate::quota::Ledger;
use crate::resource::Flavor;
use crate::state::State;
use crate::team::FlavorQuota;
use std::borrow::Cow;
use std::sync::Arc;

use super::nodes::span;
pub(crate) use super::nodes::{FlavorIx, NodeView};
use super::overlay::{NodeOverlay, OverlayScratch};
use super::place::Placing;
use crate::state::rows::TeamRows;

/// A cycle's buffers, kept between cycles by a caller that runs many (`schedule_with`): the
/// overlay's, and the per-cycle copies of the team usage and the quota totals.
#[derive(Debug, Default)]
pub struct Scratch {
    nodes: OverlayScratch,
    placing: Placing,
    usage: Vec<u32>,
    ledgers: Vec<Ledger>,
}

/// The per-cycle scratch view.
#[derive(Debug)]
pub(crate) struct View<'s> {
    pub state: &'s State,
    pub node_ids: &'s [NodeId],
    nodes: NodeOverlay<'s>,
    /// The nodes' flavors, then any flavor only teams have quota for.
    pub flavors: &'s [Flavor],
    /// Teams in name order; team `t`'s usage and quota per interned flavor are its rows of
    /// `usage` and `quota` (flat: one allocation each per cycle, not two per team).
    rows: &'s TeamRows,
    /// Each team's weight, in thousandths.
    pub weights: &'s [u32],
    /// Devices each team holds, per flavor: row `t` is `usage[t * flavors.len()..][..flavors.len()]`.
    usage: &'s mut Vec<u32>,
    /// Each team's quota per flavor, laid out like `usage`.
    quota: &'s [Option<FlavorQuota>],
    pub ledgers: &'s mut Vec<Ledger>,
    /// Nodes that hold releasing devices.
    pub releasing_nodes: Vec<u32>,
    /// The buffers of a placement (the `Scratch`'s).
    pub placing: &'s mut Placing,
}

impl<'s> View<'s> {
    pub fn build(state: &'s State, scratch: &'s mut Scratch) -> Self {
        let nodes = state.node_index();
        let rows = state.team_rows();
        let Scratch { nodes: buffers, placing, usage, ledgers } = scratch;
        usage.clear();
        usage.extend_from_slice(&rows.usage);
        ledgers.clear();
        ledgers.extend(rows.flavors.iter().map(|f| state.ledger(f)));
        let mut view = View {
            state,
            node_ids: state.allocs.ids(),
            nodes: NodeOverlay::new(nodes, buffers),
            flavors: &rows.flavors,
            rows,
            weights: &rows.weights,
            usage,
            quota: &rows.quota,
            ledgers,
            releasing_nodes: Vec::new(),
            placing,
        };
        view.mark_releasing();
        view
    }

    /// Node `n` as the cycle sees it.
    pub fn node(&self, n: u32) -> &NodeView {
        self.nodes.node(n)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// The schedulable nodes with exactly `k` free devices of flavor `f`, for `k` below
    /// `bucket_count(f)`.
    pub fn bucket(&self, f: FlavorIx, k: usize) -> &[u32] {
        self.nodes.bucket(f, k)
    }

    /// Number of free-device buckets of flavor `f`.
    pub fn bucket_count(&self, f: FlavorIx) -> usize {
        self.nodes.bucket_count(f)
    }

    /// Node `n`'s devices in `mask`, in inventory order, as the list an assignment shares:
    /// the layout's own for one device; else built once, at its size (mapped from a range).
    pub fn device_list(&self, n: u32, mut mask: u64) -> Arc<[DeviceId]> {
        let layout = &self.state.allocs.at(n as usize).layout;
        if mask.count_ones() == 1 {
            return Arc::clone(&layout.singles[mask.trailing_zeros() as usize]);
        }
        (0..mask.count_ones())
            .map(|_| {
                let i = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                layout.devices[i].clone()
            })
            .collect()
    }

    /// Number of distinct racks.
    pub fn rack_count(&self) -> usize {
        self.nodes.base().racks as usize
    }

    /// Node `n`'s locality groups as device masks.
    pub fn groups_of(&self, n: u32) -> &'s [u64] {
        let index = self.nodes.base();
        &index.groups[span(index.nodes[n as usize].groups)]
    }

    /// Devices team `t` holds of flavor `f`.
    pub fn usage(&self, t: usize, f: FlavorIx) -> u32 {
        self.usage[t * self.flavors.len() + f.ix()]
    }

    /// Devices team `t` holds of flavor `f` in the state, before this cycle's decisions (what
    /// `State::usage` says, found by row instead of by name).
    pub fn committed_usage(&self, t: usize, f: FlavorIx) -> u32 {
        self.rows.usage[t * self.flavors.len() + f.ix()]
    }

    /// Team `t`'s quota of flavor `f`, if it has one.
    pub fn quota(&self, t: usize, f: FlavorIx) -> Option<FlavorQuota> {
        self.quota[t * self.flavors.len() + f.ix()]
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

    /// The row of team slot `t` of the state's accounts.
    pub fn team_row(&self, t: TeamNo) -> Option<usize> {
        self.rows.row(t)
    }

    /// The row of a job's team, found through the job's hint of its team's slot.
    pub fn team_of(&self, job: &Job) -> Option<usize> {
        self.rows.row(self.state.accounts.team_of(job)?)
    }

    /// The flavors `team` may use for `request` (see `Accounts::quota_for`), most preferred
    /// first: the listed models in their order, or every flavor of the kind in flavor order;
    /// interned. Borrowed from the team rows when the request names no model and the team has
    /// quota for flavors of its kind only (the usual case: no list to build per job).
    pub fn acceptable(&self, team: usize, request: &DeviceRequest) -> Cow<'s, [FlavorIx]> {
        let of_kind = |f: &FlavorIx| self.flavors[f.ix()].kind == request.kind;
        if request.models.is_empty() {
            let all: &'s [FlavorIx] = &self.rows.with_quota[team];
            if all.iter().all(of_kind) {
                return Cow::Borrowed(all);
            }
            return all.iter().copied().filter(of_kind).collect();
        }
        let has_quota = |f: &FlavorIx| self.quota(team, *f).is_some();
        request
            .models
            .iter()
            .filter_map(|m| self.flavors.iter().position(|f| f.kind == request.kind && *f.model == **m))
            .map(FlavorIx::at)
            .filter(has_quota)
            .collect()
    }

    /// Node `n`'s devices of flavor `f`.
    pub fn mask_of(&self, n: u32, f: FlavorIx) -> u64 {
        self.nodes.slot_of(n, f).map_or(0, |s| self.nodes.base().slots[s].mask)
    }

    fn mark_releasing(&mut self) {
        let state = self.state;
        for id in state.stopping().iter() {
            self.add_releasing(&state.jobs()[&id]);
        }
    }

    /// Marks a job's devices as releasing (it was told to stop, or chosen as a victim).
    pub fn add_releasing(&mut self, job: &Job) {
        for (n, mask) in self.job_masks(job) {
            let node = self.nodes.node_mut(n);
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
            let Some(n) = self.state.allocs.locate(&r.node, r.position) else { continue };
            let mask = self.state.allocs.at(n).layout.mask_of(&r.devices);
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
        let at = t * self.flavors.len() + f.ix();
        let before = self.usage[at];
        self.usage[at] += devices;
        self.ledgers[f.ix()].update(&q, before, before + devices);
    }

    /// Takes devices, CPU and memory on a node, keeping the index in step.
    pub fn take(&mut self, n: u32, mask: u64, cpu: u64, mem: u64) {
        self.nodes.take(n, mask, cpu, mem);
    }
}
