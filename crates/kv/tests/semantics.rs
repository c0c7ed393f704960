//! etcd semantics, table by table, on both store backends: puts and deletes with prev_kv,
//! ranges with every option, txn compares and nesting, compaction, leases, txn limits,
//! exactly-once sessions, restart and snapshot restore.

mod common;

use common::*;
use quorumkv_kv::proto::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, TxnRequest,
    compare::{CompareResult as R, CompareTarget as T, TargetUnion as U},
    range_request::{SortOrder, SortTarget},
    response_op,
};
use quorumkv_kv::{ApplyError, CommandResult, Config, EtcdError, Request, Response};
use quorumkv_storage::mvcc::{EventKind, MvccStore};

fn compact(rev: i64) -> Request {
    Request::Compact(CompactionRequest { revision: rev, physical: false })
}

fn txn_resp(r: Response) -> quorumkv_kv::proto::etcdserverpb::TxnResponse {
    match r {
        Response::Txn(t) => t,
        other => panic!("not a txn response: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

fn put_get_delete<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    assert_eq!(h.sm.revision(), 1, "an empty store is at revision 1");
    assert_eq!(h.put("a", "1"), 2);
    let r = h.run(Request::Put(PutRequest { prev_kv: true, ..put_req("a", "2") })).unwrap();
    let Response::Put(p) = r else { panic!() };
    assert_eq!(p.header.unwrap().revision, 3);
    let prev = p.prev_kv.expect("prev_kv");
    assert_eq!((prev.value.as_ref(), prev.version, prev.mod_revision), (&b"1"[..], 1, 2));
    // Without prev_kv, no prev_kv.
    let Response::Put(p) = h.run(put("a", "3")).unwrap() else { panic!() };
    assert!(p.prev_kv.is_none());

    let got = h.get("a");
    assert_eq!(got.count, 1);
    let kv = &got.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 3));
    assert_eq!(got.header.unwrap().revision, 4);

    let Response::DeleteRange(d) = h.run(del("a", "")).unwrap() else { panic!() };
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value.as_ref(), b"3");
    assert_eq!(d.header.unwrap().revision, 5);
    // Deleting nothing makes no revision.
    let Response::DeleteRange(d) = h.run(del("a", "")).unwrap() else { panic!() };
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 5));
    assert_eq!(h.get("a").count, 0);
    // Re-created: a new create revision, version 1.
    h.put("a", "x");
    let kv = &h.get("a").kvs[0];
    assert_eq!((kv.create_revision, kv.version), (6, 1));

    // ignore_value / ignore_lease.
    let r = h.run(Request::Put(PutRequest {
        key: b("a"),
        ignore_value: true,
        ..PutRequest::default()
    }));
    assert!(r.is_ok());
    assert_eq!(h.get("a").kvs[0].value.as_ref(), b"x");
    let r = h.run(Request::Put(PutRequest {
        key: b("nope"),
        ignore_value: true,
        ..PutRequest::default()
    }));
    assert_eq!(r, Err(EtcdError::KeyNotFound));
    assert_eq!(h.run(put("", "v")), Err(EtcdError::EmptyKey));
    assert_eq!(h.range(range("", "")), Err(EtcdError::EmptyKey));
}
on_both_backends!(put_get_delete_with_prev_kv, put_get_delete);

// ---------------------------------------------------------------------------------------------

