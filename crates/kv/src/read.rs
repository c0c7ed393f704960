//! Range reads with etcd's full semantics, on top of `MvccStore::range` (or a write
//! transaction's range, for the reads inside a txn).
//!
//! Rules this module keeps (etcd's `etcdserver/apply` Range):
//! - `key` must not be empty; `range_end` follows the etcd conventions (empty = the single
//!   key, `"\0"` = every key from `key` on, else `[key, range_end)`).
//! - `revision <= 0` reads the newest revision; below the compacted revision is
//!   "required revision has been compacted", above the current one "required revision is a
//!   future revision". The header revision is always the store's current revision.
//! - With no sort and no revision filter, the store stops collecting at `limit`. Otherwise
//!   every key is collected, the filters (`min/max_mod_revision`, `min/max_create_revision`,
//!   each ignored when 0) drop keys, the sort runs, and then `limit` cuts.
//! - Sorting: a target other than KEY with order NONE sorts ascending; KEY ascending is the
//!   store's order already. Ties keep key order (etcd's sort is not stable; ours is, which is
//!   one of the orders etcd may give).
//! - `more` is true when `limit` (> 0) cut keys off; `count` is the number of keys in the
//!   range at the read revision, unaffected by `limit` and the filters; `count_only` returns
//!   no keys (and `more` false); `keys_only` leaves values empty. `serializable` does not
//!   matter here: it chose how the caller got to this read.

use quorumkv_etcd_proto::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseHeader,
    range_request::{SortOrder, SortTarget},
};
use quorumkv_etcd_proto::mvccpb;
use quorumkv_storage::mvcc::{
    Event, EventKind, KeyValue, MvccError, MvccStore, RangeOptions, RangeResult,
};

use crate::error::{ApplyError, EtcdError};

/// Serves a range request from `store` (not through the log: call it once the read is known
/// to be safe, after ReadIndex or under a lease).
pub fn range<S: MvccStore + ?Sized>(
    store: &S,
    req: &RangeRequest,
) -> Result<RangeResponse, ApplyError> {
    range_with(req, |key, end, opts| store.range(key, end, opts))
}

/// Range semantics over any source of `MvccStore::range`-style results.
pub(crate) fn range_with<F>(req: &RangeRequest, fetch: F) -> Result<RangeResponse, ApplyError>
where
    F: FnOnce(&[u8], &[u8], &RangeOptions) -> Result<RangeResult, MvccError>,
{
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey.into());
    }
    let order = effective_order(req);
    let filtered = order != SortOrder::None
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = u64::try_from(req.limit).unwrap_or(0);
    let opts = RangeOptions {
        revision: req.revision,
        limit: if filtered { 0 } else { limit },
        count_only: req.count_only,
        keys_only: req.keys_only,
    };
    let rr = fetch(&req.key, &req.range_end, &opts)?;
    let mut kvs = rr.kvs;
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    if order != SortOrder::None {
        sort_kvs(&mut kvs, target_of(req), order == SortOrder::Descend);
    }
    let mut more = rr.more;
    if limit > 0 && kvs.len() as u64 > limit {
        kvs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        more = true;
    }
    Ok(RangeResponse {
        header: Some(header(rr.revision)),
        kvs: kvs.into_iter().map(to_pb_kv).collect(),
        more,
        count: i64::try_from(rr.count).unwrap_or(i64::MAX),
    })
}

fn target_of(req: &RangeRequest) -> SortTarget {
    SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key)
}

/// The sort order etcd actually applies (see the module rules).
fn effective_order(req: &RangeRequest) -> SortOrder {
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    match (target_of(req), order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, o) => o,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, o) => o,
    }
}

fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, descend: bool) {
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    if descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}

/// A response header carrying only a revision (the API layer fills in the rest).
pub(crate) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader { revision, ..ResponseHeader::default() }
}

/// The etcd wire form of a store key-value.
pub fn to_pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// The etcd wire form of a store event (its `prev_kv` included as given).
pub fn to_pb_event(ev: Event) -> mvccpb::Event {
    let kind = match ev.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(to_pb_kv(ev.kv)),
        prev_kv: ev.prev_kv.map(to_pb_kv),
    }
}
