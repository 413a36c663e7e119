//! Clients: each has at most one call in flight, to a replica drawn from the seed, and retries
//! a call whose outcome is unknown (no answer in time, the replica gone or unavailable) on
//! another replica with the same request id, as the `qm` client does. Submissions (with a
//! runtime the simulated agents honour), cancels of acknowledged jobs, and linearizable reads.
//! Client 0 first sets up the priority class and the team.

use super::world::World;
use super::Failure;
use crate::node::{Input, NodeError};
use qm_core::{ApplyError, Command, JobId, Outcome};
use rand::Rng;
use std::collections::VecDeque;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

/// How long a client waits for an answer before it tries another replica.
const PATIENCE_MS: u64 = 2_000;

/// A call, kept until it is decided so that it can be sent again.
#[derive(Clone, Debug)]
enum Call {
    /// Set-up; must be accepted.
    Admin(Command),
    /// A submission of the job named `name` (its request id).
    Submit { name: String, command: Command },
    /// A cancel of an acknowledged job.
    Cancel(JobId),
    /// A read barrier, then a read of every job acknowledged before it was asked (the first
    /// `acked` acknowledgements).
    Read { acked: usize },
}

enum Reply {
    Outcome(oneshot::Receiver<Result<Outcome, NodeError>>),
    Read(oneshot::Receiver<Result<(), NodeError>>),
}

struct InFlight {
    replica: u64,
    since: u64,
    reply: Reply,
}

#[derive(Default)]
struct Client {
    calls: VecDeque<Call>,
    in_flight: Option<InFlight>,
    idle_until: u64,
    count: u64,
}

/// The clients.
pub(super) struct Clients {
    list: Vec<Client>,
    /// No new calls: the faults healed; the calls under way finish, and one last submission
    /// shows that the cluster makes progress.
    settling: bool,
}

impl Clients {
    /// `n` clients (at least one).
    pub fn new(n: usize) -> Self {
        let mut list: Vec<Client> = (0..n.max(1)).map(|_| Client::default()).collect();
        list[0].calls.extend(crate::testing::setup("t", 64).into_iter().map(Call::Admin));
        Self { list, settling: false }
    }

    /// Stops new calls but one last submission.
    pub fn settle(&mut self) {
        self.settling = true;
        let name = "last".to_owned();
        let command = submission(&name, 1, 0, 0);
        self.list[0].calls.push_back(Call::Submit { name, command });
    }

    /// Whether every call was decided.
    pub fn idle(&self) -> bool {
        self.list.iter().all(|c| c.in_flight.is_none() && c.calls.is_empty())
    }

    /// The calls still under way, for a failure.
    pub fn describe(&self) -> String {
        let open: Vec<String> = self
            .list
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.calls.front().map(|call| format!("client {i}: {call:?}")))
            .collect();
        if open.is_empty() {
            "no call under way".into()
        } else {
            open.join("; ")
        }
    }
}

/// A submission command for job `name`, running `runtime_ms` on `devices` GPUs.
fn submission(name: &str, devices: u32, runtime_ms: u64, at_ms: u64) -> Command {
    let mut spec = crate::testing::job_spec("t");
    spec.name = name.to_owned();
    spec.gang.devices.count = devices;
    spec.command = vec!["sleep-ms".into(), runtime_ms.to_string()];
    Command::Submit { jobs: vec![spec], at_ms }
}

/// Each client takes an answer, gives up on a late one, or sends its next call.
pub(super) fn act(w: &mut World) -> Result<(), Failure> {
    let setting_up = w.clients.list[0].calls.iter().any(|c| matches!(c, Call::Admin(_)));
    let active = if setting_up { 1 } else { w.clients.list.len() };
    for i in 0..active {
        poll(w, i)?;
        if w.clients.list[i].in_flight.is_none() && w.now >= w.clients.list[i].idle_until {
            send(w, i);
        }
    }
    Ok(())
}

fn poll(w: &mut World, i: usize) -> Result<(), Failure> {
    let now = w.now;
    let client = &mut w.clients.list[i];
    let Some(f) = client.in_flight.as_mut() else { return Ok(()) };
    let (replica, late) = (f.replica, now - f.since > PATIENCE_MS);
    let answer = match &mut f.reply {
        Reply::Outcome(rx) => take(rx, late).map(|a| a.map(|r| r.map(Some))),
        Reply::Read(rx) => take(rx, late).map(|a| a.map(|r| r.map(|()| None))),
    };
    let Some(answer) = answer else { return Ok(()) };
    client.in_flight = None;
    client.idle_until = now + w.rng.random_range(0..20);
    let call = client.calls.front().cloned().expect("a call in flight is first in line");
    match answer {
        Some(Ok(outcome)) => decided(w, i, replica, call, outcome),
        Some(Err(NodeError::Rejected(e))) => refused(w, i, call, &e),
        Some(Err(_)) | None => {
            if let Call::Read { .. } = call {
                w.clients.list[i].calls.pop_front();
            }
            Ok(())
        }
    }
}

