//! The simulated network: replicas' transports put messages in one outbox, and the world
//! decides, from its seed, whether each is lost and when it arrives. Links can be cut
//! (partitions), messages dropped at a rate and delayed by a spread of times, which reorders
//! them.

use crate::transport::Transport;
use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Messages sent and not yet taken by the network.
pub type Outbox = Arc<Mutex<Vec<Message>>>;

/// A replica's transport: everything goes to the shared outbox.
#[derive(Debug)]
pub struct SimTransport {
    outbox: Outbox,
}

impl SimTransport {
    /// A transport that sends into `outbox`.
    pub fn new(outbox: Outbox) -> Self {
        Self { outbox }
    }
}

impl Transport for SimTransport {
    fn send(&mut self, messages: Vec<Message>) {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).extend(messages);
    }
    fn set_peer(&mut self, _id: u64, _address: &str) {}
    fn remove_peer(&mut self, _id: u64) {}
}

/// How the network behaves now.
#[derive(Clone, Debug, PartialEq)]
pub struct Weather {
    /// Share of messages lost.
    pub drop_rate: f64,
    /// Least and greatest delay of a message, in ms.
    pub delay_ms: (u64, u64),
}

/// A calm network: nothing lost, 1-3 ms.
impl Default for Weather {
    fn default() -> Self {
        Self { drop_rate: 0.0, delay_ms: (1, 3) }
    }
}

/// The network between replicas.
#[derive(Debug, Default)]
pub struct Net {
    /// Where transports put what they send.
    pub outbox: Outbox,
    in_flight: BTreeMap<(u64, u64), Message>,
    sent: u64,
    cut: BTreeSet<(u64, u64)>,
    /// Loss and delay.
    pub weather: Weather,
}

impl Net {
    /// Takes what was sent at `now`: each message is lost, or given an arrival time.
    pub fn take_sent(&mut self, now: u64, rng: &mut StdRng) {
        let sent = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        for m in sent {
            self.sent += 1;
            if self.cut.contains(&(m.from, m.to)) || rng.random_bool(self.weather.drop_rate) {
                continue;
            }
            let (low, high) = self.weather.delay_ms;
            self.in_flight.insert((now + rng.random_range(low..=high), self.sent), m);
        }
    }

    /// The messages that arrive by `now`, in order of arrival.
    pub fn arriving(&mut self, now: u64) -> Vec<Message> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        std::mem::replace(&mut self.in_flight, later).into_values().collect()
    }

    /// Cuts every link between the two sides (both ways), keeping the links inside each.
    pub fn partition(&mut self, one: &[u64], other: &[u64]) {
        for &a in one {
            for &b in other {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    /// Mends every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}
