//! The cycle's changes to the state's node index, kept beside it instead of in a copy of it.
//! A cycle reads the state's index (`nodes.rs`) through this overlay; the first change to a
//! node copies that node, and the first change to a bucket copies that bucket, so a cycle
//! costs what it touches, not what the cluster holds (copying the whole index was a fifth of
//! a simulated run on 300 nodes).
//!
//! Within a cycle a bucket changes by `swap_remove` and `push`, starting from the state's
//! sorted bucket, exactly as it did on a full copy, so placements do not depend on whether a
//! bucket was copied. A node the cycle has not moved sits where the state's sorted bucket has
//! it (a binary search); the positions of nodes the cycle pushed or moved are recorded, so
//! moving a node between buckets stays O(log n).
//!
//! The overlay's buffers live in the `Scratch` that a caller running many cycles keeps between
//! them (the simulator does): dropping the overlay puts back what the cycle changed, so at rest
//! the buffers say "nothing changed" and the next cycle starts without allocating.

use super::nodes::{span, FlavorIx, NodeIndex, NodeView};

/// Not changed by this cycle (in `touched` and `pos`).
const UNSET: u32 = u32::MAX;

/// The overlay's buffers, kept between cycles in a `Scratch`. At rest every entry of `touched`
/// and `pos` is `UNSET`, `changed`, `changed_nodes`, `copied` and `moved` are empty, and no
/// bucket is copied.
#[derive(Debug, Default)]
pub(crate) struct OverlayScratch {
    /// Per node, its place in `changed`, or `UNSET` (sized at a cycle's first change).
    touched: Vec<u32>,
    /// Nodes this cycle changed, and their ids.
    changed: Vec<NodeView>,
    changed_nodes: Vec<u32>,
    /// Per flavor, per free-device count: the buckets this cycle changed; `copied` lists them.
    buckets: Vec<Vec<Option<Vec<u32>>>>,
    copied: Vec<(FlavorIx, u32)>,
    /// Emptied bucket copies, for the next cycle's.
    spare: Vec<Vec<u32>>,
    /// Position of each slot's node in its bucket, where the cycle put or moved it (sized at a
    /// cycle's first change; `UNSET`: where the state's bucket has it); `moved` lists the slots
    /// set.
    pos: Vec<u32>,
    moved: Vec<u32>,
}

/// A cycle's view of the node index: the state's index plus what the cycle changed.
#[derive(Debug)]
pub(crate) struct NodeOverlay<'s> {
    base: &'s NodeIndex,
    s: &'s mut OverlayScratch,
}

impl Drop for NodeOverlay<'_> {
    /// Puts the scratch back at rest.
    fn drop(&mut self) {
        let s = &mut *self.s;
        for n in s.changed_nodes.drain(..) {
            s.touched[n as usize] = UNSET;
        }
        s.changed.clear();
        for slot in s.moved.drain(..) {
            s.pos[slot as usize] = UNSET;
        }
        for (f, k) in s.copied.drain(..) {
            if let Some(mut copy) = s.buckets[f.ix()][k as usize].take() {
                copy.clear();
                s.spare.push(copy);
            }
        }
    }
}

impl<'s> NodeOverlay<'s> {
    pub fn new(base: &'s NodeIndex, s: &'s mut OverlayScratch) -> Self {
        Self { base, s }
    }

