//! The simulated world: replicas on their disks, the network, clients, agents and faults,
//! advanced one millisecond per step from one seeded generator.

use super::agents::Agents;
use super::check::Checker;
use super::clients::Clients;
use super::disk::Disk;
use super::faults::Faults;
use super::net::{Net, SimTransport};
use super::{Config, Report};
use crate::node::{Handle, Input, NodeConfig, SteppedNode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Raft ticks, in simulated ms.
const TICK_MS: u64 = 10;
/// Ticks without a leader before an election.
const ELECTION_TICKS: usize = 10;
/// How often each replica's clock changes its rate, in ms.
const DRIFT_PERIOD_MS: u64 = 250;

/// A broken guarantee: the seed that found it, when, and what broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The run's seed (it replays the run).
    pub seed: u64,
    /// Simulated time, in ms.
    pub at_ms: u64,
    /// What broke.
    pub what: String,
    /// The last events before it.
    pub recent: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} at {} ms: {}", self.seed, self.at_ms, self.what)?;
        writeln!(
            f,
            "replay it: QM_DST_SEED={} cargo test -p qm-scheduler --test dst a_seed_replays -- --nocapture",
            self.seed
        )?;
        writeln!(f, "last events:")?;
        self.recent.iter().try_for_each(|line| writeln!(f, "  {line}"))
    }
}

/// One replica: its disk survives a crash, its node does not.
pub(super) struct Replica {
    pub disk: Disk,
    pub node: Option<SteppedNode<Disk, SimTransport>>,
    /// Not turned before this time.
    pub paused_until: u64,
    /// Crashed; started again at this time.
    pub restart_at: Option<u64>,
    /// Its disk completes writes rarely until this time.
    pub slow_disk_until: u64,
    /// A stored byte was flipped: its next start must be refused.
    pub rotten: bool,
    /// Its own clock, in ms: it runs fast by a share that changes, so that replicas time out
    /// at different moments (their election timeouts are fixed in ticks).
    pub clock: u64,
    /// The chance, per step, that its clock gains a millisecond.
    pub drift: f64,
}

impl Replica {
    /// The handle of a running node.
    pub fn handle(&self) -> Option<&Handle> {
        self.node.as_ref().map(SteppedNode::handle)
    }
}

/// Everything simulated.
pub(super) struct World {
    pub config: Config,
    pub rng: StdRng,
    /// Simulated ms since the start.
    pub now: u64,
    base: Instant,
    pub replicas: BTreeMap<u64, Replica>,
    pub net: Net,
    pub clients: Clients,
    pub agents: Agents,
    pub faults: Faults,
    pub check: Checker,
    pub report: Report,
    /// The leader and term last traced.
    leader: (u64, u64),
}

impl World {
    /// Replicas started on empty disks, nothing else yet.
    pub fn new(config: Config) -> Result<Self, Failure> {
        let mut world = Self {
            rng: StdRng::seed_from_u64(config.seed),
            now: 0,
            base: Instant::now(),
            replicas: BTreeMap::new(),
            net: Net::default(),
            clients: Clients::new(config.clients),
            agents: Agents::new(config.agents, config.devices),
            faults: Faults::default(),
            check: Checker::default(),
            report: Report::default(),
            leader: (0, 0),
            config,
        };
        for id in 1..=world.config.replicas {
            let disk = Disk::empty().map_err(|e| world.failure(format!("replica {id}: an empty disk: {e}")))?;
            let replica = Replica {
                disk,
                node: None,
                paused_until: 0,
                restart_at: None,
                slow_disk_until: 0,
                rotten: false,
                clock: 0,
                drift: 0.0,
            };
            world.replicas.insert(id, replica);
            world.start(id, false)?;
        }
        Ok(world)
    }

    /// Runs the faults, heals them, and waits for the cluster to recover.
    pub fn run(mut self) -> Result<Report, Failure> {
        while self.now < self.config.fault_ms {
            self.step()?;
        }
        super::faults::heal(&mut self);
        self.clients.settle();
        let until = self.now + self.config.settle_ms;
        while !super::check::recovered(&self) {
            if self.now >= until {
                let what =
                    format!("no recovery within {} ms of the faults healing: {}", self.config.settle_ms, self.stuck());
                return Err(self.failure(what));
            }
            self.step()?;
        }
        super::check::at_end(&mut self)?;
        self.report.messages = self.net.sent();
        Ok(self.report)
    }

    /// One simulated millisecond.
    fn step(&mut self) -> Result<(), Failure> {
        self.net.take_sent(self.now, &mut self.rng);
        self.deliver();
        super::clients::act(self)?;
        super::faults::act(self)?;
        self.restart_due()?;
        super::agents::act(self);
        self.turn_replicas()?;
        self.trace_leader();
        super::check::after_step(self)?;
        self.now += 1;
        Ok(())
    }

    /// Hands each message that arrives now to its replica, if it runs.
    fn deliver(&mut self) {
        for m in self.net.arriving(self.now) {
            if let Some(h) = self.replicas.get(&m.to).and_then(Replica::handle) {
                let _ = h.inbox().send(Input::Raft(Box::new(m)));
            }
        }
    }

