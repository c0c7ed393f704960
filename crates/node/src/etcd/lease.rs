//! etcd's Lease service: grant, revoke, keep-alive, time-to-live, list.
//!
//! Rules kept:
//! - Grant and revoke are state-machine commands proposed through Raft (a follower forwards
//!   them to the leader's client port, as KV writes are), so every replica has the same
//!   lease table; expiry is a command the leader proposes (see `group.rs`).
//! - Time is the leader's: a keep-alive refreshes the leader's `LeaseClock`. A follower
//!   relays a client's keep-alive stream over one stream of its own to the leader's client
//!   port, reopened when leadership moves. A lease the leader does not know answers TTL 0
//!   (etcd's "expired or revoked"), not an error.
//! - TimeToLive is the leader's answer (its clock knows the time left), after a read
//!   barrier; an unknown lease answers TTL -1, as etcd does. LeaseLeases reads the local
//!   table after a read barrier.
//! - Error texts and codes are etcd's ("etcdserver: requested lease not found", NotFound).

use std::time::{Duration, Instant};

use quorumkv_etcd_proto::etcdserverpb::lease_client::LeaseClient;
use quorumkv_etcd_proto::etcdserverpb::lease_server::Lease;
use quorumkv_etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use quorumkv_kv::command::{Limits, Request, Response, validate_request};
use quorumkv_kv::{ApplyError, EtcdError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Status, async_trait};

use super::{Api, FORWARDED_HEADER, forward_request, status_of, was_forwarded};
use crate::group::GroupError;

/// How long one keep-alive may take, leader changes and relaying included.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between tries while no leader is known or the relay is being reopened.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Keep-alive responses buffered per client stream (one per request is outstanding at most
/// this many; a client that does not read stops being read from).
const KEEP_ALIVE_BUFFER: usize = 16;

/// The Lease service.
pub struct LeaseService {
    api: Api,
}