fn ranges<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    // rev 2..=6: a=5, b=1, c=4, d=2, e=3 (values chosen to sort differently from keys)
    for (k, v) in [("a", "5"), ("b", "1"), ("c", "4"), ("d", "2"), ("e", "3")] {
        h.put(k, v);
    }
    h.put("c", "44"); // rev 7: c version 2
    h.put("zz", "z"); // rev 8
    let all = |mut r: RangeRequest| {
        r.key = b("\0");
        r.range_end = b("\0");
        r
    };
    // Prefix and from-key.
    assert_eq!(keys(&h.range(range("a", "d")).unwrap()), ["a", "b", "c"]);
    assert_eq!(keys(&h.range(range("d", "\0")).unwrap()), ["d", "e", "zz"]);
    assert_eq!(h.range(all(range("", ""))).unwrap().count, 6);

    // limit: more and count as etcd computes them.
    let r = h.range(RangeRequest { limit: 2, ..range("a", "f") }).unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".to_owned(), "b".to_owned()], true, 5));
    let r = h.range(RangeRequest { limit: 5, ..range("a", "f") }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (5, false, 5));
    let r = h.range(RangeRequest { limit: -3, ..range("a", "f") }).unwrap();
    assert_eq!((r.kvs.len(), r.more), (5, false), "a negative limit is no limit");

    // Historical revision: at rev 4 only a and b and c exist.
    let r = h.range(RangeRequest { revision: 4, ..range("a", "f") }).unwrap();
    assert_eq!((keys(&r), r.count), (vec!["a".into(), "b".into(), "c".into()], 3));
    assert_eq!(r.header.unwrap().revision, 8, "the header carries the current revision");
    assert_eq!(
        h.range(RangeRequest { revision: 9, ..range("a", "") }),
        Err(EtcdError::FutureRevision)
    );

    // Sorting by every target.
    let sorted = |target: SortTarget, order: SortOrder| {
        keys(
            &h.range(RangeRequest {
                sort_target: target as i32,
                sort_order: order as i32,
                ..range("a", "f")
            })
            .unwrap(),
        )
    };
    assert_eq!(sorted(SortTarget::Key, SortOrder::Descend), ["e", "d", "c", "b", "a"]);
    assert_eq!(sorted(SortTarget::Key, SortOrder::Ascend), ["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(SortTarget::Value, SortOrder::Ascend), ["b", "d", "e", "c", "a"]);
    assert_eq!(
        sorted(SortTarget::Value, SortOrder::None),
        ["b", "d", "e", "c", "a"],
        "NONE with a non-key target sorts ascending"
    );
    assert_eq!(sorted(SortTarget::Value, SortOrder::Descend), ["a", "c", "e", "d", "b"]);
    assert_eq!(sorted(SortTarget::Mod, SortOrder::Descend), ["c", "e", "d", "b", "a"]);
    assert_eq!(sorted(SortTarget::Create, SortOrder::Descend), ["e", "d", "c", "b", "a"]);
    // Version: c has 2, the rest 1; ties keep key order.
    assert_eq!(sorted(SortTarget::Version, SortOrder::Descend), ["c", "a", "b", "d", "e"]);
    assert_eq!(sorted(SortTarget::Version, SortOrder::Ascend), ["a", "b", "d", "e", "c"]);

    // Sort then limit: the limit cuts after sorting; count is the whole range.
    let r = h
        .range(RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 2,
            ..range("a", "f")
        })
        .unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".into(), "c".into()], true, 5));

    // keys_only and count_only.
    let r = h.range(RangeRequest { keys_only: true, ..range("a", "c") }).unwrap();
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(r.kvs[0].version, 1, "keys_only keeps the other fields");
    let r = h.range(RangeRequest { count_only: true, limit: 1, ..range("a", "f") }).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));

    // Revision filters: they drop keys but not from count; with limit, more counts after.
    let r = h.range(RangeRequest { min_mod_revision: 5, ..range("a", "f") }).unwrap();
    assert_eq!((keys(&r), r.count), (vec!["c".into(), "d".into(), "e".into()], 5));
    let r = h.range(RangeRequest { max_mod_revision: 4, ..range("a", "f") }).unwrap();
    assert_eq!(keys(&r), ["a", "b"]);
    let r = h
        .range(RangeRequest { min_create_revision: 4, max_create_revision: 5, ..range("a", "f") })
        .unwrap();
    assert_eq!(keys(&r), ["c", "d"]);
    let r = h.range(RangeRequest { min_create_revision: 3, limit: 2, ..range("a", "f") }).unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["b".into(), "c".into()], true, 5));
    let r = h.range(RangeRequest { min_create_revision: 5, limit: 2, ..range("a", "f") }).unwrap();
    assert_eq!((keys(&r), r.more), (vec!["d".into(), "e".into()], false));
}
on_both_backends!(ranges_with_every_option, ranges);

// ---------------------------------------------------------------------------------------------

