//! Shared helpers of the state-machine tests: a harness that numbers log entries, request
//! builders, and the two store backends (in memory, and redb in a temp directory).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quorumkv_kv::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, compare, request_op,
};
use quorumkv_kv::proto::internal::{LeaseExpire, Noop};
use quorumkv_kv::{
    ApplyError, ApplyOutcome, CommandResult, Config, EtcdError, Request, Response, StateMachine,
    command, encode_command,
};
use quorumkv_storage::disk::RealDisk;
use quorumkv_storage::mvcc::{CommitDurability, MemStore, MvccStore, RedbOptions, RedbStore};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qkv-kv-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn redb_options() -> RedbOptions {
    RedbOptions {
        durability: CommitDurability::Deferred { sync_every_commits: 0 },
        cache_bytes: 4 << 20,
    }
}

pub fn open_redb(dir: &TempDir) -> RedbStore {
    RedbStore::open(Arc::new(RealDisk::new()), &dir.0.join("state.redb"), redb_options())
        .expect("open redb store")
}

/// A state machine and the next log index to apply.
pub struct Harness<S: MvccStore> {
    pub sm: StateMachine<S>,
    pub index: u64,
}

impl<S: MvccStore> Harness<S> {
    pub fn new(store: S) -> Self {
        Self::with_config(store, Config::default())
    }

    pub fn with_config(store: S, config: Config) -> Self {
        let sm = StateMachine::open(Arc::new(store), config).expect("open state machine");
        let index = sm.applied_index() + 1;
        Self { sm, index }
    }

    /// Applies raw bytes as the next entry.
    pub fn apply_bytes(&mut self, data: &[u8]) -> Result<ApplyOutcome, ApplyError> {
        let i = self.index;
        self.index += 1;
        self.sm.apply(i, data)
    }

    /// Applies a command of `session`/`seq` as the next entry.
    pub fn apply_in(
        &mut self,
        session: u64,
        seq: u64,
        request: Request,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.apply_bytes(&encode_command(&command(session, seq, request)))
    }

    /// Applies a session-less command; returns its response or its etcd error (panics on a
    /// fatal error).
    pub fn run(&mut self, request: Request) -> Result<Response, EtcdError> {
        match self.apply_in(0, 0, request) {
            Ok(ApplyOutcome { result: CommandResult::Applied(r), .. }) => Ok(r),
            Ok(other) => panic!("unexpected outcome {other:?}"),
            Err(ApplyError::Rejected(e)) => Err(e),
            Err(e) => panic!("fatal: {e}"),
        }
    }

    /// Like `run`, also returning the outcome's events.
    pub fn run_outcome(&mut self, request: Request) -> ApplyOutcome {
        self.apply_in(0, 0, request).expect("command applies")
    }

    pub fn put(&mut self, k: &str, v: &str) -> i64 {
        self.run(put(k, v)).expect("put").revision()
    }

    pub fn put_lease(&mut self, k: &str, v: &str, lease: i64) -> Result<Response, EtcdError> {
        self.run(Request::Put(PutRequest { lease, ..put_req(k, v) }))
    }

    pub fn get(&self, k: &str) -> RangeResponse {
        self.sm.range(&range(k, "")).expect("range")
    }

    pub fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.sm.range(&req).map_err(|e| e.etcd().expect("deterministic read error"))
    }

    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<i64, EtcdError> {
        match self.run(Request::LeaseGrant(LeaseGrantRequest { ttl, id }))? {
            Response::LeaseGrant(g) => Ok(g.id),
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

pub fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: b(k), value: b(v), ..PutRequest::default() }
}

pub fn put(k: &str, v: &str) -> Request {
    Request::Put(put_req(k, v))
}

pub fn del(k: &str, end: &str) -> Request {
    Request::DeleteRange(DeleteRangeRequest { key: b(k), range_end: b(end), prev_kv: true })
}

pub fn range(k: &str, end: &str) -> RangeRequest {
    RangeRequest { key: b(k), range_end: b(end), ..RangeRequest::default() }
}

pub fn revoke(id: i64) -> Request {
    Request::LeaseRevoke(LeaseRevokeRequest { id })
}

pub fn expire(ids: &[i64]) -> Request {
    Request::LeaseExpire(LeaseExpire { ids: ids.to_vec() })
}

pub fn noop() -> Request {
    Request::Noop(Noop {})
}

/// A compare of `key` for the random-command generators: on the value (one byte `v`) when
/// `target` says so, on the version (`v % 3`) otherwise; `target` and `result` may be out of
/// etcd's range, which the state machine must refuse cleanly.
pub fn value_or_version_compare(key: Bytes, target: i32, result: i32, v: u8) -> Compare {
    Compare {
        result,
        target,
        key,
        target_union: Some(if target == compare::CompareTarget::Value as i32 {
            compare::TargetUnion::Value(vec![v].into())
        } else {
            compare::TargetUnion::Version(i64::from(v % 3))
        }),
        range_end: Bytes::new(),
    }
}

pub fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(put_req(k, v))) }
}

pub fn op_range(k: &str, end: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(range(k, end))) }
}

pub fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: b(k),
            range_end: b(end),
            prev_kv: false,
        })),
    }
}

pub fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
}

pub fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    union: compare::TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        target_union: Some(union),
        range_end: Bytes::new(),
    }
}

pub fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

pub fn values(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect()
}

/// Runs `$body` (a fn taking a `Harness<S>` built by a closure) on both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[test]
            fn mem() {
                $body(|| quorumkv_storage::mvcc::MemStore::new());
            }

            #[test]
            fn redb() {
                let dir = common::TempDir::new(stringify!($name));
                $body(common::redb_maker(&dir));
            }
        }
    };
}

/// Opens a fresh redb store in its own subfolder of `dir` on every call.
pub fn redb_maker(dir: &TempDir) -> impl FnMut() -> quorumkv_storage::mvcc::RedbStore + '_ {
    let mut n = 0;
    move || {
        n += 1;
        let sub = dir.0.join(format!("s{n}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        quorumkv_storage::mvcc::RedbStore::open(
            std::sync::Arc::new(quorumkv_storage::disk::RealDisk::new()),
            &sub.join("state.redb"),
            redb_options(),
        )
        .expect("open redb")
    }
}

pub fn mem() -> MemStore {
    MemStore::new()
}
