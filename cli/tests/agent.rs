//! `qm dev` with its local agent: jobs run for real on fake GPUs, with their devices and gang
//! variables in their environment, their output readable with `qm logs`, and cancels that
//! reach the process.

mod common;

use common::{qm, qm_env, submit, text, wait_for, Dev};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::replica_logs_client::ReplicaLogsClient;
use qm_proto::v1::{ListNodesRequest, ReadLogRequest};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `qm job ID --json` once its state is one of `states` (within 30 s).
#[test]
fn a_job_runs_with_its_devices_and_its_output_is_read_back() {
    let dev = Dev::with_agent(4);
    let id = submit(&dev, &["--gpus", "2", "--name", "env", "--", "env"]);
    let job = wait_for(&dev, id, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let logs = qm(&["logs", &id.to_string(), &dev.flag()]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    let env: std::collections::BTreeMap<String, String> = text(&logs.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let gpus: Vec<&str> = env["CUDA_VISIBLE_DEVICES"].split(',').collect();
    assert_eq!(gpus.len(), 2, "{env:?}");
    assert!(gpus.iter().all(|g| g.starts_with("GPU-")), "GPU UUIDs: {env:?}");
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"]);
    assert_eq!(env["HIP_VISIBLE_DEVICES"], "", "another vendor's devices are hidden");
    let ids: Vec<&str> = ["QM_JOB_ID", "QM_REPLICA", "QM_REPLICAS", "RANK", "WORLD_SIZE", "MASTER_ADDR"]
        .iter()
        .map(|k| env[*k].as_str())
        .collect();
    assert_eq!(ids, [id.to_string().as_str(), "0", "1", "0", "1", "127.0.0.1"]);

    // The agent serves the output only to a token that may see the job's environment.
    let dir = tempfile::tempdir().unwrap();
    for (name, team) in [("own", "dev"), ("other", "research")] {
        let file = dir.path().join(name);
        let args = ["admin", "tokens", "create", name, "--team", team, "--out", file.to_str().unwrap(), &dev.flag()];
        assert!(qm(&args).status.success());
    }
    let logs_as = |name: &str| {
        let file = dir.path().join(name);
        qm_env(&["logs", &id.to_string(), &dev.flag()], &[("QM_TOKEN_FILE", file.to_str().unwrap())])
    };
    assert_eq!(text(&logs_as("own").stdout), text(&logs.stdout), "a member of the job's team reads it");
    let other = logs_as("other");
    assert_eq!(other.status.code(), Some(5), "{}", text(&other.stderr));
    assert!(text(&other.stderr).contains("may not read the output of job"), "{}", text(&other.stderr));
    assert!(other.stdout.is_empty());
    let forged = qm_env(&["logs", &id.to_string(), &dev.flag()], &[("QM_TOKEN", "qm_forged")]);
    assert_eq!(forged.status.code(), Some(5), "{}", text(&forged.stderr));
    let token = std::fs::read_to_string(&dev.token_file).unwrap();
    let dialer = qm_proto::tls::Dialer::trusting(Some(&std::fs::read(&dev.ca).unwrap()));
    let asked = tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let channel = dialer.endpoint(&dev.addr).unwrap().connect().await.unwrap();
        let bearer = qm_proto::auth::Bearer::new(Some(&token)).unwrap();
        let mut admin = AdminServiceClient::with_interceptor(channel, bearer);
        let nodes = admin.list_nodes(ListNodesRequest::default()).await.unwrap().into_inner().nodes;
        let agent = nodes[0].inventory.as_ref().unwrap().labels["qm/address"].clone();
        let mut logs = ReplicaLogsClient::new(dialer.endpoint(&agent).unwrap().connect().await.unwrap());
        logs.read(ReadLogRequest { job_id: id, ..ReadLogRequest::default() }).await.map(drop)
    });
    assert_eq!(asked.unwrap_err().code(), tonic::Code::Unauthenticated, "the agent's port without a token");
}

#[test]
fn a_failing_job_fails_and_a_cancelled_one_is_signalled() {
    let dev = Dev::with_agent(2);
    let failing = submit(&dev, &["--name", "bad", "--", "sh", "-c", "echo trying; exit 3"]);
    let job = wait_for(&dev, failing, &["failed"]);
    assert!(job["message"].as_str().is_some_and(|m| m.contains("exited with code 3")), "{job}");
    let long = submit(
        &dev,
        &["--name", "long", "--", "sh", "-c", "trap 'echo stopping; exit 0' TERM; echo up; sleep 60 & wait"],
    );
    wait_for(&dev, long, &["running"]);
    let until = Instant::now() + Duration::from_secs(30);
    while !text(&qm(&["logs", &long.to_string(), &dev.flag()]).stdout).contains("up") {
        assert!(Instant::now() < until, "the job never printed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(qm(&["cancel", &long.to_string(), &dev.flag()]).status.success());
    wait_for(&dev, long, &["cancelled"]);
    let logs = text(&qm(&["logs", &long.to_string(), &dev.flag()]).stdout);
    assert_eq!(logs, "up\nstopping\n", "the job got its signal and stopped on its own");
}

#[test]
fn agent_probe_prints_the_inventory_and_says_why_a_probe_found_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inv.toml");
    let device = "[[device]]\nid = \"/dev/accel0\"\nkind = \"tpu\"\nvendor = \"google\"\nmodel = \"google-tpu-v5e\"\n";
    std::fs::write(&inventory, device).unwrap();
    let out = qm(&["agent", "probe", "--inventory", inventory.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let probed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probed["devices"][0]["flavor"], "tpu/google-tpu-v5e");
    assert_eq!(probed["devices"][0]["health"], "healthy");
    let nvml_notes =
        probed["notes"].as_array().unwrap().iter().filter(|n| n.as_str().unwrap().starts_with("nvml: ")).count();
    assert!(nvml_notes <= 1, "NVML found devices, or one note says why not: {probed}");
    let table = text(&qm(&["agent", "probe", "--no-nvml", "--no-pci"]).stdout);
    assert!(table.starts_with("DEVICE") && table.contains("note: no probe"), "{table}");
    let bad = qm(&["agent", "probe", "--no-nvml", "--no-pci", "--inventory", "/nonexistent.toml"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--inventory: /nonexistent.toml"), "{}", text(&bad.stderr));
}

#[test]
fn a_job_on_a_captured_h100_reports_how_it_used_the_gpu() {
    let dev = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv");
    assert!(dev.banner.contains("1 x gpu/nvidia-h100-80gb-hbm3"), "{}", dev.banner);
    let gpu = "GPU-69adae66-5077-37dc-b9b4-bd4282d73a61";
    let id = submit(&dev, &["--gpus", "1", "--", "sleep", "2.5"]);
    let job = wait_for(&dev, id, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let used = &job["usage"]["devices"][0];
    assert_eq!((used["device"].as_str(), used["node"].as_str()), (Some(gpu), Some("dev-node")), "{job}");
    assert!(used["utilization_samples"].as_u64().unwrap() >= 1, "sampled at each heartbeat: {job}");
    let means = (&used["utilization_pct_mean"], &used["memory_used_mib_peak"], &job["usage"]["attempt"]);
    assert_eq!(means, (&Value::from(100.0), &Value::from(9203), &Value::from(1)), "{job}");
    let shown = text(&qm(&["job", &id.to_string(), &dev.flag()]).stdout);
    let row = shown.lines().find(|l| l.contains(gpu)).unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["0", "dev-node", gpu, "100%", "100%", "9.0", "GiB", "9.0", "GiB"]
    );
    let nodes: Value = serde_json::from_slice(&qm(&["nodes", "--json", &dev.flag()]).stdout).unwrap();
    let live = &nodes[0]["telemetry"][0];
    assert_eq!((live["device"].as_str(), live["power_mw"].as_u64()), (Some(gpu), Some(700_620)), "{nodes}");
    assert_eq!(nodes[0]["utilization_pct"], 100.0, "{nodes}");
}

#[test]
fn a_capture_without_the_columns_a_node_needs_is_refused_by_name() {
    let out = qm(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--nvml-capture",
        "agent/testdata/nvml/h100-80gb-hbm3-busy/nvidia-smi-query-busy.csv",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--nvml-capture") && err.contains("row 1: name: missing or empty"), "{err}");
}

#[test]
fn agent_probe_shows_each_devices_readings_and_times_both_scans() {
    let capture = "agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv";
    let out = qm(&["agent", "probe", "--no-pci", "--nvml-capture", capture, "--json", "--repeat", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let probed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpu = &probed["devices"][0];
    let read = (&gpu["utilization_pct"], &gpu["memory_used_mib"], &gpu["temperature_c"], &gpu["power_mw"]);
    assert_eq!(read, (&Value::from(100), &Value::from(9203), &Value::from(57), &Value::from(700_620)), "{probed}");
    assert!(probed["scan_us_per_device"].is_f64() && probed["telemetry_us_per_device"].is_f64(), "{probed}");
    let once: Value =
        serde_json::from_slice(&qm(&["agent", "probe", "--no-pci", "--nvml-capture", capture, "--json"]).stdout)
            .unwrap();
    assert!(once["telemetry_us_per_device"].is_null(), "one read times nothing: {once}");
}

#[test]
fn top_shows_the_teams_and_how_busy_each_jobs_devices_are() {
    let dev = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv");
    let id = submit(&dev, &["--gpus", "1", "--name", "busy", "--", "sleep", "30"]);
    wait_for(&dev, id, &["running"]);
    let until = Instant::now() + Duration::from_secs(10);
    let frame = loop {
        let out = qm(&["top", "--iterations", "1", "--json", &dev.flag()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let frame: Value = serde_json::from_slice(&out.stdout).unwrap();
        if frame["jobs"][0]["utilization_pct"] == 100.0 {
            break frame;
        }
        assert!(Instant::now() < until, "no reading of the job's GPU reached the leader: {frame}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let job = &frame["jobs"][0];
    assert_eq!(
        (job["id"].as_u64(), job["devices"].as_u64(), job["nodes"][0].as_str()),
        (Some(id), Some(1), Some("dev-node"))
    );
    let team = &frame["teams"][0];
    assert_eq!(
        (team["team"].as_str(), team["used"].as_u64(), team["nominal"].as_u64()),
        (Some("dev"), Some(1), Some(1))
    );
    assert_eq!((frame["running_jobs"].as_u64(), frame["leader"].as_u64()), (Some(1), Some(1)));
    let shown = text(&qm(&["top", "--iterations", "1", &dev.flag()]).stdout);
    let row = shown.lines().find(|l| l.contains("busy")).unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), [&id.to_string(), "busy", "dev", "1", "100%", "dev-node"]);
    assert!(qm(&["cancel", &id.to_string(), &dev.flag()]).status.success());
}

#[test]
fn usage_reports_device_hours_allocated_used_and_idle_against_quota() {
    let dev = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv");
    let id = submit(&dev, &["--gpus", "1", "--name", "busy", "--", "sleep", "2.5"]);
    assert_eq!(wait_for(&dev, id, &["succeeded", "failed"])["state"], "succeeded");
    let out = qm(&["usage", "--since", "1h", "--json", &dev.flag()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows[0];
    let names = (row["team"].as_str(), row["flavor"].as_str());
    assert_eq!(names, (Some("dev"), Some("gpu/nvidia-h100-80gb-hbm3")), "{rows}");
    let hours = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k}: {row}"));
    let allocated = hours("allocated_device_hours");
    assert!((2.0 / 3600.0..30.0 / 3600.0).contains(&allocated), "one GPU for about 2.5 s: {row}");
    assert_eq!((hours("used_device_hours"), hours("idle_device_hours")), (allocated, 0.0), "at 100%: {row}");
    assert_eq!((hours("unmeasured_device_hours"), &row["utilization_pct"]), (0.0, &Value::from(100.0)));
    assert!((hours("quota_device_hours") - 1.0).abs() < 1e-3, "a nominal of 1 device over the hour: {row}");
    let before = qm(&["usage", "--since", "2h", "--until", "1h", "--json", &dev.flag()]);
    assert_eq!(text(&before.stdout).trim(), "[]", "the job ended after the window");
    let csv = text(&qm(&["usage", "--by", "job", "--csv", &dev.flag()]).stdout);
    let lines: Vec<&str> = csv.lines().collect();
    let header = "job,name,team,flavor,allocated_device_hours,used_device_hours,idle_device_hours,\
                  unmeasured_device_hours,utilization_pct";
    assert_eq!(lines[0], header);
    assert!(lines[1].starts_with(&format!("{id},busy,dev,gpu/nvidia-h100-80gb-hbm3,")), "{csv}");
}

/// Polls `qm jobs --idle --json` until it lists `id`, or 20 s pass; the job's row.
fn flagged(dev: &Dev, id: u64) -> Option<Value> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let out = qm(&["jobs", "--idle", "--json", &dev.flag()]);
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(row) = rows.as_array().and_then(|r| r.iter().find(|j| j["id"] == id)) {
            return Some(row.clone());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// A job on a GPU that reads 0% (the idle H100's capture) is flagged after its team's idle
/// time, with an event, a metric and `qm jobs --idle`; after the warning it is stopped and
/// requeued, not failed, and runs again.
#[test]
fn an_idle_job_is_flagged_then_requeued_under_its_teams_policy() {
    let dev = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3/nvidia-smi-query.csv");
    let set = qm(&["quota", "idle", "dev", "--after", "2s", "--requeue-after-warning", "2s", &dev.flag()]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(text(&set.stdout).trim(), "team dev: idle jobs reported after 2s, then stopped and requeued 2s later");
    let teams: Value = serde_json::from_slice(&qm(&["teams", "--json", &dev.flag()]).stdout).unwrap();
    assert_eq!(teams[0]["idle"], serde_json::json!({ "after_ms": 2000, "requeue_after_warning_ms": 2000 }));
    let events = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["events", "--json", "--count", "5", &dev.flag()])
        .env("QM_TOKEN_FILE", &dev.token_file)
        .env("QM_TLS_CA", &dev.ca)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = submit(&dev, &["--gpus", "1", "--name", "idle", "--", "sleep", "600"]);
    let job = wait_for(&dev, id, &["running"]);
    let row = flagged(&dev, id).expect("flagged idle within 20 s");
    let since = row["idle_since_ms"].as_u64().unwrap();
    assert!(since >= job["started_ms"].as_u64().unwrap_or(0), "idle counts from the start: {row}");
    let (_, metrics) = common::http_get(&dev.http, "/metrics");
    assert!(metrics.contains("qm_team_jobs_idle{team=\"dev\"} 1"), "{metrics}");
    let requeued = wait_for(&dev, id, &["pending", "starting", "running"]);
    let until = Instant::now() + Duration::from_secs(20);
    let mut job = requeued;
    while job["attempt"].as_u64() < Some(2) {
        assert!(Instant::now() < until, "never stopped and placed again: {job}");
        std::thread::sleep(Duration::from_millis(200));
        job = wait_for(&dev, id, &["pending", "starting", "running"]);
    }
    assert_eq!(job["failures"].as_u64(), Some(0), "requeued, not failed: {job}");
    let (_, metrics) = common::http_get(&dev.http, "/metrics");
    assert!(metrics.contains("qm_requeues_total 1\n"), "the requeue is counted: {metrics}");
    let out = events.wait_with_output().unwrap();
    let lines: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let said: Vec<String> = lines.iter().map(|e| format!("{} {}", e["state"], e["message"])).collect();
    assert!(said.iter().any(|s| s.contains("idle:")), "an event on the job says it is idle: {said:?}");
    assert!(said.iter().any(|s| s.contains("stopping")), "then that it is stopped: {said:?}");
}

/// A busy GPU is never flagged, and a team that only reports keeps its idle job running.
#[test]
fn a_busy_job_is_not_flagged_and_a_reporting_team_keeps_its_idle_job() {
    let busy = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv");
    assert!(qm(&["quota", "idle", "dev", "--after", "1s", &busy.flag()]).status.success());
    let id = submit(&busy, &["--gpus", "1", "--", "sleep", "600"]);
    wait_for(&busy, id, &["running"]);
    let idle = Dev::with_capture("agent/testdata/nvml/h100-80gb-hbm3/nvidia-smi-query.csv");
    assert!(qm(&["quota", "idle", "dev", "--after", "1s", &idle.flag()]).status.success());
    let quiet = submit(&idle, &["--gpus", "1", "--", "sleep", "600"]);
    wait_for(&idle, quiet, &["running"]);
    flagged(&idle, quiet).expect("the idle GPU's job is flagged");
    std::thread::sleep(Duration::from_secs(2));
    let kept = wait_for(&idle, quiet, &["running"]);
    assert_eq!(kept["attempt"].as_u64(), Some(1), "reported, not stopped: {kept}");
    let rows: Value = serde_json::from_slice(&qm(&["jobs", "--idle", "--json", &busy.flag()]).stdout).unwrap();
    assert_eq!(rows, serde_json::json!([]), "the busy GPU's job, running as long, is not flagged");
}
