//! `ReplicaLogs`: an agent serves the logs of the replicas it ran, from an offset, and with
//! `follow` keeps the stream open for new output until the replica ends.

use crate::executor::{latest_attempt, log_path, Executor};
use qm_proto::v1::replica_logs_server::ReplicaLogs;
use qm_proto::v1::{LogChunk, ReadLogRequest};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
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
}

impl LogServer {
    /// Serves the logs under `root` of the replicas `executor` runs.
    pub fn new(root: PathBuf, executor: Executor) -> Self {
        Self { root, executor }
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ReplicaLogs for LogServer {
    type ReadStream = Chunks;

    async fn read(&self, request: Request<ReadLogRequest>) -> Result<Response<Chunks>, Status> {
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
