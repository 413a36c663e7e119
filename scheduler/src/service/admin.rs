//! `AdminService`: teams and quotas, priority classes, nodes, cluster status, membership and
//! (in `tokens`) bearer tokens.

use super::admission::Admission;
use super::readings::Readings;
use super::{before_read, status_of};
use crate::access::Caller;
use crate::codec::Op;
use crate::fsm::Fsm;
use crate::node::{Handle, Membership};
use qm_core::{Command, JobState, NodeId};
use qm_proto::convert::{
    flavor_to, idle_policy_from, idle_policy_to, node_to, priority_class_from, team_from, team_to,
};
use qm_proto::v1::admin_service_server::AdminService;
use qm_proto::v1::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The admin service of one replica.
#[derive(Debug, Clone)]
pub struct AdminServer {
    node: Handle,
    readings: Readings,
    admission: Arc<Admission>,
}

impl AdminServer {
    /// Serves `node`, showing the devices' telemetry from `readings`; `admission` limits teams.
    pub fn new(node: Handle, readings: Readings, admission: Arc<Admission>) -> Self {
        Self { node, readings, admission }
    }

    /// A node's wire form with its devices' latest readings.
    fn node_of(&self, node: &qm_core::Node, alloc: Option<&qm_core::state::NodeAlloc>) -> qm_proto::v1::Node {
        let mut wire = node_to(node, alloc);
        self.readings.fill(&mut wire);
        wire
    }

    /// Replicates `command`, asked by `caller`.
    async fn write(&self, caller: &Caller, command: Command) -> Result<(), Status> {
        self.node.propose_as(Some(caller.asker()), Op::Core(command), None).await.map(|_| ()).map_err(status_of)
    }

    fn node_response(&self, name: &str) -> Result<Response<NodeResponse>, Status> {
        let fsm = self.node.fsm();
        let id = NodeId::from(name);
        let node = fsm.state.nodes().get(&id).ok_or_else(|| Status::not_found(format!("node: no node \"{name}\"")))?;
        Ok(Response::new(NodeResponse { node: Some(self.node_of(node, fsm.state.alloc(&id))) }))
    }

    /// Replicates a command about the node of `request`, and answers with the node.
    async fn node_command(
        &self,
        request: Request<NodeRequest>,
        command: impl FnOnce(NodeId) -> Command,
    ) -> Result<Response<NodeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().node;
        let command = command(NodeId::from(name.as_str()));
        if name.is_empty() {
            return Err(Status::invalid_argument("node: required"));
        }
        self.write(&caller, command).await?;
        self.node_response(&name)
    }

    /// The members as replicated (as of the last applied change), with this replica's view of
    /// who leads.
    fn members(&self) -> Vec<Member> {
        members_of(&self.node.fsm(), self.node.status().leader)
    }
}

/// The members in `fsm`, `leader` marked. Takes the state machine already read: a handler that
/// holds its read guard must not take a second one (a writer queued between the two blocks
/// the second, and waits on the first: the replica's Raft thread and the handler deadlock).
fn members_of(fsm: &Fsm, leader: u64) -> Vec<Member> {
    fsm.members
        .iter()
        .map(|(id, address)| {
            let role = if *id == leader { MemberRole::Leader } else { MemberRole::Follower };
            Member { id: *id, address: address.clone(), role: role as i32, match_index: 0 }
        })
        .collect()
}

type ChunkStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// Bytes per snapshot chunk.
const CHUNK_BYTES: usize = 1024 * 1024;

