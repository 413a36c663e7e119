//! A node's devices as the scheduler counts them: bit masks per flavor and locality group,
//! computed once per registration (`NodeLayout`), and who holds what (`NodeAlloc`, kept for
//! every node in `NodeAllocs`). Holding, freeing and re-checking a plan read a node here, by
//! position, without looking its inventory up by name.

use crate::ids::{DeviceId, JobId, NodeId};
use crate::resource::{Flavor, Health, NodeSpec};
use std::sync::Arc;

/// A node's devices as bit masks, computed once per registration for the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLayout {
    /// The device ids, in inventory order (bit `i` of a mask is device `i`).
    pub devices: Vec<DeviceId>,
    /// Each device alone, as the shared list that an assignment of that one device holds:
    /// built once per registration, so that placing a one-device replica (most jobs of real
    /// traces) allocates no list and freeing it frees none.
    pub singles: Vec<Arc<[DeviceId]>>,
    /// Devices of each flavor, in order of first appearance.
    pub slots: Vec<(Flavor, u64)>,
    /// Devices of each locality group (NVLink domain and NUMA node).
    pub groups: Vec<u64>,
    /// Healthy devices.
    pub healthy: u64,
    /// The `rack` label.
    pub rack: Option<String>,
    /// Host CPU, in thousandths of a core.
    pub cpu_millis: u64,
    /// Host memory, in MiB.
    pub mem_mib: u64,
}

impl NodeLayout {
    /// The layout of an inventory.
    pub fn of(spec: &NodeSpec) -> Self {
        let mut layout = Self {
            devices: spec.devices.iter().map(|d| d.id.clone()).collect(),
            singles: spec.devices.iter().map(|d| Arc::from([d.id.clone()])).collect(),
            rack: spec.rack().map(str::to_owned),
            cpu_millis: spec.cpu_millis,
            mem_mib: spec.mem_mib,
            ..Self::default()
        };
        let mut keys: Vec<(Option<&str>, Option<u32>)> = Vec::new();
        for (i, d) in spec.devices.iter().enumerate() {
            let bit = 1u64 << i;
            match layout.slots.iter_mut().find(|(f, _)| d.is_flavor(f)) {
                Some((_, m)) => *m |= bit,
                None => layout.slots.push((d.flavor(), bit)),
            }
            let key = (d.interconnect_group.as_deref(), d.numa_node);
            match keys.iter().position(|k| *k == key) {
                Some(g) => layout.groups[g] |= bit,
                None => {
                    keys.push(key);
                    layout.groups.push(bit);
                }
            }
            if d.health == Health::Healthy {
                layout.healthy |= bit;
            }
        }
        layout
    }

    /// Position of a device. Ids in assignments are usually clones of the inventory's, so
    /// pointer equality finds them without comparing strings.
    pub fn device_index(&self, id: &DeviceId) -> Option<usize> {
        let ids = &self.devices;
        ids.iter().position(|d| Arc::ptr_eq(&d.0, &id.0)).or_else(|| ids.iter().position(|d| d == id))
    }

    /// The devices among `ids` that this node has, as a mask (ids it lacks are left out).
    pub fn mask_of(&self, ids: &[DeviceId]) -> u64 {
        ids.iter().filter_map(|d| self.device_index(d)).fold(0, |m, i| m | 1 << i)
    }

    /// The devices of `flavor`, as a mask.
    pub fn flavor_mask(&self, flavor: &Flavor) -> u64 {
        self.slots.iter().find(|(f, _)| f == flavor).map_or(0, |(_, m)| *m)
    }
}

/// Where something was when it was last seen, which may have moved since: a node's position in
/// `NodeAllocs` (`NodeAllocs::locate` checks it), a team's slot in the state's accounts. Every
/// hint equals every other: it is a cache, not a value.
#[derive(Clone, Copy, Debug, Default)]
pub struct PositionHint(pub Option<u32>);

