//! Golden cases: each folder of `core/testdata/` holds a cluster, teams and a queue, and the
//! plan (placements, preemptions and the reason each job stays pending) that one cycle must
//! produce, rendered as text. Run with `UPDATE_GOLDEN=1` to rewrite `expected.txt` after an
//! intended change, and review the diff.

use qm_core::scenario::{ClusterFile, JobsFile, Scenario, TeamsFile};
use qm_core::{render, schedule, verify};
use std::fs;
use std::path::Path;

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> T {
    let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

fn run_case(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
    let cluster: ClusterFile = read(&dir, "cluster.toml");
    let teams: TeamsFile = read(&dir, "teams.toml");
    let jobs: JobsFile = read(&dir, "jobs.toml");
    let scenario = Scenario::build(&cluster, &teams, &jobs).expect("scenario builds");
    let plan = schedule(&scenario.state, &scenario.policy, scenario.now_ms);
    assert!(
        verify(&plan.decisions, &scenario.state, scenario.now_ms).is_empty(),
        "{name}: the plan must pass its own verification"
    );
    let got = render::plan(&scenario.state, &plan);
    let expected_path = dir.join("expected.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected_path, &got).expect("write golden");
        return;
    }
    let expected = fs::read_to_string(&expected_path).expect("expected.txt exists; run with UPDATE_GOLDEN=1");
    assert_eq!(got, expected, "{name}: plan differs from {}", expected_path.display());
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run_case(stringify!($name)); })*
    };
}

golden!(
    reclaim,
    within_team,
    gang,
    lending_borrowing,
    unhealthy,
    cordoned,
    model_preference,
    reclaim_before_self_preemption,
    candidate_cap,
    non_preemptible_borrowing,
    within_team_while_borrowing,
    every_team_gets_a_turn,
    passed_over_jobs_take_no_turn,
    nominal_flavor_first,
    min_runtime_named,
    out_of_service_and_too_small,
    reclaim_keeps_the_victim_team_at_nominal,
    reservation_for_a_waiting_gang,
    preempted_and_stopping,
    minimal_victims_mixed,
    backfill_before_a_reservation,
    reclaim_spends_no_overage_in_vain,
);
