//! An in-process network between replicas of one test: every message goes through a filter that
//! can cut links (partitions), drop a share of messages (seeded) and delay them.

use super::Transport;
use crate::node::{Inbox, Input};
use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
struct Net {
    inboxes: BTreeMap<u64, Inbox>,
    cut: BTreeSet<(u64, u64)>,
    drop_rate: f64,
    delay: Duration,
    rng: StdRng,
}

/// The network; clone it to share.
#[derive(Clone, Debug)]
pub struct MemNet {
    net: Arc<Mutex<Net>>,
}

impl MemNet {
    /// A network whose random drops follow `seed`.
    pub fn new(seed: u64) -> Self {
        let net = Net {
            inboxes: BTreeMap::new(),
            cut: BTreeSet::new(),
            drop_rate: 0.0,
            delay: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
        };
        Self { net: Arc::new(Mutex::new(net)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects a replica's inbox (again, after a restart).
    pub fn attach(&self, id: u64, inbox: Inbox) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// The transport of replica `id`.
    pub fn transport(&self, id: u64) -> MemTransport {
        MemTransport { id, net: self.clone() }
    }

    /// Cuts every link between the groups (links inside a group stay).
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut net = self.lock();
        net.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in *a {
                    for &y in *b {
                        net.cut.insert((x, y));
                        net.cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Drops this share of messages, at random.
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = rate;
    }

    /// Delays every message by this much.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    fn deliver(&self, from: u64, m: Message) {
        let mut net = self.lock();
        let to = m.to;
        if net.cut.contains(&(from, to)) {
            return;
        }
        let rate = net.drop_rate;
        if rate > 0.0 && net.rng.random_bool(rate.min(1.0)) {
            return;
        }
        let Some(inbox) = net.inboxes.get(&to).cloned() else { return };
        let delay = net.delay;
        drop(net);
        if delay.is_zero() {
            let _ = inbox.send(Input::Raft(Box::new(m)));
        } else {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = inbox.send(Input::Raft(Box::new(m)));
            });
        }
    }
}

/// One replica's end of a `MemNet`.
#[derive(Debug)]
pub struct MemTransport {
    id: u64,
    net: MemNet,
}

impl Transport for MemTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            self.net.deliver(self.id, m);
        }
    }

    fn set_peer(&mut self, _id: u64, _address: &str) {}

    fn remove_peer(&mut self, _id: u64) {}
}
