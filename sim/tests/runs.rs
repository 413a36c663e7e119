//! Whole runs on small workloads, with the invariants checked after every event.

use qm_sim::cluster::Cluster;
use qm_sim::engine::{FailureModel, RunConfig};
use qm_sim::output::{jobs_csv, write_run};
use qm_sim::policy::{Placement, Policy};
use qm_sim::trace::synthetic::Synthetic;
use qm_sim::trace::{read, Format, TraceJob};
use qm_sim::{simulate, Report, SimError};
use std::path::PathBuf;

fn trace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../traces").join(path)
}

fn workload(seed: u64) -> Vec<TraceJob> {
    let spec: Synthetic = toml::from_str(
        r#"
        jobs = 300
        arrival = { kind = "poisson", per_hour = 40.0 }
        duration = { kind = "lognormal", median_s = 1800.0, sigma = 1.0 }
        gpus = [[1, 4.0], [2, 2.0], [4, 2.0], [8, 1.0], [16, 0.5]]
        teams = [["vision", 1.0], ["nlp", 1.0], ["speech", 1.0]]
        "#,
    )
    .unwrap();
    spec.generate(seed).unwrap()
}

fn contended() -> Cluster {
    let file = r#"
        [[pool]]
        name = "n"
        count = 4
        kind = "gpu"
        model = "h100"
        devices = 8
        racks = ["a", "b"]

        [[team]]
        name = "vision"
        [[team.quota]]
        flavor = "gpu/h100"
        nominal = 16

        [[team]]
        name = "nlp"
        [[team.quota]]
        flavor = "gpu/h100"
        nominal = 8

        [[team]]
        name = "speech"
        [[team.quota]]
        flavor = "gpu/h100"
        nominal = 8
        borrowing_limit = 8

        [policy]
        min_runtime_ms = 120000
    "#;
    // One file per call: the tests run on several threads of one process, and one writing the
    // file while another read it made the reader see a cut file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qm-sim-runs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("cluster-{call}.toml"));
    std::fs::write(&path, file).unwrap();
    Cluster::load(path.to_str().unwrap()).unwrap()
}

fn run(cluster: &Cluster, jobs: Vec<TraceJob>, config: &RunConfig) -> Report {
    simulate(cluster, jobs, 0, config, |_, _| {}).expect("the run completes with its invariants")
}

fn checked(seed: u64) -> RunConfig {
    RunConfig {
        seed,
        check: true,
        failures: Some(FailureModel { mtbf_s: 3.0 * 86_400.0, repair_s: 1800.0 }),
        ..RunConfig::default()
    }
}

#[test]
fn the_same_seed_gives_byte_identical_outputs() {
    let cluster = contended();
    let (a, b) = (run(&cluster, workload(5), &checked(5)), run(&cluster, workload(5), &checked(5)));
    assert_eq!(jobs_csv(&a), jobs_csv(&b));
    assert_eq!(serde_json::to_string(&a.summary).unwrap(), serde_json::to_string(&b.summary).unwrap());
    let dir = std::env::temp_dir().join(format!("qm-sim-det-{}", std::process::id()));
    write_run(&dir.join("a"), &a).unwrap();
    write_run(&dir.join("b"), &b).unwrap();
    for f in ["summary.json", "jobs.csv"] {
        assert_eq!(std::fs::read(dir.join("a").join(f)).unwrap(), std::fs::read(dir.join("b").join(f)).unwrap());
    }
    let c = run(&cluster, workload(5), &checked(6));
    assert_ne!(jobs_csv(&a), jobs_csv(&c), "another seed draws other node failures");
}

#[test]
fn the_production_policy_reclaims_and_every_job_completes() {
    let report = run(&contended(), workload(1), &RunConfig { check: true, ..RunConfig::default() });
    let s = &report.summary;
    assert_eq!(s.jobs_completed, s.jobs);
    assert!(s.preemptions > 0, "contended teams reclaim their nominal");
    assert!(s.gpu_hours_lost_to_preemption > 0.0);
    assert!(s.gpu_utilization > 0.3 && s.gpu_utilization <= 1.0, "{}", s.gpu_utilization);
    assert_eq!(s.teams.len(), 3);
}

