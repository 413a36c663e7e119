//! The replica's snapshot on the Raft thread: a state with 1,875 nodes and 60,000 jobs (the
//! size the placement phase of `qm_load` reaches) and 60,000 remembered request ids.
//! - `cut`: what the Raft thread pays to take a consistent copy;
//! - `encode`: turning that copy into snapshot bytes (a background thread's work);
//! - `first_write_after_cut`: what the first change to a job costs while a cut shares its
//!   chunk (the chunk of 1,024 jobs is copied).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use qm_benches::{build, Fleet};
use qm_core::JobId;
use qm_scheduler::fsm::Fsm;
use std::hint::black_box;

fn fsm() -> Fsm {
    let mut fsm = Fsm { state: build(Fleet { nodes: 1_875, teams: 20, jobs: 60_000, seed: 7 }), ..Fsm::default() };
    for i in 0..60_000u64 {
        fsm.dedup.insert(format!("req-{i:016x}-{i:08}"), vec![JobId(i + 1)]);
    }
    fsm
}

fn bench(c: &mut Criterion) {
    let fsm = fsm();
    let mut g = c.benchmark_group("snapshot_1875_nodes_60k_jobs");
    g.sample_size(10);
    g.bench_function("cut", |b| b.iter(|| black_box(fsm.cut())));
    let cut = fsm.cut();
    g.bench_function("encode", |b| b.iter(|| black_box(cut.encode())));
    let table = fsm.state.jobs().clone();
    g.bench_function("first_write_after_cut", |b| {
        b.iter_batched(
            || (table.clone(), table.clone()),
            |(shared, mut live)| {
                live.get_mut(&JobId(1)).expect("job 1 exists").attempt += 1;
                (shared, live)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
