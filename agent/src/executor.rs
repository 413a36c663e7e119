//! Runs replicas: each as a child in a process group of its own, in its own working directory,
//! with its environment, stdout and stderr appended to one log file per replica and attempt. A
//! stop sends the job's signal to the group, then SIGKILL after the grace period. Every phase
//! (started, failed to start, exited with a code or a signal) is reported on a channel.
//!
//! Replicas outlive the agent. Each is started under a small `sh` that writes the command's exit
//! code to a file, and a record of its process group is kept in `ROOT/replicas/`; an agent that
//! starts again adopts the groups still alive (and reports those that ended meanwhile, with
//! their exit code), so a restart neither forgets a replica nor runs it twice.
//!
//! Each running replica has a usage meter over the devices it holds (`observe` feeds it the
//! node's telemetry); its summary goes out with the replica's exit report.
//!
//! A device runs one replica at a time. A start whose devices a replica still holds (one told
//! to stop and within its grace period, after its node was declared lost and its job placed
//! again) waits until they are free; a stop of a waiting start drops it and reports it exited.

use crate::cgroup::Cgroups;
use crate::usage::Meter;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use qm_proto::v1::{DeviceTelemetry, ReplicaPhase, ReplicaStatus, RunningReplica, StartReplica};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A replica's key: job, replica index, attempt.
type Key = (u64, u32, u32);

/// A running replica: its process group, its devices and their usage so far.
#[derive(Debug)]
struct Running {
    pgid: i32,
    devices: Vec<String>,
    meter: Meter,
}

impl Running {
    fn new(pgid: i32, replica: u32, devices: &[String]) -> Self {
        Self { pgid, devices: devices.to_vec(), meter: Meter::new(replica, devices) }
    }
}

/// A start waiting for its devices, with its environment.
type Waiting = (StartReplica, BTreeMap<String, String>);

/// Where a replica's output goes: `ROOT/logs/JOB/ATTEMPT/REPLICA.log`.
pub fn log_path(root: &Path, job: u64, attempt: u32, replica: u32) -> PathBuf {
    root.join("logs").join(job.to_string()).join(attempt.to_string()).join(format!("{replica}.log"))
}

/// The latest attempt of `job` this agent has a log of.
pub fn latest_attempt(root: &Path, job: u64) -> Option<u32> {
    let dir = root.join("logs").join(job.to_string());
    std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).max()
}

/// The replicas running on this node, and the channel their phases go out on.
#[derive(Debug, Clone)]
pub struct Executor {
    root: PathBuf,
    boot_id: String,
    cgroups: Option<Cgroups>,
    running: Arc<Mutex<BTreeMap<Key, Running>>>,
    waiting: Arc<Mutex<Vec<Waiting>>>,
    reports: mpsc::UnboundedSender<ReplicaStatus>,
}

fn key_of(order: &StartReplica) -> Key {
    (order.job_id, order.replica, order.attempt)
}

fn status(key: Key, phase: ReplicaPhase) -> ReplicaStatus {
    ReplicaStatus { job_id: key.0, replica: key.1, attempt: key.2, phase: phase as i32, ..ReplicaStatus::default() }
}

impl Executor {
    /// An executor keeping logs, working directories and records under `root`, on the host
    /// boot `boot_id`; phases go to `reports`.
    pub fn new(root: &Path, boot_id: &str, reports: mpsc::UnboundedSender<ReplicaStatus>) -> Self {
        let (root, boot_id) = (root.to_owned(), boot_id.to_owned());
        Self { root, boot_id, cgroups: None, running: Arc::default(), waiting: Arc::default(), reports }
    }

