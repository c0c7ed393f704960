//! The client port: etcd's v3 gRPC API over the node's Raft group.
//!
//! Rules kept:
//! - Writes become state-machine commands proposed through Raft; the answer is the state
//!   machine's, returned only once the entry is applied (so committed and durable on a
//!   quorum). A follower forwards a write to the leader's client port (etcd clients expect
//!   any member to accept writes).
//! - Linearizable reads pass a ReadIndex barrier first, then read the local store;
//!   serializable reads (`serializable = true`) read the local store at once.
//! - Our own client sends a session id and sequence number in the `x-quorumkv-session` and
//!   `x-quorumkv-seq` metadata; the state machine then applies a retried write once
//!   (dissertation §6.3). Requests without them (etcdctl, other etcd clients) get etcd's
//!   at-most-once-per-call behaviour.
//! - Limits (key, value and request size; connections) are checked before anything is
//!   proposed; a violation answers `InvalidArgument` naming the limit and is counted.
//! - Deterministic state-machine errors keep etcd's gRPC codes and messages, which clients
//!   match on.

mod auth;
mod kv;
mod lease;
mod maintenance;
mod ops;
mod sha256;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_etcd_proto::etcdserverpb::ResponseHeader;
use quorumkv_kv::command::{Request, Response, command};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::config::NodeConfig;
use crate::group::{Applied, GroupError, GroupHandle};
use crate::metrics::Metrics;
use crate::transport::Transport;

/// Metadata key carrying the client session id.
pub const SESSION_HEADER: &str = "x-quorumkv-session";
/// Metadata key carrying the sequence number within the session.
pub const SEQ_HEADER: &str = "x-quorumkv-seq";
/// Set on a request a follower forwarded, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-quorumkv-forwarded";
/// How long a write may wait to be applied before the client is told the outcome is unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

struct Inner {
    cfg: NodeConfig,
    cluster_id: u64,
    group: GroupHandle,
    transport: Transport,
    metrics: Arc<Metrics>,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Shared context of every API service.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

impl Api {
    /// The API of one node.
    pub fn new(
        cfg: NodeConfig,
        cluster_id: u64,
        group: GroupHandle,
        transport: Transport,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                cluster_id,
                group,
                transport,
                metrics,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// The group.
    pub fn group(&self) -> &GroupHandle {
        &self.inner.group
    }

    /// The transport (member directory).
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let (term, current) = self.inner.group.term_and_revision();
        ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.cfg.id,
            revision: if revision > 0 { revision } else { current },
            raft_term: term,
        }
    }

    /// Counts a refused request and builds its status.
    pub fn refuse(&self, what: String) -> Status {
        self.inner.metrics.malformed_requests.fetch_add(1, Relaxed);
        Status::invalid_argument(what)
    }

    /// Checks a key against the size limit.
    pub fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        let max = self.inner.cfg.max_key_bytes;
        if key.len() > max {
            return Err(self.refuse(format!(
                "quorumkv: key of {} bytes exceeds the limit max_key_bytes = {max}",
                key.len()
            )));
        }
        Ok(())
    }

    /// Checks a value against the size limit.
    pub fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        let max = self.inner.cfg.max_value_bytes;
        if value.len() > max {
            return Err(self.refuse(format!(
                "quorumkv: value of {} bytes exceeds the limit max_value_bytes = {max}",
                value.len()
            )));
        }
        Ok(())
    }

    /// A cached channel to another member's client port.
    pub fn channel_to(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.inner.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::unavailable(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The client address of `leader`, if known.
    pub fn client_addr_of(&self, leader: u64) -> Option<String> {
        let st = self.inner.group.status();
        st.members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.client_addr.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| {
                self.inner
                    .transport
                    .directory()
                    .get(&leader)
                    .map(|p| p.client_addr.clone())
                    .filter(|a| !a.is_empty())
            })
    }

    /// Proposes `request` and waits for its answer.
    pub async fn propose<T: prost::Message>(
        &self,
        req: &tonic::Request<T>,
        request: Request,
    ) -> Result<(Response, u64), GroupError> {
        let session = meta_u64(req, SESSION_HEADER);
        let seq = meta_u64(req, SEQ_HEADER);
        let cmd = command(session, seq, request);
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.inner.group.propose(cmd)).await {
            Ok(Ok(Applied { outcome, term })) => match outcome.result {
                quorumkv_kv::CommandResult::Applied(r)
                | quorumkv_kv::CommandResult::Duplicate(r) => Ok((r, term)),
                quorumkv_kv::CommandResult::Stale { .. } => Err(GroupError::Unknown),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => Err(GroupError::Unknown),
        }
    }

    /// Waits for a linearizable read barrier.
    pub async fn read_barrier(&self) -> Result<(), GroupError> {
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.inner.group.read_barrier()).await {
            Ok(r) => r,
            Err(_) => Err(GroupError::Unknown),
        }
    }
}

fn meta_u64<T>(req: &tonic::Request<T>, key: &str) -> u64 {
    req.metadata().get(key).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// True if a follower already forwarded this request.
pub fn was_forwarded<T>(req: &tonic::Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_HEADER)
}

/// Maps a group error to etcd's gRPC status.
pub fn status_of(e: GroupError) -> Status {
    match e {
        GroupError::NotLeader { leader: None } => Status::unavailable("etcdserver: no leader"),
        GroupError::NotLeader { leader: Some(_) } => Status::unavailable("etcdserver: not leader"),
        GroupError::Busy => Status::resource_exhausted("etcdserver: too many requests"),
        GroupError::Unknown => Status::unavailable("etcdserver: request timed out"),
        GroupError::Apply(a) => match a.etcd() {
            Some(etcd) => Status::new(Code::from(etcd.grpc_code()), etcd.to_string()),
            None => Status::unavailable(format!("quorumkv: {a}")),
        },
        GroupError::Raft(r) => Status::failed_precondition(format!("quorumkv: {r}")),
        GroupError::Stopped(why) => Status::unavailable(format!("quorumkv: node stopped: {why}")),
    }
}

/// Copies the session metadata of `from` onto a forwarded request.
pub fn forward_request<T>(from: &tonic::Request<T>, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    for key in [SESSION_HEADER, SEQ_HEADER, crate::etcd::ops::MEMBER_ID_HEADER] {
        if let Some(v) = from.metadata().get(key) {
            req.metadata_mut().insert(key, v.clone());
        }
    }
    req.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    req
}

/// Serves the client port until the listener fails.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    max_request_bytes: usize,
    max_connections: usize,
) {
    use quorumkv_etcd_proto::etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    };
    let incoming =
        crate::limits::limited_incoming(listener, max_connections, api.metrics().clone());
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(kv::KvService::new(api.clone()))
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(api.clone()))
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(
            ClusterServer::new(ops::ClusterService::new(api.clone()))
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(api.clone(), max_request_bytes))
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(api.clone()))
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(
            AuthServer::new(auth::AuthService::new(api.clone()))
                .max_decoding_message_size(max_request_bytes),
        );
    if let Err(e) = router.serve_with_incoming(incoming).await {
        tracing::error!(error = %e, "client port stopped");
    }
}