impl PartialEq for PositionHint {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PositionHint {}

impl PartialOrd for PositionHint {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PositionHint {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Which job holds each device of a node, and the host resources in use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAlloc {
    /// One entry per device, in inventory order.
    pub holders: Vec<Option<JobId>>,
    /// The devices some job holds, as a mask.
    pub held: u64,
    /// CPU held by replicas.
    pub cpu_used: u64,
    /// Host memory held by replicas.
    pub mem_used: u64,
    /// The node's devices as masks.
    pub layout: NodeLayout,
    /// Whether new work may be placed on the node (`Node::schedulable`, kept in step by every
    /// command that changes it).
    pub schedulable: bool,
}

/// Every node's `NodeAlloc`, in node id order, beside the sorted ids: a node's position is one
/// binary search, and the same position finds it in the scheduler's node index (both hold every
/// node, in id order), so `charge` looks a node up once instead of once per structure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAllocs {
    ids: Vec<NodeId>,
    allocs: Vec<NodeAlloc>,
}

impl NodeAllocs {
    /// Every node's id, in order.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The position of a node, in id order.
    pub fn position(&self, id: &NodeId) -> Option<usize> {
        self.ids.binary_search(id).ok()
    }

    /// `position`, trying `hint` first: it holds when the id there shares the node's name
    /// (ids are unique, so that id is the node's own).
    pub fn locate(&self, id: &NodeId, hint: PositionHint) -> Option<usize> {
        match hint.0.map(|h| h as usize) {
            Some(h) if self.ids.get(h).is_some_and(|at| Arc::ptr_eq(&at.0, &id.0)) => Some(h),
            _ => self.position(id),
        }
    }

    /// A node's allocation.
    pub fn get(&self, id: &NodeId) -> Option<&NodeAlloc> {
        self.position(id).map(|p| &self.allocs[p])
    }

    /// The allocation at a position.
    pub fn at(&self, position: usize) -> &NodeAlloc {
        &self.allocs[position]
    }

    /// A node's allocation, to change.
    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut NodeAlloc> {
        self.position(id).map(|p| &mut self.allocs[p])
    }

    /// The allocation at a position, to change.
    pub fn at_mut(&mut self, position: usize) -> &mut NodeAlloc {
        &mut self.allocs[position]
    }

    /// Sets a node's allocation, adding the node in its place if it is new.
    pub fn insert(&mut self, id: NodeId, alloc: NodeAlloc) {
        match self.ids.binary_search(&id) {
            Ok(p) => self.allocs[p] = alloc,
            Err(p) => {
                self.ids.insert(p, id);
                self.allocs.insert(p, alloc);
            }
        }
    }

    /// The allocations in node id order.
    pub fn values(&self) -> impl Iterator<Item = &NodeAlloc> {
        self.allocs.iter()
    }
}

impl std::ops::Index<&NodeId> for NodeAllocs {
    type Output = NodeAlloc;

    fn index(&self, id: &NodeId) -> &NodeAlloc {
        self.get(id).expect("every node has an allocation")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ReplicaAssignment;

    #[test]
    fn a_hint_is_used_only_where_it_still_names_the_node() {
        let mut allocs = NodeAllocs::default();
        let (a, c) = (NodeId::from("a"), NodeId::from("c"));
        allocs.insert(a.clone(), NodeAlloc::default());
        allocs.insert(c.clone(), NodeAlloc::default());
        assert_eq!(allocs.locate(&c, PositionHint(Some(1))), Some(1));
        assert_eq!(allocs.locate(&c, PositionHint(Some(0))), Some(1), "a wrong hint falls back");
        allocs.insert(NodeId::from("b"), NodeAlloc::default());
        assert_eq!(allocs.locate(&c, PositionHint(Some(1))), Some(2), "the node moved");
        assert_eq!(allocs.locate(&c, PositionHint(Some(9))), Some(2));
        assert_eq!(allocs.locate(&NodeId::from("c"), PositionHint(Some(2))), Some(2), "same name, own string");
        assert_eq!(allocs.locate(&NodeId::from("d"), PositionHint(Some(2))), None);
    }

    #[test]
    fn a_hint_is_not_part_of_an_assignment() {
        let r =
            |hint| ReplicaAssignment { node: "n".into(), devices: ["g".into()].into(), position: PositionHint(hint) };
        assert_eq!(r(Some(3)), r(None));
        assert_eq!(r(Some(3)).cmp(&r(Some(4))), std::cmp::Ordering::Equal);
        let json = serde_json::to_string(&r(Some(3))).unwrap();
        assert_eq!(json, serde_json::to_string(&r(None)).unwrap());
        assert_eq!(postcard::to_allocvec(&r(Some(3))).unwrap(), postcard::to_allocvec(&r(None)).unwrap());
    }
}