    /// Replicas get cgroups of their own with CPU and memory limits, under `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = Some(cgroups);
        self
    }

    fn cgroup_name(key: Key) -> String {
        format!("{}.{}.{}", key.0, key.1, key.2)
    }

    /// The file a replica's shell writes its pid to, in its new cgroup; empty without cgroups.
    fn cgroup(&self, order: &StartReplica) -> String {
        let Some(cg) = &self.cgroups else { return String::new() };
        let name = Self::cgroup_name((order.job_id, order.replica, order.attempt));
        match cg.replica(&name, order.cpu_millis, order.mem_mib) {
            Ok(procs) => procs.display().to_string(),
            Err(e) => {
                tracing::warn!(job = order.job_id, "no cgroup, so no CPU and memory limits: {e}");
                String::new()
            }
        }
    }

    fn drop_cgroup(&self, key: Key) {
        if let Some(cg) = &self.cgroups {
            cg.remove(&Self::cgroup_name(key));
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The replicas running now, as a registration lists them.
    pub fn running(&self) -> Vec<RunningReplica> {
        self.table().keys().map(|&(job_id, replica, attempt)| RunningReplica { job_id, replica, attempt }).collect()
    }

    /// The job holding each device a running replica holds, by device id.
    pub fn holders(&self) -> BTreeMap<String, u64> {
        let table = self.table();
        table.iter().flat_map(|(&(job, ..), r)| r.devices.iter().map(move |d| (d.clone(), job))).collect()
    }

    /// Adds one telemetry sample to the meter of every running replica.
    pub fn observe(&self, samples: &[DeviceTelemetry]) {
        for r in self.table().values_mut() {
            r.meter.observe(samples);
        }
    }

    /// Ends a replica's entry: its usage so far, if it was running.
    fn remove(&self, key: Key) -> Vec<qm_proto::v1::DeviceUsage> {
        self.table().remove(&key).map(|r| r.meter.report()).unwrap_or_default()
    }

    /// Whether a replica of `job`'s `attempt` runs here.
    pub fn runs(&self, job: u64, replica: u32, attempt: u32) -> bool {
        self.table().contains_key(&(job, replica, attempt))
    }

    fn record(&self, key: Key) -> PathBuf {
        self.root.join("replicas").join(format!("{}.{}.{}", key.0, key.1, key.2))
    }

    /// Where a replica's shell writes its command's exit code.
    fn exit_file(&self, key: Key) -> PathBuf {
        self.root.join("replicas").join(format!("{}.{}.{}.exit", key.0, key.1, key.2))
    }

    /// Removes what a replica left behind once it ended: its record, exit file and cgroup.
    fn forget(&self, key: Key) {
        let _ = std::fs::remove_file(self.exit_file(key));
        let _ = std::fs::remove_file(self.record(key));
        self.drop_cgroup(key);
    }

    /// Adopts the replicas a previous agent of this boot left running, and reports those that
    /// ended while no agent watched them.
    pub fn recover(&self, boot_id: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join("replicas")) else { return };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let parts: Vec<&str> = name.split('.').collect();
            if parts.len() != 3 {
                continue;
            }
            let [Ok(job), Ok(replica), Ok(attempt)] = [parts.first(), parts.get(1), parts.get(2)]
                .map(|p| p.map_or(Err(()), |p| p.parse::<u64>().map_err(|_| ())))
            else {
                continue;
            };
            let key = (job, replica as u32, attempt as u32);
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let mut lines = content.lines();
            let (pgid, boot) = lines.next().unwrap_or_default().trim().split_once(' ').unwrap_or(("0", ""));
            let pgid: i32 = pgid.parse().unwrap_or(0);
            let devices: Vec<String> = lines.map(str::to_owned).collect();
            if boot != boot_id || pgid <= 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if alive(pgid) {
                tracing::info!(job, replica, attempt, pgid, "adopted a replica that outlived the agent");
                self.table().insert(key, Running::new(pgid, key.1, &devices));
                tokio::spawn(self.clone().watch_orphan(key, pgid));
            } else {
                self.ended_unwatched(key, Vec::new());
            }
        }
    }

    /// Polls an adopted replica's group until it is gone, then reports how it ended.
    async fn watch_orphan(self, key: Key, pgid: i32) {
        while alive(pgid) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let usage = self.remove(key);
        self.ended_unwatched(key, usage);
        self.start_waiting();
    }

    /// Reports a replica that ended while no agent was its parent, from its exit file, with
    /// the usage metered since it was adopted.
    fn ended_unwatched(&self, key: Key, usage: Vec<qm_proto::v1::DeviceUsage>) {
        let code = std::fs::read_to_string(self.exit_file(key)).ok().and_then(|c| c.trim().parse::<i32>().ok());
        self.forget(key);
        let report = match code {
            Some(c) => ReplicaStatus { exit_code: c, usage, ..status(key, ReplicaPhase::Exited) },
            None => ReplicaStatus {
                exit_code: -1,
                message: "its exit status is unknown: it ended while no agent watched it".into(),
                usage,
                ..status(key, ReplicaPhase::Exited)
            },
        };
        tracing::info!(
            job = key.0,
            replica = key.1,
            attempt = key.2,
            code = report.exit_code,
            "an unwatched replica ended"
        );
        let _ = self.reports.send(report);
    }

    /// Starts a replica (a start of one already running or waiting is ignored: orders may come
    /// twice), or, when a replica still holds one of its devices, keeps it until they are free.
    pub fn start(&self, order: &StartReplica, env: BTreeMap<String, String>) {
        let key = key_of(order);
        let mut waiting = self.waiting();
        if self.table().contains_key(&key) || waiting.iter().any(|(w, _)| key_of(w) == key) {
            return;
        }
        if let Some(holder) = self.holder(&order.devices) {
            tracing::info!(
                job = key.0,
                replica = key.1,
                held_by = holder.0,
                "start waits: a replica told to stop still holds its devices"
            );
            waiting.push((order.clone(), env));
            return;
        }
        drop(waiting);
        self.spawn_and_watch(order, env);
    }

    /// A running replica holding one of `devices`.
    fn holder(&self, devices: &[String]) -> Option<Key> {
        self.table().iter().find(|(_, r)| r.devices.iter().any(|d| devices.contains(d))).map(|(k, _)| *k)
    }

    /// Starts the waiting starts whose devices are free now, in the order they came.
    fn start_waiting(&self) {
        loop {
            let next = {
                let mut waiting = self.waiting();
                let free = waiting.iter().position(|(w, _)| self.holder(&w.devices).is_none());
                free.map(|i| waiting.remove(i))
            };
            let Some((order, env)) = next else { return };
            self.spawn_and_watch(&order, env);
        }
    }

    fn spawn_and_watch(&self, order: &StartReplica, env: BTreeMap<String, String>) {
        let key = key_of(order);
        match self.spawn(order, env) {
            Ok(child) => {
                let pgid = child.id().map_or(0, |p| p as i32);
                let record = self.record(key);
                let lines: Vec<String> =
                    std::iter::once(format!("{pgid} {}", self.boot_id)).chain(order.devices.iter().cloned()).collect();
                if let Err(e) = std::fs::write(&record, lines.join("\n")) {
                    tracing::warn!(
                        "{}: {e}: this replica will not be found again after an agent restart",
                        record.display()
                    );
                }
                self.table().insert(key, Running::new(pgid, key.1, &order.devices));
                let _ = self.reports.send(status(key, ReplicaPhase::Started));
                tokio::spawn(self.clone().wait(key, pgid, child));
            }
            Err(message) => {
                tracing::warn!(job = key.0, replica = key.1, "could not start: {message}");
                let _ = self.reports.send(ReplicaStatus { message, ..status(key, ReplicaPhase::FailedToStart) });
            }
        }
    }

    fn spawn(&self, order: &StartReplica, env: BTreeMap<String, String>) -> Result<tokio::process::Child, String> {
        let (program, args) = order.command.split_first().ok_or("the command is empty")?;
        let path = env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
        let program = resolve(program, &path).ok_or_else(|| format!("{program}: not found (PATH={path})"))?;
        let log = log_path(&self.root, order.job_id, order.attempt, order.replica);
        let work = self.root.join("work").join(order.job_id.to_string()).join(order.attempt.to_string());
        let work = work.join(order.replica.to_string());
        let exit_file = self.exit_file((order.job_id, order.replica, order.attempt));
        for dir in [log.parent().unwrap_or(&self.root), &work, &self.root.join("replicas")] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let _ = std::fs::remove_file(&exit_file);
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(&exit_file)
            .arg(self.cgroup(order))
            .arg(&program)
            .args(args)
            .env_clear()
            .envs(inherited())
            .envs(env)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))
    }

    /// Waits for a replica's process, reports how it ended, and kills what is left of its group.
    async fn wait(self, key: Key, pgid: i32, mut child: tokio::process::Child) {
        let ended = child.wait().await;
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let usage = self.remove(key);
        self.forget(key);
        let report = match ended {
            Ok(s) => ReplicaStatus {
                exit_code: s.code().unwrap_or(-1),
                signal: s.signal(),
                usage,
                ..status(key, ReplicaPhase::Exited)
            },
            Err(e) => {
                ReplicaStatus { exit_code: -1, message: e.to_string(), usage, ..status(key, ReplicaPhase::Exited) }
            }
        };
        tracing::info!(job = key.0, replica = key.1, attempt = key.2, code = report.exit_code, signal = ?report.signal, "replica ended");
        let _ = self.reports.send(report);
        self.start_waiting();
    }

    /// Signals every replica of `job`'s `attempt` here, and kills their groups after `grace`;
    /// drops its starts still waiting for devices, reported exited (a stop counts any exit).
    pub fn stop(&self, job: u64, attempt: u32, signal: Signal, grace: Duration) {
        let dropped: Vec<Key> = {
            let mut waiting = self.waiting();
            let (dropped, kept) =
                std::mem::take(&mut *waiting).into_iter().partition(|(w, _)| w.job_id == job && w.attempt == attempt);
            *waiting = kept;
            dropped.iter().map(|(w, _): &Waiting| key_of(w)).collect()
        };
        for key in dropped {
            let message = "stopped before it started: its devices were still held".to_owned();
            let _ = self.reports.send(ReplicaStatus { message, ..status(key, ReplicaPhase::Exited) });
        }
        let groups: Vec<(Key, i32)> =
            self.table().iter().filter(|(k, _)| k.0 == job && k.2 == attempt).map(|(k, r)| (*k, r.pgid)).collect();
        for (key, pgid) in groups {
            let _ = killpg(Pid::from_raw(pgid), signal);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if me.table().get(&key).map(|r| r.pgid) == Some(pgid) {
                    tracing::info!(job = key.0, replica = key.1, "grace period over: killing");
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
            });
        }
    }
}