fn txns<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    h.put("k", "v1"); // rev 2
    h.put("k", "v2"); // rev 3: k version 2, create 2, mod 3
    let lease = h.grant(100, 60).unwrap();
    h.put_lease("l", "x", lease).unwrap(); // rev 4

    // Each target and each result kind; success runs `then`, failure runs `else`.
    let cases = [
        (cmp("k", T::Version, R::Equal, U::Version(2)), true),
        (cmp("k", T::Version, R::Greater, U::Version(2)), false),
        (cmp("k", T::Version, R::Less, U::Version(3)), true),
        (cmp("k", T::Version, R::NotEqual, U::Version(2)), false),
        (cmp("k", T::Create, R::Equal, U::CreateRevision(2)), true),
        (cmp("k", T::Mod, R::Equal, U::ModRevision(3)), true),
        (cmp("k", T::Mod, R::Greater, U::ModRevision(3)), false),
        (cmp("k", T::Value, R::Equal, U::Value(b("v2"))), true),
        (cmp("k", T::Value, R::Less, U::Value(b("v3"))), true),
        (cmp("l", T::Lease, R::Equal, U::Lease(lease)), true),
        (cmp("k", T::Lease, R::Equal, U::Lease(0)), true),
        // A missing key: version/create/mod compare as 0, a value compare always fails.
        (cmp("missing", T::Version, R::Equal, U::Version(0)), true),
        (cmp("missing", T::Create, R::Equal, U::CreateRevision(0)), true),
        (cmp("missing", T::Value, R::Equal, U::Value(b(""))), false),
        (cmp("missing", T::Value, R::NotEqual, U::Value(b("x"))), false),
    ];
    for (c, want) in cases {
        let t = TxnRequest {
            compare: vec![c.clone()],
            success: vec![op_range("k", "")],
            failure: vec![op_range("l", "")],
        };
        let r = txn_resp(h.run(Request::Txn(t)).unwrap());
        assert_eq!(r.succeeded, want, "compare {c:?}");
        let Some(response_op::Response::ResponseRange(rr)) = &r.responses[0].response else {
            panic!()
        };
        assert_eq!(keys(rr), [if want { "k" } else { "l" }]);
        assert_eq!(r.header.unwrap().revision, 4, "a read-only txn makes no revision");
    }

    // Compare over a range: every key must hold.
    h.put("p1", "x"); // rev 5
    h.put("p2", "x"); // rev 6
    let mut c = cmp("p", T::Value, R::Equal, U::Value(b("x")));
    c.range_end = b("q");
    let t = TxnRequest { compare: vec![c.clone()], ..TxnRequest::default() };
    assert!(txn_resp(h.run(Request::Txn(t)).unwrap()).succeeded);
    h.put("p3", "y"); // rev 7
    let t = TxnRequest { compare: vec![c], ..TxnRequest::default() };
    assert!(!txn_resp(h.run(Request::Txn(t)).unwrap()).succeeded);

    // Writes in one revision; reads inside the txn see the writes before them.
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("t1", "a"), op_range("t", "u"), op_put("t2", "b"), op_del("p1", "")],
        failure: vec![],
    };
    let out = h.run_outcome(Request::Txn(t));
    let CommandResult::Applied(Response::Txn(r)) = out.result else { panic!() };
    assert_eq!(out.revision, 8);
    assert_eq!(r.header.unwrap().revision, 8);
    assert_eq!(out.events.len(), 3);
    assert!(out.events.iter().all(|e| e.kv.mod_revision == 8));
    let Some(response_op::Response::ResponseRange(rr)) = &r.responses[1].response else { panic!() };
    assert_eq!(keys(rr), ["t1"]);
    let Some(response_op::Response::ResponsePut(pr)) = &r.responses[0].response else { panic!() };
    assert_eq!(pr.header.unwrap().revision, 8);

    // Nested txn: the inner compare is evaluated against the state before the outer txn.
    let inner = TxnRequest {
        compare: vec![cmp("n", T::Version, R::Equal, U::Version(0))],
        success: vec![op_put("inner", "then")],
        failure: vec![op_put("inner", "else")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![op_put("n", "1"), op_txn(inner)],
        failure: vec![],
    };
    let r = txn_resp(h.run(Request::Txn(outer)).unwrap());
    assert!(r.succeeded);
    let Some(response_op::Response::ResponseTxn(nested)) = &r.responses[1].response else {
        panic!()
    };
    assert!(nested.succeeded);
    assert_eq!(nested.header.unwrap().revision, 9);
    assert_eq!(values(&h.get("inner")), ["then"]);

    // A failing put anywhere on the chosen path fails the whole txn, changing nothing.
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("ok", "1"),
            op_txn(TxnRequest {
                compare: vec![],
                success: vec![quorumkv_kv::proto::etcdserverpb::RequestOp {
                    request: Some(
                        quorumkv_kv::proto::etcdserverpb::request_op::Request::RequestPut(
                            PutRequest { lease: 999, ..put_req("bad", "1") },
                        ),
                    ),
                }],
                failure: vec![],
            }),
        ],
        failure: vec![],
    };
    assert_eq!(h.run(Request::Txn(t)), Err(EtcdError::LeaseNotFound));
    assert_eq!(h.get("ok").count, 0);
    assert_eq!(h.sm.revision(), 9);
    // A range on the path at a future revision fails the txn before anything runs.
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("ok", "1"),
            quorumkv_kv::proto::etcdserverpb::RequestOp {
                request: Some(quorumkv_kv::proto::etcdserverpb::request_op::Request::RequestRange(
                    RangeRequest { revision: 10, ..range("ok", "") },
                )),
            },
        ],
        failure: vec![],
    };
    assert_eq!(h.run(Request::Txn(t)), Err(EtcdError::FutureRevision));
    assert_eq!(h.get("ok").count, 0);
}
on_both_backends!(txn_compares_and_nesting, txns);

