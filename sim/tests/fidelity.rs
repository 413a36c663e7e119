//! Fidelity: the calibration point of `docs/simulator.md`. The Tiresias simulator's
//! strict FIFO with `count` placement on Philly virtual cluster 103959 (1,934 jobs) and 32 GPUs
//! gives an average JCT of 97,749 s and a makespan of 7,914,913 s; ours, with strict FIFO and
//! `pool` placement, must be within 0.5% of both.

use qm_sim::cluster::Cluster;
use qm_sim::engine::RunConfig;
use qm_sim::policy::{Placement, Policy};
use qm_sim::trace::{read, Format};
use std::path::PathBuf;

fn philly() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../traces/philly/philly.csv")
}

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    ((got - want) / want).abs() <= tolerance
}

#[test]
fn strict_fifo_pool_matches_the_tiresias_simulator_on_vc_103959() {
    let trace = read(&philly(), Format::Philly, false).expect("philly.csv reads");
    let jobs: Vec<_> = trace.jobs.into_iter().filter(|j| j.team.as_str() == "103959").collect();
    assert_eq!(jobs.len(), 1934);
    let jobs = qm_sim::trace::rebase(jobs);
    let cluster = Cluster::load("8x4").unwrap();
    let config =
        RunConfig { policy: Policy::StrictFifo, placement: Placement::Pool, check: true, ..RunConfig::default() };
    let report = qm_sim::simulate(&cluster, jobs, 0, &config, |_, _| {}).expect("the run completes");
    let s = &report.summary;
    assert_eq!(s.jobs_completed, 1934);
    assert!(within(s.avg_jct_s, 97_749.0, 0.005), "average JCT {} s, Tiresias 97,749 s", s.avg_jct_s);
    assert!(within(s.makespan_s, 7_914_913.0, 0.005), "makespan {} s, Tiresias 7,914,913 s", s.makespan_s);
    assert!(within(s.gpu_utilization, 0.609, 0.01), "utilization {}", s.gpu_utilization);
}
