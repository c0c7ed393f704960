//! Robustness and determinism: arbitrary or damaged log entries never panic and never stop
//! the state machine (they fail deterministically and still count as applied), and the same
//! log gives the same answers and the same state on both store backends.

mod common;

use common::*;
use proptest::prelude::*;
use quorumkv_kv::proto::etcdserverpb::{
    CompactionRequest, LeaseGrantRequest, PutRequest, RangeRequest, TxnRequest,
};
use quorumkv_kv::{ApplyError, Request, command, encode_command};
use quorumkv_storage::mvcc::MemStore;

fn check_not_fatal(r: &Result<quorumkv_kv::ApplyOutcome, ApplyError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(e.is_deterministic(), "fatal error on bad input: {e}");
    }
    Ok(())
}

fn request() -> impl Strategy<Value = Request> {
    let key = prop_oneof![Just("a"), Just("b"), Just("c"), Just("")].prop_map(b);
    let key2 = key.clone();
    let key3 = key.clone();
    prop_oneof![
        (key.clone(), any::<u8>(), 0i64..4, any::<bool>()).prop_map(|(k, v, lease, prev_kv)| {
            Request::Put(PutRequest {
                key: k,
                value: vec![v].into(),
                lease,
                prev_kv,
                ..PutRequest::default()
            })
        }),
        key2.prop_map(|k| Request::DeleteRange(
            quorumkv_kv::proto::etcdserverpb::DeleteRangeRequest {
                key: k,
                range_end: b("\0"),
                prev_kv: true,
            }
        )),
        (key3, 0i32..5, 0i32..4, any::<u8>(), any::<bool>()).prop_map(
            |(k, target, result, v, dup)| {
                let c = value_or_version_compare(k, target, result, v);
                let mut success = vec![op_put("x", "1"), op_range("a", "z")];
                if dup {
                    success.push(op_put("x", "2"));
                }
                Request::Txn(TxnRequest {
                    compare: vec![c],
                    success,
                    failure: vec![op_del("a", "c")],
                })
            }
        ),
        (0i64..8)
            .prop_map(|r| Request::Compact(CompactionRequest { revision: r, physical: false })),
        (0i64..4, 0i64..30)
            .prop_map(|(id, ttl)| Request::LeaseGrant(LeaseGrantRequest { ttl, id })),
        (0i64..4).prop_map(revoke),
        proptest::collection::vec(0i64..4, 0..3).prop_map(|ids| expire(&ids)),
        Just(noop()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_count_as_applied(
        entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8)
    ) {
        let mut h = Harness::new(MemStore::new());
        for (i, data) in entries.iter().enumerate() {
            let r = h.apply_bytes(data);
            check_not_fatal(&r)?;
            prop_assert_eq!(h.sm.applied_index(), i as u64 + 1);
        }
    }

    #[test]
    fn damaged_commands_never_panic(
        req in request(),
        session in 0u64..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let mut data = encode_command(&command(session, 1, req));
        for (at, x) in flips {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] ^= x;
            }
        }
        if !data.is_empty() && cut % 3 == 0 {
            data.truncate(cut % data.len());
        }
        let mut h = Harness::new(MemStore::new());
        h.put("a", "1");
        let r = h.apply_bytes(&data);
        check_not_fatal(&r)?;
        prop_assert_eq!(h.sm.applied_index(), 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same log on MemStore and on RedbStore: the same outcome for every entry and the
    /// same final state.
    #[test]
    fn both_backends_apply_a_log_identically(
        log in proptest::collection::vec((request(), 0u64..3, 1u64..4), 1..40)
    ) {
        let dir = TempDir::new("differential");
        let mut mem = Harness::new(MemStore::new());
        let mut disk = Harness::new(open_redb(&dir));
        for (req, session, seq) in log {
            let a = mem.apply_in(session, seq, req.clone());
            let b = disk.apply_in(session, seq, req);
            check_not_fatal(&a)?;
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        let all = RangeRequest { key: b("\0"), range_end: b("\0"), ..RangeRequest::default() };
        prop_assert_eq!(mem.range(all.clone()), disk.range(all));
        prop_assert_eq!(mem.sm.leases(), disk.sm.leases());
        prop_assert_eq!(mem.sm.revision(), disk.sm.revision());
    }
}
