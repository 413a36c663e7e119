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

/// `qm ARGS` with these environment variables.
pub fn qm_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qm"));
    c.args(args).current_dir(root()).env_remove("QM_SERVER");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("qm runs")
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
    /// The banner it printed.
    pub banner: String,
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
            .args(["dev", "--listen", "127.0.0.1:0"])
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
        Self { addr, banner, child, _stdout: stdout }
    }

    /// `--server=ADDR`.
    pub fn flag(&self) -> String {
        format!("--server={}", self.addr)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
