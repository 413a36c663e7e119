//! `schedule` on the fleet: 10,000 nodes x 8 GPUs of four models, 20 teams, 100,000
//! pending jobs of mixed gang sizes. Four cases:
//! - `cycle_1000`: one cycle bounded to 1,000 placements (the leader's normal cycle);
//! - `drain`: one unbounded cycle that places everything that fits (placements per second);
//! - `apply_1000`: applying the 1,000 placements on a replica (verify + commit), on a state
//!   decoded from a snapshot whose node index a cycle built, as a replica holds it (a clone of
//!   the benchmark's state would share its job chunks, and the first write to each would copy
//!   it, which a replica pays only while a snapshot of it is being encoded);
//! - `quiet_check`: what a leader pays for a periodic cycle when its last cycle decided nothing
//!   and nothing was applied since: `same_decisions_between` over the 100,000 pending jobs,
//!   instead of a cycle;
//! - `parked_cycle`: a leader's cycle (nothing to explain) once the drain's placements are
//!   applied: the fleet is full, the jobs left wait (none young enough to be a victim yet), and
//!   the cycle tries each shape once and parks the rest of the queue.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use qm_benches::{apply, build, Fleet};
use qm_core::schedule::same_decisions_between;
use qm_core::{schedule, PolicyConfig, State};
use std::hint::black_box;
use std::time::Instant;

fn bench(c: &mut Criterion) {
    let state = build(Fleet::LARGE);
    let bounded = PolicyConfig { max_placements_per_cycle: 1_000, ..PolicyConfig::default() };
    let drain =
        PolicyConfig { max_placements_per_cycle: u32::MAX, max_jobs_per_cycle: u32::MAX, ..PolicyConfig::default() };

    let started = Instant::now();
    let full = schedule(&state, &drain, 1);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "drain: {} placed of {} pending ({} considered, {} cache hits) in {:.1} ms: {:.0} placements/s",
        full.stats.placed,
        full.stats.pending,
        full.stats.considered,
        full.stats.cache_hits,
        secs * 1e3,
        f64::from(full.stats.placed) / secs
    );

    let mut g = c.benchmark_group("schedule_10k_nodes_100k_pending");
    g.sample_size(20);
    g.bench_function("cycle_1000", |b| b.iter(|| black_box(schedule(&state, &bounded, 1))));
    g.bench_function("drain", |b| b.iter(|| black_box(schedule(&state, &drain, 1))));
    g.bench_function("quiet_check", |b| b.iter(|| black_box(same_decisions_between(&state, &bounded, 1, 1_001))));
    let mut full_fleet = state.clone();
    apply(&mut full_fleet, full.decisions.clone(), 1);
    let leader = PolicyConfig { explain: false, ..PolicyConfig::default() };
    let parked = schedule(&full_fleet, &leader, 2);
    eprintln!(
        "parked_cycle: {} pending, {} examined, {} parked, {} decisions",
        parked.stats.pending,
        parked.stats.considered - parked.stats.cache_hits,
        parked.stats.parked,
        parked.decisions.placements.len() + parked.decisions.preemptions.len()
    );
    g.bench_function("parked_cycle", |b| b.iter(|| black_box(schedule(&full_fleet, &leader, 2))));
    let plan = schedule(&state, &bounded, 1);
    let bytes = state.to_bytes();
    let one = PolicyConfig { max_placements_per_cycle: 1, ..PolicyConfig::default() };
    g.bench_function("apply_1000", |b| {
        b.iter_batched_ref(
            || {
                let replica = State::from_bytes(&bytes).expect("own snapshot");
                schedule(&replica, &one, 1);
                (replica, plan.decisions.clone())
            },
            |(s, d)| apply(s, std::mem::take(d), 1),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