/// The answer to a call: `None` while it may still come, `Some(None)` when it never will (the
/// replica went down, or the client gave up waiting: the outcome is unknown).
fn take<T>(rx: &mut oneshot::Receiver<Result<T, NodeError>>, late: bool) -> Option<Option<Result<T, NodeError>>> {
    match rx.try_recv() {
        Ok(r) => Some(Some(r)),
        Err(TryRecvError::Empty) if !late => None,
        Err(_) => Some(None),
    }
}

/// A call was applied (or a read confirmed).
fn decided(w: &mut World, i: usize, replica: u64, call: Call, outcome: Option<Outcome>) -> Result<(), Failure> {
    w.clients.list[i].calls.pop_front();
    match call {
        Call::Admin(_) => Ok(()),
        Call::Submit { name, .. } => {
            let job = outcome.and_then(|o| o.submitted.first().copied());
            let Some(job) = job else {
                return Err(w.failure(format!("submission {name} acknowledged without a job id")));
            };
            super::check::acknowledged(w, replica, name, job)
        }
        Call::Cancel(job) => {
            super::check::cancelled(w, replica, job);
            Ok(())
        }
        Call::Read { acked } => super::check::read(w, replica, acked),
    }
}

/// The state machine refused a call: only a cancel of a job that already ended may be.
fn refused(w: &mut World, i: usize, call: Call, why: &ApplyError) -> Result<(), Failure> {
    w.clients.list[i].calls.pop_front();
    match call {
        Call::Cancel(_) if matches!(why, ApplyError::WrongState { .. }) => Ok(()),
        other => Err(w.failure(format!("refused: {other:?}: {why}"))),
    }
}

/// Sends the client's first call, or a new one, to a running replica.
fn send(w: &mut World, i: usize) {
    if w.clients.list[i].calls.is_empty() && !w.clients.settling {
        let call = next_call(w, i);
        w.clients.list[i].calls.push_back(call);
    }
    let Some(call) = w.clients.list[i].calls.front().cloned() else { return };
    let up: Vec<u64> = w.replicas.iter().filter(|(_, r)| r.node.is_some()).map(|(id, _)| *id).collect();
    if up.is_empty() {
        return;
    }
    let replica = up[w.rng.random_range(0..up.len())];
    let Some(inbox) = w.replicas[&replica].handle().map(|h| h.inbox().clone()) else { return };
    let reply = match call {
        Call::Admin(command) => propose(&inbox, command, None),
        Call::Submit { name, command } => propose(&inbox, command, Some(name)),
        Call::Cancel(job) => propose(&inbox, Command::Cancel { job, at_ms: w.now }, None),
        Call::Read { .. } => {
            let (reply, rx) = oneshot::channel();
            let _ = inbox.send(Input::Read { reply });
            Reply::Read(rx)
        }
    };
    w.clients.list[i].in_flight = Some(InFlight { replica, since: w.now, reply });
}

fn propose(inbox: &crate::node::Inbox, command: Command, request_id: Option<String>) -> Reply {
    let (reply, rx) = oneshot::channel();
    let _ = inbox.send(Input::Propose { op: crate::codec::Op::Core(command), request_id, asker: None, reply });
    Reply::Outcome(rx)
}

/// A new call: mostly submissions, some cancels and reads.
fn next_call(w: &mut World, i: usize) -> Call {
    let roll = w.rng.random_range(0..100);
    if roll < 15 {
        if let Some(job) = w.check.some_acknowledged(&mut w.rng) {
            return Call::Cancel(job);
        }
    }
    if roll >= 85 {
        return Call::Read { acked: w.check.acknowledged_count() };
    }
    let client = &mut w.clients.list[i];
    client.count += 1;
    let name = format!("c{i}-{}", client.count);
    let devices = w.rng.random_range(1..=w.config.devices);
    let runtime = w.rng.random_range(50..3_000);
    let command = submission(&name, devices, runtime, w.now);
    Call::Submit { name, command }
}
