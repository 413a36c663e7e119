//! Memory per pending job: the bytes the allocator holds for a state of 10,000 nodes with and
//! without 100,000 pending jobs (counted by `stats_alloc`), and the difference per job.

use qm_benches::{build, Fleet};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn held(f: Fleet) -> usize {
    let region = Region::new(GLOBAL);
    let state = build(f);
    let c = region.change();
    drop(state);
    (c.bytes_allocated + c.bytes_reallocated.max(0) as usize).saturating_sub(c.bytes_deallocated)
}

fn main() {
    let empty = held(Fleet { jobs: 0, ..Fleet::LARGE });
    let full = held(Fleet::LARGE);
    let per_job = (full - empty) as f64 / Fleet::LARGE.jobs as f64;
    println!("state with 10,000 nodes and no jobs: {:.1} MiB", empty as f64 / 1048576.0);
    println!("state with 100,000 pending jobs:     {:.1} MiB", full as f64 / 1048576.0);
    println!("memory per pending job:              {per_job:.0} bytes");
}
