//! The deterministic simulation of a cluster (`qm_scheduler::dst`) in CI: a bounded number of
//! seeds, each a run of replicas, agents and clients under faults, held to every guarantee;
//! and the replay of one seed, which must give the same trace twice. `QM_DST_SEEDS=N` runs
//! seeds 1..=N instead of the default; `QM_DST_SEED=S` replays seed S with its trace (for
//! `QM_DST_FAULT_MS` ms of faults, 8,000 by default).

use qm_scheduler::dst::{run, Config, Report};

/// Seeds run by default: every kind of fault, and the seeds that found the bugs of
/// `docs/reliability.md` (1 and 6).
const CI_SEEDS: [u64; 4] = [1, 2, 3, 6];

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn checked(config: &Config) -> Report {
    run(config).unwrap_or_else(|failure| panic!("{failure}"))
}

#[test]
fn every_seed_keeps_every_guarantee_under_faults() {
    let (mut faults, mut acknowledged, mut finished) = (0, 0, 0);
    let seeds: Vec<u64> = env("QM_DST_SEEDS").map_or(CI_SEEDS.to_vec(), |n| (1..=n).collect());
    for seed in seeds {
        let report = checked(&Config::new(seed));
        assert!(
            report.acknowledged > 20 && report.reads > 0 && report.cancelled > 0,
            "seed {seed} did work: {report:?}"
        );
        faults += report.faults;
        acknowledged += report.acknowledged;
        finished += report.finished;
        let refused = report.trace.iter().filter(|l| l.contains("refused to start")).count();
        println!(
            "seed {seed}: {} faults, {refused} refused starts, {} acknowledged, {} finished, {} waited for devices",
            report.faults, report.acknowledged, report.finished, report.waited
        );
    }
    assert!(faults > 10 && finished > 0 && acknowledged > 0);
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let seed = env("QM_DST_SEED").unwrap_or(11);
    let config = Config { fault_ms: env("QM_DST_FAULT_MS").unwrap_or(8_000), ..Config::new(seed) };
    let first = checked(&config);
    let again = checked(&config);
    for line in &first.trace {
        println!("{line}");
    }
    assert_eq!(first, again, "seed {seed} gave two different runs");
    let other = checked(&Config { seed: seed + 1, ..config });
    assert_ne!(first.trace, other.trace, "another seed, another run");
}
