//! Faults, one at a time from the seed, every 0.2-1.2 s of the fault phase: a replica or the
//! leader crashed (its unsynced writes lost) or paused, one isolated by a partition, a lossy
//! and slow network, a slow disk, every replica's power cut at once, and a flipped byte in a
//! crashed replica's log. That replica must refuse to start; it is then replaced in the order
//! `docs/operations.md` gives: removed from the cluster, its disk emptied, started to join,
//! and added again. No other fault comes while a replacement is under way.

use super::disk::Disk;
use super::world::World;
use super::Failure;
use crate::node::{Input, Membership, NodeError};
use raft::Storage;
use rand::Rng;
use tokio::sync::oneshot;

/// A replacement under way: which step, and the membership change waiting for its answer.
struct Replacing {
    id: u64,
    /// Removed from the cluster already (then: joined, being added).
    removed: bool,
    change: Option<oneshot::Receiver<Result<(), NodeError>>>,
    /// When to ask again.
    retry_at: u64,
}

/// The faults in force and what comes next.
#[derive(Default)]
pub(super) struct Faults {
    next_at: u64,
    heal_partition_at: Option<u64>,
    calm_at: Option<u64>,
    replacing: Option<Replacing>,
}

impl Faults {
    /// Whether a replacement is under way.
    pub fn replacing(&self) -> bool {
        self.replacing.is_some()
    }
}

/// Ends the faults whose time is up, drives a replacement, and injects the next fault when due.
pub(super) fn act(w: &mut World) -> Result<(), Failure> {
    if w.faults.heal_partition_at.is_some_and(|t| t <= w.now) {
        w.faults.heal_partition_at = None;
        w.net.heal();
        w.trace("the partition healed".into());
    }
    if w.faults.calm_at.is_some_and(|t| t <= w.now) {
        w.faults.calm_at = None;
        w.net.weather = super::net::Weather::default();
        w.trace("the network calmed".into());
    }
    if w.faults.replacing.is_some() {
        return drive_replacement(w);
    }
    if w.now < w.config.fault_ms && w.now >= w.faults.next_at {
        w.faults.next_at = w.now + w.rng.random_range(200..1_200);
        if w.now >= 500 {
            inject(w)?;
        }
    }
    Ok(())
}