    /// The index this overlays.
    pub fn base(&self) -> &'s NodeIndex {
        self.base
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.base.nodes.len()
    }

    /// Node `n` as the cycle sees it.
    pub fn node(&self, n: u32) -> &NodeView {
        match self.s.touched.get(n as usize) {
            Some(&at) if at != UNSET => &self.s.changed[at as usize],
            _ => &self.base.nodes[n as usize],
        }
    }

    /// Node `n`, to change (copied from the state's index at its first change).
    pub fn node_mut(&mut self, n: u32) -> &mut NodeView {
        let s = &mut *self.s;
        if s.touched.len() != self.base.nodes.len() {
            s.touched.resize(self.base.nodes.len(), UNSET);
        }
        if s.touched[n as usize] == UNSET {
            s.touched[n as usize] = s.changed.len() as u32;
            s.changed.push(self.base.nodes[n as usize].clone());
            s.changed_nodes.push(n);
        }
        &mut s.changed[s.touched[n as usize] as usize]
    }

    /// Number of free-device buckets of flavor `f` (none for a flavor no node has).
    pub fn bucket_count(&self, f: FlavorIx) -> usize {
        self.base.index.get(f.ix()).map_or(0, |i| i.buckets.len())
    }

    /// The schedulable nodes with exactly `k` free devices of flavor `f`.
    pub fn bucket(&self, f: FlavorIx, k: usize) -> &[u32] {
        match self.s.buckets.get(f.ix()).and_then(|b| b.get(k)).and_then(Option::as_ref) {
            Some(own) => own,
            None => &self.base.index[f.ix()].buckets[k],
        }
    }

    /// The slot of node `n` holding flavor `f`, if it has that flavor.
    pub fn slot_of(&self, n: u32, f: FlavorIx) -> Option<usize> {
        span(self.base.nodes[n as usize].slots).find(|&s| self.base.slots[s].flavor == f)
    }

    /// Bucket `k` of flavor `f`, to change: copied at its first change.
    fn owned(&mut self, f: FlavorIx, k: usize) -> &mut Vec<u32> {
        let (fi, count) = (f.ix(), self.bucket_count(f));
        let s = &mut *self.s;
        if s.buckets.len() <= fi {
            s.buckets.resize_with(fi + 1, Vec::new);
        }
        if s.buckets[fi].len() < count {
            s.buckets[fi].resize_with(count, || None);
        }
        if s.pos.len() != self.base.slots.len() {
            s.pos.resize(self.base.slots.len(), UNSET);
        }
        let (spare, copied) = (&mut s.spare, &mut s.copied);
        s.buckets[fi][k].get_or_insert_with(|| {
            copied.push((f, k as u32));
            let mut copy = spare.pop().unwrap_or_default();
            copy.extend_from_slice(&self.base.index[fi].buckets[k]);
            copy
        })
    }

    /// Records where slot `s`'s node now sits in its bucket.
    fn set_pos(&mut self, slot: usize, at: usize) {
        self.s.pos[slot] = at as u32;
        self.s.moved.push(slot as u32);
    }

    /// The position of node `n`'s slot `s` in its bucket `k` of flavor `f`: recorded if the
    /// cycle put it there or moved it; else where the state's (sorted) bucket has it.
    fn position(&self, s: usize, n: u32, f: FlavorIx, k: usize) -> usize {
        match self.s.pos.get(s) {
            Some(&at) if at != UNSET => at as usize,
            _ => self.base.index[f.ix()].buckets[k].binary_search(&n).expect("an indexed node is in its bucket"),
        }
    }

    /// The slot range of node `n` and its free devices; an empty range when the node is not
    /// schedulable (it is not indexed).
    fn indexed_range(&self, n: u32) -> (std::ops::Range<usize>, u64) {
        let node = self.node(n);
        if !node.schedulable {
            return (0..0, 0);
        }
        (span(node.slots), node.free)
    }

    fn index_node(&mut self, n: u32) {
        let (range, free) = self.indexed_range(n);
        for s in range {
            let slot = self.base.slots[s];
            let k = (slot.mask & free).count_ones() as usize;
            if k == 0 {
                continue;
            }
            let bucket = self.owned(slot.flavor, k);
            bucket.push(n);
            let at = bucket.len() - 1;
            self.set_pos(s, at);
        }
    }

    fn unindex_node(&mut self, n: u32) {
        let (range, free) = self.indexed_range(n);
        for s in range {
            let slot = self.base.slots[s];
            let k = (slot.mask & free).count_ones() as usize;
            if k == 0 {
                continue;
            }
            let at = self.position(s, n, slot.flavor, k);
            let bucket = self.owned(slot.flavor, k);
            bucket.swap_remove(at);
            if let Some(moved) = bucket.get(at).copied() {
                let i = self.slot_of(moved, slot.flavor).expect("indexed node has the flavor");
                self.set_pos(i, at);
            }
        }
    }

    /// Takes devices, CPU and memory on a node, keeping the buckets in step.
    pub fn take(&mut self, n: u32, mask: u64, cpu: u64, mem: u64) {
        self.unindex_node(n);
        let node = self.node_mut(n);
        node.free &= !mask;
        node.releasing &= !mask;
        node.cpu_free = node.cpu_free.saturating_sub(cpu);
        node.mem_free = node.mem_free.saturating_sub(mem);
        self.index_node(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{cluster, node};
    use crate::Command;
    use proptest::prelude::*;

    /// What the overlay replaced: a full copy of the buckets, changed by `swap_remove` at a
    /// position found by search and `push`.
    /// `n` in no bucket while it has no free device.
    fn reference_take(buckets: &mut [Vec<u32>], free: &mut [u64], n: u32, mask: u64) {
        let before = &mut buckets[free[n as usize].count_ones() as usize];
        if let Some(at) = before.iter().position(|&x| x == n) {
            before.swap_remove(at);
        }
        free[n as usize] &= !mask;
        let k = free[n as usize].count_ones() as usize;
        if k > 0 {
            buckets[k].push(n);
        }
    }

    proptest! {
        /// Any sequence of takes leaves every bucket, in order, and every node as a full copy
        /// of the index changed the old way would have them, and the state's index unchanged.
        #[test]
        fn matches_a_full_copy(sizes in prop::collection::vec(1u32..=8, 1..12),
                               takes in prop::collection::vec((any::<u32>(), any::<u64>()), 0..40)) {
            let mut s = cluster(0, &[]);
            for (i, gpus) in sizes.iter().enumerate() {
                s.apply(Command::RegisterNode { node: node(&format!("n{i:02}"), *gpus, None), at_ms: 0 }).unwrap();
            }
            let base = s.node_index().clone();
            let mut scratch = OverlayScratch::default();
            // Twice on one scratch: the second cycle must start from the state's index again.
            for _ in 0..2 {
                let mut overlay = NodeOverlay::new(s.node_index(), &mut scratch);
                let mut buckets = base.index[0].buckets.clone();
                let mut free: Vec<u64> = base.nodes.iter().map(|v| v.free).collect();
                for &(pick, bits) in &takes {
                    let n = pick % sizes.len() as u32;
                    let mask = bits & free[n as usize];
                    overlay.take(n, mask, 0, 0);
                    reference_take(&mut buckets, &mut free, n, mask);
                }
                for (k, bucket) in buckets.iter().enumerate() {
                    prop_assert_eq!(overlay.bucket(FlavorIx(0), k), bucket.as_slice(), "bucket {}", k);
                }
                for (n, f) in free.iter().enumerate() {
                    prop_assert_eq!(overlay.node(n as u32).free, *f);
                }
            }
            prop_assert_eq!(s.node_index(), &base);
        }
    }
}
