//! Runs one request inside one store write transaction, with etcd's semantics.
//!
//! Rules this module keeps (etcd's `etcdserver/apply` Put, DeleteRange, Txn, Compaction and
//! the lessor's Grant/Revoke):
//! - Nothing here touches the in-memory tables: lease attachments, grants and revokes are
//!   returned as [`Effect`]s, applied by the caller only once the request has succeeded. A
//!   failed request leaves no trace but the dropped store transaction.
//! - Txn: every compare, nested ones included, is evaluated first against the state before
//!   the txn (etcd's `compareToPath`); then, along the chosen path, puts are checked (lease
//!   exists; `ignore_value`/`ignore_lease` need the key) and range revisions are checked
//!   (compacted / future, against the revision before the txn); only then do the operations
//!   run, in order, each seeing the ones before it.
//! - Compare (etcd's `applyCompare`): over every key in the range, all must hold; with no
//!   key, a VALUE compare fails and the others compare against a zero key-value; a
//!   target_union of another kind than the target counts as 0 / empty; an unknown result
//!   kind holds.
//! - Header revisions: top-level and nested txn responses carry the revision after the
//!   command; a put inside a txn the txn's new revision; a delete the new revision once
//!   anything changed, else the old; a range the revision it read at.

use std::cmp::Ordering;

use bytes::Bytes;
use quorumkv_core::LogIndex;
use quorumkv_etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
};
use quorumkv_etcd_proto::internal::{LeaseExpireResponse, NoopResponse};
use quorumkv_storage::mvcc::{KeyValue, MvccError, MvccTxn, RangeOptions, SINGLE_KEY};

use crate::command::{Limits, Request, Response, validate_request};
use crate::error::{ApplyError, EtcdError, etcd_of_mvcc};
use crate::lease::{LeaseTable, MAX_LEASE_TTL_SECS};
use crate::read::{header, range_with, to_pb_kv};

/// A change to the in-memory lease table that a successful request makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Attach a key to a lease.
    Attach(i64, Bytes),
    /// Detach a key from a lease.
    Detach(i64, Bytes),
    /// Grant a lease with a TTL in seconds.
    Grant(i64, i64),
    /// Remove a lease (its keys were deleted in the same request).
    Revoke(i64),
}

/// Why a request failed: for the client, or fatal.
#[derive(Debug)]
pub(crate) enum ExecError {
    Etcd(EtcdError),
    Fatal(MvccError),
}

impl From<MvccError> for ExecError {
    fn from(e: MvccError) -> Self {
        match etcd_of_mvcc(&e) {
            Some(etcd) => ExecError::Etcd(etcd),
            None => ExecError::Fatal(e),
        }
    }
}

impl From<EtcdError> for ExecError {
    fn from(e: EtcdError) -> Self {
        ExecError::Etcd(e)
    }
}

impl From<ApplyError> for ExecError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Rejected(etcd) => ExecError::Etcd(etcd),
            ApplyError::Store(m) => ExecError::Fatal(m),
            other => ExecError::Fatal(MvccError::Corrupt(other.to_string())),
        }
    }
}

/// Settings the executor needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExecConfig {
    pub limits: Limits,
    pub lease_ttl_min_secs: i64,
}

/// One request's run over one write transaction.
pub(crate) struct Exec<'a, T: MvccTxn> {
    txn: &'a mut T,
    leases: &'a LeaseTable,
    config: ExecConfig,
    /// Store revision before the transaction.
    base_revision: i64,
    /// Store compacted revision before the transaction.
    compacted: i64,
    /// True once any key changed.
    pub changed: bool,
    /// Lease table changes to apply on success.
    pub effects: Vec<Effect>,
}

impl<'a, T: MvccTxn> Exec<'a, T> {
    pub(crate) fn new(
        txn: &'a mut T,
        leases: &'a LeaseTable,
        config: ExecConfig,
        compacted: i64,
    ) -> Self {
        let base_revision = txn.revision() - 1;
        Self { txn, leases, config, base_revision, compacted, changed: false, effects: Vec::new() }
    }

    /// The revision the store will be at after the transaction commits.
    pub(crate) fn revision_after(&self) -> i64 {
        if self.changed { self.base_revision + 1 } else { self.base_revision }
    }