fn inject(w: &mut World) -> Result<(), Failure> {
    let ids: Vec<u64> = w.replicas.keys().copied().collect();
    let any = ids[w.rng.random_range(0..ids.len())];
    let target = if w.rng.random_bool(0.5) { w.leader().unwrap_or(any) } else { any };
    let (short, long) = (w.rng.random_range(50..1_500), w.rng.random_range(200..2_500));
    w.report.faults += 1;
    match w.rng.random_range(0..10) {
        0 | 1 => {
            w.trace(format!("fault: crash replica {target} for {short} ms"));
            w.crash(target, short)
        }
        2 => {
            w.trace(format!("fault: pause replica {target} for {long} ms"));
            if let Some(r) = w.replicas.get_mut(&target) {
                r.paused_until = w.now + long;
            }
            Ok(())
        }
        3 => {
            let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != target).collect();
            w.trace(format!("fault: replica {target} cut off from {rest:?} for {long} ms"));
            w.net.partition(&[target], &rest);
            w.faults.heal_partition_at = Some(w.now + long);
            Ok(())
        }
        4 => {
            let weather = super::net::Weather {
                drop_rate: w.rng.random_range(0.05..0.3),
                delay_ms: (1, w.rng.random_range(10..80)),
            };
            w.trace(format!("fault: a lossy network for {long} ms: {weather:?}"));
            w.net.weather = weather;
            w.faults.calm_at = Some(w.now + long);
            Ok(())
        }
        5 => {
            w.trace(format!("fault: the disk of replica {target} is slow for {long} ms"));
            if let Some(r) = w.replicas.get_mut(&target) {
                r.slow_disk_until = w.now + long;
            }
            Ok(())
        }
        6 => {
            w.trace(format!("fault: the power of every replica is cut for {short} ms"));
            ids.iter().try_for_each(|id| w.crash(*id, short))
        }
        7 => rot(w, any, short),
        n if w.agents.len() > 0 => {
            let agent = w.rng.random_range(0..w.agents.len());
            if n == 8 {
                w.trace(format!("fault: agent {agent} cut off for {long} ms"));
                w.agents.silence(agent, w.now + long);
            } else {
                w.trace(format!("fault: agent {agent} restarts; its replicas are gone"));
                w.agents.restart(agent);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Crashes replica `id` and flips a byte of an entry its disk holds, when every other replica
/// runs (a replacement needs their quorum); a plain crash otherwise.
fn rot(w: &mut World, id: u64, down_ms: u64) -> Result<(), Failure> {
    let others_up = w.replicas.iter().all(|(i, r)| *i == id || (r.node.is_some() && r.paused_until <= w.now));
    w.crash(id, down_ms)?;
    if !others_up {
        w.trace(format!("fault: crash replica {id} for {down_ms} ms"));
        return Ok(());
    }
    let disk = w.replicas[&id].disk.clone();
    let (first, last) = (disk.first_index().unwrap_or(1), disk.last_index().unwrap_or(0));
    if first > last {
        w.trace(format!("fault: crash replica {id} for {down_ms} ms (its log is empty: nothing to rot)"));
        return Ok(());
    }
    let (index, at) = (w.rng.random_range(first..=last), w.rng.random_range(0..64));
    let flipped = disk.flip_entry_byte(index, at).map_err(|e| w.failure(format!("flipping a byte: {e}")))?;
    w.trace(format!("fault: crash replica {id}, flip a byte of its log entry {index}"));
    w.replicas.get_mut(&id).expect("listed").rotten = flipped;
    Ok(())
}

/// Starts the replacement of replica `id`, which refused to start.
pub(super) fn replace(w: &mut World, id: u64) {
    w.faults.replacing = Some(Replacing { id, removed: false, change: None, retry_at: w.now });
    w.trace(format!("replacing replica {id}: remove it, empty its disk, join, add it"));
}

/// One step of a replacement: ask the leader for the next membership change, or take its
/// answer.
fn drive_replacement(w: &mut World) -> Result<(), Failure> {
    let Some(mut rep) = w.faults.replacing.take() else { return Ok(()) };
    if let Some(rx) = rep.change.as_mut() {
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {
                w.faults.replacing = Some(rep);
                return Ok(());
            }
            Ok(Ok(())) => return changed(w, rep),
            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                rep.change = None;
                rep.retry_at = w.now + 50;
            }
        }
    }
    let member = w.leader().and_then(|l| w.replicas[&l].handle()).map(|h| h.fsm().members.contains_key(&rep.id));
    match (member, rep.removed) {
        (Some(false), false) | (Some(true), true) => return changed(w, rep),
        _ => {}
    }
    if rep.change.is_none() && w.now >= rep.retry_at {
        if let Some(h) = w.leader().and_then(|l| w.replicas[&l].handle()) {
            let change = match rep.removed {
                false => Membership::Remove { id: rep.id },
                true => Membership::Add { id: rep.id, address: format!("sim-{}", rep.id) },
            };
            let (reply, rx) = oneshot::channel();
            let _ = h.inbox().send(Input::Change { change, asker: None, reply });
            rep.change = Some(rx);
        }
    }
    w.faults.replacing = Some(rep);
    Ok(())
}

/// The replacement's change was applied: go on to the next step, or finish.
fn changed(w: &mut World, mut rep: Replacing) -> Result<(), Failure> {
    if rep.removed {
        w.trace(format!("replica {} was added again: replaced", rep.id));
        return Ok(());
    }
    w.trace(format!("replica {} removed; its disk emptied, it joins", rep.id));
    let disk = Disk::empty().map_err(|e| w.failure(format!("an empty disk: {e}")))?;
    let r = w.replicas.get_mut(&rep.id).expect("replaced replicas stay listed");
    r.disk = disk;
    r.restart_at = None;
    w.start(rep.id, true)?;
    rep.removed = true;
    rep.change = None;
    rep.retry_at = w.now;
    w.faults.replacing = Some(rep);
    Ok(())
}

/// Ends every fault: partitions and loss healed, pauses and slow disks over, crashed replicas
/// started.
pub(super) fn heal(w: &mut World) {
    w.net.heal();
    w.net.weather = super::net::Weather::default();
    w.faults.heal_partition_at = None;
    w.faults.calm_at = None;
    let now = w.now;
    for i in 0..w.agents.len() {
        w.agents.silence(i, 0);
    }
    for r in w.replicas.values_mut() {
        r.paused_until = 0;
        r.slow_disk_until = 0;
        if r.restart_at.is_some() {
            r.restart_at = Some(now);
        }
    }
    w.trace("every fault healed".into());
}
