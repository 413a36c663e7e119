//! `ReplicaLogs`: an agent serves the logs of the replicas it ran, from an offset, and with
//! `follow` keeps the stream open for new output until the replica ends.
//!
//! A replica's output may hold what its environment holds, so the agent serves it only to a
//! caller who may see the job's command and environment: it asks the scheduler for the job
//! with the caller's own bearer token (`JobService/Get`) and serves the log when the job comes
//! back whole (the caller's token is an admin's or a member's of the job's team), refuses it
//! when the job comes back redacted (another team's job) or the scheduler refuses the token.
//! The scheduler's table stays the one place that decides.

use crate::executor::{latest_attempt, log_path, Executor};
use qm_proto::tls::Dialer;
use qm_proto::v1::job_service_client::JobServiceClient;
use qm_proto::v1::replica_logs_server::ReplicaLogs;
use qm_proto::v1::{GetJobRequest, LogChunk, ReadLogRequest};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Response, Status};

/// Bytes per chunk.
const CHUNK: usize = 64 * 1024;
/// How often a followed log is checked for new output.
const POLL: Duration = Duration::from_millis(100);

/// The log service of one agent.
#[derive(Debug, Clone)]
pub struct LogServer {
    root: PathBuf,
    executor: Executor,
    servers: Vec<String>,
    dialer: Dialer,
}

impl LogServer {
    /// Serves the logs under `root` of the replicas `executor` runs, to callers the scheduler
    /// replicas at `servers` (dialled with `dialer`) say may read them.
    pub fn new(root: PathBuf, executor: Executor, servers: Vec<String>, dialer: Dialer) -> Self {
        Self { root, executor, servers, dialer }
    }

    /// Whether the caller whose `authorization` this is may read job `job`'s output.
    async fn may_read(&self, authorization: Option<MetadataValue<Ascii>>, job: u64) -> Result<(), Status> {
        let mut unreachable = Vec::new();
        for server in &self.servers {
            let Ok(endpoint) = self.dialer.endpoint(server) else { continue };
            let channel = match endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(4))
                .connect()
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    unreachable.push(format!("{server}: {}", qm_proto::tls::causes(&e)));
                    continue;
                }
            };
            let mut request = Request::new(GetJobRequest { job_id: job, consistency: 0 });
            if let Some(value) = &authorization {
                request.metadata_mut().insert(qm_proto::auth::AUTHORIZATION, value.clone());
            }
            match JobServiceClient::new(channel).get(request).await {
                Ok(r) if r.get_ref().job.as_ref().is_some_and(|j| !j.redacted) => return Ok(()),
                Ok(_) => {
                    return Err(Status::permission_denied(format!(
                        "job_id: the token may not read the output of job {job} (another team's job)"
                    )))
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    unreachable.push(format!("{server}: {}", s.message()))
                }
                Err(s) => return Err(s),
            }
        }
        Err(Status::unavailable(format!(
            "cannot check the token: no scheduler replica answered ({})",
            unreachable.join("; ")
        )))
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ReplicaLogs for LogServer {
    type ReadStream = Chunks;

    async fn read(&self, request: Request<ReadLogRequest>) -> Result<Response<Chunks>, Status> {
        let authorization = request.metadata().get(qm_proto::auth::AUTHORIZATION).cloned();
        self.may_read(authorization, request.get_ref().job_id).await?;
        let r = request.into_inner();
        let attempt = match r.attempt {
            0 => latest_attempt(&self.root, r.job_id)
                .ok_or_else(|| Status::not_found(format!("job_id: no log of job {} on this node", r.job_id)))?,
            a => a,
        };
        let path = log_path(&self.root, r.job_id, attempt, r.replica);
        let mut file = tokio::fs::File::open(&path).await.map_err(|_| {
            Status::not_found(format!(
                "replica: no log of job {} replica {} attempt {attempt} here",
                r.job_id, r.replica
            ))
        })?;
        file.seek(std::io::SeekFrom::Start(r.offset)).await.map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(8);
        let executor = self.executor.clone();
        tokio::spawn(async move {
            let (mut offset, mut follow) = (r.offset, r.follow);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                if n > 0 {
                    let chunk = LogChunk { data: buf[..n].to_vec(), offset };
                    offset += n as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                } else if follow && executor.runs(r.job_id, r.replica, attempt) {
                    tokio::time::sleep(POLL).await;
                } else if follow {
                    // It ended: what it wrote before it ended is read in one more pass.
                    follow = false;
                } else {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
