//! A nemesis on real processes: a `qm server` cluster and `qm agent`s on loopback, clients
//! submitting, cancelling and reading jobs, and faults (replicas killed, paused, all killed at
//! once) injected from a seed. Once the faults heal, the run cancels what is left, runs a last
//! job to prove progress, waits for the replicas to agree and holds every replica to the
//! acknowledged history. Used by the `qm_nemesis` driver and by a short run in the tests.
//!
//! Module map: [`procs`] (the processes and their signals), [`clients`] (the workload and its
//! history), [`faults`] (the nemesis), [`check`] (what must hold at the end).

pub mod check;
pub mod clients;
pub mod faults;
pub mod procs;

use clients::{channel, until_acked, Client, History, Outcome, Violation, When, TEAM};
use faults::Fault;
use procs::{Procs, GPUS_PER_AGENT, MODEL};
use qm_proto::build::{gpu_job, gpu_team};
use qm_proto::v1::admin_service_client::AdminServiceClient;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Gaps between acknowledgements longer than this count as unavailable time.
pub const GAP: Duration = Duration::from_millis(500);

/// How long the end of a run waits for each of: the drain, the last job, the agreement.
const SETTLE: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `qm` binary.
    pub qm: PathBuf,
    /// Seed of the faults and of the clients' operations.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Replicas.
    pub replicas: usize,
    /// Agents, each with fake GPUs.
    pub agents: usize,
    /// The replicas' Raft tick (elections after 10 ticks).
    pub tick_ms: u64,
}

/// What a run did and saw.
#[derive(Debug, Default)]
pub struct Report {
    /// The history the clients were told.
    pub history: History,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, u32>,
    /// A line per fault: when, what, on which replicas, for how long.
    pub timeline: Vec<String>,
    /// How long faults were injected.
    pub faulty: Duration,
    /// Sum of the gaps between acknowledgements longer than [`GAP`], and the longest gap.
    pub unavailable: (Duration, Duration),
    /// Every violation, the clients' and the final checks'.
    pub violations: Vec<Violation>,
    /// Where the processes logged (kept when the run found violations).
    pub logs: Option<PathBuf>,
}

impl Report {
    /// Violations of guarantee `kind`.
    pub fn count(&self, kind: &str) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// The figures, as `qm_nemesis_*=` words on two lines.
    pub fn figures(&self) -> String {
        let h = &self.history;
        let faults: u32 = self.faults.values().sum();
        let by: Vec<String> = self.faults.iter().map(|(f, n)| format!("qm_nemesis_{}={n}", f.name())).collect();
        format!(
            "qm_nemesis_submits={} qm_nemesis_cancels={} qm_nemesis_reads={} qm_nemesis_reads_failed={} \
             qm_nemesis_unacknowledged={} qm_nemesis_faults={faults} {}\n\
             qm_nemesis_lost={} qm_nemesis_duplicated={} qm_nemesis_changed={} qm_nemesis_stale_reads={} \
             qm_nemesis_violations={} qm_nemesis_faulty_s={:.1} qm_nemesis_unavailable_s={:.2} \
             qm_nemesis_longest_gap_s={:.2}",
            h.submitted.len(),
            h.cancelled.len(),
            h.reads.0,
            h.reads.1,
            h.unacknowledged.len(),
            by.join(" "),
            self.count("lost"),
            self.count("duplicated"),
            self.count("changed"),
            self.count("stale read"),
            self.violations.len(),
            self.faulty.as_secs_f64(),
            self.unavailable.0.as_secs_f64(),
            self.unavailable.1.as_secs_f64(),
        )
    }
}

/// Runs the cluster, the clients and the nemesis, then the checks. An error means the run
/// could not be set up (a process did not start, no leader came); violations are in the report.
pub async fn run(cfg: &Config) -> Result<Report, String> {
    let io = |e: std::io::Error| format!("starting the processes: {e}");
    let mut procs = Procs::start(&cfg.qm, cfg.replicas, cfg.tick_ms).map_err(io)?;
    let endpoints = procs.endpoints();
    set_up(&mut procs, cfg).await?;
    let history = Arc::new(Mutex::new(History::default()));
    let begin = Instant::now();
    let (stop, give_up) = (When::default(), When::default());
    let mut clients = Vec::new();
    for n in 0..cfg.clients {
        let (stop, give_up) = (stop.clone(), give_up.clone());
        let c = Client { n, endpoints: endpoints.clone(), stop, give_up, history: history.clone() };
        clients.push(tokio::spawn(c.run(cfg.seed)));
    }
    let (faults, timeline) = faults::nemesis(&mut procs, cfg.seed, begin + cfg.duration).await.map_err(io)?;
    let end = Instant::now();
    stop.set(end);
    give_up.set(end + SETTLE);
    procs.heal().map_err(io)?;
    for c in clients {
        c.await.map_err(|e| format!("a client failed: {e}"))?;
    }
    let history = std::mem::take(&mut *history.lock().map_err(|_| "a client panicked".to_owned())?);
    let unavailable = gaps(begin, end, &history.acks);
    let faulty = end - begin;
    let mut report = Report { faulty, unavailable, history, faults, timeline, ..Report::default() };
    report.violations = report.history.violations.clone();
    settle(&endpoints, &report.history, &mut report.violations).await;
    report.violations.extend(procs.exited().into_iter().map(|e| Violation::new("exited", e)));
    if !report.violations.is_empty() {
        report.logs = Some(procs.keep_logs());
    }
    Ok(report)
}

