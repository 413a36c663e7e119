//! `JobService`: submit, look up, list, cancel, explain and watch jobs.

use super::admission::Admission;
use super::{before_read, now_ms, status_of};
use crate::access::Caller;
use crate::codec::Op;
use crate::node::Handle;
use qm_core::{Command, JobId, PolicyConfig};
use qm_proto::convert::{job_to, report_to, state_filter_from, submit_from};
use qm_proto::v1::job_service_server::JobService;
use qm_proto::v1::*;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Jobs listed per page at most.
const MAX_PAGE: usize = 1_000;

/// The job service of one replica.
#[derive(Debug, Clone)]
pub struct JobServer {
    node: Handle,
    policy: PolicyConfig,
    admission: Arc<Admission>,
}

impl JobServer {
    /// Serves `node`; `policy` is what `Why` explains with; `admission` limits submissions.
    pub fn new(node: Handle, policy: PolicyConfig, admission: Arc<Admission>) -> Self {
        Self { node, policy, admission }
    }

    fn job(&self, id: u64, caller: &Caller) -> Result<Job, Status> {
        let fsm = self.node.fsm();
        fsm.state
            .job(JobId(id))
            .map(|j| shown(j, caller))
            .ok_or_else(|| Status::not_found(format!("job_id: no job {id}")))
    }
}

/// A job as `caller` may see it: without its command and environment unless the caller owns
/// its team (they may hold secrets).
pub fn shown(job: &qm_core::Job, caller: &Caller) -> Job {
    let mut wire = job_to(job);
    if !caller.owns(&job.spec.team.0) {
        if let Some(spec) = wire.spec.as_mut() {
            spec.command.clear();
            spec.env.clear();
        }
        wire.redacted = true;
    }
    wire
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobServer {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let jobs = submit_from(&req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        for (i, j) in jobs.iter().enumerate() {
            caller
                .must_own(&j.team.0, "submit jobs")
                .map_err(|s| Status::permission_denied(format!("jobs[{i}].team: {}", s.message())))?;
        }
        {
            let fsm = self.node.fsm();
            self.admission.submit(&fsm, &jobs)?;
            let unknown = jobs.iter().enumerate().find_map(|(i, j)| fsm.state.unknown_model(j).map(|e| (i, e)));
            if let Some((i, e)) = unknown {
                return Err(Status::invalid_argument(e.within(&format!("jobs[{i}]")).to_string()));
            }
        }
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
        let submit = Op::Core(Command::Submit { jobs, at_ms: now_ms() });
        let out = self.node.propose_as(Some(caller.asker()), submit, request_id).await.map_err(status_of)?;
        Ok(Response::new(SubmitResponse { job_ids: out.submitted.iter().map(|j| j.0).collect() }))
    }

    async fn get(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        before_read(&self.node, req.consistency, &caller).await?;
        Ok(Response::new(GetJobResponse { job: Some(self.job(req.job_id, &caller)?) }))
    }

    async fn list(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let mut states = Vec::new();
        for (i, s) in req.states.iter().enumerate() {
            states.extend(
                state_filter_from(*s, &format!("states[{i}]")).map_err(|e| Status::invalid_argument(e.to_string()))?,
            );
        }
        let after: u64 = match req.page_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| Status::invalid_argument("page_token: not a token this service gave"))?,
        };
        let page = match req.page_size as usize {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        before_read(&self.node, req.consistency, &caller).await?;
        let fsm = self.node.fsm();
        let matching = fsm
            .state
            .jobs()
            .after(JobId(after))
            .filter(|j| req.team.is_empty() || j.spec.team.0.as_ref() == req.team)
            .filter(|j| states.is_empty() || states.contains(&j.state))
            .map(|j| shown(j, &caller));
        let (jobs, more) = super::page(matching, page);
        let next_page_token = match jobs.last() {
            Some(last) if more => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = JobId(request.into_inner().job_id);
        let team = self.node.fsm().state.job(id).map(|j| j.spec.team.clone());
        if let Some(team) = team {
            caller.must_own(&team.0, "cancel jobs")?;
        }
        let cancel = Op::Core(Command::Cancel { job: id, at_ms: now_ms() });
        self.node.propose_as(Some(caller.asker()), cancel, None).await.map_err(status_of)?;
        let state = self.job(id.0, &caller)?.state;
        Ok(Response::new(CancelJobResponse { state }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchJobsRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let node = self.node.clone();
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.node.subscribe());
        let stream = rx.filter_map(move |change| {
            let change = match change {
                Ok(c) => c,
                Err(_) => return Some(Err(Status::data_loss("the watcher fell behind; watch again"))),
            };
            if let Err(revoked) = caller.current(&node) {
                return Some(Err(revoked));
            }
            if !req.job_ids.is_empty() && !req.job_ids.contains(&change.job.0) {
                return None;
            }
            let fsm = node.fsm();
            let job = fsm.state.job(change.job)?;
            if !req.team.is_empty() && job.spec.team.0.as_ref() != req.team {
                return None;
            }
            Some(Ok(JobEvent {
                index: change.index,
                job_id: change.job.0,
                state: qm_proto::convert::state_to(change.state) as i32,
                message: job.message.to_string(),
                at_ms: change.at_ms.unwrap_or_else(|| {
                    job.finished_ms.or(job.started_ms).or(job.placed_ms).unwrap_or(job.submitted_ms)
                }),
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn why(&self, request: Request<WhyRequest>) -> Result<Response<WhyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().job_id;
        before_read(&self.node, 0, &caller).await?;
        let job = self.job(id, &caller)?;
        let fsm = self.node.fsm();
        let now = now_ms();
        let policy = PolicyConfig { explain: true, ..self.policy.clone() };
        let plan = qm_core::schedule(&fsm.state, &policy, now);
        let report = plan.reports.iter().find(|r| r.job.0 == id);
        let placed = plan.decisions.placements.iter().any(|p| p.job.0 == id);
        let cause = qm_core::cause::cause(&fsm.state, JobId(id), report, placed);
        let text = match (report, placed) {
            (Some(r), _) => qm_core::render::report(&fsm.state, r),
            (None, true) => "the next scheduling cycle places it".to_owned(),
            (None, false) => cause.clone(),
        };
        Ok(Response::new(WhyResponse { job: Some(job), report: report.map(report_to), cycle_at_ms: now, text, cause }))
    }
}
