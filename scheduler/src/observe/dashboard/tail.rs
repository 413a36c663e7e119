//! The end of a running job's output, read from the agent of the node its first replica runs
//! on, with the viewer's own token (the agent asks a replica whether that token may read the
//! job, as it does for `qm logs`). Bounded: the read stops after `MAX_READ` bytes or `WAIT`,
//! and the page shows the last `KEEP` bytes.

use qm_proto::tls::Dialer;
use qm_proto::v1::replica_logs_client::ReplicaLogsClient;
use qm_proto::v1::ReadLogRequest;
use std::time::Duration;

/// Bytes of output shown at most.
pub const KEEP: usize = 16 * 1024;
/// Bytes read from the agent at most.
const MAX_READ: usize = 4 << 20;
/// How long the read may take.
const WAIT: Duration = Duration::from_secs(2);

/// The last `KEEP` bytes of job `job` replica 0's latest attempt, from the agent at `address`,
/// or why there are none.
pub async fn tail(dialer: &Dialer, address: &str, job: u64, token: Option<&str>) -> Result<String, String> {
    match tokio::time::timeout(WAIT, read(dialer, address, job, token)).await {
        Ok(read) => read,
        Err(_) => Err(format!("the agent at {address} did not answer within {} s", WAIT.as_secs())),
    }
}

async fn read(dialer: &Dialer, address: &str, job: u64, token: Option<&str>) -> Result<String, String> {
    let endpoint = dialer.endpoint(address).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{address}: {}", qm_proto::tls::causes(&e)))?;
    let mut request =
        tonic::Request::new(ReadLogRequest { job_id: job, replica: 0, attempt: 0, offset: 0, follow: false });
    if let Some(secret) = token {
        let value = format!("Bearer {secret}").parse().map_err(|_| "the token is not a header value".to_owned())?;
        request.metadata_mut().insert(qm_proto::auth::AUTHORIZATION, value);
    }
    let mut stream =
        ReplicaLogsClient::new(channel).read(request).await.map_err(|s| s.message().to_owned())?.into_inner();
    let mut out: Vec<u8> = Vec::new();
    let mut total = 0;
    while let Some(chunk) = stream.message().await.map_err(|s| s.message().to_owned())? {
        total += chunk.data.len();
        out.extend_from_slice(&chunk.data);
        if out.len() > 2 * KEEP {
            out.drain(..out.len() - KEEP);
        }
        if total >= MAX_READ {
            break;
        }
    }
    let start = out.len().saturating_sub(KEEP);
    Ok(String::from_utf8_lossy(&out[start..]).into_owned())
}