    fn turn_replicas(&mut self) -> Result<(), Failure> {
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        for id in ids {
            let (now, base, rng) = (self.now, self.base, &mut self.rng);
            let r = self.replicas.get_mut(&id).expect("listed");
            if now % DRIFT_PERIOD_MS == 0 {
                r.drift = rng.random_range(0.0..0.5);
            }
            r.clock += 1 + u64::from(rng.random_bool(r.drift));
            let at = base + Duration::from_millis(r.clock);
            let Some(node) = r.node.as_mut().filter(|_| r.paused_until <= now) else { continue };
            let pending = node.pending_writes();
            let finish = if r.slow_disk_until > now { 0.02 } else { 0.6 };
            if pending > 0 && rng.random_bool(finish) {
                node.complete_writes(rng.random_range(1..=pending));
            }
            if !node.turn(at) {
                let why = node.handle().status().fatal.unwrap_or_else(|| "stopped".into());
                return Err(self.failure(format!("replica {id} stopped on its own: {why}")));
            }
        }
        Ok(())
    }

    /// The `Instant` of simulated time 0.
    pub fn base_instant(&self) -> Instant {
        self.base
    }

    /// Starts replica `id` on its disk; `join`: as a new member with no configuration.
    pub fn start(&mut self, id: u64, join: bool) -> Result<(), Failure> {
        let voters = if join { Vec::new() } else { (1..=self.config.replicas).collect() };
        let mut config = NodeConfig::new(id, voters);
        config.tick = Duration::from_millis(TICK_MS);
        config.election_ticks = ELECTION_TICKS;
        config.deadline = Duration::from_millis(1_500);
        config.snapshot_every = 300;
        config.keep_entries = 50;
        config.incarnation = self.rng.random();
        config.peers = (1..=self.config.replicas).map(|p| (p, format!("sim-{p}"))).collect();
        let outbox = self.net.outbox.clone();
        let r = self.replicas.get_mut(&id).expect("a replica of the world");
        let at = self.base + Duration::from_millis(r.clock);
        match SteppedNode::start(config, r.disk.clone(), |_| SimTransport::new(outbox), at) {
            Ok(node) if !r.rotten => {
                r.node = Some(node);
                self.trace(format!("replica {id} started{}", if join { " (joining)" } else { "" }));
                Ok(())
            }
            Ok(_) => Err(self.failure(format!("replica {id} started on a disk with a flipped byte"))),
            Err(e) if r.rotten => {
                r.rotten = false;
                self.trace(format!("replica {id} refused to start: {e}"));
                super::faults::replace(self, id);
                Ok(())
            }
            Err(e) => Err(self.failure(format!("replica {id} could not start: {e}"))),
        }
    }

    /// Crashes replica `id`: its node is gone and its disk keeps only what was synced.
    pub fn crash(&mut self, id: u64, down_ms: u64) -> Result<(), Failure> {
        let r = self.replicas.get_mut(&id).expect("a replica of the world");
        if r.node.take().is_none() {
            return Ok(());
        }
        match r.disk.after_crash() {
            Ok(disk) => r.disk = disk,
            Err(e) => return Err(self.failure(format!("replica {id}: reopening its disk: {e}"))),
        }
        r.restart_at = Some(self.now + down_ms);
        r.paused_until = 0;
        self.agents.forget(id);
        Ok(())
    }

    fn restart_due(&mut self) -> Result<(), Failure> {
        let due: Vec<u64> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.restart_at.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.replicas.get_mut(&id).expect("listed").restart_at = None;
            self.start(id, false)?;
        }
        Ok(())
    }

    /// The replica that leads, as the replicas say (the one of the highest term).
    pub fn leader(&self) -> Option<u64> {
        self.replicas
            .iter()
            .filter_map(|(id, r)| r.handle().map(|h| (*id, h.status())))
            .filter(|(id, s)| s.leader == *id)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn trace_leader(&mut self) {
        let Some(id) = self.leader() else { return };
        let term = self.replicas[&id].handle().map_or(0, |h| h.status().term);
        if (id, term) != self.leader {
            self.leader = (id, term);
            self.trace(format!("replica {id} leads in term {term}"));
        }
    }

    /// Records an event.
    pub fn trace(&mut self, line: String) {
        self.report.trace.push(format!("{:>6} {line}", self.now));
    }

    /// A failure now, with the recent events.
    pub fn failure(&self, what: String) -> Failure {
        let recent = self.report.trace.iter().rev().take(30).rev().cloned().collect();
        Failure { seed: self.config.seed, at_ms: self.now, what, recent }
    }

    /// What keeps the cluster from recovering, for the failure.
    fn stuck(&self) -> String {
        let statuses: Vec<String> = self
            .replicas
            .iter()
            .map(|(id, r)| match r.handle() {
                Some(h) => {
                    let s = h.status();
                    format!("{id}: leader {} term {} commit {} applied {}", s.leader, s.term, s.commit, s.applied)
                }
                None => format!("{id}: down"),
            })
            .collect();
        format!("{}; {}", statuses.join(", "), self.clients.describe())
    }
}
