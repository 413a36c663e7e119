//! Deterministic simulation of a cluster: replicas, agents and clients in one thread, driven
//! from a seed. Each replica runs the real Raft loop (`node::SteppedNode`: the same code as a
//! replica's Raft thread, one turn per simulated millisecond) on the real sled store under a
//! simulated disk (`disk.rs`) that loses unsynced writes at a crash and can flip a stored
//! byte; messages cross a simulated network (`net.rs`) that drops, delays, reorders and
//! partitions. The leader runs the real scheduling cycle (`leader::plan`), and simulated
//! agents hold sessions with it through the real session logic (`service::sessions`):
//! registration, reconciliation of what they run against the state, reports of started and
//! exited replicas, and liveness (a silent node is declared lost); like the real agent, a
//! simulated one starts a replica only once its devices are free. Clients submit, cancel
//! and read, retrying with their request ids (`clients.rs`), while `faults.rs` crashes,
//! restarts, pauses, partitions, slows disks, rots a stored byte (the replica must refuse to
//! start, and is replaced as `docs/operations.md` says) and cuts every replica's power.
//!
//! After every step `check.rs` holds the cluster to its guarantees: no acknowledged job lost
//! or changed, no cancel undone, no device held by two jobs, equal state hashes at equal
//! applied indexes, linearizable reads; and, once the faults heal, progress: every replica
//! reaches the same state and a new submission is acknowledged. Nothing reads the clock
//! except once for the base of the simulated time (only differences of it are used), and all
//! randomness comes from the seed, so a seed replays a run byte for byte: the trace of two
//! runs of one seed is the same.

pub mod disk;
pub mod net;

mod agents;
mod check;
mod clients;
mod faults;
mod world;

pub use world::Failure;

/// What a run simulates.
#[derive(Clone, Debug)]
pub struct Config {
    /// Everything random follows it.
    pub seed: u64,
    /// Replicas (3 or 5).
    pub replicas: u64,
    /// Simulated time with faults, in ms; then the faults heal.
    pub fault_ms: u64,
    /// Simulated time after the faults heal, for the cluster to recover, in ms.
    pub settle_ms: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Simulated agents, each a node with `devices` GPUs.
    pub agents: usize,
    /// GPUs per agent.
    pub devices: u32,
}

impl Config {
    /// A run of seed `seed` with the defaults: 3 replicas, 2 agents of 4 GPUs, 3 clients, 20 s
    /// of faults and 10 s to recover.
    pub fn new(seed: u64) -> Self {
        Self { seed, replicas: 3, fault_ms: 20_000, settle_ms: 10_000, clients: 3, agents: 2, devices: 4 }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every event of the run, one line each (faults, leaders, acknowledgements), in order.
    pub trace: Vec<String>,
    /// Submissions acknowledged.
    pub acknowledged: usize,
    /// Cancels acknowledged.
    pub cancelled: usize,
    /// Linearizable reads answered and checked.
    pub reads: usize,
    /// Faults injected.
    pub faults: usize,
    /// Jobs that ran to completion on the simulated agents.
    pub finished: usize,
    /// Raft messages sent.
    pub messages: u64,
    /// Starts that waited for their devices: an agent still ran a replica told to stop there
    /// (a node declared lost whose replicas outlived the lease; see `docs/reliability.md`).
    pub waited: usize,
}

/// Runs one simulation; a broken guarantee is a `Failure` naming the seed, the time and what
/// broke.
pub fn run(config: &Config) -> Result<Report, Failure> {
    world::World::new(config.clone())?.run()
}
