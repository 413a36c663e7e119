//! Runs replicas: each as a child in a process group of its own, in its own working directory,
//! with its environment, stdout and stderr appended to one log file per replica and attempt. A
//! stop sends the job's signal to the group, then SIGKILL after the grace period. Every phase
//! (started, failed to start, exited with a code or a signal) is reported on a channel.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use qm_proto::v1::{ReplicaPhase, ReplicaStatus, RunningReplica, StartReplica};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A replica's key: job, replica index, attempt.
type Key = (u64, u32, u32);

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
    running: Arc<Mutex<BTreeMap<Key, i32>>>,
    reports: mpsc::UnboundedSender<ReplicaStatus>,
}

fn status(key: Key, phase: ReplicaPhase) -> ReplicaStatus {
    ReplicaStatus { job_id: key.0, replica: key.1, attempt: key.2, phase: phase as i32, ..ReplicaStatus::default() }
}

impl Executor {
    /// An executor keeping logs and working directories under `root`; phases go to `reports`.
    pub fn new(root: &Path, reports: mpsc::UnboundedSender<ReplicaStatus>) -> Self {
        Self { root: root.to_owned(), running: Arc::default(), reports }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, i32>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The replicas running now, as a registration lists them.
    pub fn running(&self) -> Vec<RunningReplica> {
        self.table().keys().map(|&(job_id, replica, attempt)| RunningReplica { job_id, replica, attempt }).collect()
    }

    /// Whether a replica of `job`'s `attempt` runs here.
    pub fn runs(&self, job: u64, replica: u32, attempt: u32) -> bool {
        self.table().contains_key(&(job, replica, attempt))
    }

    /// Starts a replica (a start of one already running is ignored: orders may come twice).
    pub fn start(&self, order: &StartReplica, env: BTreeMap<String, String>) {
        let key = (order.job_id, order.replica, order.attempt);
        if self.table().contains_key(&key) {
            return;
        }
        match self.spawn(order, env) {
            Ok(child) => {
                let pgid = child.id().map_or(0, |p| p as i32);
                self.table().insert(key, pgid);
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
        let log = log_path(&self.root, order.job_id, order.attempt, order.replica);
        let work = self.root.join("work").join(order.job_id.to_string()).join(order.attempt.to_string());
        let work = work.join(order.replica.to_string());
        for dir in [log.parent().unwrap_or(&self.root), &work] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        tokio::process::Command::new(program)
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
            .map_err(|e| format!("{program}: {e}"))
    }

    /// Waits for a replica's process, reports how it ended, and kills what is left of its group.
    async fn wait(self, key: Key, pgid: i32, mut child: tokio::process::Child) {
        let ended = child.wait().await;
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        self.table().remove(&key);
        let report = match ended {
            Ok(s) => ReplicaStatus {
                exit_code: s.code().unwrap_or(-1),
                signal: s.signal(),
                ..status(key, ReplicaPhase::Exited)
            },
            Err(e) => ReplicaStatus { exit_code: -1, message: e.to_string(), ..status(key, ReplicaPhase::Exited) },
        };
        tracing::info!(job = key.0, replica = key.1, attempt = key.2, code = report.exit_code, signal = ?report.signal, "replica ended");
        let _ = self.reports.send(report);
    }

    /// Signals every replica of `job`'s `attempt` here, and kills their groups after `grace`.
    pub fn stop(&self, job: u64, attempt: u32, signal: Signal, grace: Duration) {
        let groups: Vec<(Key, i32)> =
            self.table().iter().filter(|(k, _)| k.0 == job && k.2 == attempt).map(|(k, p)| (*k, *p)).collect();
        for (key, pgid) in groups {
            let _ = killpg(Pid::from_raw(pgid), signal);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if me.table().get(&key) == Some(&pgid) {
                    tracing::info!(job = key.0, replica = key.1, "grace period over: killing");
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
            });
        }
    }
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
            ..StartReplica::default()
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ReplicaStatus>) -> ReplicaStatus {
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("a report in time").expect("open")
    }

    #[tokio::test]
    async fn a_replica_runs_with_its_environment_and_logs_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), tx);
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

    #[tokio::test]
    async fn a_stop_signals_the_group_then_kills_it_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), tx);
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
        ex.stop(4, 1, Signal::SIGTERM, Duration::from_millis(300));
        let ended = next(&mut rx).await;
        assert_eq!(ended.signal, Some(Signal::SIGKILL as i32), "ignored TERM, so killed after the grace: {ended:?}");
        let log = std::fs::read_to_string(log_path(dir.path(), 4, 1, 0)).unwrap();
        assert!(log.contains("got TERM"), "the job received its signal first: {log}");
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_reported_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Executor::new(dir.path(), tx);
        ex.start(&order(5, &["/nonexistent/program"]), BTreeMap::new());
        let failed = next(&mut rx).await;
        assert_eq!(failed.phase, ReplicaPhase::FailedToStart as i32);
        assert!(failed.message.contains("/nonexistent/program"), "{failed:?}");
        ex.start(&order(6, &[]), BTreeMap::new());
        assert!(next(&mut rx).await.message.contains("empty"));
    }
}