    /// Runs `request`; on success the response's revisions are final.
    pub(crate) fn run(
        &mut self,
        index: LogIndex,
        request: &Request,
    ) -> Result<Response, ExecError> {
        validate_request(request, &self.config.limits)?;
        let mut response = match request {
            Request::Put(p) => {
                self.check_put(p)?;
                Response::Put(self.put(p)?)
            }
            Request::DeleteRange(d) => Response::DeleteRange(self.delete_range(d)?),
            Request::Txn(t) => Response::Txn(self.txn(t)?),
            Request::Compact(c) => Response::Compact(self.compact(c)?),
            Request::LeaseGrant(g) => Response::LeaseGrant(self.lease_grant(index, g)?),
            Request::LeaseRevoke(r) => {
                if !self.leases.contains(r.id) {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                self.remove_leases(&[r.id])?;
                Response::LeaseRevoke(LeaseRevokeResponse { header: None })
            }
            Request::LeaseExpire(e) => {
                let mut ids: Vec<i64> = Vec::new();
                for id in &e.ids {
                    if self.leases.contains(*id) && !ids.contains(id) {
                        ids.push(*id);
                    }
                }
                self.remove_leases(&ids)?;
                Response::LeaseExpire(LeaseExpireResponse { header: None, expired: ids })
            }
            Request::Noop(_) => Response::Noop(NoopResponse { header: None }),
        };
        let rev = self.revision_after();
        match &mut response {
            Response::Put(r) => r.header = Some(header(rev)),
            Response::DeleteRange(r) => r.header = Some(header(rev)),
            Response::Txn(r) => set_txn_revisions(r, rev),
            Response::Compact(r) => r.header = Some(header(rev)),
            Response::LeaseGrant(r) => r.header = Some(header(rev)),
            Response::LeaseRevoke(r) => r.header = Some(header(rev)),
            Response::LeaseExpire(r) => r.header = Some(header(rev)),
            Response::Noop(r) => r.header = Some(header(rev)),
        }
        Ok(response)
    }

    // --- single operations -----------------------------------------------------------------

    /// The checks etcd makes on a put before any operation of the request runs.
    fn check_put(&self, p: &PutRequest) -> Result<(), ExecError> {
        if (p.ignore_value || p.ignore_lease) && self.txn.get(&p.key)?.is_none() {
            return Err(EtcdError::KeyNotFound.into());
        }
        if p.lease != 0 && !self.leases.contains(p.lease) {
            return Err(EtcdError::LeaseNotFound.into());
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, ExecError> {
        let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.txn.get(&p.key)?
        } else {
            None
        };
        let (value, lease) = match &prev {
            Some(kv) => (
                if p.ignore_value { kv.value.clone() } else { p.value.clone() },
                if p.ignore_lease { kv.lease } else { p.lease },
            ),
            None if p.ignore_value || p.ignore_lease => {
                return Err(EtcdError::KeyNotFound.into());
            }
            None => (p.value.clone(), p.lease),
        };
        let replaced = self.txn.put(&p.key, &value, lease)?;
        self.changed = true;
        if let Some(old) = replaced
            && old.lease != 0
        {
            self.effects.push(Effect::Detach(old.lease, p.key.clone()));
        }
        if lease != 0 {
            self.effects.push(Effect::Attach(lease, p.key.clone()));
        }
        Ok(PutResponse {
            header: Some(header(self.base_revision + 1)),
            // `prev` is the version `put` replaced: read in this transaction just before.
            prev_kv: if p.prev_kv { prev.map(to_pb_kv) } else { None },
        })
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ExecError> {
        let deleted = self.txn.delete_range(&d.key, &d.range_end)?;
        if !deleted.is_empty() {
            self.changed = true;
        }
        for kv in &deleted {
            if kv.lease != 0 {
                self.effects.push(Effect::Detach(kv.lease, kv.key.clone()));
            }
        }
        Ok(DeleteRangeResponse {
            header: Some(header(self.revision_after())),
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv { deleted.into_iter().map(to_pb_kv).collect() } else { vec![] },
        })
    }

    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, ExecError> {
        self.txn.compact(c.revision)?;
        Ok(CompactionResponse { header: None })
    }

    fn lease_grant(
        &mut self,
        index: LogIndex,
        g: &LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ExecError> {
        if g.ttl > MAX_LEASE_TTL_SECS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let ttl = g.ttl.max(self.config.lease_ttl_min_secs);
        let id = if g.id == 0 {
            auto_lease_id(index, |id| self.leases.contains(id))
        } else if self.leases.contains(g.id) {
            return Err(EtcdError::LeaseExists.into());
        } else {
            g.id
        };
        self.effects.push(Effect::Grant(id, ttl));
        Ok(LeaseGrantResponse { header: None, id, ttl, error: String::new() })
    }

    /// Deletes every key of the leases, all in this one revision, and drops the leases.
    fn remove_leases(&mut self, ids: &[i64]) -> Result<(), ExecError> {
        for &id in ids {
            let Some(lease) = self.leases.get(id) else {
                continue;
            };
            for key in &lease.keys {
                if !self.txn.delete_range(key, SINGLE_KEY)?.is_empty() {
                    self.changed = true;
                }
            }
            self.effects.push(Effect::Revoke(id));
        }
        Ok(())
    }

    // --- txn ---------------------------------------------------------------------------------

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, ExecError> {
        let mut path = Vec::new();
        self.compare_to_path(t, &mut path)?;
        let mut cursor = 0;
        self.check_path(t, &path, &mut cursor)?;
        let mut cursor = 0;
        self.run_txn(t, &path, &mut cursor)
    }

    /// Evaluates every compare on the path, in pre-order, before anything runs.
    fn compare_to_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), ExecError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.compare_to_path(nested, path)?;
            }
        }
        Ok(())
    }

