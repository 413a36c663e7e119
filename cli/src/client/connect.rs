//! Reaching the replicas: the addresses of `--server` / `QM_SERVER`, one call tried on each in
//! turn, failing over when a replica is down, paused, has no quorum, or dies under a request
//! that is safe to send twice; and a clear, immediate error when no replica can be reached at
//! all, naming each address and what went wrong there.
//!
//! A command remembers what it learnt (`Seen`): the replica that answered is tried first by the
//! command's next call (the next page of a list, the next item of `qm apply`), and one that
//! failed is tried last, so that a dead or paused replica costs one short wait per command.

use super::Target;
use crate::out::{Exit, Failure};
use anyhow::Result;
use qm_proto::auth::{authed, Authed};
use qm_proto::tls::Dialer;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// How long a call keeps trying replicas that answer but cannot serve (no leader, no quorum).
const PATIENCE: Duration = Duration::from_secs(10);

/// How long one request waits for its answer: longer than a replica's 3 s deadline for a
/// write to commit (which then answers `Unavailable` itself), short enough that a paused
/// replica is passed over soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// What one command learnt of the replicas, by their position in `--server`.
#[derive(Debug, Default)]
pub struct Seen {
    /// The replica that answered last.
    answered: Option<usize>,
    /// Replicas that could not be reached, timed out or could not serve.
    failed: BTreeSet<usize>,
}

impl Seen {
    /// The order to try `n` replicas in: the one that answered, then those not known to have
    /// failed, in the order given, then those that failed.
    fn order(&self, n: usize) -> Vec<usize> {
        let fresh = (0..n).filter(|i| Some(*i) != self.answered && !self.failed.contains(i));
        let failed = self.failed.iter().copied().filter(|i| Some(*i) != self.answered);
        self.answered.into_iter().chain(fresh).chain(failed).collect()
    }

    fn answered(&mut self, i: usize) {
        self.answered = Some(i);
        self.failed.remove(&i);
    }

    fn failed(&mut self, i: usize) {
        self.failed.insert(i);
        if self.answered == Some(i) {
            self.answered = None;
        }
    }
}

/// Whether a request may be sent again when its connection failed after it was sent and
/// before the answer came: the replica may have applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Sending it twice does no more than sending it once: reads, submissions (their request id
    /// makes the second a no-op), cancels (a cancelled job's cancel is a no-op), quotas, classes
    /// and node settings (absolute values).
    Safe,
    /// A second may be refused although the first was applied (membership changes): the
    /// client reports that the outcome is unknown instead.
    Never,
}

/// A replica's or an agent's address as a gRPC endpoint, dialled as `dialer` says.
pub fn endpoint(dialer: &Dialer, addr: &str) -> Result<Endpoint> {
    let endpoint = dialer.endpoint(addr).map_err(|e| Failure::usage(format!("--server: {e}")))?;
    Ok(endpoint.connect_timeout(Duration::from_secs(1)).timeout(REQUEST_TIMEOUT))
}

/// The innermost error of a chain: the operating system's words ("Connection refused").
fn root_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Calls `f` on each replica in turn until one answers: `Unavailable`, connection failures
/// and requests that time out move on to the next, for up to 10 s; so does a connection that
/// failed under the request (the replica died mid-request), since this request is safe to send
/// again. When no replica could even be connected to, it fails at once.
pub async fn call<T, F, Fut>(t: &Target, f: F) -> Result<T>
where
    F: Fn(Authed) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    call_with(t, Resend::Safe, f).await
}

