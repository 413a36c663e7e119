//! The replica's snapshot on the Raft thread: a state with 1,875 nodes and 60,000 jobs (the
//! size the placement phase of `qm_load` reaches) and 60,000 remembered request ids.
//! - `cut`: what the Raft thread pays to take a consistent copy;
//! - `encode`: turning that copy into snapshot bytes (a background thread's work);
//! - `first_write_after_cut`: what the first change to a job costs while a cut shares its
//!   chunk (the chunk of 1,024 jobs is copied).
//! - `request_id_check_and_insert`: what every replica pays per submission with a request id:
//!   look the id up in a full table (100,000 ids) and remember it (forgetting the oldest);
//!   `..._after_cut`: the same on a table a cut shares (the path changed is copied).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use qm_benches::{build, Fleet};
use qm_core::JobId;
use qm_scheduler::codec::Dedup;
use qm_scheduler::fsm::Fsm;
use std::hint::black_box;

fn fsm() -> Fsm {
    let mut fsm = Fsm { state: build(Fleet { nodes: 1_875, teams: 20, jobs: 60_000, seed: 7 }), ..Fsm::default() };
    for i in 0..60_000u64 {
        fsm.dedup.insert(request_id(i), vec![JobId(i + 1)]);
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
    let mut full = Dedup::default();
    for i in 0..Dedup::CAPACITY as u64 {
        full.insert(request_id(i), vec![JobId(i + 1)]);
    }
    let mut next = Dedup::CAPACITY as u64;
    let mut owned = full.clone();
    g.bench_function("request_id_check_and_insert", |b| {
        b.iter(|| {
            next += 1;
            let id = request_id(next);
            assert!(owned.get(&id).is_none());
            owned.insert(id, vec![JobId(next)]);
        })
    });
    drop(owned);
    g.bench_function("request_id_check_and_insert_after_cut", |b| {
        b.iter_batched(
            || {
                next += 1;
                (full.clone(), request_id(next), JobId(next))
            },
            |(mut table, id, job)| {
                assert!(table.get(&id).is_none());
                table.insert(id, vec![job]);
                table
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A request id shaped like a client's: a random-looking prefix and a counter.
fn request_id(i: u64) -> String {
    format!("req-{:016x}-{i:08}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

criterion_group!(benches, bench);
criterion_main!(benches);
