//! The `qm` binary, run as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn qm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qm")).args(args).current_dir(root()).output().expect("qm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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
    assert!(err.contains("jobs.job[0].gang.devices.count"), "{err}");
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
        assert!(std::fs::read_to_string(out.join(plot)).unwrap().starts_with("<svg"), "{plot}");
    }
    let cmp = sim("compare", &out, &["--policy", "strict-fifo", "--policy", "backfill"]);
    assert!(cmp.status.success(), "{}", text(&cmp.stderr));
    assert!(text(&cmp.stdout).contains("strict-fifo") && out.join("backfill/summary.json").exists());
    let sweep = sim("sweep", &out, &["--vary", "pool:node=2..4"]);
    assert!(sweep.status.success(), "{}", text(&sweep.stderr));
    assert_eq!(text(&sweep.stdout).lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(), 3);
    assert!(out.join("sweep.svg").exists());
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

/// A `qm dev` process on a free loopback port, killed when dropped.
struct Dev {
    addr: String,
    child: std::process::Child,
}

impl Dev {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["dev", "--listen", &addr])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("qm dev starts");
        Self { addr, child }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qm dev`, then the client commands against it, as a newcomer would type them.
#[test]
fn dev_serves_the_client_commands() {
    let dev = Dev::start();
    let addr = &dev.addr;
    let server = format!("--server={addr}");
    let quota =
        ["quota", "set", &server, "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"];
    let set = qm(&quota);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let submitted =
        qm(&["submit", &server, "--team", "research", "--gpus", "2", "--name", "hello", "--", "python", "t.py"]);
    assert_eq!(text(&submitted.stdout).trim(), "submitted job 1", "{}", text(&submitted.stderr));
    let from_file = qm(&["submit", &server, "--file", "examples/jobs.toml"]);
    assert!(!from_file.status.success(), "examples/jobs.toml names priority classes this cluster lacks");
    let err = text(&from_file.stderr);
    assert!(err.contains("jobs[0].priority_class: unknown priority class \"production\""), "{err}");
    let bad = qm(&["submit", &server, "--team", "research", "--gpus", "0"]);
    assert!(text(&bad.stderr).contains("jobs[0].gang.devices.count"), "{}", text(&bad.stderr));
    let jobs = qm(&["jobs", &server, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&jobs.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["devices"], 2);
    assert_eq!(listed[0]["state"], "pending");
    let why = qm(&["why", &server, "1"]);
    assert!(text(&why.stdout).contains("can never fit this cluster"), "{}", text(&why.stdout));
    let status = qm(&["status", &server, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!((status["leader"].as_u64(), status["pending_jobs"].as_u64()), (Some(1), Some(1)));
}

/// A replica that dies under a request: it takes each connection, reads what the client sends
/// (the request included) until the client has waited 500 ms for the answer, and closes the
/// connection.
fn dying_replica() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            conn.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
            let mut buf = [0u8; 4096];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    addr
}

/// A request whose replica dies under it goes to the next `--server` when sending it twice is
/// safe (submissions carry a request id; a second cancel does nothing); a membership change is
/// not sent twice, and the client says its outcome is unknown.
#[test]
fn a_request_whose_replica_dies_under_it_goes_to_the_next() {
    let dev = Dev::start();
    let dying = dying_replica();
    let both = format!("--server={dying},{}", dev.addr);
    let set =
        qm(&["quota", "set", &both, "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let submitted = qm(&["submit", &both, "--team", "research", "--name", "hello", "--", "python", "t.py"]);
    assert_eq!(text(&submitted.stdout).trim(), "submitted job 1", "{}", text(&submitted.stderr));
    for _ in 0..2 {
        let cancelled = qm(&["cancel", &both, "1"]);
        assert_eq!(text(&cancelled.stdout).trim(), "job 1: cancelled", "{}", text(&cancelled.stderr));
    }
    let jobs = qm(&["jobs", &both, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&jobs.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "one job, whatever the retries");
    let removed = qm(&["admin", "members", "remove", "--id", "2", &both]);
    assert!(!removed.status.success());
    let err = text(&removed.stderr);
    assert!(err.contains(&format!("{dying}: the connection failed before the answer came")), "{err}");
    assert!(err.contains("may or may not have been applied"), "{err}");
}