#[test]
fn baselines_never_preempt_and_strict_fifo_waits_longest() {
    let cluster = contended();
    let summary =
        |policy| run(&cluster, workload(2), &RunConfig { policy, check: true, ..RunConfig::default() }).summary;
    let (strict, backfill, sjf) = (summary(Policy::StrictFifo), summary(Policy::Backfill), summary(Policy::Sjf));
    assert_eq!(strict.preemptions + backfill.preemptions + sjf.preemptions, 0);
    assert!(strict.avg_wait_s >= backfill.avg_wait_s, "backfill only adds placements");
    assert!(sjf.avg_jct_s <= strict.avg_jct_s);
}

#[test]
fn least_attained_service_preempts_long_runners_for_new_jobs() {
    let report =
        run(&contended(), workload(2), &RunConfig { policy: Policy::Las, check: true, ..RunConfig::default() });
    assert_eq!(report.summary.jobs_completed, report.summary.jobs);
    assert!(report.summary.preemptions > 0);
}

#[test]
fn node_failures_requeue_work_and_lose_it() {
    let config = RunConfig { failures: Some(FailureModel { mtbf_s: 86_400.0, repair_s: 3600.0 }), ..checked(9) };
    let report = run(&contended(), workload(3), &config);
    assert_eq!(report.summary.jobs_completed, report.summary.jobs);
    assert!(report.summary.gpu_hours_lost_to_failures > 0.0);
}

#[test]
fn jobs_that_can_never_fit_are_reported_not_simulated() {
    let mut jobs = workload(4);
    jobs[10].gpus = 64;
    let report = run(&contended(), jobs, &RunConfig { check: true, ..RunConfig::default() });
    assert_eq!(report.unfit.len(), 1);
    assert!(report.unfit[0].reason.contains("64 GPUs"), "{}", report.unfit[0].reason);
    assert_eq!(report.summary.jobs_unfit, 1);
    assert_eq!(report.summary.jobs, 299);
}

#[test]
fn a_team_missing_from_the_cluster_file_is_an_error() {
    let mut jobs = workload(4);
    jobs[3].team = "robotics".into();
    let err = simulate(&contended(), jobs, 0, &RunConfig::default(), |_, _| {}).unwrap_err();
    assert!(matches!(err, SimError::UnknownTeam { ref team, .. } if team == "robotics"), "{err}");
}

#[test]
fn every_shipped_trace_reads() {
    assert_eq!(read(&trace_file("tiresias/60_job.csv"), Format::Tiresias, false).unwrap().jobs.len(), 60);
    assert_eq!(read(&trace_file("gavel/max_min_fairness.trace"), Format::Gavel, false).unwrap().jobs.len(), 96);
    assert_eq!(read(&trace_file("gavel/minimize_makespan.trace"), Format::Gavel, false).unwrap().jobs.len(), 100);
    let swf = read(&trace_file("swf-nasa-ipsc/NASA-iPSC-1993-3.1-cln.swf"), Format::Swf, false).unwrap();
    assert_eq!(swf.jobs.len(), 18_239);
    assert_eq!(read(&trace_file("philly/philly.csv"), Format::Philly, false).unwrap().jobs.len(), 82_247);
}

#[test]
fn the_tiresias_sample_runs_on_nodes_and_on_a_pool() {
    let jobs = read(&trace_file("tiresias/60_job.csv"), Format::Tiresias, false).unwrap().jobs;
    let cluster = Cluster::load("4x4").unwrap();
    for placement in [Placement::Nodes, Placement::Pool] {
        let config = RunConfig { placement, check: true, ..RunConfig::default() };
        assert_eq!(run(&cluster, jobs.clone(), &config).summary.jobs_completed, 60);
    }
}