#[tonic::async_trait]
impl AdminService for AdminServer {
    type SaveSnapshotStream = ChunkStream;

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        super::tokens::create(&self.node, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn list_tokens(&self, request: Request<ListTokensRequest>) -> Result<Response<ListTokensResponse>, Status> {
        super::tokens::list(&self.node, &*Caller::of(&request)?).await.map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        super::tokens::revoke(&self.node, &caller, request.into_inner().name).await?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn list_audit(&self, request: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let caller = Caller::of(&request)?;
        super::audit::list(&self.node, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<TokenInfo>, Status> {
        Ok(Response::new(super::tokens::who(&self.node, &*Caller::of(&request)?)))
    }

    async fn save_snapshot(
        &self,
        request: Request<SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        before_read(&self.node, 0, &*Caller::of(&request)?).await?;
        let (index, cut) = {
            let fsm = self.node.fsm();
            (fsm.applied, fsm.cut())
        };
        let data = tokio::task::spawn_blocking(move || cut.encode())
            .await
            .map_err(|e| Status::internal(format!("encoding the snapshot: {e}")))?;
        let chunks: Vec<Result<SnapshotChunk, Status>> =
            data.chunks(CHUNK_BYTES).map(|c| Ok(SnapshotChunk { index, data: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn set_team(&self, request: Request<SetTeamRequest>) -> Result<Response<SetTeamResponse>, Status> {
        let caller = Caller::of(&request)?;
        let team = request.into_inner().team.ok_or_else(|| Status::invalid_argument("team: required"))?;
        let team = team_from(&team).map_err(|e| Status::invalid_argument(format!("team.{e}")))?;
        self.admission.team(&self.node.fsm(), &team)?;
        let flavors: Vec<qm_core::Flavor> = team.quotas.keys().cloned().collect();
        self.write(&caller, Command::SetTeam { team }).await?;
        let fsm = self.node.fsm();
        let warnings = fsm
            .state
            .overcommitted()
            .into_iter()
            .filter(|(f, _, _)| flavors.contains(f))
            .map(|(f, nominal, capacity)| qm_core::render::overcommitted(&f, nominal, capacity))
            .collect();
        Ok(Response::new(SetTeamResponse { warnings }))
    }

    async fn set_idle_policy(
        &self,
        request: Request<SetIdlePolicyRequest>,
    ) -> Result<Response<SetIdlePolicyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        if req.team.trim().is_empty() {
            return Err(Status::invalid_argument("team: required"));
        }
        let policy = req.policy.as_ref().map(idle_policy_from).transpose()?;
        let command = Command::SetIdlePolicy { team: qm_core::TeamId::from(req.team.as_str()), policy };
        match self.write(&caller, command).await {
            Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("unknown team") => {
                Err(Status::not_found(s.message().to_owned()))
            }
            other => other.map(|_| Response::new(SetIdlePolicyResponse {})),
        }
    }

    async fn list_teams(&self, request: Request<ListTeamsRequest>) -> Result<Response<ListTeamsResponse>, Status> {
        let caller = Caller::of(&request)?;
        before_read(&self.node, request.into_inner().consistency, &caller).await?;
        let fsm = self.node.fsm();
        let s = &fsm.state;
        let teams = s
            .teams()
            .iter()
            .map(|(id, spec)| TeamStatus {
                team: Some(team_to(spec)),
                usage: spec
                    .quotas
                    .keys()
                    .map(|f| FlavorUsage { flavor: Some(flavor_to(f)), used: s.usage(id, f) })
                    .collect(),
                pending_jobs: s.jobs().values().filter(|j| &j.spec.team == id && j.state == JobState::Pending).count()
                    as u32,
                idle: s.idle_policy(id).map(idle_policy_to),
            })
            .collect();
        Ok(Response::new(ListTeamsResponse { teams }))
    }

    async fn set_priority_class(
        &self,
        request: Request<SetPriorityClassRequest>,
    ) -> Result<Response<SetPriorityClassResponse>, Status> {
        let caller = Caller::of(&request)?;
        let class = priority_class_from(request.into_inner().class.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.write(&caller, Command::SetPriorityClass { class }).await?;
        Ok(Response::new(SetPriorityClassResponse {}))
    }

    async fn delete_priority_class(
        &self,
        request: Request<DeletePriorityClassRequest>,
    ) -> Result<Response<DeletePriorityClassResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name: required"));
        }
        match self.write(&caller, Command::DeletePriorityClass { name }).await {
            Err(s) if s.code() == tonic::Code::InvalidArgument => Err(Status::not_found(s.message().to_owned())),
            other => other.map(|_| Response::new(DeletePriorityClassResponse {})),
        }
    }

    async fn list_priority_classes(
        &self,
        request: Request<ListPriorityClassesRequest>,
    ) -> Result<Response<ListPriorityClassesResponse>, Status> {
        before_read(&self.node, 0, &*Caller::of(&request)?).await?;
        let fsm = self.node.fsm();
        let classes = fsm
            .state
            .priority_classes()
            .values()
            .map(|c| PriorityClass { name: c.name.clone(), value: c.value })
            .collect();
        Ok(Response::new(ListPriorityClassesResponse { classes }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        before_read(&self.node, req.consistency, &caller).await?;
        let fsm = self.node.fsm();
        let from = match req.page_token.as_str() {
            "" => std::ops::Bound::Unbounded,
            last => std::ops::Bound::Excluded(NodeId::from(last)),
        };
        let nodes = fsm.state.nodes().range((from, std::ops::Bound::Unbounded));
        let max = if req.page_size == 0 { usize::MAX } else { req.page_size as usize };
        let (nodes, more) = super::page(nodes.map(|(id, n)| self.node_of(n, fsm.state.alloc(id))), max);
        let next_page_token = match nodes.last().and_then(|n| n.inventory.as_ref()) {
            Some(last) if more => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListNodesResponse { nodes, next_page_token }))
    }

    async fn cordon(&self, request: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        self.node_command(request, |node| Command::Cordon { node, cordoned: true }).await
    }

    async fn uncordon(&self, request: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        self.node_command(request, |node| Command::Cordon { node, cordoned: false }).await
    }

    async fn drain(&self, request: Request<NodeRequest>) -> Result<Response<NodeResponse>, Status> {
        self.node_command(request, |node| Command::Drain { node }).await
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let status = self.node.status();
        let fsm = self.node.fsm();
        let s = &fsm.state;
        let capacity = s
            .capacity()
            .iter()
            .map(|(f, total)| FlavorCapacity {
                flavor: Some(flavor_to(f)),
                total: *total,
                used: total.saturating_sub(s.free(f)),
            })
            .collect();
        Ok(Response::new(ClusterStatusResponse {
            replica_id: status.id,
            leader_id: status.leader,
            term: status.term,
            commit_index: status.commit,
            applied_index: fsm.applied,
            members: members_of(&fsm, status.leader),
            capacity,
            pending_jobs: s.pending_count() as u64,
            running_jobs: s.running().len() as u64,
            state_hash: s.hash().to_vec(),
        }))
    }

    async fn add_member(&self, request: Request<AddMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("id: must not be 0"));
        }
        if req.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("address: {:?} is not host:port", req.address)));
        }
        if req.learner {
            return Err(Status::unimplemented("learner: learners are not supported; add a voter"));
        }
        let add = Membership::Add { id: req.id, address: req.address };
        self.node.change(add, Some(caller.asker())).await.map_err(status_of)?;
        Ok(Response::new(MembersResponse { members: self.members() }))
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Result<Response<MembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        if !self.node.fsm().members.contains_key(&id) {
            return Err(Status::not_found(format!("id: {id} is not a member")));
        }
        self.node.change(Membership::Remove { id }, Some(caller.asker())).await.map_err(status_of)?;
        Ok(Response::new(MembersResponse { members: self.members() }))
    }
}
