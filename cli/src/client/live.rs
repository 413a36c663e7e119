//! The live views on `JobService/Watch`: `qm events` prints each job's change of state as it is
//! applied, and `qm jobs --watch` prints the job table again after each burst of changes. Both
//! say on stderr when they are watching (so that a script knows it missed nothing from then
//! on), and open the stream again through any replica when it breaks, saying that changes in
//! between may have been missed.

use super::connect::call;
use super::jobs::{jobs, JobsArgs};
use super::{jobs_client, Target};
use crate::out::say;
use anyhow::Result;
use clap::Args;
use qm_proto::v1::{JobEvent, WatchJobsRequest};
use serde_json::json;
use std::io::IsTerminal;
use std::time::Duration;
use tonic::Streaming;

/// Changes that arrive this close together make one refresh of `qm jobs --watch`.
const BURST: Duration = Duration::from_millis(200);

/// Flags of `qm events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this team's jobs.
    #[arg(long)]
    team: Option<String>,
    /// Only this job (repeat for several).
    #[arg(long = "job", value_name = "ID")]
    jobs: Vec<u64>,
    /// Stop after this many changes (for scripts); runs until interrupted otherwise.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// A stream of changes, opened through any replica; says so on stderr.
async fn watch(t: &Target, team: Option<&str>, jobs: &[u64]) -> Result<Streaming<JobEvent>> {
    let req = WatchJobsRequest { team: team.unwrap_or_default().to_owned(), job_ids: jobs.to_vec() };
    let stream = call(t, |c| {
        let req = req.clone();
        async move { jobs_client(c).watch(req).await }
    })
    .await?;
    eprintln!("qm: watching job changes");
    Ok(stream)
}

/// The next change; a broken stream is opened again.
async fn next(t: &Target, stream: &mut Streaming<JobEvent>, team: Option<&str>, jobs: &[u64]) -> Result<JobEvent> {
    loop {
        match stream.message().await {
            Ok(Some(event)) => return Ok(event),
            Ok(None) | Err(_) => {
                eprintln!("qm: the stream of changes broke; opening it again (changes meanwhile may be missed)");
                *stream = watch(t, team, jobs).await?;
            }
        }
    }
}

fn event_line(t: &Target, e: &JobEvent) -> String {
    let state = super::words::state(e.state);
    if t.json {
        return json!({ "index": e.index, "job_id": e.job_id, "state": state, "message": e.message,
            "at_ms": e.at_ms })
        .to_string();
    }
    let at = super::words::time(e.at_ms);
    let message = if e.message.is_empty() { String::new() } else { format!("  {}", e.message) };
    format!("{at}  job {}  {state}{message}", e.job_id)
}

/// Runs `qm events`.
pub async fn events(t: &Target, args: &EventsArgs) -> Result<()> {
    let team = args.team.as_deref();
    let mut stream = watch(t, team, &args.jobs).await?;
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let event = next(t, &mut stream, team, &args.jobs).await?;
        say!("{}", event_line(t, &event));
        seen += 1;
    }
    Ok(())
}

/// Runs `qm jobs --watch`: the table, then the table again after each burst of changes (on a
/// terminal, in place of the last one).
pub async fn watch_jobs(t: &Target, args: &JobsArgs) -> Result<()> {
    let team = args.team();
    let mut stream = watch(t, team, &[]).await?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        if terminal {
            crate::out::write_bytes(b"\x1b[2J\x1b[H");
        }
        jobs(t, args).await?;
        next(t, &mut stream, team, &[]).await?;
        while let Ok(event) = tokio::time::timeout(BURST, next(t, &mut stream, team, &[])).await {
            event?;
        }
        if !terminal {
            say!();
        }
    }
}
