//! A short nemesis run in the tests: three `qm server` processes and two `qm agent`s, four
//! clients submitting, cancelling and reading, and every kind of fault (the leader killed and
//! paused, a follower killed and paused, all replicas killed at once) at least once. Every
//! acknowledged job must be on every replica once, unchanged; acknowledged cancels stand;
//! linearizable reads see what was acknowledged before them; no device is held twice; the
//! cluster runs a job to the end after the faults; and the replicas agree. The longer runs
//! whose figures docs/reliability.md gives use the `qm_nemesis` driver of `benches/`.

use qm_benches::nemesis::{faults::Fault, run, Config};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_history_survives_kills_and_pauses_of_real_replicas() {
    let cfg = Config {
        qm: env!("CARGO_BIN_EXE_qm").into(),
        seed: 7,
        duration: Duration::from_secs(6),
        clients: 4,
        replicas: 3,
        agents: 2,
        tick_ms: 20,
    };
    let report = run(&cfg).await.expect("the run sets up");
    let lines: Vec<String> = report.violations.iter().map(|v| format!("{}: {}", v.kind, v.what)).collect();
    assert!(lines.is_empty(), "seed {}: {lines:#?}\n{}\nlogs: {:?}", cfg.seed, report.timeline.join("\n"), report.logs);
    for kind in [Fault::KillLeader, Fault::KillFollower, Fault::PauseLeader, Fault::PauseFollower, Fault::KillAll] {
        assert!(report.faults.get(&kind).is_some_and(|n| *n > 0), "{kind:?} was injected: {:?}", report.faults);
    }
    let h = &report.history;
    assert!(h.submitted.len() >= 20 && !h.cancelled.is_empty() && h.reads.0 > 0, "{}", report.figures());
}
