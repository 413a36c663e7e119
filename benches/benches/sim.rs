//! The simulator's speed on the real Philly trace (`traces/philly/philly.csv`):
//! - `strict_fifo_vc103959`: the calibration run (1,934 jobs, 8 x 4 GPUs, strict FIFO, pool);
//!   events per second are printed;
//! - `strict_fifo_philly_300x8`: all 82,247 jobs under strict FIFO on 300 x 8 GPUs;
//! - `default_philly_300x8`: all 82,247 jobs, one team per virtual cluster, under the
//!   production policy on 300 x 8 GPUs (the 5 s target).
//!
//! Peak memory per job is printed from the process's high-water mark (`VmHWM`).
//!
//! The bench uses the allocator of the `qm` binary (mimalloc), so it times what `qm sim` does.

use criterion::{criterion_group, criterion_main, Criterion};
use qm_sim::cluster::Cluster;
use qm_sim::engine::RunConfig;
use qm_sim::policy::{Placement, Policy};
use qm_sim::trace::{read, rebase, Format, TraceJob};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn philly() -> Vec<TraceJob> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces/philly/philly.csv");
    read(&path, Format::Philly, false).expect("the Philly trace reads").jobs
}

fn run(cluster: &Cluster, jobs: &[TraceJob], policy: Policy, placement: Placement) -> qm_sim::Report {
    let config = RunConfig { policy, placement, ..RunConfig::default() };
    qm_sim::simulate(cluster, jobs.to_vec(), 0, &config, |_, _| {}).expect("the run completes")
}

fn high_water_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let all = philly();
    let vc = rebase(all.iter().filter(|j| j.team.as_str() == "103959").cloned().collect());
    let small = Cluster::load("8x4").expect("cluster");
    let large = Cluster::load("300x8").expect("cluster");

    let before = high_water_kib();
    let started = Instant::now();
    let report = run(&large, &all, Policy::Default, Placement::Nodes);
    let secs = started.elapsed().as_secs_f64();
    let peak = high_water_kib().saturating_sub(before);
    eprintln!(
        "default on philly 300x8: {} events, {} cycles in {secs:.2} s; peak memory {:.0} bytes per job",
        report.output.events,
        report.output.cycles,
        peak as f64 * 1024.0 / all.len() as f64
    );
    for (name, cluster, jobs, placement) in
        [("vc103959 8x4 pool", &small, &vc, Placement::Pool), ("philly 300x8 nodes", &large, &all, Placement::Nodes)]
    {
        let started = Instant::now();
        let r = run(cluster, jobs, Policy::StrictFifo, placement);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "strict-fifo on {name}: {} events in {secs:.3} s = {:.0} events/s",
            r.output.events,
            r.output.events as f64 / secs
        );
    }

    let mut g = c.benchmark_group("sim_philly");
    g.sample_size(10);
    g.bench_function("strict_fifo_vc103959", |b| {
        b.iter(|| black_box(run(&small, &vc, Policy::StrictFifo, Placement::Pool)))
    });
    g.bench_function("strict_fifo_philly_300x8", |b| {
        b.iter(|| black_box(run(&large, &all, Policy::StrictFifo, Placement::Nodes)))
    });
    g.bench_function("default_philly_300x8", |b| {
        b.iter(|| black_box(run(&large, &all, Policy::Default, Placement::Nodes)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