// ---------------------------------------------------------------------------------------------

fn txn_limits<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::with_config(mk(), Config { max_txn_ops: 3, ..Config::default() });
    let t =
        |ops: Vec<_>| Request::Txn(TxnRequest { compare: vec![], success: ops, failure: vec![] });
    assert_eq!(h.run(t(vec![op_put("a", "1"), op_put("a", "2")])), Err(EtcdError::DuplicateKey));
    assert_eq!(h.run(t(vec![op_put("b", "1"), op_del("a", "c")])), Err(EtcdError::DuplicateKey));
    assert_eq!(
        h.run(t(vec![op_put("a", "1"), op_put("b", "1"), op_put("c", "1"), op_put("d", "1")])),
        Err(EtcdError::TooManyOps)
    );
    assert!(h.run(t(vec![op_put("a", "1"), op_put("b", "1"), op_put("c", "1")])).is_ok());
    assert_eq!(h.sm.revision(), 2, "only the valid txn made a revision");
    // Every rejected entry still moved the applied index.
    assert_eq!(h.sm.applied_index(), 4);
}
on_both_backends!(txn_duplicate_keys_and_op_limit, txn_limits);

// ---------------------------------------------------------------------------------------------

fn compaction<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("a", "3"); // 4
    let Response::Compact(c) = h.run(compact(3)).unwrap() else { panic!() };
    assert_eq!(c.header.unwrap().revision, 4);
    assert_eq!(h.range(RangeRequest { revision: 2, ..range("a", "") }), Err(EtcdError::Compacted));
    assert_eq!(values(&h.range(RangeRequest { revision: 3, ..range("a", "") }).unwrap()), ["2"]);
    assert_eq!(h.run(compact(3)), Err(EtcdError::Compacted));
    assert_eq!(h.run(compact(2)), Err(EtcdError::Compacted));
    assert_eq!(h.run(compact(5)), Err(EtcdError::FutureRevision));
    assert!(h.run(compact(4)).is_ok(), "compacting at the current revision is allowed");
    assert_eq!(h.sm.store().compacted_revision(), 4);
    // A txn range below the compacted revision fails the txn.
    let t = TxnRequest {
        compare: vec![],
        success: vec![quorumkv_kv::proto::etcdserverpb::RequestOp {
            request: Some(quorumkv_kv::proto::etcdserverpb::request_op::Request::RequestRange(
                RangeRequest { revision: 3, ..range("a", "") },
            )),
        }],
        failure: vec![],
    };
    assert_eq!(h.run(Request::Txn(t)), Err(EtcdError::Compacted));
}
on_both_backends!(compact_then_read_old_revision, compaction);

