//! `qm_nemesis`: faults on a real cluster under a workload. Starts `--replicas` `qm server`s and
//! `--agents` `qm agent`s (fake GPUs) on loopback from `--qm` (a release build), runs
//! `--clients` clients that submit, cancel and read jobs for `--seconds`, while a nemesis kills
//! and pauses replicas (the leader, a follower, or all at once) from `--seed`. Then it heals
//! everything, drains the queue, runs one last job and holds every replica to what the clients
//! were told. Prints `qm_nemesis_*=` figures and every violation; exits 1 on any violation.

use qm_benches::nemesis::{run, Config};
use std::time::Duration;

#[derive(clap::Parser, Debug)]
struct Args {
    /// The `qm` binary to start (a release build).
    #[arg(long, default_value = "target/release/qm")]
    qm: std::path::PathBuf,
    /// Seed of the faults and of the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long faults are injected.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Agents, each with 4 fake GPUs.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// The replicas' Raft tick in ms (the default of `qm server`).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Print each fault as it was injected.
    #[arg(long)]
    verbose: bool,
}

#[tokio::main]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    let cfg = Config {
        qm: a.qm,
        seed: a.seed,
        duration: Duration::from_secs(a.seconds),
        clients: a.clients,
        replicas: a.replicas,
        agents: a.agents,
        tick_ms: a.tick_ms,
    };
    let report = match run(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qm_nemesis: {e}");
            std::process::exit(2);
        }
    };
    if a.verbose {
        report.timeline.iter().for_each(|l| println!("{l}"));
    }
    println!("qm_nemesis_seed={} qm_nemesis_seconds={}", cfg.seed, a.seconds);
    println!("{}", report.figures());
    for v in &report.violations {
        println!("violation ({}): {}", v.kind, v.what);
    }
    if let Some(logs) = &report.logs {
        println!("logs kept in {}", logs.display());
    }
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
