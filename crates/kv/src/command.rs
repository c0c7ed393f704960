//! Commands as the Raft log carries them, the answers they get, and the checks etcd makes on
//! a request before running it.
//!
//! Rules this module keeps:
//! - A log entry is one [`Command`] (protobuf `quorumkv.internal.Command`): a client session,
//!   a sequence number and one request, the etcd request types reused inside. Decoding never
//!   panics, whatever the bytes ([`decode_command`]; prost bounds nesting at 100 levels).
//! - [`validate_request`] makes the checks etcd's gRPC layer makes before proposing (etcd's
//!   `v3rpc/key.go`: empty keys, `ignore_value`/`ignore_lease` misuse, the txn operation
//!   limit, duplicate keys in a txn). The state machine makes them again when it applies, so
//!   a command that skipped them still fails the same way on every replica.

use std::collections::HashSet;

use bytes::Bytes;
use prost::Message;
use quorumkv_etcd_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest,
    PutResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, request_op,
};
pub use quorumkv_etcd_proto::internal::Command;
pub use quorumkv_etcd_proto::internal::command::Request;
use quorumkv_etcd_proto::internal::{
    CommandError, CommandResponse, LeaseExpireResponse, NoopResponse, command_response,
};

use crate::error::EtcdError;

/// etcd's default limit on compares and on operations per list in one txn.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

/// Builds a command envelope.
pub fn command(session: u64, seq: u64, request: Request) -> Command {
    Command { session, seq, request: Some(request) }
}

/// Encodes a command for the log.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    cmd.encode_to_vec()
}

/// Decodes a log entry. Any bytes are safe: what does not decode is
/// [`EtcdError::MalformedCommand`].
pub fn decode_command(bytes: &[u8]) -> Result<Command, EtcdError> {
    Command::decode(bytes).map_err(|_| EtcdError::MalformedCommand)
}

/// The answer to an applied command, with the header's revision set to the store revision
/// after the command (the API layer fills in cluster id, member id and term).
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Answer to a put.
    Put(PutResponse),
    /// Answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// Answer to a txn.
    Txn(TxnResponse),
    /// Answer to a compaction.
    Compact(CompactionResponse),
    /// Answer to a lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// Answer to a lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// What a leader-proposed lease expiry did.
    LeaseExpire(LeaseExpireResponse),
    /// Answer to a no-op.
    Noop(NoopResponse),
}

impl Response {
    /// The response header.
    pub fn header(&self) -> Option<&ResponseHeader> {
        match self {
            Response::Put(r) => r.header.as_ref(),
            Response::DeleteRange(r) => r.header.as_ref(),
            Response::Txn(r) => r.header.as_ref(),
            Response::Compact(r) => r.header.as_ref(),
            Response::LeaseGrant(r) => r.header.as_ref(),
            Response::LeaseRevoke(r) => r.header.as_ref(),
            Response::LeaseExpire(r) => r.header.as_ref(),
            Response::Noop(r) => r.header.as_ref(),
        }
    }

    /// The header's revision (0 if there is no header).
    pub fn revision(&self) -> i64 {
        self.header().map_or(0, |h| h.revision)
    }
}

/// Encodes an outcome (an answer or a deterministic failure) for the session table.
pub(crate) fn encode_reply(result: &Result<Response, EtcdError>) -> CommandResponse {
    use command_response::Response as R;
    let response = match result {
        Ok(Response::Put(r)) => R::Put(r.clone()),
        Ok(Response::DeleteRange(r)) => R::DeleteRange(r.clone()),
        Ok(Response::Txn(r)) => R::Txn(r.clone()),
        Ok(Response::Compact(r)) => R::Compact(*r),
        Ok(Response::LeaseGrant(r)) => R::LeaseGrant(r.clone()),
        Ok(Response::LeaseRevoke(r)) => R::LeaseRevoke(*r),
        Ok(Response::LeaseExpire(r)) => R::LeaseExpire(r.clone()),
        Ok(Response::Noop(r)) => R::Noop(*r),
        Err(e) => R::Error(CommandError { code: e.code(), message: e.to_string() }),
    };
    CommandResponse { response: Some(response) }
}

