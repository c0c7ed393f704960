//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::time::Instant;

use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::kv_server::Kv;
use quorumkv_etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, request_op,
};
use quorumkv_kv::command::{Limits, Request, Response, validate_request};
use tonic::{Status, async_trait};

use super::{Api, forward_request, status_of, was_forwarded};
use crate::group::GroupError;

/// The KV service.
pub struct KvService {
    api: Api,
}

impl KvService {
    /// A KV service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    fn limits(&self) -> Limits {
        Limits { max_txn_ops: self.api.config().max_txn_ops }
    }

    fn check_ops(&self, ops: &[RequestOp]) -> Result<(), Status> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    self.api.check_key(&p.key)?;
                    self.api.check_value(&p.value)?;
                }
                Some(request_op::Request::RequestRange(r)) => self.api.check_key(&r.key)?,
                Some(request_op::Request::RequestDeleteRange(d)) => self.api.check_key(&d.key)?,
                Some(request_op::Request::RequestTxn(t)) => {
                    self.check_ops(&t.success)?;
                    self.check_ops(&t.failure)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Proposes a write; on a follower, forwards it to the leader's client port.
    async fn write<T, R>(
        &self,
        op: &'static str,
        req: tonic::Request<T>,
        request: Request,
        forward: impl AsyncFnOnce(
            KvClient<tonic::transport::Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<R>, Status>,
        pick: impl FnOnce(Response) -> Option<R>,
    ) -> Result<tonic::Response<R>, Status>
    where
        T: prost::Message + Clone,
    {
        let started = Instant::now();
        if let Err(e) = validate_request(&request, &self.limits()) {
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
                match self.api.client_addr_of(l) {
                    Some(addr) => {
                        let client = KvClient::new(self.api.channel_to(&addr)?);
                        let body = req.get_ref().clone();
                        forward(client, forward_request(&req, body))
                            .await
                            .map(tonic::Response::into_inner)
                    }
                    None => Err(Status::unavailable(
                        "etcdserver: leader's client address unknown yet; retry",
                    )),
                }
            }
            Err(e) => Err(status_of(e)),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.api.metrics().request(op, outcome, started.elapsed().as_secs_f64());
        result.map(tonic::Response::new)
    }
}

#[async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: tonic::Request<RangeRequest>,
    ) -> Result<tonic::Response<RangeResponse>, Status> {
        let started = Instant::now();
        let r = req.get_ref();
        self.api.check_key(&r.key)?;
        if !r.serializable {
            self.api.read_barrier().await.map_err(status_of)?;
        }
        let result = quorumkv_kv::read::range(&*self.api.group().shared.store, r);
        self.api.metrics().request(
            "range",
            if result.is_ok() { "ok" } else { "error" },
            started.elapsed().as_secs_f64(),
        );
        let mut resp = result.map_err(|e| status_of(GroupError::Apply(e)))?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        resp.header = Some(self.api.header(revision));
        Ok(tonic::Response::new(resp))
    }

    async fn put(
        &self,
        req: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, Status> {
        self.api.check_key(&req.get_ref().key)?;
        self.api.check_value(&req.get_ref().value)?;
        let request = Request::Put(req.get_ref().clone());
        let api = self.api.clone();
        self.write(
            "put",
            req,
            request,
            async |mut c, r| c.put(r).await,
            |resp| match resp {
                Response::Put(mut p) => {
                    p.header = Some(api.header(p.header.map_or(0, |h| h.revision)));
                    Some(p)
                }
                _ => None,
            },
        )
        .await
    }

    async fn delete_range(
        &self,
        req: tonic::Request<DeleteRangeRequest>,
    ) -> Result<tonic::Response<DeleteRangeResponse>, Status> {
        self.api.check_key(&req.get_ref().key)?;
        let request = Request::DeleteRange(req.get_ref().clone());
        let api = self.api.clone();
        self.write(
            "delete_range",
            req,
            request,
            async |mut c, r| c.delete_range(r).await,
            |resp| match resp {
                Response::DeleteRange(mut d) => {
                    d.header = Some(api.header(d.header.map_or(0, |h| h.revision)));
                    Some(d)
                }
                _ => None,
            },
        )
        .await
    }

    async fn txn(
        &self,
        req: tonic::Request<TxnRequest>,
    ) -> Result<tonic::Response<TxnResponse>, Status> {
        self.check_ops(&req.get_ref().success)?;
        self.check_ops(&req.get_ref().failure)?;
        for c in &req.get_ref().compare {
            self.api.check_key(&c.key)?;
        }
        let request = Request::Txn(req.get_ref().clone());
        let api = self.api.clone();
        self.write(
            "txn",
            req,
            request,
            async |mut c, r| c.txn(r).await,
            |resp| match resp {
                Response::Txn(mut t) => {
                    t.header = Some(api.header(t.header.map_or(0, |h| h.revision)));
                    Some(t)
                }
                _ => None,
            },
        )
        .await
    }

    async fn compact(
        &self,
        req: tonic::Request<CompactionRequest>,
    ) -> Result<tonic::Response<CompactionResponse>, Status> {
        let request = Request::Compact(*req.get_ref());
        let api = self.api.clone();
        self.write(
            "compact",
            req,
            request,
            async |mut c, r| c.compact(r).await,
            |resp| match resp {
                Response::Compact(mut c) => {
                    c.header = Some(api.header(c.header.map_or(0, |h| h.revision)));
                    Some(c)
                }
                _ => None,
            },
        )
        .await
    }
}
