//! Three `qm server` replicas and three `qm agent` processes with static inventories, on
//! loopback: jobs and gangs of two teams run for real (each writes its environment to a file the
//! test reads), a team reclaiming its quota preempts a borrower that gets its signal, is
//! requeued and completes, and a job survives the loss of its agent, a device turning unhealthy
//! and the loss of the leader, started once per attempt.

mod common;

use common::{http_get, qm, qm_env, text};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "nvidia-h100-80gb-hbm3";

struct Fleet {
    dir: tempfile::TempDir,
    servers: Vec<(String, Option<Child>)>,
    agents: Vec<Option<Child>>,
    /// Each agent's HTTP address (`/metrics`, `/readyz`).
    agent_http: Vec<String>,
    /// The bootstrap admin token's file, in the data directory of the replica that led first.
    token: std::cell::RefCell<Option<PathBuf>>,
}

fn free_addr() -> String {
    qm_benches::nemesis::procs::free_addr().expect("a free port").to_string()
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .env_remove("QM_SERVER")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("qm starts")
}

/// A path as a string.
fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// `--tls-cert`, `--tls-key` and `--tls-ca` of the certificate `stem` that `qm admin certs`
/// wrote in `certs`.
fn tls_flags(certs: &Path, stem: &str) -> Vec<String> {
    let file = |name: &str| path(&certs.join(name));
    vec![
        format!("--tls-cert={}", file(&format!("{stem}.pem"))),
        format!("--tls-key={}", file(&format!("{stem}.key"))),
        format!("--tls-ca={}", file("ca.pem")),
    ]
}