/// `call`, saying whether the request may be sent again after a connection failed under it.
pub async fn call_with<T, F, Fut>(t: &Target, resend: Resend, f: F) -> Result<T>
where
    F: Fn(Authed) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let bearer = t.bearer()?;
    let dialer = t.dialer()?;
    let endpoints = t.servers().iter().map(|a| Ok((a.as_str(), endpoint(&dialer, a)?))).collect::<Result<Vec<_>>>()?;
    let until = Instant::now() + PATIENCE;
    let mut causes: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        let mut reached = false;
        let order = t.seen().order(endpoints.len());
        for i in order {
            let (addr, endpoint) = &endpoints[i];
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    causes.insert(i, root_message(&e));
                    t.seen().failed(i);
                    continue;
                }
            };
            reached = true;
            let status = match f(authed(channel, bearer.clone())).await {
                Ok(r) => {
                    t.seen().answered(i);
                    return Ok(r.into_inner());
                }
                Err(s) => s,
            };
            t.seen().failed(i);
            match status {
                s if s.code() == tonic::Code::Unavailable => causes.insert(i, s.message().to_owned()),
                s if connection_lost(&s) && resend == Resend::Safe => {
                    causes.insert(i, format!("no answer: {}", root_message(&s)))
                }
                s if connection_lost(&s) => return Err(outcome_unknown(addr, &s)),
                s if s.code() == tonic::Code::Unauthenticated => return Err(unauthenticated(&s)),
                s => return Err(Failure::new(Exit::of_status(s.code()), s.message()).into()),
            };
        }
        if !reached {
            return Err(unreachable(t, &dialer, &causes));
        }
        if Instant::now() >= until {
            let each = listed(t, &causes);
            let hint = tls_hint(&dialer, &causes).map_or_else(String::new, |h| format!("; {h}"));
            return Err(Failure::new(Exit::Unavailable, format!("no replica answered: {each}{hint}")).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The replica wants a token it did not get or does not know: say how to give one.
fn unauthenticated(s: &tonic::Status) -> anyhow::Error {
    let hint = "give a token with `export QM_TOKEN=...`, `--token-file FILE` or `export QM_TOKEN_FILE=FILE` \
                (`qm dev` prints one; a new cluster's first admin token is in the leader's data directory, \
                admin.token)";
    Failure::new(Exit::of_status(s.code()), format!("{}; {hint}", s.message())).into()
}

/// A change whose connection failed before its answer came, which is not sent twice.
fn outcome_unknown(addr: &str, s: &tonic::Status) -> anyhow::Error {
    let message = format!(
        "{addr}: the connection failed before the answer came ({}); the change may or may not have been applied: \
         check with `qm status`",
        s.message()
    );
    Failure::new(Exit::Unavailable, message).into()
}

/// Every address with what went wrong there.
fn listed(t: &Target, causes: &BTreeMap<usize, String>) -> String {
    let each = causes.iter().map(|(&i, cause)| format!("{}: {cause}", t.servers()[i]));
    each.collect::<Vec<_>>().join("; ")
}

/// No replica accepted a connection: say where the client looked, what each address said,
/// and how to point it elsewhere (or how to trust its certificate).
fn unreachable(t: &Target, dialer: &Dialer, causes: &BTreeMap<usize, String>) -> anyhow::Error {
    let hint = tls_hint(dialer, causes).unwrap_or(
        "start a scheduler with `qm dev`, or name yours with --server HOST:PORT or \
         `export QM_SERVER=HOST:PORT[,HOST:PORT...]`",
    );
    let each = listed(t, causes);
    let message = if t.servers().len() == 1 {
        format!("cannot reach a Quartermaster replica at {each}; {hint}")
    } else {
        format!("cannot reach any Quartermaster replica ({each}); {hint}")
    };
    Failure::new(Exit::Unavailable, message).into()
}

/// What to do when TLS is what failed: a certificate the CA given does not vouch for, or a
/// plaintext client that a TLS replica hangs up on.
fn tls_hint(dialer: &Dialer, causes: &BTreeMap<usize, String>) -> Option<&'static str> {
    if dialer.is_tls() {
        causes.values().any(|c| c.contains("certificate")).then_some(
            "the replica's certificate is not signed by the CA given (--tls-ca, QM_TLS_CA) or does not name the \
             address dialled",
        )
    } else {
        causes.values().any(|c| c.contains("no answer")).then_some(
            "a replica not started --insecure serves TLS only and closes plaintext connections: give the \
             cluster's CA with --tls-ca FILE or `export QM_TLS_CA=FILE`",
        )
    }
}

/// Whether a status is this client's own report of a connection that failed under the request
/// (its source is the transport's error) rather than an answer a replica sent (no source).
fn connection_lost(s: &tonic::Status) -> bool {
    use tonic::Code::{Cancelled, Internal, Unknown};
    std::error::Error::source(s).is_some() && matches!(s.code(), Cancelled | Unknown | Internal)
}