    fn check_path(
        &self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<(), ExecError> {
        let ok = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_path(nested, path, cursor)?;
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestRange(r)) if r.revision > 0 => {
                    if r.revision > self.base_revision {
                        return Err(EtcdError::FutureRevision.into());
                    }
                    if r.revision < self.compacted {
                        return Err(EtcdError::Compacted.into());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn run_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, ExecError> {
        let succeeded = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops: &[RequestOp] = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let txn = &*self.txn;
                    let resp = range_with(r, |k, e, o| txn.range(k, e, o))?;
                    response_op::Response::ResponseRange(resp)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    response_op::Response::ResponseTxn(self.run_txn(nested, path, cursor)?)
                }
                None => return Err(EtcdError::KeyNotFound.into()),
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: None, succeeded, responses })
    }

    fn compare(&self, c: &Compare) -> Result<bool, ExecError> {
        let rr = self.txn.range(&c.key, &c.range_end, &RangeOptions::default())?;
        let target = CompareTarget::try_from(c.target).ok();
        if rr.kvs.is_empty() {
            if target == Some(CompareTarget::Value) {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        Ok(rr.kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }
}

fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    let int = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let ord = match target {
        Some(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        Some(CompareTarget::Create) => int(
            match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => Some(v),
                _ => None,
            },
            kv.create_revision,
        ),
        Some(CompareTarget::Mod) => int(
            match c.target_union {
                Some(TargetUnion::ModRevision(v)) => Some(v),
                _ => None,
            },
            kv.mod_revision,
        ),
        Some(CompareTarget::Version) => int(
            match c.target_union {
                Some(TargetUnion::Version(v)) => Some(v),
                _ => None,
            },
            kv.version,
        ),
        Some(CompareTarget::Lease) => int(
            match c.target_union {
                Some(TargetUnion::Lease(v)) => Some(v),
                _ => None,
            },
            kv.lease,
        ),
        None => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Sets the revision of a txn response and of every nested txn response.
fn set_txn_revisions(r: &mut TxnResponse, rev: i64) {
    r.header = Some(header(rev));
    for op in &mut r.responses {
        if let Some(response_op::Response::ResponseTxn(nested)) = &mut op.response {
            set_txn_revisions(nested, rev);
        }
    }
}

/// The id a lease granted with id 0 gets at log index `index`: a mix of the index, made
/// positive and non-zero, moved up past ids in use. Every replica computes the same.
pub(crate) fn auto_lease_id(index: LogIndex, in_use: impl Fn(i64) -> bool) -> i64 {
    // splitmix64 finaliser: consecutive indexes give far-apart ids.
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut id = (z & (i64::MAX as u64)) as i64;
    loop {
        if id != 0 && !in_use(id) {
            return id;
        }
        id = if id == i64::MAX { 1 } else { id + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_lease_ids_are_positive_distinct_and_skip_used_ones() {
        let a = auto_lease_id(1, |_| false);
        let b = auto_lease_id(2, |_| false);
        assert!(a > 0 && b > 0 && a != b);
        let c = auto_lease_id(1, |id| id == a);
        assert_eq!(c, a + 1);
    }

    #[test]
    fn compare_semantics_follow_etcd() {
        let kv = KeyValue { version: 3, value: Bytes::from_static(b"m"), ..KeyValue::default() };
        let cmp = |target: CompareTarget, result: CompareResult, tu: Option<TargetUnion>| Compare {
            result: result as i32,
            target: target as i32,
            key: Bytes::from_static(b"k"),
            target_union: tu,
            range_end: Bytes::new(),
        };
        let c = cmp(CompareTarget::Version, CompareResult::Equal, Some(TargetUnion::Version(3)));
        assert!(compare_kv(&c, Some(CompareTarget::Version), &kv));
        let c = cmp(CompareTarget::Version, CompareResult::Greater, Some(TargetUnion::Version(2)));
        assert!(compare_kv(&c, Some(CompareTarget::Version), &kv));
        // A union of the wrong kind counts as 0.
        let c = cmp(CompareTarget::Version, CompareResult::Greater, Some(TargetUnion::Lease(9)));
        assert!(compare_kv(&c, Some(CompareTarget::Version), &kv));
        let c = cmp(
            CompareTarget::Value,
            CompareResult::Less,
            Some(TargetUnion::Value(Bytes::from_static(b"z"))),
        );
        assert!(compare_kv(&c, Some(CompareTarget::Value), &kv));
        let mut c = cmp(CompareTarget::Value, CompareResult::Equal, None);
        c.result = 42;
        assert!(compare_kv(&c, Some(CompareTarget::Value), &kv), "unknown result holds");
    }
}
