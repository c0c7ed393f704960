//! etcd's Maintenance and Cluster services: status, alarms, defragment, leadership moves, and
//! membership (list, add, remove, promote, update) through joint consensus.

use quorumkv_core::{ConfChange, ConfChangeStep};
use quorumkv_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use quorumkv_etcd_proto::etcdserverpb::cluster_server::Cluster;
use quorumkv_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use quorumkv_etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, Member, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, StatusRequest, StatusResponse,
};
use quorumkv_storage::mvcc::MvccStore;
use tonic::{Status, async_trait};

use super::{Api, forward_request, status_of, was_forwarded};
use crate::group::{self, GroupError};

/// The version this node reports: the etcd API level it speaks, with quorumkv's own version
/// as semver build metadata.
pub fn reported_version() -> String {
    format!("3.5.0+quorumkv.{}", env!("CARGO_PKG_VERSION"))
}

/// Metadata key with which our CLI chooses the id of a member it adds.
pub const MEMBER_ID_HEADER: &str = "x-quorumkv-member-id";

/// The id a member added by peer address gets when the caller does not choose one: a stable
/// hash of the address, so the new node can be configured before or after the call.
pub fn member_id_for(peer_url: &str) -> u64 {
    let h = peer_url
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h >> 1).max(1)
}

fn strip_scheme(url: &str) -> &str {
    url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/')
}

/// The Maintenance service.
pub struct MaintenanceService {
    api: Api,
}