/// Decodes a stored outcome; `None` if it is not one this build wrote.
pub(crate) fn decode_reply(reply: CommandResponse) -> Option<Result<Response, EtcdError>> {
    use command_response::Response as R;
    Some(match reply.response? {
        R::Put(r) => Ok(Response::Put(r)),
        R::DeleteRange(r) => Ok(Response::DeleteRange(r)),
        R::Txn(r) => Ok(Response::Txn(r)),
        R::Compact(r) => Ok(Response::Compact(r)),
        R::LeaseGrant(r) => Ok(Response::LeaseGrant(r)),
        R::LeaseRevoke(r) => Ok(Response::LeaseRevoke(r)),
        R::LeaseExpire(r) => Ok(Response::LeaseExpire(r)),
        R::Noop(r) => Ok(Response::Noop(r)),
        R::Error(e) => Err(EtcdError::from_code(e.code)?),
    })
}

/// Limits a request must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most compares, and most operations in each of a txn's two lists (etcd's
    /// `--max-txn-ops`, default 128). A nested txn gets what its parent's largest list left.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_txn_ops: MAX_TXN_OPS_DEFAULT }
    }
}

/// The checks etcd makes on a request before it runs (see the module rules).
pub fn validate_request(request: &Request, limits: &Limits) -> Result<(), EtcdError> {
    match request {
        Request::Put(p) => check_put(p),
        Request::DeleteRange(d) => non_empty(&d.key),
        Request::Txn(t) => {
            check_txn(t, limits.max_txn_ops)?;
            check_intervals(&t.success)?;
            check_intervals(&t.failure)?;
            Ok(())
        }
        Request::Compact(_)
        | Request::LeaseGrant(_)
        | Request::LeaseRevoke(_)
        | Request::LeaseExpire(_)
        | Request::Noop(_) => Ok(()),
    }
}

fn non_empty(key: &[u8]) -> Result<(), EtcdError> {
    if key.is_empty() { Err(EtcdError::EmptyKey) } else { Ok(()) }
}

fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    non_empty(&p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    for c in &t.compare {
        non_empty(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => non_empty(&r.key),
        Some(request_op::Request::RequestPut(p)) => check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) => non_empty(&d.key),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_ops),
        // etcd answers an empty operation this way.
        None => Err(EtcdError::KeyNotFound),
    }
}

/// Key intervals deleted by a list of operations: `[start, end)`, or the single key `start`
/// when `end` is empty. As in etcd, an end of `"\0"` is taken literally (an empty interval),
/// not as "to the end of the keyspace".
#[derive(Default)]
struct Deletes(Vec<(Bytes, Bytes)>);

impl Deletes {
    fn contains(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(start, end)| {
            if end.is_empty() { start.as_ref() == key } else { start.as_ref() <= key && key < end }
        })
    }
}