impl Fleet {
    /// Three replicas (a node lost after 1.5 s of silence) and `agents` agents of 4 GPUs each.
    fn start(agents: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
        let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("--peer={}={a}", i + 1)).collect();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, "[policy]\nmin_runtime_ms = 0\n").unwrap();
        let certs = dir.path().join("certs");
        let mut made = vec!["admin".to_owned(), "certs".into(), "--dir".into(), certs.to_str().unwrap().into()];
        made.extend((1..=3).map(|id| format!("--replica={id}=127.0.0.1")));
        made.extend((0..agents).map(|n| format!("--agent=node{n}=127.0.0.1")));
        let made = qm(&made.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(made.status.success(), "{}", text(&made.stderr));
        let mut servers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let data = dir.path().join(format!("server{}", i + 1));
            let id = (i + 1).to_string();
            let mut args = vec!["server", "--id", &id, "--listen", addr, "--data", data.to_str().unwrap()];
            let tls = tls_flags(&certs, &format!("replica-{id}"));
            args.extend(tls.iter().map(String::as_str));
            args.extend(["--tick-ms", "20", "--node-lease-ms", "1500", "--policy", policy.to_str().unwrap()]);
            args.extend(peers.iter().map(String::as_str));
            let child = spawn(&args, &dir.path().join(format!("server{}.log", i + 1)));
            servers.push((addr.clone(), Some(child)));
        }
        let agent_http = (0..agents).map(|_| free_addr()).collect();
        let mut fleet = Self { dir, servers, agents: Vec::new(), agent_http, token: Default::default() };
        fleet.wait(|f| f.find_token(), "the replicas serve and accept the bootstrap token");
        let applied = fleet.qm(&["apply", "-f", "examples/teams.toml"]);
        assert!(applied.status.success(), "{}", text(&applied.stderr));
        for team in ["research", "product"] {
            fleet.ok(&["quota", "set", "--team", team, "--flavor", &format!("gpu/{MODEL}"), "--nominal", "6"]);
        }
        for n in 0..agents {
            fleet.agents.push(None);
            fleet.start_agent(n);
        }
        fleet.wait(|f| f.json(&["nodes", "--json"]).as_array().is_some_and(|n| n.len() == agents), "agents registered");
        fleet
    }

    /// Whether a replica's `admin.token` is accepted (the first one that is becomes the fleet's).
    fn find_token(&self) -> bool {
        for i in 1..=3 {
            let file = self.dir.path().join(format!("server{i}")).join("admin.token");
            *self.token.borrow_mut() = Some(file.clone());
            if file.exists() && self.qm(&["admin", "tokens", "whoami"]).status.success() {
                return true;
            }
        }
        false
    }

    fn inventory(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("inventory{n}.toml"))
    }

    /// Writes agent `n`'s inventory: 4 GPUs, those in `sick` unhealthy.
    fn write_inventory(&self, n: usize, sick: &[usize]) {
        let devices: String = (0..4)
            .map(|d| {
                let health = if sick.contains(&d) { "unhealthy" } else { "healthy" };
                format!("[[device]]\nid = \"GPU-n{n}-{d}\"\nvendor = \"nvidia\"\nmodel = \"{MODEL}\"\nhealth = \"{health}\"\n")
            })
            .collect();
        std::fs::write(self.inventory(n), devices).unwrap();
    }

    /// Starts agent `n`, with an agent token of its own (created the first time), as the
    /// operations guide says.
    fn start_agent(&mut self, n: usize) {
        self.write_inventory(n, &[]);
        let token = self.dir.path().join(format!("agent{n}.token"));
        if !token.exists() {
            let name = format!("node{n}");
            self.ok(&[
                "admin",
                "tokens",
                "create",
                &format!("agent-{name}"),
                "--agent",
                &name,
                "--out",
                token.to_str().unwrap(),
            ]);
        }
        let servers: Vec<&str> = self.servers.iter().map(|(a, _)| a.as_str()).collect();
        let server = format!("--server={}", servers.join(","));
        let (name, data) = (format!("node{n}"), self.dir.path().join(format!("agent{n}")));
        let inventory = self.inventory(n);
        let args = [
            "agent",
            &server,
            "--name",
            &name,
            "--inventory",
            inventory.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--rescan-s",
            "1",
            "--no-nvml",
            "--no-pci",
            "--no-cgroups",
            "--token-file",
            token.to_str().unwrap(),
        ];
        let mut extra = tls_flags(&self.dir.path().join("certs"), &format!("agent-{name}"));
        extra.push(format!("--http-listen={}", self.agent_http[n]));
        let args = [&args[..], &extra.iter().map(String::as_str).collect::<Vec<_>>()].concat();
        self.agents[n] = Some(spawn(&args, &self.dir.path().join(format!("agent{n}.log"))));
    }

    /// `GET path` on agent `n`'s HTTP address: the status line and the body.
    fn agent_get(&self, n: usize, path: &str) -> (String, String) {
        http_get(&self.agent_http[n], path)
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn qm(&self, args: &[&str]) -> std::process::Output {
        let live: Vec<&str> = self.servers.iter().filter(|(_, c)| c.is_some()).map(|(a, _)| a.as_str()).collect();
        let token = self.token.borrow().clone().unwrap_or_default();
        let ca = self.dir.path().join("certs").join("ca.pem");
        let env = [("QM_SERVER", live.join(",")), ("QM_TOKEN_FILE", path(&token)), ("QM_TLS_CA", path(&ca))];
        qm_env(args, &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.qm(args);
        assert!(out.status.success(), "qm {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_slice(&self.qm(args).stdout).unwrap_or(Value::Null)
    }

    fn wait(&self, done: impl Fn(&Self) -> bool, what: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(Instant::now() < until, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn job(&self, id: u64) -> Value {
        self.json(&["job", &id.to_string(), "--json"])
    }

    fn wait_state(&self, id: u64, state: &str) -> Value {
        self.wait(|f| f.job(id)["state"] == state, &format!("job {id} {state}"));
        self.job(id)
    }

    /// Submits a job whose replicas run `script` (with `$OUT` the test's folder).
    fn submit(&self, team: &str, replicas: u32, gpus: u32, script: &str) -> u64 {
        let script = format!("OUT={}; {script}", self.dir.path().display());
        let (r, g) = (replicas.to_string(), gpus.to_string());
        let args = ["submit", "--json", "--team", team, "--replicas", &r, "--gpus", &g, "--", "sh", "-c", &script];
        let out: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        out["job_ids"][0].as_u64().unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            Self::kill(a);
        }
        for (_, s) in &mut self.servers {
            Self::kill(s);
        }
    }
}

/// A marker per started replica and attempt, created exclusively: a second start of the same
/// attempt writes `twice` into it.
const STARTED: &str =
    "set -C; f=$OUT/start-$QM_JOB_ID-$QM_ATTEMPT-$QM_REPLICA; (echo once > $f) 2>/dev/null || echo twice >> $f";

fn env_of(fleet: &Fleet, file: &str) -> std::collections::BTreeMap<String, String> {
    fleet.read(file).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[test]
fn gangs_and_single_jobs_of_two_teams_run_and_a_reclaimed_borrower_completes_later() {
    let fleet = Fleet::start(3);
    let gang = fleet.submit("research", 2, 2, "env > $OUT/env-$QM_JOB_ID-$QM_REPLICA");
    let single = fleet.submit("product", 1, 1, "env > $OUT/env-$QM_JOB_ID-$QM_REPLICA");
    fleet.wait_state(gang, "succeeded");
    fleet.wait_state(single, "succeeded");
    let (r0, r1) = (env_of(&fleet, &format!("env-{gang}-0")), env_of(&fleet, &format!("env-{gang}-1")));
    assert_eq!((r0["RANK"].as_str(), r1["RANK"].as_str(), r0["WORLD_SIZE"].as_str()), ("0", "1", "2"));
    assert_eq!((&r0["MASTER_ADDR"], &r0["MASTER_PORT"]), (&r1["MASTER_ADDR"], &r1["MASTER_PORT"]));
    assert_eq!(r0["CUDA_VISIBLE_DEVICES"].split(',').count(), 2, "{r0:?}");
    let one = env_of(&fleet, &format!("env-{single}-0"));
    assert!(one["CUDA_VISIBLE_DEVICES"].starts_with("GPU-n") && !one["CUDA_VISIBLE_DEVICES"].contains(','));

    // research borrows all 12 GPUs; on its second attempt it finishes at once.
    let borrower = fleet.submit(
        "research",
        3,
        4,
        &format!("{STARTED}; [ $QM_ATTEMPT -gt 1 ] && exit 0; trap 'echo got TERM >> $OUT/term-$QM_REPLICA; exit 0' TERM; sleep 20 & wait"),
    );
    fleet.wait_state(borrower, "running");
    let owner = fleet.submit("product", 1, 4, "exit 0");
    fleet.wait_state(owner, "succeeded");
    let done = fleet.wait_state(borrower, "succeeded");
    assert_eq!((done["attempt"].as_u64(), done["preemptions"].as_u64()), (Some(2), Some(1)), "{done}");
    assert!((0..3).any(|r| fleet.read(&format!("term-{r}")).contains("got TERM")), "the borrower got its signal");
    for attempt in 1..=2 {
        for r in 0..3 {
            assert_eq!(
                fleet.read(&format!("start-{borrower}-{attempt}-{r}")),
                "once\n",
                "attempt {attempt} replica {r}"
            );
        }
    }
}

#[test]
fn a_job_outlives_its_agent_an_unhealthy_device_and_the_leader() {
    let mut fleet = Fleet::start(3);
    let long = format!("{STARTED}; sleep 20");
    let first = fleet.submit("research", 1, 4, &long);
    let running = fleet.wait_state(first, "running");
    let node: String = running["nodes"][0].as_str().unwrap().to_owned();
    let n: usize = node.trim_start_matches("node").parse().unwrap();
    Fleet::kill(&mut fleet.agents[n]);
    fleet.wait(
        |f| f.job(first)["attempt"] == 2 && f.job(first)["state"] == "running",
        "rescheduled after the node was lost",
    );
    let moved = fleet.job(first);
    assert_ne!(moved["nodes"][0].as_str(), Some(node.as_str()), "{moved}");

    let m: usize = moved["nodes"][0].as_str().unwrap().trim_start_matches("node").parse().unwrap();
    fleet.write_inventory(m, &[2]);
    fleet
        .wait(|f| f.job(first)["attempt"] == 3 && f.job(first)["state"] == "running", "moved off the unhealthy device");
    let third = fleet.job(first);
    assert_eq!(third["failures"].as_u64(), Some(1), "the lost node counted, the sick device did not: {third}");

    let leader = fleet.json(&["status", "--json"])["leader"].as_u64().unwrap() as usize;
    Fleet::kill(&mut fleet.servers[leader - 1].1);
    let after = fleet.submit("product", 1, 1, &format!("{STARTED}; exit 0"));
    fleet.wait_state(after, "succeeded");
    assert_eq!(fleet.job(first)["attempt"], 3, "no attempt was started again by the failover: {}", fleet.job(first));
    for attempt in 1..=3 {
        assert_eq!(fleet.read(&format!("start-{first}-{attempt}-0")), "once\n", "attempt {attempt} started once");
    }
    assert_eq!(fleet.read(&format!("start-{first}-4-0")), "", "no fourth attempt");
}

#[test]
fn an_agent_that_restarts_keeps_its_running_replicas() {
    let mut fleet = Fleet::start(1);
    let job = fleet.submit("research", 1, 2, &format!("{STARTED}; sleep 3; echo done > $OUT/done-$QM_JOB_ID"));
    fleet.wait_state(job, "running");
    let (status, metrics) = fleet.agent_get(0, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let held =
        metrics.lines().filter(|l| l.starts_with("qm_device_allocated{") && l.contains(&format!("job=\"{job}\"")));
    assert_eq!(held.count(), 2, "the job's two devices: {metrics}");
    assert!(metrics.contains("\nqm_agent_registered 1\n"), "{metrics}");
    assert_eq!(fleet.agent_get(0, "/readyz").0, "HTTP/1.1 200 OK");
    Fleet::kill(&mut fleet.agents[0]);
    fleet.start_agent(0);
    let done = fleet.wait_state(job, "succeeded");
    assert_eq!((done["attempt"].as_u64(), done["failures"].as_u64()), (Some(1), Some(0)), "{done}");
    assert_eq!(fleet.read(&format!("start-{job}-1-0")), "once\n", "the replica ran once, through the restart");
    assert_eq!(fleet.read(&format!("done-{job}")), "done\n");
}
