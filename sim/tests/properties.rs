//! Random small workloads, clusters, policies and failure models: every run completes every job
//! with the invariants checked after every event, and repeats itself exactly; and answering
//! provably quiet cycles without planning them changes no output.

use proptest::prelude::*;
use qm_sim::cluster::Cluster;
use qm_sim::engine::{FailureModel, RunConfig};
use qm_sim::output::jobs_csv;
use qm_sim::policy::{Placement, Policy};
use qm_sim::trace::TraceJob;

fn jobs() -> impl Strategy<Value = Vec<TraceJob>> {
    let job = (0..20_000u64, 1..7_200u64, prop::sample::select(vec![1u32, 1, 2, 3, 4, 8, 16]), 0..3usize);
    prop::collection::vec(job, 1..40).prop_map(|v| {
        let mut jobs: Vec<TraceJob> = v
            .into_iter()
            .enumerate()
            .map(|(i, (submit_s, duration_s, gpus, team))| TraceJob {
                line: i + 1,
                submit_ms: submit_s * 1000,
                duration_ms: duration_s * 1000,
                gpus,
                team: ["a", "b", "c"][team].into(),
                estimate_ms: None,
            })
            .collect();
        jobs.sort_by_key(|j| j.submit_ms);
        jobs
    })
}

fn config() -> impl Strategy<Value = RunConfig> {
    let policy = prop::sample::select(Policy::ALL.to_vec());
    let placement = prop::sample::select(vec![Placement::Nodes, Placement::Pool]);
    (policy, placement, any::<u64>(), any::<bool>()).prop_map(|(policy, placement, seed, failures)| RunConfig {
        policy,
        placement,
        seed,
        check: true,
        failures: failures.then_some(FailureModel { mtbf_s: 20_000.0, repair_s: 600.0 }),
        ..RunConfig::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_run_completes_checked_and_repeats(jobs in jobs(), config in config(), nodes in 1..5u32, gpus in prop::sample::select(vec![4u32, 8])) {
        let cluster = Cluster::uniform(nodes, gpus).unwrap();
        let run = || qm_sim::simulate(&cluster, jobs.clone(), 0, &config, |_, _| {});
        let a = run().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(a.summary.jobs_completed + a.summary.jobs_unfit, jobs.len());
        let b = run().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(jobs_csv(&a), jobs_csv(&b));
    }

    #[test]
    fn skipping_quiet_cycles_changes_nothing(jobs in jobs(), config in config(), nodes in 1..4u32) {
        let cluster = Cluster::uniform(nodes, 8).unwrap();
        let run = |skip_quiet| {
            let config = RunConfig { skip_quiet, interval_ms: 10_000, ..config.clone() };
            qm_sim::simulate(&cluster, jobs.clone(), 0, &config, |_, _| {})
        };
        let skipping = run(true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let planning = run(false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(jobs_csv(&skipping), jobs_csv(&planning));
        prop_assert_eq!(skipping.summary, planning.summary);
    }
}