/// etcd's rule against writing one key twice in one txn: within one list, no two puts of a
/// key and no put inside a deleted range, counting nested txns (whose two branches may put
/// the same key, since only one runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Deletes), EtcdError> {
    let mut dels = Deletes::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.0.push((d.key.clone(), d.range_end.clone()));
        }
    }
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.contains(&p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use quorumkv_etcd_proto::etcdserverpb::{Compare, DeleteRangeRequest, RangeRequest};

    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_owned()),
                ..PutRequest::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from(k.to_owned()),
                range_end: Bytes::from(end.to_owned()),
                ..DeleteRangeRequest::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }

    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
    }

    fn check(t: TxnRequest) -> Result<(), EtcdError> {
        validate_request(&Request::Txn(t), &Limits::default())
    }

    #[test]
    fn duplicate_key_rules_follow_etcd() {
        assert_eq!(check(txn(vec![put("a"), put("b")], vec![])), Ok(()));
        assert_eq!(check(txn(vec![put("a"), put("a")], vec![])), Err(EtcdError::DuplicateKey));
        assert_eq!(check(txn(vec![put("b"), del("a", "c")], vec![])), Err(EtcdError::DuplicateKey));
        assert_eq!(check(txn(vec![put("c"), del("a", "c")], vec![])), Ok(()));
        assert_eq!(check(txn(vec![put("a"), del("a", "")], vec![])), Err(EtcdError::DuplicateKey));
        // Deletes may overlap each other.
        assert_eq!(check(txn(vec![del("a", "z"), del("b", "")], vec![])), Ok(()));
        // The two lists are separate.
        assert_eq!(check(txn(vec![put("a")], vec![put("a")])), Ok(()));
        // Nested branches may put the same key; a nested put clashes with an outer one.
        assert_eq!(check(txn(vec![nested(txn(vec![put("a")], vec![put("a")]))], vec![])), Ok(()));
        assert_eq!(
            check(txn(vec![nested(txn(vec![put("a")], vec![])), put("a")], vec![])),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(txn(vec![nested(txn(vec![del("a", "b")], vec![])), put("a")], vec![])),
            Err(EtcdError::DuplicateKey)
        );
        // etcd takes a "\0" range end literally here.
        assert_eq!(check(txn(vec![put("b"), del("a", "\0")], vec![])), Ok(()));
    }

    #[test]
    fn txn_limits_and_empty_parts() {
        let limits = Limits { max_txn_ops: 2 };
        let t = txn(vec![put("a"), put("b"), put("c")], vec![]);
        assert_eq!(validate_request(&Request::Txn(t), &limits), Err(EtcdError::TooManyOps));
        let t =
            TxnRequest { compare: vec![Compare::default(); 3], success: vec![], failure: vec![] };
        assert_eq!(validate_request(&Request::Txn(t), &limits), Err(EtcdError::TooManyOps));
        // The nested txn gets what the parent's largest list left: 2 - 1 = 1.
        let t = txn(vec![nested(txn(vec![put("a"), put("b")], vec![]))], vec![]);
        assert_eq!(validate_request(&Request::Txn(t), &limits), Err(EtcdError::TooManyOps));
        let t = txn(vec![nested(txn(vec![put("a")], vec![]))], vec![]);
        assert_eq!(validate_request(&Request::Txn(t), &limits), Ok(()));
        let t = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check(t), Err(EtcdError::KeyNotFound));
        let t = txn(
            vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest::default())),
            }],
            vec![],
        );
        assert_eq!(check(t), Err(EtcdError::EmptyKey));
        let t = TxnRequest { compare: vec![Compare::default()], success: vec![], failure: vec![] };
        assert_eq!(check(t), Err(EtcdError::EmptyKey));
    }

    #[test]
    fn put_checks() {
        let p = |value: &str, lease, iv, il| {
            Request::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(value.to_owned()),
                lease,
                ignore_value: iv,
                ignore_lease: il,
                prev_kv: false,
            })
        };
        let l = Limits::default();
        assert_eq!(validate_request(&p("v", 0, false, false), &l), Ok(()));
        assert_eq!(validate_request(&p("v", 0, true, false), &l), Err(EtcdError::ValueProvided));
        assert_eq!(validate_request(&p("", 7, false, true), &l), Err(EtcdError::LeaseProvided));
        assert_eq!(validate_request(&p("", 0, true, true), &l), Ok(()));
        let empty = Request::Put(PutRequest::default());
        assert_eq!(validate_request(&empty, &l), Err(EtcdError::EmptyKey));
    }

    #[test]
    fn replies_round_trip() {
        for e in EtcdError::ALL {
            let enc = encode_reply(&Err(e));
            assert_eq!(decode_reply(enc), Some(Err(e)));
        }
        let ok = Ok(Response::Noop(NoopResponse {
            header: Some(ResponseHeader { revision: 9, ..ResponseHeader::default() }),
        }));
        assert_eq!(decode_reply(encode_reply(&ok)), Some(ok));
        assert_eq!(decode_reply(CommandResponse { response: None }), None);
    }

    #[test]
    fn decoding_garbage_is_an_error() {
        assert_eq!(decode_command(&[0xff, 0xff, 0xff]), Err(EtcdError::MalformedCommand));
        let cmd = command(1, 2, Request::Noop(Default::default()));
        assert_eq!(decode_command(&encode_command(&cmd)), Ok(cmd));
    }
}