impl MaintenanceService {
    /// A service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

#[async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _req: tonic::Request<AlarmRequest>,
    ) -> Result<tonic::Response<AlarmResponse>, Status> {
        // No alarm is ever raised: a full disk stops writes with a clear error instead.
        Ok(tonic::Response::new(AlarmResponse {
            header: Some(self.api.header(0)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, Status> {
        let st = self.api.group().status();
        let stats = self.api.group().shared.store.stats().unwrap_or_default();
        let mut errors = Vec::new();
        if let Some(f) = &st.failed {
            errors.push(f.clone());
        }
        Ok(tonic::Response::new(StatusResponse {
            header: Some(self.api.header(0)),
            version: reported_version(),
            db_size: stats.file_bytes.unwrap_or(stats.approx_bytes) as i64,
            db_size_in_use: stats.approx_bytes as i64,
            leader: st.leader.unwrap_or(0),
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            is_learner: st.learners.contains(&self.api.config().id),
            storage_version: "3.5.0".into(),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _req: tonic::Request<DefragmentRequest>,
    ) -> Result<tonic::Response<DefragmentResponse>, Status> {
        // The store reuses freed pages itself; there is nothing to rewrite and nothing blocks.
        Ok(tonic::Response::new(DefragmentResponse { header: Some(self.api.header(0)) }))
    }

    async fn move_leader(
        &self,
        req: tonic::Request<MoveLeaderRequest>,
    ) -> Result<tonic::Response<MoveLeaderResponse>, Status> {
        let target = req.get_ref().target_id;
        self.api.group().transfer(target).await.map_err(status_of)?;
        // Wait (bounded) for the transfer to take effect, as etcd does.
        for _ in 0..100 {
            if self.api.group().status().leader == Some(target) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(tonic::Response::new(MoveLeaderResponse { header: Some(self.api.header(0)) }))
    }
}

/// The Cluster service.
pub struct ClusterService {
    api: Api,
}

impl ClusterService {
    /// A service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    fn members(&self) -> Vec<Member> {
        let st = self.api.group().status();
        let directory = self.api.transport().directory();
        let mut ids: Vec<u64> = st.voters.iter().chain(&st.learners).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let m = st.members.iter().find(|m| m.id == id);
                let d = directory.get(&id);
                let pick = |a: Option<&String>, b: Option<&String>| {
                    a.filter(|s| !s.is_empty()).or(b.filter(|s| !s.is_empty())).cloned()
                };
                let peer = pick(m.map(|m| &m.peer_addr), d.map(|d| &d.peer_addr));
                let client = pick(m.map(|m| &m.client_addr), d.map(|d| &d.client_addr));
                let name = pick(m.map(|m| &m.name), d.map(|d| &d.name)).unwrap_or_default();
                Member {
                    id,
                    name,
                    peer_ur_ls: peer.map(|a| vec![format!("http://{a}")]).unwrap_or_default(),
                    client_ur_ls: client.map(|a| vec![format!("http://{a}")]).unwrap_or_default(),
                    is_learner: st.learners.contains(&id),
                }
            })
            .collect()
    }

    /// Runs a membership change here if leading, else forwards the call to the leader.
    async fn change(&self, change: ConfChange) -> Result<(), GroupError> {
        self.api.group().conf_change(change).await.map(|_| ())
    }

    fn leader_client(&self, e: &GroupError) -> Option<ClusterClient<tonic::transport::Channel>> {
        let GroupError::NotLeader { leader: Some(l) } = e else { return None };
        let addr = self.api.client_addr_of(*l)?;
        self.api.channel_to(&addr).ok().map(ClusterClient::new)
    }
}

#[async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        req: tonic::Request<MemberListRequest>,
    ) -> Result<tonic::Response<MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.api.read_barrier().await.map_err(status_of)?;
        }
        Ok(tonic::Response::new(MemberListResponse {
            header: Some(self.api.header(0)),
            members: self.members(),
        }))
    }

    async fn member_add(
        &self,
        req: tonic::Request<MemberAddRequest>,
    ) -> Result<tonic::Response<MemberAddResponse>, Status> {
        let r = req.get_ref().clone();
        let Some(url) = r.peer_ur_ls.first() else {
            return Err(self.api.refuse("etcdserver: member peer URL is not provided".into()));
        };
        let peer_addr = strip_scheme(url).to_string();
        let chosen = req
            .metadata()
            .get(MEMBER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        let id = chosen.filter(|&i| i != 0).unwrap_or_else(|| member_id_for(&peer_addr));
        if self
            .members()
            .iter()
            .any(|m| m.id == id || m.peer_ur_ls.iter().any(|u| strip_scheme(u) == peer_addr))
        {
            return Err(Status::failed_precondition("etcdserver: Peer URLs already exists"));
        }
        let context = serde_json::to_vec(&vec![group::Member {
            id,
            name: String::new(),
            peer_addr: peer_addr.clone(),
            client_addr: String::new(),
        }])
        .unwrap_or_default();
        let step = if r.is_learner {
            ConfChangeStep::AddLearner(id)
        } else {
            ConfChangeStep::AddVoter(id)
        };
        match self.change(ConfChange { steps: vec![step], context: context.into() }).await {
            Ok(()) => {}
            Err(e) if !was_forwarded(&req) => match self.leader_client(&e) {
                Some(mut c) => return c.member_add(forward_request(&req, r)).await,
                None => return Err(status_of(e)),
            },
            Err(e) => return Err(status_of(e)),
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![format!("http://{peer_addr}")],
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        Ok(tonic::Response::new(MemberAddResponse {
            header: Some(self.api.header(0)),
            member: Some(member),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: tonic::Request<MemberRemoveRequest>,
    ) -> Result<tonic::Response<MemberRemoveResponse>, Status> {
        let id = req.get_ref().id;
        if !self.members().iter().any(|m| m.id == id) {
            return Err(Status::not_found("etcdserver: member not found"));
        }
        match self
            .change(ConfChange {
                steps: vec![ConfChangeStep::RemoveNode(id)],
                context: Default::default(),
            })
            .await
        {
            Ok(()) => {}
            Err(e) if !was_forwarded(&req) => match self.leader_client(&e) {
                Some(mut c) => {
                    return c.member_remove(forward_request(&req, *req.get_ref())).await;
                }
                None => return Err(status_of(e)),
            },
            Err(e) => return Err(status_of(e)),
        }
        Ok(tonic::Response::new(MemberRemoveResponse {
            header: Some(self.api.header(0)),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: tonic::Request<MemberUpdateRequest>,
    ) -> Result<tonic::Response<MemberUpdateResponse>, Status> {
        let r = req.get_ref().clone();
        let Some(current) = self.members().into_iter().find(|m| m.id == r.id) else {
            return Err(Status::not_found("etcdserver: member not found"));
        };
        let Some(url) = r.peer_ur_ls.first() else {
            return Err(self.api.refuse("etcdserver: member peer URL is not provided".into()));
        };
        let info = group::Member {
            id: r.id,
            name: current.name.clone(),
            peer_addr: strip_scheme(url).to_string(),
            client_addr: String::new(),
        };
        // Re-adding a member in its current role changes no quorum; the context carries the
        // new address to every replica.
        let step = if current.is_learner {
            ConfChangeStep::AddLearner(r.id)
        } else {
            ConfChangeStep::AddVoter(r.id)
        };
        let context = serde_json::to_vec(&vec![info]).unwrap_or_default();
        match self.change(ConfChange { steps: vec![step], context: context.into() }).await {
            Ok(()) => {}
            Err(e) if !was_forwarded(&req) => match self.leader_client(&e) {
                Some(mut c) => return c.member_update(forward_request(&req, r)).await,
                None => return Err(status_of(e)),
            },
            Err(e) => return Err(status_of(e)),
        }
        Ok(tonic::Response::new(MemberUpdateResponse {
            header: Some(self.api.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: tonic::Request<MemberPromoteRequest>,
    ) -> Result<tonic::Response<MemberPromoteResponse>, Status> {
        let id = req.get_ref().id;
        let st = self.api.group().status();
        if !st.learners.contains(&id) {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        if st.role == "leader" {
            // etcd's rule: a learner is promoted only once it has caught up with the leader.
            let matched = st.peers.get(&id).copied().unwrap_or(0);
            if matched + 100 < st.commit {
                return Err(Status::failed_precondition(
                    "etcdserver: can only promote a learner member which is in sync with leader",
                ));
            }
        }
        match self
            .change(ConfChange {
                steps: vec![ConfChangeStep::AddVoter(id)],
                context: Default::default(),
            })
            .await
        {
            Ok(()) => {}
            Err(e) if !was_forwarded(&req) => match self.leader_client(&e) {
                Some(mut c) => {
                    return c.member_promote(forward_request(&req, *req.get_ref())).await;
                }
                None => return Err(status_of(e)),
            },
            Err(e) => return Err(status_of(e)),
        }
        Ok(tonic::Response::new(MemberPromoteResponse {
            header: Some(self.api.header(0)),
            members: self.members(),
        }))
    }
}