// ---------------------------------------------------------------------------------------------

fn leases<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::with_config(mk(), Config { lease_ttl_min_secs: 5, ..Config::default() });
    // Auto-assigned ids, the minimum TTL, explicit ids, duplicates, too-large TTLs.
    let Response::LeaseGrant(g) = h
        .run(Request::LeaseGrant(quorumkv_kv::proto::etcdserverpb::LeaseGrantRequest {
            ttl: 1,
            id: 0,
        }))
        .unwrap()
    else {
        panic!()
    };
    assert!(g.id > 0);
    assert_eq!(g.ttl, 5, "raised to the minimum");
    let auto = g.id;
    assert_eq!(h.grant(7, 30), Ok(7));
    assert_eq!(h.grant(7, 30), Err(EtcdError::LeaseExists));
    assert_eq!(h.grant(8, quorumkv_kv::MAX_LEASE_TTL_SECS + 1), Err(EtcdError::LeaseTtlTooLarge));
    assert_eq!(h.grant(9, 30), Ok(9));
    assert_eq!(h.sm.leases(), {
        let mut l = vec![(7, 30), (9, 30), (auto, 5)];
        l.sort();
        l
    });

    // Attach, move, detach.
    assert_eq!(h.put_lease("x", "1", 12345), Err(EtcdError::LeaseNotFound));
    h.put_lease("a", "1", 7).unwrap();
    h.put_lease("b", "1", 7).unwrap();
    h.put_lease("c", "1", 9).unwrap();
    h.put_lease("d", "1", 7).unwrap();
    h.put_lease("d", "2", 9).unwrap(); // moves d from 7 to 9
    h.put("b", "plain"); // detaches b
    assert_eq!(h.get("b").kvs[0].lease, 0);
    let ttl = h.sm.lease_time_to_live(7, true, 12);
    assert_eq!((ttl.ttl, ttl.granted_ttl, ttl.keys.clone()), (12, 30, vec![b("a")]));
    let ttl = h.sm.lease_time_to_live(9, false, 99);
    assert_eq!((ttl.ttl, ttl.keys.len()), (30, 0), "remaining is capped at the TTL");
    assert_eq!(h.sm.lease_time_to_live(4242, true, 1).ttl, -1);
    // ignore_lease keeps the key's lease.
    h.run(Request::Put(PutRequest { ignore_lease: true, ..put_req("c", "new") })).unwrap();
    assert_eq!(h.get("c").kvs[0].lease, 9);

    // Revoke: every key of the lease goes, in one revision.
    let before = h.sm.revision();
    let out = h.run_outcome(revoke(9));
    assert_eq!(out.revision, before + 1);
    assert!(out.events.iter().all(|e| e.kind == EventKind::Delete));
    let mut deleted: Vec<_> = out.events.iter().map(|e| e.kv.key.clone()).collect();
    deleted.sort();
    assert_eq!(deleted, vec![b("c"), b("d")]);
    assert!(out.events.iter().all(|e| e.kv.mod_revision == before + 1));
    assert_eq!(out.lease_changes, vec![quorumkv_kv::LeaseChange::Revoked { id: 9 }]);
    assert_eq!(h.run(revoke(9)), Err(EtcdError::LeaseNotFound));
    assert_eq!(h.put_lease("e", "1", 9), Err(EtcdError::LeaseNotFound));

    // Expire: several leases, all their keys, one revision; unknown ids are skipped.
    h.put_lease("f", "1", auto).unwrap();
    let before = h.sm.revision();
    let out = h.run_outcome(expire(&[7, 555, auto, 7]));
    let CommandResult::Applied(Response::LeaseExpire(e)) = &out.result else { panic!() };
    assert_eq!(e.expired, vec![7, auto]);
    assert_eq!(out.revision, before + 1);
    assert_eq!(out.events.len(), 2);
    assert!(h.sm.leases().is_empty());
    assert_eq!(h.range(range("a", "z")).unwrap().count, 1, "only b (detached) is left");
    // Expiring leases with no keys makes no revision.
    h.grant(20, 10).unwrap();
    let before = h.sm.revision();
    assert_eq!(h.run_outcome(expire(&[20])).revision, before);
}
on_both_backends!(lease_grant_attach_revoke_expire, leases);

