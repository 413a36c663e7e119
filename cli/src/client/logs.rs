//! `qm logs JOB [--replica N] [--follow]`: a replica's output, read from the agent of the node
//! that ran it (its address is the node's `qm/address` label).

use super::connect::{call, endpoint};
use super::{jobs_client, Target};
use crate::out::{Exit, Failure};
use anyhow::Result;
use clap::Args;
use qm_core::resource::ADDRESS_LABEL;
use qm_proto::v1::replica_logs_client::ReplicaLogsClient;
use qm_proto::v1::*;

/// Flags of `qm logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job id.
    id: u64,
    /// The replica (0 is the first).
    #[arg(long, default_value_t = 0)]
    replica: u32,
    /// The attempt; the latest one when absent.
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing new output until the replica ends.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// The agents that may hold the log: the node the replica runs on when the job holds devices,
/// else every node with an agent address (the record of a finished job keeps no nodes).
async fn agents(t: &Target, args: &LogsArgs) -> Result<Vec<(String, String)>> {
    let id = args.id;
    let job = call(t, |c| async move { jobs_client(c).get(GetJobRequest { job_id: id, consistency: 0 }).await })
        .await?
        .job
        .ok_or_else(|| Failure::new(Exit::NotFound, format!("job_id: no job {id}")))?;
    let node = job.assignment.as_ref().and_then(|a| a.replicas.get(args.replica as usize)).map(|r| r.node.clone());
    if let Some(a) = job.assignment.as_ref().filter(|a| a.replicas.len() <= args.replica as usize) {
        return Err(Failure::usage(format!("--replica: job {id} has {} replica(s)", a.replicas.len())));
    }
    Ok(super::admin::all_nodes(t)
        .await?
        .into_iter()
        .filter_map(|n| n.inventory)
        .filter(|inv| node.as_ref().is_none_or(|name| &inv.name == name))
        .filter_map(|inv| inv.labels.get(ADDRESS_LABEL).map(|a| (inv.name.clone(), a.clone())))
        .collect())
}

/// Runs `qm logs`.
pub async fn logs(t: &Target, args: &LogsArgs) -> Result<()> {
    let candidates = agents(t, args).await?;
    let req = ReadLogRequest {
        job_id: args.id,
        replica: args.replica,
        attempt: args.attempt.unwrap_or(0),
        offset: 0,
        follow: args.follow,
    };
    let mut tried = Vec::new();
    let dialer = t.dialer()?;
    for (node, address) in &candidates {
        let channel = match endpoint(&dialer, address)?.connect().await {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{node} ({address}): {e}"));
                continue;
            }
        };
        match ReplicaLogsClient::with_interceptor(channel, t.bearer()?).read(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Some(chunk) =
                    stream.message().await.map_err(|s| Failure::new(Exit::of_status(s.code()), s.message()))?
                {
                    crate::out::write_bytes(&chunk.data);
                }
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::NotFound => tried.push(format!("{node}: {}", s.message())),
            Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated) => {
                return Err(Failure::new(Exit::of_status(s.code()), format!("{node}: {}", s.message())).into());
            }
            Err(s) => tried.push(format!("{node} ({address}): {}", s.message())),
        }
    }
    let why = if tried.is_empty() { "no node has an agent address".to_owned() } else { tried.join("; ") };
    Err(Failure::new(Exit::NotFound, format!("no log of job {} replica {}: {why}", args.id, args.replica)).into())
}