/// The shell a replica runs under: it moves itself into the replica's cgroup (the file named by
/// `$1`, when not empty) before anything else runs, survives the stop signal (a handler, which the
/// command does not inherit, where ignoring it would be inherited), runs the command, and writes
/// its exit code to the file named by `$0`, for an agent that was not there to see it end.
const WRAPPER: &str =
    r#"[ -z "$1" ] || echo $$ > "$1"; shift; trap : HUP INT TERM USR1 USR2; "$@"; c=$?; echo "$c" > "$0"; exit "$c""#;

/// Whether a replica's group leader (the wrapper shell, whose pid is the group's id) still runs:
/// present in `/proc` and not a zombie. When it has ended, the replica has.
fn alive(pgid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Where `program` is: itself when it names a path, else the first executable of that name on
/// `path`.
fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(program)).find(|p| executable(p))
}

/// The agent's own variables a replica keeps: where programs are, and the locale.
fn inherited() -> Vec<(String, String)> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(job: u64, command: &[&str]) -> StartReplica {
        StartReplica {
            job_id: job,
            attempt: 1,
            command: command.iter().map(|s| s.to_string()).collect(),
            devices: vec!["GPU-a".into()],
            ..StartReplica::default()
        }
    }

    /// One reading of the device every order holds.
    fn sample(util: u32) -> Vec<DeviceTelemetry> {
        let gpu = DeviceTelemetry { device: "GPU-a".into(), utilization_pct: Some(util), ..DeviceTelemetry::default() };
        vec![
            gpu,
            DeviceTelemetry { device: "GPU-other".into(), utilization_pct: Some(1), ..DeviceTelemetry::default() },
        ]
    }

    /// The utilization samples and their sum that a report carries for GPU-a.
    fn metered(report: &ReplicaStatus) -> Vec<(String, u64, u64)> {
        report.usage.iter().map(|u| (u.device.clone(), u.utilization_samples, u.utilization_pct_sum)).collect()
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ReplicaStatus>) -> ReplicaStatus {
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("a report in time").expect("open")
    }

    #[tokio::test]
    async fn a_replica_runs_with_its_environment_and_logs_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx);
        let env = BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]);
        ex.start(&order(3, &["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 7"]), env);
        assert_eq!(next(&mut rx).await.phase, ReplicaPhase::Started as i32);
        let ended = next(&mut rx).await;
        assert_eq!((ended.phase, ended.exit_code, ended.signal), (ReplicaPhase::Exited as i32, 7, None));
        let log = std::fs::read_to_string(log_path(dir.path(), 3, 1, 0)).unwrap();
        assert!(log.starts_with("hello\n") && log.contains("/work/3/1/0\n") && log.ends_with("oops\n"), "{log}");
        assert!(ex.running().is_empty());
        assert_eq!(latest_attempt(dir.path(), 3), Some(1));
    }

    /// A start on a device that a replica still holds (told to stop, within its grace period)
    /// waits until that replica exits; a stop of a start still waiting drops it, reported
    /// exited. The agent once started both at once on one GPU.
    #[tokio::test]
    async fn a_start_on_a_held_device_waits_for_its_holder_to_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx);
        ex.start(&order(1, &["sleep", "1"]), BTreeMap::new());
        let first = next(&mut rx).await;
        assert_eq!((first.job_id, first.phase), (1, ReplicaPhase::Started as i32));
        ex.start(&order(2, &["true"]), BTreeMap::new());
        ex.start(&order(3, &["true"]), BTreeMap::new());
        ex.stop(3, 1, Signal::SIGTERM, Duration::from_secs(1));
        let dropped = next(&mut rx).await;
        assert_eq!((dropped.job_id, dropped.phase), (3, ReplicaPhase::Exited as i32));
        assert!(dropped.message.contains("before it started"), "{}", dropped.message);
        let order_of_reports: Vec<(u64, i32)> = {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let r = next(&mut rx).await;
                seen.push((r.job_id, r.phase));
            }
            seen
        };
        let (started, exited) = (ReplicaPhase::Started as i32, ReplicaPhase::Exited as i32);
        assert_eq!(order_of_reports, [(1, exited), (2, started), (2, exited)], "job 2 started once job 1 was gone");
        assert!(ex.running().is_empty());
    }

    #[tokio::test]
    async fn a_stop_signals_the_group_then_kills_it_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx);
        let script = "trap 'echo got TERM' TERM; echo ready; sleep 60 & wait; sleep 60 & wait";
        ex.start(&order(4, &["sh", "-c", script]), BTreeMap::new());
        assert_eq!(next(&mut rx).await.phase, ReplicaPhase::Started as i32);
        assert!(ex.runs(4, 0, 1) && ex.running().len() == 1);
        let log = log_path(dir.path(), 4, 1, 0);
        let ready = async {
            while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready")) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), ready).await.expect("the trap is set");
        ex.observe(&sample(80));
        ex.observe(&sample(60));
        ex.stop(4, 1, Signal::SIGTERM, Duration::from_millis(300));
        let ended = next(&mut rx).await;
        assert_eq!(ended.signal, Some(Signal::SIGKILL as i32), "ignored TERM, so killed after the grace: {ended:?}");
        assert_eq!(metered(&ended), [("GPU-a".to_owned(), 2, 140)], "its device's samples, no other's");
        let log = std::fs::read_to_string(log_path(dir.path(), 4, 1, 0)).unwrap();
        assert!(log.contains("got TERM"), "the job received its signal first: {log}");
    }

    /// Starts `command` under an executor on a runtime of its own, then drops that runtime (the
    /// agent dies; the replica's process group lives on).
    fn start_and_abandon(root: &Path, job: u64, command: &[&str]) {
        let (root, command): (PathBuf, Vec<String>) =
            (root.to_owned(), command.iter().map(|s| s.to_string()).collect());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let command: Vec<&str> = command.iter().map(String::as_str).collect();
                Executor::new(&root, "boot", tx).start(&order(job, &command), BTreeMap::new());
                assert_eq!(next(&mut rx).await.phase, ReplicaPhase::Started as i32);
            });
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn a_new_agent_adopts_live_replicas_and_reports_those_that_ended_with_their_code() {
        let dir = tempfile::tempdir().unwrap();
        start_and_abandon(dir.path(), 8, &["sh", "-c", "sleep 1; exit 3"]);
        start_and_abandon(dir.path(), 9, &["sh", "-c", "exit 5"]);
        start_and_abandon(dir.path(), 10, &["sleep", "30"]);
        let stale = Executor::new(dir.path(), "boot", mpsc::unbounded_channel().0).record((10, 0, 1));
        let pgid = std::fs::read_to_string(&stale).unwrap().split(' ').next().unwrap().parse::<i32>().unwrap();
        let record = std::fs::read_to_string(dir.path().join("replicas/8.0.1")).unwrap();
        assert!(record.ends_with(" boot\nGPU-a"), "the record keeps the devices: {record:?}");
        std::fs::write(&stale, format!("{pgid} an-earlier-boot")).unwrap();
        let record = std::fs::read_to_string(dir.path().join("replicas/9.0.1")).unwrap();
        let nine: i32 = record.split(' ').next().unwrap().parse().unwrap();
        // Its shell writes the exit file just before it exits: wait until it is gone.
        let ended = async {
            while std::fs::read_to_string(dir.path().join("replicas/9.0.1.exit")).is_err() || alive(nine) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), ended).await.expect("job 9 ends");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx);
        ex.recover("boot");
        ex.observe(&sample(30));
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        assert_eq!(
            ex.running(),
            [RunningReplica { job_id: 8, replica: 0, attempt: 1 }],
            "adopted; job 10's record is of another boot"
        );
        let first = next(&mut rx).await;
        assert_eq!(
            (first.job_id, first.phase, first.exit_code),
            (9, ReplicaPhase::Exited as i32, 5),
            "ended while unwatched"
        );
        let second = next(&mut rx).await;
        assert_eq!((second.job_id, second.exit_code), (8, 3), "the adopted replica's own exit code");
        assert_eq!(metered(&second), [("GPU-a".to_owned(), 1, 30)], "metered since it was adopted");
        assert!(first.usage.is_empty(), "nobody metered a replica that ended unwatched");
        assert!(ex.running().is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("replicas")).unwrap().count(), 0, "no record is left");
    }

    #[tokio::test]
    async fn a_replica_enters_its_cgroup_before_its_command_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("cgroup");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "cpu memory").unwrap();
        let cgroups = Cgroups::setup(&mount, "0::/agent.service", 1).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx).with_cgroups(cgroups);
        let order = StartReplica { cpu_millis: 1_500, mem_mib: 512, ..order(11, &["sh", "-c", "echo $$ > pid"]) };
        ex.start(&order, BTreeMap::new());
        assert_eq!(next(&mut rx).await.phase, ReplicaPhase::Started as i32);
        assert_eq!(next(&mut rx).await.exit_code, 0);
        let group = mount.join("agent.service/replicas/11.0.1");
        let read = |f: &str| std::fs::read_to_string(group.join(f)).unwrap_or_default().trim().to_owned();
        assert_eq!((read("cpu.max"), read("memory.max")), ("150000 100000".into(), "536870912".into()));
        let shell: u32 = read("cgroup.procs").parse().unwrap_or(0);
        assert!(shell > 0, "the replica's shell wrote its pid into the cgroup");
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_reported_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), "boot", tx);
        ex.start(&order(5, &["/nonexistent/program"]), BTreeMap::new());
        let failed = next(&mut rx).await;
        assert_eq!(failed.phase, ReplicaPhase::FailedToStart as i32);
        assert!(failed.message.contains("/nonexistent/program"), "{failed:?}");
        ex.start(&order(6, &[]), BTreeMap::new());
        assert!(next(&mut rx).await.message.contains("empty"));
    }
}
