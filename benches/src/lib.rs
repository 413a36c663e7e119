//! Workloads for the benchmarks: a large fleet and queue, built from a seed.
//!
//! Module map: this file, which `benches/schedule.rs` (criterion) and `benches/memory.rs`
//! (a driver that prints bytes per pending job) use; and [`procfs`], the CPU time and memory of
//! processes and latency percentiles, which the load drivers (`src/bin/`) print; and
//! [`nemesis`], faults on a real cluster under a workload, checked against what was
//! acknowledged (the `qm_nemesis` driver and a short run in the CLI's tests).

pub mod nemesis;

use qm_core::{
    AcceleratorKind, Command, Decisions, Device, DeviceId, DeviceRequest, Flavor, FlavorQuota, GangSpec, Health,
    JobSpec, NodeId, NodeSpec, PriorityClass, State, StopSignal, TeamId, TeamSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// GPU models of the fleet and the share of nodes of each, in percent.
pub const MODELS: [(&str, u32); 4] =
    [("nvidia-h100-80gb-hbm3", 40), ("nvidia-a100-sxm4-80gb", 30), ("nvidia-l40s", 20), ("nvidia-v100-sxm2-32gb", 10)];

/// Size of a benchmark fleet and queue.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    /// Nodes of 8 GPUs each.
    pub nodes: usize,
    /// Teams sharing them.
    pub teams: usize,
    /// Pending jobs.
    pub jobs: usize,
    /// Seed of everything random.
    pub seed: u64,
}

impl Fleet {
    /// The figure of the issue: 10,000 nodes x 8 GPUs, 20 teams, 100,000 pending jobs.
    pub const LARGE: Fleet = Fleet { nodes: 10_000, teams: 20, jobs: 100_000, seed: 42 };
}

fn node(name: String, model: &str, rack: usize) -> NodeSpec {
    let devices = (0..8)
        .map(|i| Device {
            id: DeviceId::from(format!("{name}-gpu{i}")),
            kind: AcceleratorKind::Gpu,
            vendor: "nvidia".to_owned(),
            model: model.to_owned(),
            memory_mib: 81_920,
            health: Health::Healthy,
            numa_node: Some(i / 4),
            pci_bus_id: None,
            interconnect_group: Some("nvlink0".to_owned()),
        })
        .collect();
    let labels = BTreeMap::from([("rack".to_owned(), format!("rack-{rack}"))]);
    NodeSpec { id: NodeId::from(name), labels, devices, cpu_millis: 192_000, mem_mib: 2_000_000 }
}

fn model_of(i: usize, nodes: usize) -> &'static str {
    let mut edge = 0;
    for (m, pct) in MODELS {
        edge += nodes * pct as usize / 100;
        if i < edge {
            return m;
        }
    }
    MODELS[MODELS.len() - 1].0
}

fn job(rng: &mut StdRng, teams: usize) -> JobSpec {
    let count = [1, 1, 2, 4, 8, 8][rng.random_range(0..6)];
    let replicas = if count >= 4 { [1, 1, 1, 2, 4, 8][rng.random_range(0..6)] } else { 1 };
    let first = MODELS[rng.random_range(0..MODELS.len())].0;
    let models = if rng.random_bool(0.3) {
        vec![first.to_owned(), MODELS[rng.random_range(0..MODELS.len())].0.to_owned()]
    } else {
        vec![first.to_owned()]
    };
    let mut models = models;
    models.dedup();
    JobSpec {
        name: format!("job-{}", rng.random::<u32>()),
        team: TeamId::from(format!("team-{:02}", rng.random_range(0..teams))),
        priority_class: Some(["batch", "default", "production"][rng.random_range(0..3)].to_owned()),
        gang: GangSpec {
            replicas,
            devices: DeviceRequest { kind: AcceleratorKind::Gpu, models, count },
            cpu_millis: 4_000 * u64::from(count),
            mem_mib: 32_768 * u64::from(count),
        },
        command: vec!["python".to_owned(), "train.py".to_owned()],
        env: BTreeMap::new(),
        max_runtime_ms: None,
        preemptible: true,
        stop_signal: StopSignal::Term,
        grace_ms: 30_000,
        max_retries: 3,
        runtime_estimate_ms: None,
    }
}

/// Builds the state: nodes, teams with an equal share of each model, and the pending jobs.
pub fn build(f: Fleet) -> State {
    let mut s = State::new();
    for (name, value) in [("batch", 0), ("default", 100), ("production", 1000)] {
        s.apply(Command::SetPriorityClass { class: PriorityClass { name: name.to_owned(), value } }).expect("class");
    }
    let mut per_model: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..f.nodes {
        let model = model_of(i, f.nodes);
        *per_model.entry(model).or_default() += 8;
        s.apply(Command::RegisterNode { node: node(format!("node-{i:05}"), model, i / 32), at_ms: 0 }).expect("node");
    }
    for t in 0..f.teams {
        let quotas = per_model
            .iter()
            .map(|(m, gpus)| {
                let q = FlavorQuota { nominal: gpus / f.teams as u32, borrowing_limit: None, lending_limit: None };
                (Flavor::new(AcceleratorKind::Gpu, m), q)
            })
            .collect();
        let team = TeamSpec { name: TeamId::from(format!("team-{t:02}")), weight_milli: 1000, quotas };
        s.apply(Command::SetTeam { team }).expect("team");
    }
    let mut rng = StdRng::seed_from_u64(f.seed);
    let specs: Vec<JobSpec> = (0..f.jobs).map(|_| job(&mut rng, f.teams)).collect();
    for (i, batch) in specs.chunks(qm_core::limits::MAX_BATCH).enumerate() {
        s.apply(Command::Submit { jobs: batch.to_vec(), at_ms: i as u64 }).expect("submit");
    }
    s
}

/// Applies a plan's decisions, as the replicas do once it commits.
pub fn apply(state: &mut State, decisions: Decisions, at_ms: u64) {
    let out = state.apply(Command::ApplyPlan { decisions, at_ms }).expect("apply plan");
    assert!(out.rejected.is_empty(), "a fresh plan is never stale: {:?}", out.rejected.first());
}

/// What the load drivers read of the processes they start, and how they summarise latencies.
pub mod procfs {
    use std::time::Duration;

    /// CPU seconds (user and system, all threads) process `pid` has used, from
    /// `/proc/PID/stat`, in clock ticks of 1/100 s (the `USER_HZ` of Linux on every
    /// architecture it runs on here).
    pub fn cpu_seconds(pid: &str) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / 100.0
    }

    /// Resident memory of process `pid`, KiB.
    pub fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The `p` quantile (0 to 1) of sorted latencies, in ms; NaN when there are none.
    pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    }
}