/// Waits for a leader, gives the team a quota of every agent's GPUs, starts the agents and
/// waits until each has registered its node.
async fn set_up(procs: &mut Procs, cfg: &Config) -> Result<(), String> {
    let endpoints = procs.endpoints();
    let until = When::at(Instant::now() + SETTLE);
    let team = gpu_team(TEAM, MODEL, GPUS_PER_AGENT * cfg.agents as u32);
    let set = until_acked(&endpoints, 0, &until, |ch| {
        let team = team.clone();
        async move { AdminServiceClient::new(ch).set_team(SetTeamRequest { team: Some(team) }).await }
    });
    if !matches!(set.await, Outcome::Acked(_)) {
        return Err(format!("no leader took the team within {SETTLE:?}"));
    }
    for n in 0..cfg.agents {
        procs.start_agent(n).map_err(|e| format!("starting agent {n}: {e}"))?;
    }
    while !until.passed() {
        if ready_nodes(&endpoints).await >= cfg.agents {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the agents did not register within {SETTLE:?} (logs in {})", procs.dir().display()))
}

/// Nodes that are ready, as the first replica that answers sees them.
async fn ready_nodes(endpoints: &[String]) -> usize {
    for e in endpoints {
        if let Some(ch) = channel(e).await {
            if let Ok(r) = AdminServiceClient::new(ch).list_nodes(ListNodesRequest::default()).await {
                return r.into_inner().nodes.iter().filter(|n| n.status == NodeStatus::Ready as i32).count();
            }
        }
    }
    0
}

/// The sum of the gaps longer than [`GAP`] between `begin`, the acknowledgements and `stop`,
/// and the longest gap.
fn gaps(begin: Instant, stop: Instant, acks: &[Instant]) -> (Duration, Duration) {
    let mut times: Vec<Instant> = acks.iter().copied().filter(|t| *t < stop).collect();
    times.sort();
    times.insert(0, begin);
    times.push(stop);
    let gaps = times.windows(2).map(|w| w[1] - w[0]);
    gaps.fold((Duration::ZERO, Duration::ZERO), |(sum, max), g| (if g > GAP { sum + g } else { sum }, max.max(g)))
}

/// After the faults: cancels every job still waiting or running and waits until none holds a
/// device, runs one last job to the end, waits for the replicas to agree, and holds each
/// replica's jobs to the history.
async fn settle(endpoints: &[String], h: &History, out: &mut Vec<Violation>) {
    if let Err(e) = drain(endpoints).await {
        return out.push(Violation::new("no progress", e));
    }
    if let Err(e) = last_job(endpoints).await {
        return out.push(Violation::new("no progress", e));
    }
    if let Err(e) = check::agreement(endpoints, SETTLE).await {
        return out.push(Violation::new("diverged", e));
    }
    for (i, e) in endpoints.iter().enumerate() {
        match check::all_jobs(e).await {
            Ok(jobs) => out.extend(check::jobs_against(i as u64 + 1, &jobs, h)),
            Err(e) => out.push(Violation::new("no progress", e)),
        }
    }
}

/// Cancels the jobs that have not ended and waits until every job has.
async fn drain(endpoints: &[String]) -> Result<(), String> {
    let until = When::at(Instant::now() + SETTLE);
    loop {
        let leader = &endpoints[check::agreement(endpoints, SETTLE).await?.leader_id as usize - 1];
        let jobs = check::all_jobs(leader).await?;
        let open: Vec<&Job> = jobs.iter().filter(|j| !ended(j.state)).collect();
        if open.is_empty() {
            return Ok(());
        }
        if until.passed() {
            let names: Vec<String> = open.iter().take(5).map(|j| format!("{} ({:?})", j.id, state(j.state))).collect();
            return Err(format!("{} jobs had not ended {SETTLE:?} after the faults, such as {names:?}", open.len()));
        }
        let ids = open.iter().filter(|j| !matches!(state(j.state), JobState::Stopping)).map(|j| j.id);
        if let Some(ch) = channel(leader).await {
            cancel_all(JobServiceClient::new(ch), ids.collect()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cancels jobs, 64 at a time over one connection; failures are left to the next round.
async fn cancel_all(client: JobServiceClient<tonic::transport::Channel>, ids: Vec<u64>) {
    let mut calls = tokio::task::JoinSet::new();
    for id in ids {
        if calls.len() >= 64 {
            calls.join_next().await;
        }
        let mut client = client.clone();
        calls.spawn(async move { client.cancel(CancelJobRequest { job_id: id }).await });
    }
    calls.join_all().await;
}

fn state(raw: i32) -> JobState {
    JobState::try_from(raw).unwrap_or_default()
}

fn ended(raw: i32) -> bool {
    matches!(state(raw), JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

/// Submits a job that exits at once and waits until it has succeeded.
async fn last_job(endpoints: &[String]) -> Result<(), String> {
    let until = When::at(Instant::now() + SETTLE);
    let req = SubmitRequest { jobs: vec![gpu_job("last", TEAM, 1, &["true"])], request_id: "last".into() };
    let id = match until_acked(endpoints, 0, &until, |ch| {
        let req = req.clone();
        async move { JobServiceClient::new(ch).submit(req).await }
    })
    .await
    {
        Outcome::Acked(r) => r.into_inner().job_ids.first().copied().unwrap_or_default(),
        other => return Err(format!("the last job was not acknowledged: {other:?}")),
    };
    loop {
        let read = until_acked(endpoints, 0, &until, |ch| async move {
            JobServiceClient::new(ch).get(GetJobRequest { job_id: id, consistency: 0 }).await
        });
        let now = match read.await {
            Outcome::Acked(r) => r.into_inner().job.map_or(JobState::Unspecified, |j| state(j.state)),
            other => return Err(format!("the last job could not be read: {other:?}")),
        };
        match now {
            JobState::Succeeded => return Ok(()),
            s if ended(s as i32) || until.passed() => return Err(format!("the last job is {s:?}")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
