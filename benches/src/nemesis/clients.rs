//! The workload of a nemesis run: clients that submit, cancel and read jobs, each retrying an
//! operation on the next replica until it is acknowledged, refused, or the run gives up; and
//! the history of what was acknowledged, which the checks hold the replicas to.

use qm_proto::build::gpu_job;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The team whose jobs the clients submit.
pub const TEAM: &str = "nemesis";

/// How long one call may take before the client tries the next replica: a paused replica
/// accepts connections and never answers.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);

/// What the clients were told, as the checks need it.
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged submissions: the job's name and the id the cluster gave it.
    pub submitted: BTreeMap<String, u64>,
    /// Jobs whose cancel was acknowledged.
    pub cancelled: BTreeSet<u64>,
    /// Jobs whose cancel was refused because they had already ended.
    pub ended_first: BTreeSet<u64>,
    /// Submissions never acknowledged (each may or may not have been applied).
    pub unacknowledged: BTreeSet<String>,
    /// When each acknowledgement came.
    pub acks: Vec<Instant>,
    /// Linearizable reads answered, and those that failed (a replica down or paused).
    pub reads: (u64, u64),
    /// What contradicts the guarantees.
    pub violations: Vec<Violation>,
}

/// Something that contradicts a guarantee.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which guarantee: `lost`, `changed`, `duplicated`, `cancel undone`, `device twice`,
    /// `stale read`, `refused`, `diverged`, `no progress` or `exited`.
    pub kind: &'static str,
    /// What was seen.
    pub what: String,
}

impl Violation {
    /// A violation of guarantee `kind`.
    pub fn new(kind: &'static str, what: String) -> Self {
        Self { kind, what }
    }
}

/// How an operation ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Acknowledged.
    Acked(T),
    /// Refused with a status that retrying does not change.
    Refused(Status),
    /// Never answered before the run gave up.
    Unknown,
}

/// An instant that may be fixed later (when the faults end), shared by the clients.
#[derive(Clone, Debug, Default)]
pub struct When(Arc<OnceLock<Instant>>);

impl When {
    /// Fixed at `t`.
    pub fn at(t: Instant) -> Self {
        let w = Self::default();
        w.set(t);
        w
    }

    /// Fixes it at `t` (the first time only).
    pub fn set(&self, t: Instant) {
        let _ = self.0.set(t);
    }

    /// Whether it is fixed and has passed.
    pub fn passed(&self) -> bool {
        self.0.get().is_some_and(|t| Instant::now() >= *t)
    }
}

/// Errors after which the operation may or may not have been applied, and a retry is safe.
fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}

/// A channel to `endpoint` whose calls time out, or none when it does not connect.
pub async fn channel(endpoint: &str) -> Option<Channel> {
    let e = Endpoint::from_shared(endpoint.to_owned()).ok()?;
    e.connect_timeout(Duration::from_millis(300)).timeout(CALL_TIMEOUT).connect().await.ok()
}