// ---------------------------------------------------------------------------------------------

fn exactly_once<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    let first = h.apply_in(42, 1, put("a", "1")).unwrap();
    let CommandResult::Applied(resp) = first.result.clone() else { panic!() };
    assert_eq!(first.revision, 2);
    // The same envelope again (a retry after a lost answer): same answer, no new revision.
    let again = h.apply_in(42, 1, put("a", "1")).unwrap();
    assert_eq!(again.result, CommandResult::Duplicate(resp));
    assert!(again.events.is_empty());
    assert_eq!(h.sm.revision(), 2);
    assert_eq!(h.get("a").kvs[0].version, 1);

    h.apply_in(42, 2, put("a", "2")).unwrap();
    assert_eq!(
        h.apply_in(42, 1, put("a", "1")).unwrap().result,
        CommandResult::Stale { last_seq: 2 }
    );
    assert_eq!(h.sm.revision(), 3);

    // A failed command retried fails the same way and changes nothing.
    assert!(matches!(
        h.apply_in(42, 3, revoke(77)),
        Err(ApplyError::Rejected(EtcdError::LeaseNotFound))
    ));
    h.grant(77, 10).unwrap();
    assert!(matches!(
        h.apply_in(42, 3, revoke(77)),
        Err(ApplyError::Rejected(EtcdError::LeaseNotFound))
    ));
    assert_eq!(h.sm.leases(), vec![(77, 10)]);

    // An unknown session must start at 1.
    assert!(matches!(
        h.apply_in(43, 5, put("b", "1")),
        Err(ApplyError::Rejected(EtcdError::SessionExpired))
    ));
    assert_eq!(h.get("b").count, 0);

    // Garbage and empty commands fail deterministically and still move the applied index.
    let at = h.sm.applied_index();
    assert!(matches!(
        h.apply_bytes(&[0xff, 0x01]),
        Err(ApplyError::Rejected(EtcdError::MalformedCommand))
    ));
    assert!(matches!(
        h.apply_bytes(&quorumkv_kv::encode_command(&quorumkv_kv::Command {
            session: 0,
            seq: 0,
            request: None
        })),
        Err(ApplyError::Rejected(EtcdError::MalformedCommand))
    ));
    let r = h.run(noop()).unwrap();
    assert_eq!(r.revision(), h.sm.revision());
    assert_eq!(h.sm.applied_index(), at + 3);
    assert_eq!(h.sm.store().applied_index(), at + 3);

    // Out-of-order application is a fatal caller error.
    let applied = h.sm.applied_index();
    assert!(matches!(h.sm.apply(applied, &[]), Err(ApplyError::OutOfOrder { .. })));
}
on_both_backends!(exactly_once_sessions, exactly_once);

// ---------------------------------------------------------------------------------------------

fn eviction<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let config = Config { max_sessions: 3, session_idle_entries: 10, ..Config::default() };
    let mut h = Harness::with_config(mk(), config);
    for s in 1..=4u64 {
        h.apply_in(s, 1, put(&format!("k{s}"), "v")).unwrap();
    }
    assert_eq!(h.sm.session_count(), 3, "the least recently used session went");
    assert_eq!(h.sm.session(1), None);
    // Its retry can no longer be recognised: refused rather than run twice.
    assert!(h.apply_in(1, 2, put("k1", "again")).is_err());
    // Idle sessions go after `session_idle_entries` entries.
    for _ in 0..11 {
        h.run(noop()).unwrap();
    }
    assert_eq!(h.sm.session_count(), 0);
}
on_both_backends!(session_table_is_bounded, eviction);

// ---------------------------------------------------------------------------------------------

