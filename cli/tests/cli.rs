//! The `qm` binary's offline commands (`plan`, `sim`, `version`, `completions`), run as a user
//! runs them.

mod common;

use common::{qm, root, text};
use std::process::Output;

const EXAMPLE: [&str; 7] =
    ["plan", "--cluster", "examples/cluster.toml", "--teams", "examples/teams.toml", "--jobs", "examples/jobs.toml"];

#[test]
fn help_and_version() {
    let help = qm(&["--help"]);
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("plan"));
    let version = qm(&["version"]);
    assert!(text(&version.stdout).starts_with(concat!("qm ", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn the_example_plan_shows_a_reclaim_and_a_within_team_preemption_with_reasons() {
    let out = qm(&EXAMPLE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("warning"), "the example's nominals fit: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"research-ablation\" (team research, priority 0) for job 4: Reclaim"), "{stdout}");
    assert!(stdout.contains("\"product-sweep\" (team product, priority 0) for job 4: WithinTeam"), "{stdout}");
    assert!(stdout.contains("\"product-eval\" (team product, priority 1000) on gpu/nvidia-a100-sxm4-80gb"), "{stdout}");
    assert!(
        stdout.contains("over quota: 0 held or reserved + 8 requested > nominal 0 + borrowing limit 4"),
        "{stdout}"
    );
}

#[test]
fn json_output_is_the_plan() {
    let mut args = EXAMPLE.to_vec();
    args.push("--json");
    let out = qm(&args);
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(plan["decisions"]["preemptions"].as_array().unwrap().len(), 2);
    assert_eq!(plan["decisions"]["placements"].as_array().unwrap().len(), 2);
    assert_eq!(plan["at_ms"], 3_600_000);
}

/// `qm plan` on the example cluster and teams with this jobs file.
fn plan_with_jobs(dir: &std::path::Path, jobs_toml: &str) -> String {
    let jobs = dir.join("jobs.toml");
    std::fs::write(&jobs, jobs_toml).unwrap();
    let args = ["--cluster", "examples/cluster.toml", "--teams", "examples/teams.toml", "--jobs"];
    let out = qm(&[&["plan"], &args[..], &[jobs.to_str().unwrap()]].concat());
    assert!(!out.status.success());
    text(&out.stderr)
}

#[test]
fn bad_input_names_the_file_and_the_field() {
    let dir = std::env::temp_dir().join(format!("qm-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = plan_with_jobs(&dir, "now_s = 10\n[[job]]\nname = \"x\"\nteam = \"research\"\ndevices = 0\n");
    assert!(err.contains("jobs.job[0].devices: must be 1..=64"), "the file's key: {err}");
    assert_eq!(err.matches("must be 1..=64").count(), 1, "said once: {err}");
    let err = plan_with_jobs(&dir, "now_s = 10\n[[job]]\nname = \"x\"\nteam = \"research\"\ndevices = 1\ncolour = 3\n");
    assert!(err.contains("parsing") && err.contains("colour"), "{err}");
    let err = plan_with_jobs(&dir, "now_s = 10\n[[job]]\nname = \"x\"\nteam = \"nobody\"\ndevices = 1\n");
    assert!(err.contains("jobs.job[0].team: unknown team \"nobody\""), "{err}");
    let out = qm(&["plan", "--cluster", "nope.toml", "--teams", "examples/teams.toml", "--jobs", "examples/jobs.toml"]);
    assert!(text(&out.stderr).contains("reading nope.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `qm sim CMD` on the Tiresias sample trace and a 4 x 4 cluster, writing into `out`.
fn sim(cmd: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let common = ["--cluster", "4x4", "--trace", "traces/tiresias/60_job.csv", "--format", "tiresias"];
    qm(&[&["sim", cmd], &common[..], &["--out", out.to_str().unwrap()], extra].concat())
}

#[test]
fn sim_run_writes_the_summary_the_jobs_and_the_plots() {
    let out = std::env::temp_dir().join(format!("qm-sim-cli-{}", std::process::id()));
    let run = sim("run", &out, &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("jobs completed                   60"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for key in
        ["jobs", "jobs_completed", "avg_jct_s", "p50_jct_s", "p95_jct_s", "p99_jct_s", "avg_wait_s", "p95_wait_s"]
    {
        assert!(summary[key].is_number(), "{key} in summary.json");
    }
    for key in ["makespan_s", "gpu_utilization", "preemptions", "gpu_hours_lost_to_preemption", "jain_fairness"] {
        assert!(summary[key].is_number(), "{key} in summary.json");
    }
    assert_eq!(std::fs::read_to_string(out.join("jobs.csv")).unwrap().lines().count(), 61);
    for plot in ["utilization.svg", "queue.svg", "team_share.svg", "jct_cdf.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
        assert!(svg.contains("policy default | cluster 4x4 | trace 60_job.csv"), "{plot} is titled with its inputs");
    }
    let cdf = std::fs::read_to_string(out.join("jct_cdf.svg")).unwrap();
    assert!(cdf.contains("\n10min\n") && cdf.contains("(log scale)"), "round times on a log axis");
    let share = std::fs::read_to_string(out.join("team_share.svg")).unwrap();
    assert!(share.contains("tiresias: nominal 16 devices (100.0%)"), "one panel per team with its nominal");
    assert!(stdout.contains("nominal   avg wait   p95 wait"), "{stdout}");
    let cmp = sim("compare", &out, &["--policy", "strict-fifo", "--policy", "backfill"]);
    assert!(cmp.status.success(), "{}", text(&cmp.stderr));
    assert!(text(&cmp.stdout).contains("strict-fifo") && out.join("backfill/summary.json").exists());
    let sweep = sim("sweep", &out, &["--vary", "pool:node=2..4"]);
    assert!(sweep.status.success(), "{}", text(&sweep.stderr));
    assert_eq!(text(&sweep.stdout).lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(), 3);
    let plot = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(plot.contains("Sweep of nodes in pool node") && plot.contains("target p95 wait 1h"), "{plot}");
    assert_eq!(plot.matches("<circle").count(), 6, "a marker per step in each of the two panels");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn sim_compare_and_sweep_write_the_same_files_on_one_thread_or_several() {
    let base = std::env::temp_dir().join(format!("qm-sim-threads-{}", std::process::id()));
    let tables =
        |o: &Output| text(&o.stdout).lines().filter(|l| !l.starts_with("wrote")).collect::<Vec<_>>().join("\n");
    let policies = ["--policy", "strict-fifo", "--policy", "las", "--policy", "default"];
    let mut written = Vec::new();
    for threads in ["1", "3"] {
        let out = base.join(threads);
        let cmp = sim("compare", &out.join("compare"), &[&policies[..], &["--threads", threads]].concat());
        assert!(cmp.status.success(), "{}", text(&cmp.stderr));
        let sweep = sim("sweep", &out.join("sweep"), &["--vary", "pool:node=2..4", "--threads", threads]);
        assert!(sweep.status.success(), "{}", text(&sweep.stderr));
        written.push((files(&out), tables(&cmp), tables(&sweep)));
    }
    let (one, several) = (&written[0], &written[1]);
    for expected in ["compare/las/jobs.csv", "compare/comparison.txt", "sweep/pool-4/summary.json", "sweep/sweep.svg"] {
        assert!(one.0.contains_key(std::path::Path::new(expected)), "{expected}: {:?}", one.0.keys());
    }
    assert_eq!(one.0.keys().collect::<Vec<_>>(), several.0.keys().collect::<Vec<_>>());
    for (path, bytes) in &one.0 {
        assert!(*bytes == several.0[path], "{} differs between one thread and three", path.display());
    }
    assert_eq!((&one.1, &one.2), (&several.1, &several.2));
    let header = one.1.lines().next().unwrap_or_default();
    let at = |p: &str| header.find(p).unwrap_or_else(|| panic!("{p} in {header}"));
    assert!(at("strict-fifo") < at("las") && at("las") < at("default"), "{header}");
    let steps: Vec<&str> = one.2.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(steps, ["2", "3", "4"]);
    let alone = sim("run", &base.join("las"), &["--policy", "las"]);
    assert!(alone.status.success(), "{}", text(&alone.stderr));
    for file in ["summary.json", "jobs.csv"] {
        let ran = std::fs::read(base.join("las").join(file)).unwrap();
        assert!(ran == one.0[&std::path::Path::new("compare/las").join(file)], "{file}: compare and run differ");
    }
    let out = sim("sweep", &base.join("zero"), &["--vary", "pool:node=2..4", "--threads", "0"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--threads"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn sim_commands_print_json_for_scripts() {
    let out = std::env::temp_dir().join(format!("qm-sim-json-{}", std::process::id()));
    let json = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
    };
    let run = json(&sim("run", &out.join("run"), &["--policy", "las", "--json"]));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(run, written);
    assert_eq!(run["policy"], "las");
    let cmp = json(&sim("compare", &out.join("cmp"), &["--policy", "sjf", "--policy", "backfill", "--json"]));
    let policies: Vec<&str> = cmp.as_array().unwrap().iter().map(|s| s["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["sjf", "backfill"]);
    let sweep = json(&sim("sweep", &out.join("sweep"), &["--vary", "pool:node=2..4", "--json"]));
    let steps = sweep.as_array().unwrap();
    assert_eq!(steps.iter().map(|s| s["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3, 4]);
    for s in steps {
        assert_eq!((s["vary"].as_str(), s["name"].as_str()), (Some("pool"), Some("node")));
        let step = s["step"].as_u64().unwrap();
        let path = out.join(format!("sweep/pool-{step}/summary.json"));
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(s["summary"], written, "step {step}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn sim_bad_input_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("qm-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.csv");
    std::fs::write(
        &trace,
        "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n0,1,0,1,m,10,1\n1,two,5,1,m,10,1\n",
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec!["sim", "run", "--cluster", "2x4", "--trace", trace.to_str().unwrap(), "--format", "tiresias"];
        a.extend_from_slice(&["--out", dir.to_str().unwrap()]);
        a.extend_from_slice(extra);
        qm(&a.iter().map(|s| &**s).collect::<Vec<&str>>())
    };
    let out = args(&[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("t.csv:3: num_gpu:"), "{}", text(&out.stderr));
    let out = args(&["--skip-bad"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("malformed lines skipped          1"));
    let out = args(&["--policy", "random"]);
    assert!(text(&out.stderr).contains("unknown policy"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_runs_the_shipped_synthetic_workload() {
    let out = std::env::temp_dir().join(format!("qm-sim-synth-{}", std::process::id()));
    let o = out.to_str().unwrap();
    let args = [
        "sim",
        "run",
        "--cluster",
        "8x8",
        "--trace",
        "examples/synthetic.toml",
        "--format",
        "synthetic",
        "--seed",
        "3",
    ];
    let run = qm(&[&args[..], &["--policy", "las", "--out", o]].concat());
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("jobs completed                   2000"), "{}", text(&run.stdout));
    std::fs::remove_dir_all(&out).unwrap();
}

/// `qm plan --json` read by a reader that stops after the first line (as `| head -1`): the
/// output is larger than a pipe holds, so qm's later writes find the pipe closed. It ends
/// quietly with code 0 instead of panicking.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("qm-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs: String =
        (0..3000).map(|i| format!("[[job]]\nname = \"j{i}\"\nteam = \"interns\"\ndevices = 8\n")).collect();
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["plan", "--cluster", "examples/cluster.toml", "--teams", "examples/teams.toml", "--json", "--jobs"])
        .arg(dir.join("jobs.toml"))
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "{");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "nothing on stderr: {}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_flags_show_only_on_client_commands_and_completions_print() {
    for offline in [&["plan", "--help"][..], &["sim", "run", "--help"], &["dev", "--help"], &["server", "--help"]] {
        let help = text(&qm(offline).stdout);
        assert!(!help.contains("--server") && !help.contains("QM_SERVER"), "{offline:?}: {help}");
    }
    for client in [&["jobs", "--help"][..], &["quota", "set", "--help"], &["admin", "members", "add", "--help"]] {
        let help = text(&qm(client).stdout);
        assert!(help.contains("--server") && help.contains("QM_SERVER"), "{client:?}: {help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = qm(&["completions", shell]);
        assert!(script.status.success() && text(&script.stdout).contains("priority-class"), "{shell}");
    }
}

#[test]
fn qm_plan_warns_when_nominal_quotas_add_up_past_the_cluster() {
    let case = "core/testdata/every_team_gets_a_turn";
    let (cluster, teams, jobs) =
        (format!("{case}/cluster.toml"), format!("{case}/teams.toml"), format!("{case}/jobs.toml"));
    let out = qm(&["plan", "--cluster", &cluster, "--teams", &teams, "--jobs", &jobs]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = "qm: warning: gpu/nvidia-b200: the teams' nominal quotas add up to 64 device(s), more than the 0 \
                    the cluster has: not every team can have its nominal at once\n";
    assert_eq!(text(&out.stderr), expected);
}

/// The metric a PromQL token names: a counter's samples end in `_total`, a histogram's in
/// `_bucket`, `_sum` and `_count`; its family does not.
fn family(token: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| token.strip_suffix(s)).unwrap_or(token)
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let (server, agent) = (qm_scheduler::observe::metrics::NAMES, qm_agent::metrics::NAMES);
    let known: std::collections::BTreeSet<&str> = server.iter().chain(agent).copied().collect();
    let file = std::fs::read_to_string(root().join("docs/grafana/quartermaster.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&file).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 15, "the dashboard has its queries: {exprs:?}");
    let mut named = std::collections::BTreeSet::new();
    for expr in &exprs {
        let tokens = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for token in tokens.filter(|t| t.starts_with("qm_")) {
            assert!(known.contains(family(token)), "{token} in {expr:?} is not a metric of qm server or qm agent");
            named.insert(family(token));
        }
    }
    for metric in ["qm_team_devices_allocated", "qm_device_utilization_ratio", "qm_scheduling_cycle_seconds"] {
        assert!(named.contains(metric), "the dashboard shows {metric}");
    }
}
