//! The workloads' etcd v3 clients: tonic stubs of `quorumkv-etcd-proto`, a channel per node,
//! exactly-once writes through quorumkv's session metadata, and the classification of
//! errors into "did not happen" and "unknown".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::lease_client::LeaseClient;
use quorumkv_etcd_proto::etcdserverpb::watch_client::WatchClient;
use quorumkv_etcd_proto::etcdserverpb::{
    Compare, RangeRequest, RangeResponse, RequestOp, TxnRequest, compare, request_op,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Metadata key of the client session (exactly-once writes).
pub const SESSION_HEADER: &str = "x-quorumkv-session";
/// Metadata key of the command's sequence number in its session.
pub const SEQ_HEADER: &str = "x-quorumkv-seq";
/// Metadata key naming the id a new member gets from `Cluster.MemberAdd`.
pub const MEMBER_ID_HEADER: &str = "x-quorumkv-member-id";

/// Channels to the nodes' client ports, one per address, shared by every client.
#[derive(Clone, Default)]
pub struct Channels(Arc<Mutex<HashMap<String, Channel>>>);

impl Channels {
    /// The channel to `addr` (created lazily; connecting is bounded to one second).
    pub fn get(&self, addr: &str) -> Channel {
        let mut map = self.0.lock();
        if let Some(c) = map.get(addr) {
            return c.clone();
        }
        // A malformed address cannot happen (we build them); fall back to a dead channel.
        let c = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|_| Channel::from_static("http://127.0.0.1:1"))
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), c.clone());
        c
    }

    /// A KV client for `addr`.
    pub fn kv(&self, addr: &str) -> KvClient<Channel> {
        KvClient::new(self.get(addr))
    }

    /// A Lease client for `addr`.
    pub fn lease(&self, addr: &str) -> LeaseClient<Channel> {
        LeaseClient::new(self.get(addr))
    }

    /// A Watch client for `addr`.
    pub fn watch(&self, addr: &str) -> WatchClient<Channel> {
        WatchClient::new(self.get(addr))
    }
}

/// One client session: a non-zero id and the next sequence number (from 1). One command is
/// in flight at a time; a retry of a command reuses its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Session id.
    pub id: u64,
    /// Sequence number of the next command.
    pub next_seq: u64,
}

impl Session {
    /// A session with id `id` (made non-zero).
    pub fn new(id: u64) -> Self {
        Session { id: id.max(1), next_seq: 1 }
    }

    /// Takes the next sequence number.
    pub fn take(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }
}

/// A request carrying session metadata.
pub fn with_session<T>(body: T, session: u64, seq: u64) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    if let (Ok(s), Ok(q)) = (session.to_string().parse(), seq.to_string().parse()) {
        req.metadata_mut().insert(SESSION_HEADER, s);
        req.metadata_mut().insert(SEQ_HEADER, q);
    }
    req
}

/// How a failed call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The request definitely had no effect (refused before it was proposed).
    Definite(String),
    /// The outcome is unknown: it may have happened, now or later.
    Unknown(String),
}

impl CallError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            CallError::Definite(m) | CallError::Unknown(m) => m,
        }
    }
}

/// Classifies a gRPC status of a write. Only refusals that happen before anything is
/// proposed are definite; everything else (timeouts, lost connections, leadership changes,
/// forwarded requests whose answer was lost) may have taken effect.
pub fn classify(status: &Status) -> CallError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument | Code::ResourceExhausted | Code::Unimplemented => {
            CallError::Definite(message)
        }
        _ => CallError::Unknown(message),
    }
}

/// Runs `call` with a time limit; a timeout is an unknown outcome.
pub async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(classify(&status)),
        Err(_) => Err(CallError::Unknown(format!("no answer within {limit:?}"))),
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A linearizable range over every key with `prefix`.
pub fn range_prefix(prefix: &str) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix.as_bytes()).into(),
        ..RangeRequest::default()
    }
}

/// A linearizable read of one key.
pub fn range_key(key: &str) -> RangeRequest {
    RangeRequest { key: key.as_bytes().to_vec().into(), ..RangeRequest::default() }
}

/// The value of the first key of a range as text.
pub fn first_value(resp: &RangeResponse) -> Option<String> {
    resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// `key`'s value equals `value`.
pub fn compare_value(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::Value(value.as_bytes().to_vec().into())),
        ..Compare::default()
    }
}

/// `key`'s create revision equals `revision` (0: the key is absent).
pub fn compare_create(key: &str, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Compare::default()
    }
}

/// `key`'s mod revision equals `revision`.
pub fn compare_mod(key: &str, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        ..Compare::default()
    }
}

/// A put as a transaction operation.
pub fn op_put(key: &str, value: &str, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(
            quorumkv_etcd_proto::etcdserverpb::PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                lease,
                ..Default::default()
            },
        )),
    }
}

/// A delete of one key as a transaction operation.
pub fn op_delete(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            quorumkv_etcd_proto::etcdserverpb::DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )),
    }
}

/// A transaction: if every compare holds, `success`, else nothing.
pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest { compare, success, failure: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn only_refusals_before_proposing_are_definite() {
        assert!(matches!(classify(&Status::invalid_argument("too big")), CallError::Definite(_)));
        assert!(matches!(
            classify(&Status::unavailable("etcdserver: request timed out")),
            CallError::Unknown(_)
        ));
        assert!(matches!(classify(&Status::cancelled("gone")), CallError::Unknown(_)));
    }
}
