//! The processes a nemesis run starts and hurts: `qm server` replicas and `qm agent`s on
//! loopback, each logging to a file in one temporary directory.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Fake GPUs each agent reports.
pub const GPUS_PER_AGENT: u32 = 4;

/// The model of the agents' fake GPUs (`qm agent --fake-gpus`).
pub const MODEL: &str = "fake-gpu";

/// What a replica is doing, as the nemesis left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Running.
    Up,
    /// Stopped by SIGSTOP: its sockets accept, nothing answers.
    Paused,
    /// Killed by SIGKILL.
    Down,
}

/// The replicas and agents of one run; everything still running is killed when dropped.
#[derive(Debug)]
pub struct Procs {
    qm: PathBuf,
    tick_ms: u64,
    /// The replicas' client and peer addresses, replica `id` at `id - 1`.
    pub addrs: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    replicas: Vec<Option<Child>>,
    paused: Vec<bool>,
    agents: Vec<Child>,
}

/// Where `free_addr` looks: below Linux's ephemeral range (32768-60999), which outgoing
/// connections take their ports from.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback address for a process that is killed and started again on it. A port the
/// kernel hands out for port 0 comes from the ephemeral range, and while its replica is down a
/// client's outgoing connection can take it, so that the restart cannot bind it (a flake of the
/// cluster tests); this one is drawn below that range, and free when this returns.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let span = u64::from(PORTS.end - PORTS.start);
    for _ in 0..span {
        let n = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mix = (u64::from(std::process::id()) << 20 ^ u64::from(nanos) ^ n.wrapping_mul(7_919)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], PORTS.start + mix as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free loopback port in 20000-31999"))
}

impl Procs {
    /// Starts `replicas` replicas of one new cluster.
    pub fn start(qm: &Path, replicas: usize, tick_ms: u64) -> std::io::Result<Self> {
        let addrs = (0..replicas).map(|_| free_addr()).collect::<std::io::Result<_>>()?;
        let mut p = Self {
            qm: qm.to_owned(),
            tick_ms,
            addrs,
            dir: tempfile::tempdir()?,
            replicas: (0..replicas).map(|_| None).collect(),
            paused: vec![false; replicas],
            agents: Vec::new(),
        };
        for id in p.ids() {
            p.spawn(id)?;
        }
        Ok(p)
    }

    /// Replica ids, 1 to the number of replicas.
    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.addrs.len() as u64
    }

    /// Where the processes log (`ID.log` for a replica, `agent-N.log` for an agent).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://HOST:PORT` of replica `id`.
    pub fn endpoint(&self, id: u64) -> String {
        format!("http://{}", self.addrs[id as usize - 1])
    }

    /// Every replica's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.ids().map(|id| self.endpoint(id)).collect()
    }

    /// What replica `id` is doing.
    pub fn life(&self, id: u64) -> Life {
        let i = id as usize - 1;
        match (&self.replicas[i], self.paused[i]) {
            (None, _) => Life::Down,
            (Some(_), true) => Life::Paused,
            (Some(_), false) => Life::Up,
        }
    }

    fn spawn(&mut self, id: u64) -> std::io::Result<()> {
        let i = id as usize - 1;
        let mut cmd = Command::new(&self.qm);
        cmd.args(["server", "--id", &id.to_string(), "--listen", &self.addrs[i].to_string()]);
        for (j, a) in self.addrs.iter().enumerate() {
            cmd.args(["--peer", &format!("{}={a}", j + 1)]);
        }
        let data = self.dir.path().join(id.to_string());
        cmd.arg("--data").arg(data).args(["--tick-ms", &self.tick_ms.to_string()]);
        cmd.args(["--snapshot-every", "300", "--keep-entries", "50", "--insecure"]);
        let log = self.log(&format!("{id}.log"))?;
        self.replicas[i] = Some(cmd.stdout(Stdio::null()).stderr(log).spawn()?);
        self.paused[i] = false;
        Ok(())
    }

    fn log(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name))
    }

    /// Starts agent `n` (node `node-N`) with its fake GPUs, talking to every replica.
    pub fn start_agent(&mut self, n: usize) -> std::io::Result<()> {
        let servers = self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let data = self.dir.path().join(format!("agent-{n}"));
        let child = Command::new(&self.qm)
            .args(["agent", "--server", &servers, "--name", &format!("node-{n}"), "--listen", "127.0.0.1:0"])
            .args(["--fake-gpus", &GPUS_PER_AGENT.to_string(), "--no-nvml", "--no-pci", "--no-cgroups", "--insecure"])
            .arg("--data")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(self.log(&format!("agent-{n}.log"))?)
            .spawn()?;
        self.agents.push(child);
        Ok(())
    }

    /// SIGKILL to replica `id` (a paused one too).
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.replicas[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts replica `id` again on its data directory, if it is down.
    pub fn restart(&mut self, id: u64) -> std::io::Result<()> {
        match self.life(id) {
            Life::Down => self.spawn(id),
            Life::Paused | Life::Up => Ok(()),
        }
    }

    /// SIGSTOP to replica `id`.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, Signal::SIGSTOP, true);
    }

    /// SIGCONT to replica `id`.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, Signal::SIGCONT, false);
    }

    fn signal(&mut self, id: u64, signal: Signal, paused: bool) {
        let i = id as usize - 1;
        if let Some(c) = &self.replicas[i] {
            if kill(Pid::from_raw(c.id() as i32), signal).is_ok() {
                self.paused[i] = paused;
            }
        }
    }

    /// Resumes every paused replica and restarts every killed one.
    pub fn heal(&mut self) -> std::io::Result<()> {
        for id in self.ids() {
            self.resume(id);
            self.restart(id)?;
        }
        Ok(())
    }

    /// Keeps the logs after the run: the directory is not removed when this is dropped.
    pub fn keep_logs(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_owned()
    }

    /// Whether each process is still running (one that exited on its own is a failure).
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, c) in self.replicas.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = c.as_mut().map(Child::try_wait) {
                out.push(format!("replica {} exited on its own: {status}", i + 1));
            }
        }
        for (n, a) in self.agents.iter_mut().enumerate() {
            if let Ok(Some(status)) = a.try_wait() {
                out.push(format!("agent {n} exited on its own: {status}"));
            }
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for id in self.ids() {
            self.resume(id);
            self.kill(id);
        }
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}