/// Calls `f` on replica after replica, from the one at `start`, until it is acknowledged or
/// refused, or `give_up` passes.
pub async fn until_acked<T, F, Fut>(endpoints: &[String], start: usize, give_up: &When, mut f: F) -> Outcome<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempt = start;
    while !give_up.passed() {
        if let Some(ch) = channel(&endpoints[attempt % endpoints.len()]).await {
            match f(ch).await {
                Ok(t) => return Outcome::Acked(t),
                Err(s) if retryable(&s) => {}
                Err(s) => return Outcome::Refused(s),
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Outcome::Unknown
}

/// One client of the run.
#[derive(Debug)]
pub struct Client {
    /// Its number, in its job names.
    pub n: usize,
    /// The replicas' endpoints.
    pub endpoints: Vec<String>,
    /// When to stop starting operations.
    pub stop: When,
    /// When to stop retrying the last one.
    pub give_up: When,
    /// What every client was told.
    pub history: Arc<Mutex<History>>,
}

impl Client {
    /// Submits, cancels and reads until `stop`, with a think time of up to 40 ms between
    /// operations; the seed chooses every operation and its target.
    pub async fn run(self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed ^ (self.n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut known, mut live): (Vec<(u64, String)>, Vec<u64>) = (Vec::new(), Vec::new());
        let mut count = 0;
        while !self.stop.passed() {
            let roll = rng.random_range(0..100);
            if roll < 60 || known.is_empty() {
                let name = format!("c{}-{count:05}", self.n);
                count += 1;
                let sleep = format!("0.{}", rng.random_range(1..10));
                if let Some(id) = self.submit(&name, &sleep, &mut rng).await {
                    known.push((id, name));
                    live.push(id);
                }
            } else if roll < 75 && !live.is_empty() {
                let id = live.swap_remove(rng.random_range(0..live.len()));
                self.cancel(id, &mut rng).await;
            } else {
                let (id, name) = known[rng.random_range(0..known.len())].clone();
                self.read(id, &name, &mut rng).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        }
    }

    fn note(&self, f: impl FnOnce(&mut History)) {
        f(&mut self.history.lock().expect("no client panics holding the history"));
    }

    async fn submit(&self, name: &str, sleep: &str, rng: &mut StdRng) -> Option<u64> {
        let req = SubmitRequest { jobs: vec![gpu_job(name, TEAM, 1, &["sleep", sleep])], request_id: name.to_owned() };
        let start = rng.random_range(0..self.endpoints.len());
        let out = until_acked(&self.endpoints, start, &self.give_up, |ch| {
            let req = req.clone();
            async move { JobServiceClient::new(ch).submit(req).await }
        })
        .await;
        match out {
            Outcome::Acked(r) => {
                let id = r.into_inner().job_ids.first().copied();
                self.note(|h| match id {
                    Some(id) => {
                        h.submitted.insert(name.to_owned(), id);
                        h.acks.push(Instant::now());
                    }
                    None => h
                        .violations
                        .push(Violation::new("refused", format!("submit {name}: acknowledged without a job id"))),
                });
                id
            }
            Outcome::Refused(s) => {
                let what = format!("submit {name}: {:?} {}", s.code(), s.message());
                self.note(|h| h.violations.push(Violation::new("refused", what)));
                None
            }
            Outcome::Unknown => {
                self.note(|h| {
                    h.unacknowledged.insert(name.to_owned());
                });
                None
            }
        }
    }

    async fn cancel(&self, id: u64, rng: &mut StdRng) {
        let start = rng.random_range(0..self.endpoints.len());
        let out = until_acked(&self.endpoints, start, &self.give_up, |ch| async move {
            JobServiceClient::new(ch).cancel(CancelJobRequest { job_id: id }).await
        })
        .await;
        self.note(|h| match out {
            Outcome::Acked(_) => {
                h.cancelled.insert(id);
                h.acks.push(Instant::now());
            }
            Outcome::Refused(s) if s.code() == Code::FailedPrecondition => {
                h.ended_first.insert(id);
            }
            Outcome::Refused(s) => {
                h.violations.push(Violation::new("refused", format!("cancel {id}: {:?} {}", s.code(), s.message())))
            }
            Outcome::Unknown => {}
        });
    }

    /// One linearizable read of an acknowledged job, on one replica: it must find the job, and
    /// see a cancel acknowledged before the read began.
    async fn read(&self, id: u64, name: &str, rng: &mut StdRng) {
        let replica = rng.random_range(0..self.endpoints.len());
        let cancelled = self.history.lock().expect("no client panics holding the history").cancelled.contains(&id);
        let Some(ch) = channel(&self.endpoints[replica]).await else {
            return self.note(|h| h.reads.1 += 1);
        };
        let req = GetJobRequest { job_id: id, consistency: ReadConsistency::Linearizable as i32 };
        let got = JobServiceClient::new(ch).get(req).await;
        let at = replica + 1;
        self.note(|h| match got {
            Ok(r) => {
                h.reads.0 += 1;
                let job = r.into_inner().job.unwrap_or_default();
                let seen = job.spec.map(|s| s.name).unwrap_or_default();
                if seen != name {
                    let what = format!("read of job {id} on replica {at}: named {seen:?}, not {name:?}");
                    h.violations.push(Violation::new("changed", what));
                }
                let state = JobState::try_from(job.state).unwrap_or_default();
                if cancelled && !matches!(state, JobState::Cancelled | JobState::Stopping) {
                    let what = format!("read of job {id} on replica {at}: {state:?} after its cancel");
                    h.violations.push(Violation::new("stale read", what));
                }
            }
            Err(s) if retryable(&s) => h.reads.1 += 1,
            Err(s) => {
                let what = format!("read of job {id} on replica {at}: {:?} {}", s.code(), s.message());
                h.violations.push(Violation::new("stale read", what));
            }
        });
    }
}
