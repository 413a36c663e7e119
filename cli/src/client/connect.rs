//! Reaching the replicas: the addresses of `--server` / `QM_SERVER`, one call tried on each in
//! turn, failing over when a replica is down, has no quorum, or dies under a request that is
//! safe to send twice; and a clear, immediate error when no replica can be reached at all.

use super::Target;
use crate::out::{Exit, Failure};
use anyhow::Result;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// How long a call keeps trying replicas that answer but cannot serve (no leader, no quorum).
const PATIENCE: Duration = Duration::from_secs(10);

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

/// A replica's address as a gRPC endpoint: `HOST:PORT` or `http://HOST:PORT`.
pub fn endpoint(addr: &str) -> Result<Endpoint> {
    let trimmed = addr.trim().trim_end_matches('/');
    let hostport = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if hostport.contains("://") {
        return Err(Failure::usage(format!(
            "--server: {addr:?}: only plain http:// addresses are served (TLS is not configured)"
        )));
    }
    if hostport.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(Failure::usage(format!("--server: {addr:?} is not HOST:PORT or http://HOST:PORT")));
    }
    Ok(Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| Failure::usage(format!("--server: {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(PATIENCE))
}

/// The innermost error of a chain: the operating system's words ("Connection refused").
fn root_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Calls `f` on each replica in turn until one answers: `Unavailable` and connection failures
/// move on to the next, for up to 10 s; so does a connection that failed under the request
/// (the replica died mid-request), since this request is safe to send again. When no replica
/// could even be connected to, it fails at once.
pub async fn call<T, F, Fut>(t: &Target, f: F) -> Result<T>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    call_with(t, Resend::Safe, f).await
}

/// `call`, saying whether the request may be sent again after a connection failed under it.
pub async fn call_with<T, F, Fut>(t: &Target, resend: Resend, f: F) -> Result<T>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let endpoints = t.servers().iter().map(|a| Ok((a.as_str(), endpoint(a)?))).collect::<Result<Vec<_>>>()?;
    let until = Instant::now() + PATIENCE;
    let mut last = String::from("no --server given");
    loop {
        let mut reached = false;
        for (addr, endpoint) in &endpoints {
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {}", root_message(&e));
                    continue;
                }
            };
            reached = true;
            match f(channel).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable => last = format!("{addr}: {}", s.message()),
                Err(s) if connection_lost(&s) => match resend {
                    Resend::Safe => last = format!("{addr}: connection lost: {}", s.message()),
                    Resend::Never => {
                        return Err(Failure::new(
                            Exit::Unavailable,
                            format!(
                                "{addr}: the connection failed before the answer came ({}); the change may or may \
                                 not have been applied: check with `qm status`",
                                s.message()
                            ),
                        )
                        .into())
                    }
                },
                Err(s) => return Err(Failure::new(Exit::of_status(s.code()), s.message()).into()),
            }
        }
        if !reached {
            return Err(unreachable(t, &last));
        }
        if Instant::now() >= until {
            return Err(Failure::new(Exit::Unavailable, format!("no replica answered: {last}")).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No replica accepted a connection: say where the client looked and how to point it
/// elsewhere.
fn unreachable(t: &Target, last: &str) -> anyhow::Error {
    let tried = t.servers().join(", ");
    let hint = "start a scheduler with `qm dev`, or name yours with --server HOST:PORT or \
                `export QM_SERVER=HOST:PORT[,HOST:PORT...]`";
    let message = if t.servers().len() == 1 {
        format!("cannot reach a Quartermaster replica at {last}; {hint}")
    } else {
        format!("cannot reach any Quartermaster replica ({tried}; last: {last}); {hint}")
    };
    Failure::new(Exit::Unavailable, message).into()
}

/// Whether a status is this client's own report of a connection that failed under the request
/// (its source is the transport's error) rather than an answer a replica sent (no source).
fn connection_lost(s: &tonic::Status) -> bool {
    use tonic::Code::{Cancelled, Internal, Unknown};
    std::error::Error::source(s).is_some() && matches!(s.code(), Cancelled | Unknown | Internal)
}
