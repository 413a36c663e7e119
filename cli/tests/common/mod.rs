//! What the CLI tests share: running `qm` from the repository root, and a `qm dev` to talk to.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

/// The repository root, where the examples and traces are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `qm ARGS` from the repository root, with no `QM_SERVER` in its environment.
pub fn qm(args: &[&str]) -> Output {
    qm_env(args, &[])
}

/// `qm ARGS` with these environment variables. A call that names the address of a running
/// `Dev` (in its arguments or its environment) sends that `Dev`'s admin token and trusts its CA,
/// through `QM_TOKEN_FILE` and `QM_TLS_CA`, as a user following its banner would; an explicit
/// value in `env` wins.
pub fn qm_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qm"));
    c.args(args).current_dir(root());
    for var in ["QM_SERVER", "QM_TOKEN", "QM_TOKEN_FILE", "QM_TLS_CA"] {
        c.env_remove(var);
    }
    let named = |addr: &str| args.iter().chain(env.iter().map(|(_, v)| v)).any(|a| a.contains(addr));
    let dev = tokens().iter().find(|(addr, ..)| named(addr)).map(|(_, file, ca)| (file.clone(), ca.clone()));
    if let Some((file, ca)) = dev {
        c.env("QM_TOKEN_FILE", file).env("QM_TLS_CA", ca);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("qm runs")
}

/// The admin token files and CAs of the running `Dev`s, by address.
fn tokens() -> std::sync::MutexGuard<'static, Vec<(String, PathBuf, PathBuf)>> {
    static TOKENS: std::sync::Mutex<Vec<(String, PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    TOKENS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `qm dev` process on a free loopback port, ready once built (its banner printed after it
/// served and set its priority classes); killed when dropped.
pub struct Dev {
    /// Its address, HOST:PORT.
    pub addr: String,
    /// Its HTTP address (dashboard, metrics), HOST:PORT.
    pub http: String,
    /// The banner it printed.
    pub banner: String,
    /// Its admin token's file.
    pub token_file: PathBuf,
    /// Its CA's certificate.
    pub ca: PathBuf,
    child: Child,
    _stdout: std::io::BufReader<ChildStdout>,
}

impl Dev {
    /// Starts one without an agent and waits for its banner.
    pub fn start() -> Self {
        Self::with_agent(0)
    }

    /// Starts one whose local agent has `gpus` fake GPUs, and waits for its banner.
    pub fn with_agent(gpus: u32) -> Self {
        Self::launch(&["--fake-gpus", &gpus.to_string()])
    }

    /// Starts one whose local agent reads the NVIDIA capture at `path` (from the root).
    pub fn with_capture(path: &str) -> Self {
        Self::launch(&["--nvml-capture", path])
    }

    fn launch(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qm dev starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut banner = String::new();
        while !banner.contains("Ctrl-C stops.") {
            assert!(stdout.read_line(&mut banner).expect("qm dev writes its banner") > 0, "qm dev ended: {banner}");
        }
        let addr = banner
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .expect("the banner names the address")
            .trim_end_matches(',')
            .to_owned();
        let named = |var: &str| {
            let prefix = format!("{var}=");
            let path = banner.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str()).map(PathBuf::from));
            path.unwrap_or_else(|| panic!("the banner names {var}: {banner}"))
        };
        let (token_file, ca) = (named("QM_TOKEN_FILE"), named("QM_TLS_CA"));
        let http = banner
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://")?.strip_suffix("/ui/").map(str::to_owned))
            .unwrap_or_else(|| panic!("the banner names the dashboard: {banner}"));
        tokens().push((addr.clone(), token_file.clone(), ca.clone()));
        Self { addr, http, banner, token_file, ca, child, _stdout: stdout }
    }

    /// `--server=ADDR`.
    pub fn flag(&self) -> String {
        format!("--server={}", self.addr)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        tokens().retain(|(addr, ..)| *addr != self.addr);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (30 s at most) until job `id` is in one of `states`; its `qm job --json`.
pub fn wait_for(dev: &Dev, id: u64, states: &[&str]) -> serde_json::Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = qm(&["job", &id.to_string(), "--json", &dev.flag()]);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if states.iter().any(|s| job["state"] == *s) {
            return job;
        }
        assert!(std::time::Instant::now() < until, "job {id} never reached {states:?}: {job}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Submits a job of team `dev` with `args`; its id.
pub fn submit(dev: &Dev, args: &[&str]) -> u64 {
    let out = qm_env(&[&["submit", "--json", &dev.flag()], args].concat(), &[("QM_TEAM", "dev")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    ids["job_ids"][0].as_u64().unwrap()
}

/// GETs `path` from the plain HTTP address `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the HTTP address");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}
