//! Reads and writes: get, put, delete, compare-and-set, scan, transactions.

use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, compare, request_op, response_op,
};
use tonic::Code;

use crate::client::{Client, Target, WriteCtx};
use crate::error::Error;
use crate::range::KeyRange;
use crate::session::WriteId;
use crate::types::{CasResult, KeyValue, PutResult, ReadConsistency, ScanOptions, ScanResult};

/// etcd's message for a read below the compaction point.
const COMPACTED: &str = "required revision has been compacted";

fn request<T>(body: T, id: Option<WriteId>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    if let Some(id) = id {
        id.stamp(&mut req);
    }
    req
}

impl Client {
    /// The key's current value and metadata, or None if it does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>, Error> {
        let req = RangeRequest { key: key.as_ref().to_vec().into(), ..Default::default() };
        let resp = self.range("get", req).await?;
        self.observe(resp.header.as_ref().map_or(0, |h| h.revision));
        Ok(resp.kvs.into_iter().next().map(KeyValue::from))
    }

    /// Keys in `range`, in key order, at most `options.limit` of them, as of
    /// `options.revision` (or now).
    pub async fn scan(&self, range: &KeyRange, options: ScanOptions) -> Result<ScanResult, Error> {
        let (key, range_end) = range.to_etcd();
        let req = RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            limit: options.limit.max(0),
            revision: options.revision.unwrap_or(0),
            keys_only: options.keys_only,
            ..Default::default()
        };
        let resp = self.range("scan", req).await?;
        self.observe(resp.header.as_ref().map_or(0, |h| h.revision));
        Ok(ScanResult {
            revision: resp.header.as_ref().map_or(0, |h| h.revision),
            more: resp.more,
            count: resp.count,
            kvs: resp.kvs.into_iter().map(KeyValue::from).collect(),
        })
    }

    /// A Range call at this handle's consistency: a linearizable one goes to the leader, a
    /// serializable one to the first member that answers.
    async fn range(&self, op: &'static str, mut req: RangeRequest) -> Result<RangeResponse, Error> {
        let serializable = self.consistency == ReadConsistency::Serializable;
        req.serializable = serializable;
        let target = if serializable { Target::Any } else { Target::Leader };
        let requested = req.revision;
        let result = self
            .run(op, target, None, |ch, _| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await.map(|r| r.into_inner()) }
            })
            .await;
        result.map_err(|f| match f.error {
            Error::Rejected { code: Code::OutOfRange, message, .. }
                if message.contains(COMPACTED) =>
            {
                Error::Compacted { requested, compact_revision: None }
            }
            e => e,
        })
    }

    /// Writes `value` under `key`; the answer holds the new revision and the previous value.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<PutResult, Error> {
        let mut w = self.pooled_write();
        self.put_in(&mut w.ctx, key.as_ref(), value.as_ref()).await
    }

    /// Writes `value` under `key` as the write `id` (from [`Client::new_write_id`]). The
    /// cluster applies a write id once: sending it again (after a timeout whose outcome is
    /// unknown, say) returns the first answer and changes nothing.
    pub async fn put_with_id(
        &self,
        id: WriteId,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<PutResult, Error> {
        let mut ctx = Client::explicit_write(id);
        self.put_in(&mut ctx, key.as_ref(), value.as_ref()).await
    }

    async fn put_in(
        &self,
        ctx: &mut WriteCtx,
        key: &[u8],
        value: &[u8],
    ) -> Result<PutResult, Error> {
        let body = PutRequest {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            prev_kv: true,
            ..Default::default()
        };
        let resp = self
            .run("put", Target::Leader, Some(ctx), |ch, id| {
                let req = request(body.clone(), id);
                async move { KvClient::new(ch).put(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        self.observe(resp.header.as_ref().map_or(0, |h| h.revision));
        Ok(PutResult {
            revision: resp.header.as_ref().map_or(0, |h| h.revision),
            prev: resp.prev_kv.map(KeyValue::from),
        })
    }

    /// Deletes `key`; answers how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<i64, Error> {
        self.delete_range(&KeyRange::key(key.as_ref())).await
    }

    /// Deletes every key in `range`; answers how many were deleted.
    pub async fn delete_range(&self, range: &KeyRange) -> Result<i64, Error> {
        let (key, range_end) = range.to_etcd();
        let body = DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        };
        let mut w = self.pooled_write();
        let resp = self
            .run("delete", Target::Leader, Some(&mut w.ctx), |ch, id| {
                let req = request(body.clone(), id);
                async move { KvClient::new(ch).delete_range(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        self.observe(resp.header.as_ref().map_or(0, |h| h.revision));
        Ok(resp.deleted)
    }

    /// Writes `new` under `key` only if its value is `expected` (None: only if the key does
    /// not exist). On failure the answer holds the key as it is.
    pub async fn cas_value(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let key = key.as_ref();
        let cmp = match expected {
            Some(v) => Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: key.to_vec().into(),
                target_union: Some(compare::TargetUnion::Value(v.to_vec().into())),
                ..Default::default()
            },
            // A key that does not exist has create revision 0.
            None => Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.to_vec().into(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            },
        };
        self.cas(key, cmp, new.as_ref()).await
    }

    /// Writes `new` under `key` only if the key's last write was at `mod_revision`
    /// (0: only if the key does not exist). On failure the answer holds the key as it is.
    pub async fn cas_revision(
        &self,
        key: impl AsRef<[u8]>,
        mod_revision: i64,
        new: impl AsRef<[u8]>,
    ) -> Result<CasResult, Error> {
        let key = key.as_ref();
        let cmp = Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.to_vec().into(),
            target_union: Some(compare::TargetUnion::ModRevision(mod_revision)),
            ..Default::default()
        };
        self.cas(key, cmp, new.as_ref()).await
    }

    async fn cas(&self, key: &[u8], cmp: Compare, new: &[u8]) -> Result<CasResult, Error> {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec().into(),
                value: new.to_vec().into(),
                ..Default::default()
            })),
        };
        // On failure, read the key in the same transaction: the caller learns why at the
        // revision the comparison saw.
        let read = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec().into(),
                ..Default::default()
            })),
        };
        let resp = self
            .txn(TxnRequest { compare: vec![cmp], success: vec![put], failure: vec![read] })
            .await?;
        let current = if resp.succeeded {
            None
        } else {
            resp.responses.into_iter().find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(r)) => {
                    r.kvs.into_iter().next().map(KeyValue::from)
                }
                _ => None,
            })
        };
        Ok(CasResult {
            succeeded: resp.succeeded,
            revision: resp.header.as_ref().map_or(0, |h| h.revision),
            current,
        })
    }

    /// An etcd transaction, applied exactly once however often it is retried.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Error> {
        let mut w = self.pooled_write();
        let resp = self
            .run("txn", Target::Leader, Some(&mut w.ctx), |ch, id| {
                let req = request(txn.clone(), id);
                async move { KvClient::new(ch).txn(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        self.observe(resp.header.as_ref().map_or(0, |h| h.revision));
        Ok(resp)
    }
}