/// Reopening over the same store (a restart) brings back leases and sessions.
#[test]
fn redb_restart_keeps_leases_and_sessions() {
    let dir = TempDir::new("restart");
    {
        let mut h = Harness::new(open_redb(&dir));
        h.grant(5, 60).unwrap();
        h.put_lease("a", "1", 5).unwrap();
        h.apply_in(9, 1, put("s", "1")).unwrap();
        h.sm.store().sync().unwrap();
    }
    let mut h = Harness::new(open_redb(&dir));
    assert_eq!(h.index, 4);
    assert_eq!(h.sm.leases(), vec![(5, 60)]);
    assert_eq!(h.sm.lease_keys(5), Some(vec![b("a")]));
    assert!(matches!(h.apply_in(9, 1, put("s", "1")).unwrap().result, CommandResult::Duplicate(_)));
    let out = h.run_outcome(revoke(5));
    assert_eq!(out.events.len(), 1, "the rebuilt attachment deletes the key");
}

/// A state machine restored from a snapshot answers the same ranges and dedups the same
/// sessions.
fn snapshot_restore<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    h.grant(3, 60).unwrap();
    for i in 0..20 {
        h.put_lease(&format!("k{i:02}"), &format!("v{i}"), if i % 3 == 0 { 3 } else { 0 }).unwrap();
    }
    h.apply_in(11, 1, put("sess", "1")).unwrap();
    h.run(del("k05", "")).unwrap();
    h.run(compact(5)).unwrap();
    let snap = quorumkv_storage::snapshot::snapshot_of(&**h.sm.store(), |index| {
        quorumkv_storage::snapshot::SnapshotMeta { index, term: 1, ..Default::default() }
    })
    .unwrap();
    let mut bytes = Vec::new();
    let mut snap = snap;
    snap.write_all_to(&mut bytes).unwrap();

    let mut other = Harness::new(mk());
    other.put("junk", "x");
    let mut decoder = quorumkv_storage::snapshot::SnapshotDecoder::new(&bytes[..]).unwrap();
    other.sm.install_snapshot(&mut decoder).unwrap();
    other.index = other.sm.applied_index() + 1;
    assert_eq!(other.sm.applied_index(), h.sm.applied_index());
    for req in
        [range("\0", "\0"), RangeRequest { revision: 6, ..range("k", "l") }, range("junk", "")]
    {
        assert_eq!(other.range(req.clone()), h.range(req));
    }
    assert_eq!(other.sm.leases(), h.sm.leases());
    assert_eq!(other.sm.lease_keys(3), h.sm.lease_keys(3));
    let a = h.apply_in(11, 1, put("sess", "1")).unwrap();
    let b = other.apply_in(11, 1, put("sess", "1")).unwrap();
    assert!(matches!(a.result, CommandResult::Duplicate(_)));
    assert_eq!(a.result, b.result);
    // And both go on identically.
    let a = h.run_outcome(revoke(3));
    let b = other.run_outcome(revoke(3));
    assert_eq!((a.revision, a.events), (b.revision, b.events));
}
on_both_backends!(snapshot_restore_answers_the_same, snapshot_restore);

/// A store failure is fatal: the state machine refuses every later entry, and after a
/// restart nothing of the failed entry is visible.
#[test]
fn a_store_failure_is_fatal_until_restart() {
    use quorumkv_storage::disk::SimDisk;
    use quorumkv_storage::mvcc::{CommitDurability, RedbOptions, RedbStore};
    let disk = std::sync::Arc::new(SimDisk::new(7));
    let opts = RedbOptions { durability: CommitDurability::Immediate, cache_bytes: 1 << 20 };
    let store = RedbStore::open(disk.clone(), std::path::Path::new("/state.redb"), opts).unwrap();
    let mut h = Harness::new(store);
    h.put("a", "1");
    disk.fail_next_sync();
    let r = h.apply_in(0, 0, put("a", "2"));
    assert!(matches!(r, Err(ApplyError::Store(_))), "got {r:?}");
    assert!(!r.unwrap_err().is_deterministic());
    assert!(matches!(h.apply_in(0, 0, put("b", "1")), Err(ApplyError::Poisoned)));
    // The node restarts: the store reopens at its last commit, the entry is replayed.
    let applied = h.sm.applied_index();
    drop(h);
    let store = RedbStore::open(disk, std::path::Path::new("/state.redb"), opts).unwrap();
    let mut h = Harness::new(store);
    assert_eq!(h.sm.applied_index(), applied);
    assert_eq!(values(&h.get("a")), ["1"]);
    h.put("a", "2");
    assert_eq!(values(&h.get("a")), ["2"]);
}