impl LeaseService {
    /// A Lease service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    fn leader_client(&self, leader: u64) -> Result<LeaseClient<Channel>, Status> {
        leader_client(&self.api, leader)
    }

    /// Proposes a lease command; on a follower, forwards the call to the leader.
    async fn write<T, R>(
        &self,
        op: &'static str,
        req: tonic::Request<T>,
        request: Request,
        forward: impl AsyncFnOnce(
            LeaseClient<Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<R>, Status>,
        pick: impl FnOnce(Response) -> Option<R>,
    ) -> Result<tonic::Response<R>, Status>
    where
        T: prost::Message + Clone,
    {
        let started = Instant::now();
        let limits = Limits { max_txn_ops: self.api.config().max_txn_ops };
        if let Err(e) = validate_request(&request, &limits) {
            self.api.metrics().request(op, "invalid", started.elapsed().as_secs_f64());
            return Err(Status::new(tonic::Code::from(e.grpc_code()), e.to_string()));
        }
        let result = match self.api.propose(&req, request).await {
            Ok((resp, _term)) => pick(resp).ok_or_else(|| {
                Status::internal(
                    "quorumkv: the state machine answered with another kind of response",
                )
            }),
            Err(GroupError::NotLeader { leader: Some(l) }) if !was_forwarded(&req) => {
                match self.leader_client(l) {
                    Ok(client) => {
                        let body = req.get_ref().clone();
                        forward(client, forward_request(&req, body))
                            .await
                            .map(tonic::Response::into_inner)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(status_of(e)),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.api.metrics().request(op, outcome, started.elapsed().as_secs_f64());
        result.map(tonic::Response::new)
    }
}

fn leader_client(api: &Api, leader: u64) -> Result<LeaseClient<Channel>, Status> {
    let addr = api.client_addr_of(leader).ok_or_else(|| {
        Status::unavailable("etcdserver: leader's client address unknown yet; retry")
    })?;
    Ok(LeaseClient::new(api.channel_to(&addr)?))
}

/// A follower's keep-alive stream to the leader, shared by one client stream's requests.
struct Relay {
    leader: u64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl Relay {
    async fn open(api: &Api, leader: u64) -> Result<Self, Status> {
        let mut client = leader_client(api, leader)?;
        let (requests, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
        let responses = client.lease_keep_alive(req).await?.into_inner();
        Ok(Self { leader, requests, responses })
    }

    /// Sends one keep-alive to the leader and waits for its answer.
    async fn keep_alive(&mut self, id: i64, timeout: Duration) -> Result<i64, Status> {
        self.requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::unavailable("quorumkv: keep-alive relay to the leader closed"))?;
        match tokio::time::timeout(timeout, self.responses.message()).await {
            Ok(Ok(Some(resp))) => Ok(resp.ttl),
            Ok(Ok(None)) => Err(Status::unavailable("quorumkv: the leader closed the relay")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }
}

/// One keep-alive: here if leading, else through the relay. Returns the TTL (0 for a lease
/// that does not exist).
async fn keep_alive_once(
    api: &Api,
    relay: &mut Option<Relay>,
    id: i64,
    forwarded: bool,
) -> Result<i64, Status> {
    let deadline = Instant::now() + KEEP_ALIVE_TIMEOUT;
    let mut last = Status::unavailable("etcdserver: no leader");
    while Instant::now() < deadline {
        match api.group().keep_alive(id).await {
            Ok(ttl) => return Ok(ttl),
            Err(GroupError::Apply(ApplyError::Rejected(EtcdError::LeaseNotFound))) => return Ok(0),
            Err(GroupError::NotLeader { leader }) if forwarded => {
                // The follower that relayed this reopens its relay to the new leader.
                return Err(status_of(GroupError::NotLeader { leader }));
            }
            Err(GroupError::NotLeader { leader: Some(l) }) if l != api.config().id => {
                if relay.as_ref().is_none_or(|r| r.leader != l) {
                    *relay = None;
                    match Relay::open(api, l).await {
                        Ok(r) => *relay = Some(r),
                        Err(e) => {
                            last = e;
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(r) = relay.as_mut() else { continue };
                match r.keep_alive(id, left).await {
                    Ok(ttl) => return Ok(ttl),
                    Err(e) => {
                        last = e;
                        *relay = None;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            // No leader yet (election), or this node leads but its lease clock has not
            // started: wait for it.
            Err(GroupError::NotLeader { .. }) => tokio::time::sleep(RETRY_PAUSE).await,
            Err(e) => return Err(status_of(e)),
        }
    }
    Err(last)
}

#[async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: tonic::Request<LeaseGrantRequest>,
    ) -> Result<tonic::Response<LeaseGrantResponse>, Status> {
        let request = Request::LeaseGrant(*req.get_ref());
        let api = self.api.clone();
        self.write(
            "lease_grant",
            req,
            request,
            async |mut c, r| c.lease_grant(r).await,
            |resp| match resp {
                Response::LeaseGrant(mut g) => {
                    g.header = Some(api.header(g.header.map_or(0, |h| h.revision)));
                    Some(g)
                }
                _ => None,
            },
        )
        .await
    }

    async fn lease_revoke(
        &self,
        req: tonic::Request<LeaseRevokeRequest>,
    ) -> Result<tonic::Response<LeaseRevokeResponse>, Status> {
        let request = Request::LeaseRevoke(*req.get_ref());
        let api = self.api.clone();
        self.write(
            "lease_revoke",
            req,
            request,
            async |mut c, r| c.lease_revoke(r).await,
            |resp| match resp {
                Response::LeaseRevoke(mut r) => {
                    r.header = Some(api.header(r.header.map_or(0, |h| h.revision)));
                    Some(r)
                }
                _ => None,
            },
        )
        .await
    }

    async fn lease_keep_alive(
        &self,
        req: tonic::Request<tonic::Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let forwarded = was_forwarded(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let api = self.api.clone();
        tokio::spawn(async move {
            let mut relay: Option<Relay> = None;
            while let Ok(Some(msg)) = inbound.message().await {
                let started = Instant::now();
                let answer =
                    keep_alive_once(&api, &mut relay, msg.id, forwarded).await.map(|ttl| {
                        LeaseKeepAliveResponse { header: Some(api.header(0)), id: msg.id, ttl }
                    });
                let failed = answer.is_err();
                api.metrics().request(
                    "lease_keep_alive",
                    if failed { "error" } else { "ok" },
                    started.elapsed().as_secs_f64(),
                );
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        let started = Instant::now();
        let LeaseTimeToLiveRequest { id, keys } = *req.get_ref();
        let local = async {
            self.api.read_barrier().await?;
            self.api.group().lease_time_to_live(id, keys).await
        };
        let result = match local.await {
            Ok(mut resp) => {
                resp.header = Some(self.api.header(resp.header.map_or(0, |h| h.revision)));
                Ok(resp)
            }
            Err(GroupError::NotLeader { leader: Some(l) }) if !was_forwarded(&req) => {
                match self.leader_client(l) {
                    Ok(mut c) => c
                        .lease_time_to_live(forward_request(&req, *req.get_ref()))
                        .await
                        .map(tonic::Response::into_inner),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(status_of(e)),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.api.metrics().request("lease_time_to_live", outcome, started.elapsed().as_secs_f64());
        result.map(tonic::Response::new)
    }

    async fn lease_leases(
        &self,
        _req: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<tonic::Response<LeaseLeasesResponse>, Status> {
        self.api.read_barrier().await.map_err(status_of)?;
        let mut resp = self.api.group().lease_leases().await.map_err(status_of)?;
        resp.header = Some(self.api.header(resp.header.map_or(0, |h| h.revision)));
        Ok(tonic::Response::new(resp))
    }
}
