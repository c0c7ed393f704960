//! The conformance suite every [`MvccStore`] backend must pass. Each case is a function generic
//! over the store, taking a factory of empty stores; [`mvcc_conformance_tests!`] turns all of
//! them into `#[test]`s for one backend:
//!
//! ```text
//! quorumkv_storage::mvcc_conformance_tests!(quorumkv_storage::mvcc::MemStore::new());
//! ```
//!
//! Rules the suite keeps:
//! - Cases state etcd's behaviour, not a backend's: a case that only one backend passes is a
//!   bug in that backend or in the case.
//! - Every case is bounded (a few hundred transactions at most) and deterministic: random cases
//!   take a seed and use the project's seeded RNG.
//! - The random case checks the store against a model that keeps every revision's full state,
//!   so reads at every retained revision, watches from every retained revision, compaction and
//!   image/restore are all compared with an answer that is obviously right.
//!
//! [`mvcc_conformance_tests!`]: crate::mvcc_conformance_tests

use std::collections::BTreeMap;

use bytes::Bytes;
use quorumkv_core::rng::Rng;

use super::{
    ALL_FROM_KEY, Event, EventKind, ImageInfo, ImageRecord, ImageSource, KeyValue, MvccError,
    MvccStore, MvccTxn, RangeOptions, Replaced, Revision, SINGLE_KEY, SealResult,
};

/// Declares one `#[test]` per conformance case, each on fresh stores built by `$make`.
#[macro_export]
macro_rules! mvcc_conformance_tests {
    ($make:expr) => {
        $crate::mvcc_conformance_tests!(@cases $make;
            empty_store_starts_at_revision_one,
            puts_set_versions_and_revisions,
            delete_resets_the_key,
            txn_without_changes_keeps_the_revision,
            dropped_txn_changes_nothing,
            txn_reads_see_own_writes,
            range_end_conventions,
            range_limit_count_and_keys_only,
            reads_at_past_revisions,
            deep_history_reads,
            events_since_reports_changes_with_prev_kv,
            compaction_keeps_reads_from_the_compacted_revision,
            meta_commits_with_the_data,
            applied_index_never_goes_backwards,
            empty_key_is_rejected,
            image_restores_an_equal_store,
            restore_rejects_a_bad_image_and_keeps_the_store,
            random_ops_match_the_model,
            seal_gives_each_command_its_own_revision,
            rollback_to_seal_undoes_only_the_current_command,
            undone_changes_leave_no_trace_when_their_revisions_are_reused,
            batched_commands_match_one_txn_per_command,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::mvcc::conformance::$case(&|| $make);
            }
        )*
    };
}

fn kv(key: &[u8], create: i64, modr: i64, version: i64, lease: i64, value: &[u8]) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: create,
        mod_revision: modr,
        version,
        lease,
        value: Bytes::copy_from_slice(value),
    }
}

fn at(revision: i64) -> RangeOptions {
    RangeOptions { revision, ..RangeOptions::default() }
}

fn get<S: MvccStore>(store: &S, key: &[u8], revision: i64) -> Option<KeyValue> {
    let res = store.range(key, SINGLE_KEY, &at(revision)).expect("point read");
    assert!(res.kvs.len() <= 1, "a point read returned several keys");
    res.kvs.into_iter().next()
}

fn keys_of(kvs: &[KeyValue]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| kv.key.as_ref()).collect()
}

/// What a put reports of the version `kv` it replaced.
fn replaced(kv: &KeyValue) -> Replaced {
    Replaced {
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// Commits one transaction of puts at `index`; returns the commit revision.
fn put_all<S: MvccStore>(store: &S, index: u64, puts: &[(&[u8], &[u8])]) -> i64 {
    let mut txn = store.write_txn().expect("write txn");
    for (k, v) in puts {
        txn.put(k, v, 0).expect("put");
    }
    txn.commit(index).expect("commit").revision
}

/// A new store is at revision 1 with nothing in it.
pub fn empty_store_starts_at_revision_one<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    assert_eq!(store.current_revision(), 1);
    assert_eq!(store.compacted_revision(), 0);
    assert_eq!(store.applied_index(), 0);
    let res = store.range(b"\0", ALL_FROM_KEY, &RangeOptions::default()).expect("range");
    assert!(res.kvs.is_empty() && res.count == 0 && !res.more);
    assert_eq!(res.revision, 1);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.key_count, stats.version_count, stats.revision), (0, 0, 1));
    assert_eq!(get(&store, b"a", 1), None);
    assert!(matches!(
        store.range(b"a", SINGLE_KEY, &at(2)),
        Err(MvccError::FutureRevision { requested: 2, current: 1 })
    ));
}

/// Each changing transaction takes the next revision; versions count puts.
pub fn puts_set_versions_and_revisions<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let mut txn = store.write_txn().expect("txn");
    assert_eq!(txn.revision(), 2);
    assert_eq!(txn.put(b"a", b"1", 0).expect("put"), None);
    assert_eq!(txn.put(b"b", b"1", 7).expect("put"), None);
    // A second put of the same key in one transaction sees the first.
    let prev = txn.put(b"a", b"2", 0).expect("put");
    assert_eq!(prev, Some(replaced(&kv(b"a", 2, 2, 1, 0, b"1"))));
    let res = txn.commit(1).expect("commit");
    assert_eq!(res.revision, 2);
    assert_eq!(res.events.len(), 3);
    assert!(res.events.iter().all(|e| e.kind == EventKind::Put));
    assert_eq!(res.events[2].kv, kv(b"a", 2, 2, 2, 0, b"2"));
    assert_eq!(res.events[2].prev_kv, Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.applied_index(), 1);

    let mut txn = store.write_txn().expect("txn");
    let prev = txn.put(b"a", b"3", 9).expect("put");
    assert_eq!(prev, Some(replaced(&kv(b"a", 2, 2, 2, 0, b"2"))));
    assert_eq!(txn.commit(2).expect("commit").revision, 3);
    assert_eq!(get(&store, b"a", 0), Some(kv(b"a", 2, 3, 3, 9, b"3")));
    assert_eq!(get(&store, b"b", 0), Some(kv(b"b", 2, 2, 1, 7, b"1")));
    let stats = store.stats().expect("stats");
    assert_eq!((stats.key_count, stats.version_count), (2, 4));
    assert!(stats.approx_bytes > 0);
}

/// A delete leaves a tombstone; the next put starts the key's life again.
pub fn delete_resets_the_key<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1")]);
    put_all(&store, 2, &[(b"a", b"2")]);
    let mut txn = store.write_txn().expect("txn");
    let deleted = txn.delete_range(b"a", SINGLE_KEY).expect("delete");
    assert_eq!(deleted, vec![kv(b"a", 2, 3, 2, 0, b"2")]);
    let res = txn.commit(3).expect("commit");
    assert_eq!(res.revision, 4);
    assert_eq!(res.events.len(), 1);
    let event = &res.events[0];
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(
        event.kv,
        KeyValue { key: Bytes::from_static(b"a"), mod_revision: 4, ..KeyValue::default() }
    );
    assert_eq!(event.prev_kv, Some(kv(b"a", 2, 3, 2, 0, b"2")));
    assert_eq!(get(&store, b"a", 0), None);
    assert_eq!(get(&store, b"a", 3), Some(kv(b"a", 2, 3, 2, 0, b"2")));
    assert_eq!(store.stats().expect("stats").key_count, 0);

    put_all(&store, 4, &[(b"a", b"new")]);
    assert_eq!(get(&store, b"a", 0), Some(kv(b"a", 5, 5, 1, 0, b"new")));
    assert_eq!(store.stats().expect("stats").key_count, 1);
}

/// Metadata-only transactions and deletes of nothing advance the applied index only.
pub fn txn_without_changes_keeps_the_revision<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1")]);
    let mut txn = store.write_txn().expect("txn");
    assert!(txn.delete_range(b"zzz", SINGLE_KEY).expect("delete").is_empty());
    assert!(txn.delete_range(b"b", b"c").expect("delete").is_empty());
    txn.set_meta(b"leases", b"L").expect("meta");
    let res = txn.commit(5).expect("commit");
    assert_eq!(res.revision, 2);
    assert!(res.events.is_empty());
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.applied_index(), 5);
    let res = store.write_txn().expect("txn").commit(6).expect("commit");
    assert_eq!(res.revision, 2);
    assert_eq!(store.applied_index(), 6);
}

/// A transaction dropped without commit leaves no trace.
pub fn dropped_txn_changes_nothing<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1")]);
    {
        let mut txn = store.write_txn().expect("txn");
        txn.put(b"a", b"2", 0).expect("put");
        txn.put(b"b", b"2", 0).expect("put");
        txn.delete_range(b"a", SINGLE_KEY).expect("delete");
        txn.set_meta(b"m", b"x").expect("meta");
    }
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.applied_index(), 1);
    assert_eq!(get(&store, b"a", 0), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(get(&store, b"b", 0), None);
    assert_eq!(store.get_meta(b"m").expect("meta"), None);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.key_count, stats.version_count), (1, 1));
    // The next transaction gets the revision the dropped one would have had.
    assert_eq!(put_all(&store, 2, &[(b"c", b"1")]), 3);
}

/// Reads inside a transaction see its own changes; other readers do not until commit.
pub fn txn_reads_see_own_writes<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1")]);
    let mut txn = store.write_txn().expect("txn");
    assert_eq!(txn.get(b"a").expect("get"), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    txn.put(b"b", b"x", 0).expect("put");
    txn.delete_range(b"a", SINGLE_KEY).expect("delete");
    assert_eq!(txn.get(b"a").expect("get"), None);
    assert_eq!(txn.get(b"b").expect("get"), Some(kv(b"b", 3, 3, 1, 0, b"x")));
    let all = txn.range(b"\0", ALL_FROM_KEY, &RangeOptions::default()).expect("range");
    assert_eq!(keys_of(&all.kvs), vec![b"b".as_ref()]);
    assert_eq!(all.revision, 3);
    // The revision before the transaction is still readable inside it.
    let before = txn.range(b"a", SINGLE_KEY, &at(2)).expect("range");
    assert_eq!(before.kvs.len(), 1);
    txn.set_meta(b"m", b"1").expect("meta");
    assert_eq!(txn.get_meta(b"m").expect("meta"), Some(Bytes::from_static(b"1")));
    txn.commit(2).expect("commit");
    assert_eq!(store.get_meta(b"m").expect("meta"), Some(Bytes::from_static(b"1")));
}

/// Empty `range_end` = one key, `\0` = from key on, else `[key, range_end)`.
pub fn range_end_conventions<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let keys: [&[u8]; 8] = [b"\0", b"\0\0", b"a", b"a\0", b"a\0b", b"ab", b"b", b"\xff\xff"];
    let puts: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (*k, b"v".as_ref())).collect();
    put_all(&store, 1, &puts);
    let read = |key: &[u8], end: &[u8]| {
        let res = store.range(key, end, &RangeOptions::default()).expect("range");
        assert_eq!(res.count as usize, res.kvs.len());
        res.kvs.iter().map(|kv| kv.key.to_vec()).collect::<Vec<Vec<u8>>>()
    };
    let all: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    assert_eq!(read(b"\0", ALL_FROM_KEY), all);
    assert_eq!(read(b"", ALL_FROM_KEY), all);
    assert_eq!(read(b"a", SINGLE_KEY), vec![b"a".to_vec()]);
    assert_eq!(read(b"a\0", SINGLE_KEY), vec![b"a\0".to_vec()]);
    assert_eq!(read(b"zz", SINGLE_KEY), Vec::<Vec<u8>>::new());
    assert_eq!(read(b"a", ALL_FROM_KEY), all[2..].to_vec());
    // The prefix "a": [a, b).
    assert_eq!(read(b"a", b"b"), all[2..6].to_vec());
    assert_eq!(read(b"a\0", b"ab"), all[3..5].to_vec());
    assert_eq!(read(b"b", b"a"), Vec::<Vec<u8>>::new());
    assert_eq!(read(b"b", b"b"), Vec::<Vec<u8>>::new());
    assert_eq!(read(b"", b"a"), all[..2].to_vec());
}

/// `limit` cuts `kvs` but not `count`; `count_only` and `keys_only` drop what they say.
pub fn range_limit_count_and_keys_only<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let names: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i:02}").into_bytes()).collect();
    let puts: Vec<(&[u8], &[u8])> =
        names.iter().map(|k| (k.as_slice(), b"value".as_ref())).collect();
    put_all(&store, 1, &puts);
    let limited = store
        .range(b"k", b"l", &RangeOptions { limit: 3, ..RangeOptions::default() })
        .expect("range");
    assert_eq!(keys_of(&limited.kvs), vec![b"k00".as_ref(), b"k01", b"k02"]);
    assert_eq!((limited.count, limited.more), (10, true));
    let exact = store
        .range(b"k", b"l", &RangeOptions { limit: 10, ..RangeOptions::default() })
        .expect("range");
    assert_eq!((exact.kvs.len(), exact.count, exact.more), (10, 10, false));
    let counted = store
        .range(b"k", b"l", &RangeOptions { count_only: true, ..RangeOptions::default() })
        .expect("range");
    assert!(counted.kvs.is_empty());
    assert_eq!((counted.count, counted.more), (10, false));
    let keys = store
        .range(b"k05", ALL_FROM_KEY, &RangeOptions { keys_only: true, ..RangeOptions::default() })
        .expect("range");
    assert_eq!(keys.kvs.len(), 5);
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));
}

/// Every revision since the last compaction can be read exactly as it was.
pub fn reads_at_past_revisions<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1"), (b"b", b"1")]); // rev 2
    put_all(&store, 2, &[(b"a", b"2")]); // rev 3
    let mut txn = store.write_txn().expect("txn");
    txn.delete_range(b"b", SINGLE_KEY).expect("delete");
    txn.commit(3).expect("commit"); // rev 4
    put_all(&store, 4, &[(b"c", b"1")]); // rev 5
    let keys_at = |rev: i64| {
        let res = store.range(b"\0", ALL_FROM_KEY, &at(rev)).expect("range");
        res.kvs.iter().map(|kv| (kv.key.to_vec(), kv.value.to_vec())).collect::<Vec<_>>()
    };
    let e = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
    assert_eq!(keys_at(1), vec![]);
    assert_eq!(keys_at(2), vec![e(b"a", b"1"), e(b"b", b"1")]);
    assert_eq!(keys_at(3), vec![e(b"a", b"2"), e(b"b", b"1")]);
    assert_eq!(keys_at(4), vec![e(b"a", b"2")]);
    assert_eq!(keys_at(5), vec![e(b"a", b"2"), e(b"c", b"1")]);
    assert_eq!(keys_at(0), keys_at(5));
    assert!(matches!(
        store.range(b"a", SINGLE_KEY, &at(6)),
        Err(MvccError::FutureRevision { requested: 6, current: 5 })
    ));
    store.compact(3).expect("compact");
    assert_eq!(store.compacted_revision(), 3);
    assert!(matches!(
        store.range(b"a", SINGLE_KEY, &at(2)),
        Err(MvccError::Compacted { requested: 2, compacted: 3 })
    ));
    assert_eq!(keys_at(3), vec![e(b"a", b"2"), e(b"b", b"1")]);
    assert_eq!(keys_at(4), vec![e(b"a", b"2")]);
}

/// Keys with long histories (more versions than a scan batch) read right at every revision.
pub fn deep_history_reads<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"first"), (b"c", b"c")]); // rev 2
    for i in 0..300u32 {
        put_all(&store, u64::from(i) + 2, &[(b"b", &i.to_le_bytes())]);
    }
    // Revision 3 + i holds value i of "b"; the current revision is 302.
    assert_eq!(store.current_revision(), 302);
    for (rev, want) in
        [(2i64, None), (3, Some(0u32)), (40, Some(37)), (250, Some(247)), (302, Some(299))]
    {
        let res = store.range(b"a", ALL_FROM_KEY, &at(rev)).expect("range");
        let keys = keys_of(&res.kvs);
        match want {
            None => assert_eq!(keys, vec![b"a".as_ref(), b"c"]),
            Some(i) => {
                assert_eq!(keys, vec![b"a".as_ref(), b"b", b"c"], "at revision {rev}");
                assert_eq!(res.kvs[1].value.as_ref(), &i.to_le_bytes()[..]);
                assert_eq!(res.kvs[1].version, i64::from(i) + 1);
                assert_eq!(res.kvs[1].mod_revision, rev);
            }
        }
    }
    let batch = store.events_since(100, b"b", SINGLE_KEY, 0).expect("events");
    assert_eq!(batch.events.len(), 203);
    assert_eq!(batch.next_revision, 303);
}

/// Past changes come back in order, with `prev_kv`, filtered by range, cut at revisions.
pub fn events_since_reports_changes_with_prev_kv<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1"), (b"b", b"1")]); // rev 2
    put_all(&store, 2, &[(b"a", b"2"), (b"x", b"1")]); // rev 3
    let mut txn = store.write_txn().expect("txn");
    txn.delete_range(b"a", b"c").expect("delete");
    txn.commit(3).expect("commit"); // rev 4: deletes a, b

    let all = store.events_since(1, b"\0", ALL_FROM_KEY, 0).expect("events");
    assert_eq!(all.next_revision, 5);
    let summary: Vec<(EventKind, &[u8], i64)> =
        all.events.iter().map(|e| (e.kind, e.kv.key.as_ref(), e.kv.mod_revision)).collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, b"a".as_ref(), 2),
            (EventKind::Put, b"b".as_ref(), 2),
            (EventKind::Put, b"a".as_ref(), 3),
            (EventKind::Put, b"x".as_ref(), 3),
            (EventKind::Delete, b"a".as_ref(), 4),
            (EventKind::Delete, b"b".as_ref(), 4),
        ]
    );
    assert_eq!(all.events[0].prev_kv, None);
    assert_eq!(all.events[2].prev_kv, Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(all.events[4].prev_kv, Some(kv(b"a", 2, 3, 2, 0, b"2")));

    let only_a = store.events_since(3, b"a", SINGLE_KEY, 0).expect("events");
    assert_eq!(only_a.events.len(), 2);
    assert_eq!(only_a.events[0].kv.mod_revision, 3);

    // A limit stops at a revision boundary, never inside one.
    let first = store.events_since(2, b"\0", ALL_FROM_KEY, 1).expect("events");
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.next_revision, 3);
    let rest = store.events_since(first.next_revision, b"\0", ALL_FROM_KEY, 3).expect("events");
    assert_eq!(rest.events.len(), 4);
    assert_eq!(rest.next_revision, 5);

    let now = store.events_since(0, b"\0", ALL_FROM_KEY, 0).expect("events");
    assert!(now.events.is_empty());
    assert_eq!(now.next_revision, 5);
    let future = store.events_since(9, b"\0", ALL_FROM_KEY, 0).expect("events");
    assert!(future.events.is_empty());
    assert_eq!(future.next_revision, 9);

    store.compact(3).expect("compact");
    assert!(matches!(
        store.events_since(2, b"\0", ALL_FROM_KEY, 0),
        Err(MvccError::Compacted { requested: 2, compacted: 3 })
    ));
    // From the compacted revision on, nothing is lost, prev_kv included.
    let after = store.events_since(3, b"\0", ALL_FROM_KEY, 0).expect("events");
    assert_eq!(after.events, all.events[2..].to_vec());
}

/// Compaction drops only what no read at or after the compacted revision needs.
pub fn compaction_keeps_reads_from_the_compacted_revision<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let mut index = 0;
    for round in 0..6u8 {
        index += 1;
        let mut txn = store.write_txn().expect("txn");
        txn.put(b"hot", &[round], 0).expect("put");
        if round % 2 == 0 {
            txn.put(&[b'k', round], b"v", 0).expect("put");
        } else {
            txn.delete_range(&[b'k', round - 1], SINGLE_KEY).expect("delete");
        }
        txn.commit(index).expect("commit");
    }
    put_all(&store, index + 1, &[(b"cold", b"c")]);
    let current = store.current_revision();
    let before: Vec<_> = (1..=current)
        .map(|rev| store.range(b"\0", ALL_FROM_KEY, &at(rev)).expect("range"))
        .collect();
    let events_before = store.events_since(1, b"\0", ALL_FROM_KEY, 0).expect("events");
    let versions_before = store.stats().expect("stats").version_count;

    assert!(matches!(store.compact(current + 1), Err(MvccError::FutureRevision { .. })));
    store.compact(5).expect("compact");
    assert!(matches!(store.compact(5), Err(MvccError::Compacted { requested: 5, compacted: 5 })));
    assert!(store.stats().expect("stats").version_count < versions_before);
    for compacted in [5, 7, current] {
        if compacted != 5 {
            store.compact(compacted).expect("compact");
        }
        for rev in 1..=current {
            let got = store.range(b"\0", ALL_FROM_KEY, &at(rev));
            if rev < compacted {
                assert!(matches!(got, Err(MvccError::Compacted { .. })));
            } else {
                assert_eq!(got.expect("range"), before[(rev - 1) as usize]);
            }
        }
        let events = store.events_since(compacted, b"\0", ALL_FROM_KEY, 0).expect("events");
        let want: Vec<Event> = events_before
            .events
            .iter()
            .filter(|e| e.kv.mod_revision >= compacted)
            .cloned()
            .collect();
        assert_eq!(events.events, want, "events from {compacted}");
    }
    // Compacting at the current revision leaves one version per live key.
    let stats = store.stats().expect("stats");
    assert_eq!(stats.version_count, stats.key_count);
    assert_eq!(stats.key_count, 2);
}

/// Metadata commits and rolls back with the data.
pub fn meta_commits_with_the_data<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let mut txn = store.write_txn().expect("txn");
    txn.set_meta(b"leases", b"v1").expect("meta");
    txn.set_meta(b"sessions", b"s1").expect("meta");
    txn.commit(1).expect("commit");
    let mut txn = store.write_txn().expect("txn");
    txn.set_meta(b"leases", b"v2").expect("meta");
    txn.delete_meta(b"sessions").expect("meta");
    drop(txn);
    assert_eq!(store.get_meta(b"leases").expect("meta"), Some(Bytes::from_static(b"v1")));
    assert_eq!(store.get_meta(b"sessions").expect("meta"), Some(Bytes::from_static(b"s1")));
    let mut txn = store.write_txn().expect("txn");
    txn.set_meta(b"leases", b"v2").expect("meta");
    txn.delete_meta(b"sessions").expect("meta");
    txn.delete_meta(b"never-set").expect("meta");
    txn.commit(2).expect("commit");
    assert_eq!(store.get_meta(b"leases").expect("meta"), Some(Bytes::from_static(b"v2")));
    assert_eq!(store.get_meta(b"sessions").expect("meta"), None);
    assert_eq!(store.current_revision(), 1);
}

/// A commit below the stored applied index fails and changes nothing.
pub fn applied_index_never_goes_backwards<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 10, &[(b"a", b"1")]);
    let mut txn = store.write_txn().expect("txn");
    txn.put(b"a", b"2", 0).expect("put");
    let err = txn.commit(9).expect_err("applied index went backwards");
    assert!(matches!(err, MvccError::AppliedIndexRegression { current: 10, given: 9 }));
    assert!(!err.is_deterministic());
    assert_eq!(store.applied_index(), 10);
    assert_eq!(store.current_revision(), 2);
    assert_eq!(get(&store, b"a", 0), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    // The same index again is allowed (e.g. a compaction applied with its entry).
    assert_eq!(put_all(&store, 10, &[(b"b", b"1")]), 3);
}

/// An empty key is refused with a clear, deterministic error.
pub fn empty_key_is_rejected<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    let mut txn = store.write_txn().expect("txn");
    let err = txn.put(b"", b"v", 0).expect_err("empty key");
    assert!(matches!(err, MvccError::EmptyKey) && err.is_deterministic());
    assert!(matches!(txn.delete_range(b"", SINGLE_KEY), Err(MvccError::EmptyKey)));
    drop(txn);
    assert!(matches!(
        store.range(b"", SINGLE_KEY, &RangeOptions::default()),
        Err(MvccError::EmptyKey)
    ));
    assert!(err.to_string().contains("empty"));
}

/// Builds a store with history, deletes, metadata and a compaction (41 entries applied).
pub fn populated_store<S: MvccStore>(make: &dyn Fn() -> S) -> S {
    let store = make();
    let mut index = 0;
    for i in 0..40u32 {
        index += 1;
        let mut txn = store.write_txn().expect("txn");
        let key = format!("key/{:02}", i % 7).into_bytes();
        txn.put(&key, &i.to_be_bytes(), i64::from(i % 3)).expect("put");
        if i % 5 == 4 {
            txn.delete_range(b"key/03", b"key/05").expect("delete");
        }
        if i % 8 == 0 {
            txn.set_meta(format!("meta/{i}").as_bytes(), &i.to_le_bytes()).expect("meta");
        }
        txn.put(b"with\0zero", &[0, 1, 2], 0).expect("put");
        txn.commit(index).expect("commit");
    }
    store.compact(15).expect("compact");
    put_all(&store, index + 1, &[(b"last", b"x")]);
    store
}

/// Asserts that two stores answer every read, watch, image and stat the same way, at every
/// retained revision.
pub fn assert_same_stores<A: MvccStore, B: MvccStore>(a: &A, b: &B) {
    assert_eq!(a.current_revision(), b.current_revision());
    assert_eq!(a.compacted_revision(), b.compacted_revision());
    assert_eq!(a.applied_index(), b.applied_index());
    let (sa, sb) = (a.stats().expect("stats"), b.stats().expect("stats"));
    assert_eq!(
        (sa.key_count, sa.version_count, sa.approx_bytes),
        (sb.key_count, sb.version_count, sb.approx_bytes)
    );
    let from = a.compacted_revision().max(1);
    for rev in from..=a.current_revision() {
        for (key, end) in
            [(&b"\0"[..], ALL_FROM_KEY), (b"key/02", SINGLE_KEY), (b"key/", b"key/04")]
        {
            assert_eq!(
                a.range(key, end, &at(rev)).expect("range"),
                b.range(key, end, &at(rev)).expect("range"),
                "range {key:?}..{end:?} at {rev}"
            );
        }
        assert_eq!(
            a.events_since(rev, b"\0", ALL_FROM_KEY, 0).expect("events"),
            b.events_since(rev, b"\0", ALL_FROM_KEY, 0).expect("events"),
            "events from {rev}"
        );
    }
    let (mut ia, mut ib) = (a.image().expect("image"), b.image().expect("image"));
    assert_eq!(ia.info(), ib.info());
    assert_eq!(drain(&mut ia), drain(&mut ib));
}

/// Every record of an image.
pub fn drain(source: &mut dyn ImageSource) -> Vec<ImageRecord> {
    let mut out = Vec::new();
    while source.next_records(4096, &mut out).expect("image records") {}
    out
}

/// An image restored into another store gives an equal store; the source keeps working.
pub fn image_restores_an_equal_store<S: MvccStore>(make: &dyn Fn() -> S) {
    let original = populated_store(make);
    let mut image = original.image().expect("image");
    // Writes after the image was taken are not in it.
    put_all(&original, 100, &[(b"after", b"image")]);
    let copy = make();
    put_all(&copy, 1, &[(b"to-be-replaced", b"x")]);
    copy.restore(&mut image).expect("restore");
    assert_eq!(get(&copy, b"to-be-replaced", 0), None);
    assert_eq!(get(&copy, b"after", 0), None);
    assert_eq!(copy.applied_index(), 41);
    assert_eq!(
        copy.get_meta(b"meta/8").expect("meta"),
        Some(Bytes::copy_from_slice(&8u32.to_le_bytes()))
    );
    let again = make();
    again.restore(&mut copy.image().expect("image")).expect("restore");
    assert_same_stores(&copy, &again);
    // Both keep going from the same revision.
    assert_eq!(put_all(&copy, 42, &[(b"n", b"1")]), put_all(&again, 42, &[(b"n", b"1")]));
    assert_same_stores(&copy, &again);
}

/// An image source that serves a fixed list of records.
struct ListImage {
    info: ImageInfo,
    records: Vec<ImageRecord>,
}

impl ImageSource for ListImage {
    fn info(&self) -> ImageInfo {
        self.info
    }

    fn next_records(
        &mut self,
        _bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError> {
        out.append(&mut self.records);
        Ok(false)
    }
}

fn version(key: &[u8], main: i64, sub: u32) -> ImageRecord {
    ImageRecord::Version {
        key: Bytes::copy_from_slice(key),
        revision: Revision { main, sub },
        tombstone: false,
        create_revision: main,
        version: 1,
        lease: 0,
        value: Bytes::from_static(b"v"),
    }
}

/// A restore that fails part-way leaves the store exactly as it was.
pub fn restore_rejects_a_bad_image_and_keeps_the_store<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = populated_store(make);
    let reference = make();
    reference.restore(&mut store.image().expect("image")).expect("restore");
    let info = ImageInfo {
        applied_index: 7,
        revision: 5,
        compacted_revision: 0,
        key_count: 2,
        version_count: 2,
    };
    let bad_images = [
        // Out of order.
        vec![version(b"b", 2, 0), version(b"a", 3, 0)],
        // Two versions at one revision.
        vec![version(b"a", 2, 0), version(b"b", 2, 0)],
        // A revision above the image's.
        vec![version(b"a", 2, 0), version(b"b", 6, 0)],
        // Counts that do not match the header.
        vec![version(b"a", 2, 0)],
        // Metadata after versions.
        vec![
            version(b"a", 2, 0),
            version(b"b", 3, 0),
            ImageRecord::Meta { name: Bytes::from_static(b"m"), value: Bytes::new() },
        ],
    ];
    for records in bad_images {
        let mut source = ListImage { info, records };
        let err = store.restore(&mut source).expect_err("bad image");
        assert!(matches!(err, MvccError::InvalidImage(_)), "{err}");
        assert_same_stores(&store, &reference);
    }
    let mut good = ListImage { info, records: vec![version(b"a", 2, 0), version(b"b", 3, 0)] };
    store.restore(&mut good).expect("restore");
    assert_eq!(store.applied_index(), 7);
    assert_eq!(store.current_revision(), 5);
    assert_eq!(store.range(b"\0", ALL_FROM_KEY, &at(0)).expect("range").count, 2);
}

/// The obviously-right model: the whole state at every revision.
struct Model {
    /// `states[r]` is the state at revision `r` (index 0 unused).
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    events: Vec<Event>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    compacted: i64,
    applied: u64,
}

impl Model {
    fn current(&self) -> i64 {
        (self.states.len() - 1) as i64
    }

    fn range(&self, rev: i64, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let state = &self.states[rev as usize];
        state.values().filter(|kv| in_range(&kv.key, key, end)).cloned().collect()
    }
}

/// etcd's key-range test, written independently of the engine's.
fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

const MODEL_KEYS: [&[u8]; 7] = [b"\0", b"a", b"a\0", b"ab", b"b", b"b\xff", b"c"];

fn check_against_model<S: MvccStore>(store: &S, model: &Model, rng: &mut Rng) {
    assert_eq!(store.current_revision(), model.current());
    assert_eq!(store.compacted_revision(), model.compacted);
    assert_eq!(store.applied_index(), model.applied);
    let stats = store.stats().expect("stats");
    assert_eq!(stats.key_count as usize, model.states[model.states.len() - 1].len());
    for rev in 1..=model.current() {
        let key = *rng.pick(&MODEL_KEYS).unwrap_or(&&b"a"[..]);
        let end: &[u8] = match rng.range(0, 3) {
            0 => SINGLE_KEY,
            1 => ALL_FROM_KEY,
            _ => rng.pick(&MODEL_KEYS).copied().unwrap_or(b"c"),
        };
        let got = store.range(key, end, &at(rev));
        if rev < model.compacted {
            assert!(matches!(got, Err(MvccError::Compacted { .. })));
            continue;
        }
        let got = got.expect("range");
        assert_eq!(got.kvs, model.range(rev, key, end), "range {key:?}..{end:?} at {rev}");
        let events = store.events_since(rev, b"\0", ALL_FROM_KEY, 0).expect("events");
        let want: Vec<Event> =
            model.events.iter().filter(|e| e.kv.mod_revision >= rev).cloned().collect();
        assert_eq!(events.events, want, "events from {rev}");
    }
    for (name, value) in &model.meta {
        assert_eq!(store.get_meta(name).expect("meta").as_deref(), Some(value.as_slice()));
    }
}

/// Random transactions (puts, deletes, metadata, compactions) against the model; at the end
/// the store's image, restored into a fresh store, must match the model too.
pub fn random_ops_match_the_model<S: MvccStore>(make: &dyn Fn() -> S) {
    for seed in 1..=3u64 {
        random_ops_with_seed(make, seed, 60);
    }
}

/// [`random_ops_match_the_model`] with one seed and `txns` transactions.
pub fn random_ops_with_seed<S: MvccStore>(make: &dyn Fn() -> S, seed: u64, txns: u64) {
    let mut rng = Rng::new(seed);
    let store = make();
    let mut model = Model {
        states: vec![BTreeMap::new(), BTreeMap::new()],
        events: Vec::new(),
        meta: BTreeMap::new(),
        compacted: 0,
        applied: 0,
    };
    for index in 1..=txns {
        let mut txn = store.write_txn().expect("txn");
        let rev = model.current() + 1;
        let mut state = model.states[model.states.len() - 1].clone();
        let mut events = Vec::new();
        let mut compact_to = None;
        // Every third transaction has put events without prev_kv (as the state machine runs).
        let carry_prev_kv = index % 3 != 0;
        txn.set_events_carry_prev_kv(carry_prev_kv);
        for _ in 0..rng.range(0, 5) {
            let key = rng.pick(&MODEL_KEYS).copied().unwrap_or(b"a");
            match rng.range(0, 20) {
                0..=11 => {
                    let value = rng.next_u64().to_le_bytes()[..rng.range(0, 9) as usize].to_vec();
                    let lease = rng.range(0, 3) as i64;
                    let prev = state.get(key).cloned();
                    let got = txn.put(key, &value, lease).expect("put");
                    assert_eq!(got, prev.as_ref().map(replaced));
                    let new = kv(
                        key,
                        prev.as_ref().map_or(rev, |p| p.create_revision),
                        rev,
                        prev.as_ref().map_or(1, |p| p.version + 1),
                        lease,
                        &value,
                    );
                    state.insert(key.to_vec(), new.clone());
                    events.push(Event { kind: EventKind::Put, kv: new, prev_kv: prev });
                }
                12..=15 => {
                    let end: &[u8] = if rng.chance(0.5) {
                        SINGLE_KEY
                    } else {
                        rng.pick(&MODEL_KEYS).copied().unwrap_or(b"c")
                    };
                    let doomed: Vec<KeyValue> =
                        state.values().filter(|kv| in_range(&kv.key, key, end)).cloned().collect();
                    assert_eq!(txn.delete_range(key, end).expect("delete"), doomed);
                    for prev in doomed {
                        state.remove(prev.key.as_ref());
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv: KeyValue {
                                key: prev.key.clone(),
                                mod_revision: rev,
                                ..KeyValue::default()
                            },
                            prev_kv: Some(prev),
                        });
                    }
                }
                16..=18 => {
                    let name = key.to_vec();
                    let value = rng.next_u64().to_le_bytes().to_vec();
                    txn.set_meta(&name, &value).expect("meta");
                    model.meta.insert(name, value);
                }
                _ => {
                    let low = model.compacted + 1;
                    let high = model.current();
                    if compact_to.is_none() && low <= high {
                        let to = rng.range(low as u64, high as u64 + 1) as i64;
                        txn.compact(to).expect("compact");
                        compact_to = Some(to);
                    }
                }
            }
        }
        let res = txn.commit(index).expect("commit");
        let reported: Vec<Event> = events
            .iter()
            .map(|e| match e.kind {
                EventKind::Put if !carry_prev_kv => Event { prev_kv: None, ..e.clone() },
                _ => e.clone(),
            })
            .collect();
        assert_eq!(res.events, reported);
        if !events.is_empty() {
            model.states.push(state);
            model.events.extend(events);
        }
        assert_eq!(res.revision, model.current());
        if let Some(to) = compact_to {
            model.compacted = to;
        }
        model.applied = index;
        if index % 10 == 0 || index == txns {
            check_against_model(&store, &model, &mut rng);
        }
    }
    let restored = make();
    restored.restore(&mut store.image().expect("image")).expect("restore");
    check_against_model(&restored, &model, &mut rng);
    // The restored key index knows what a put derives from each key's latest version.
    let latest = &model.states[model.states.len() - 1];
    let mut txn = restored.write_txn().expect("txn");
    for key in MODEL_KEYS {
        let got = txn.put(key, b"after restore", 0).expect("put");
        assert_eq!(got, latest.get(key).map(replaced), "put after restore");
    }
}

/// Sealed commands in one transaction get consecutive revisions, sub-revisions from 0, their
/// own events, and the compaction limit of a transaction of their own.
pub fn seal_gives_each_command_its_own_revision<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"0")]); // rev 2
    let mut txn = store.write_txn().expect("txn");
    assert_eq!(txn.revision(), 3);
    // Command 1: two changes at revision 3.
    txn.put(b"a", b"1", 0).expect("put");
    txn.put(b"b", b"1", 0).expect("put");
    let first = txn.seal().expect("seal");
    assert_eq!(first.revision, 3);
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.events[0].kv, kv(b"a", 2, 3, 2, 0, b"1"));
    assert_eq!(first.events[0].prev_kv, Some(kv(b"a", 2, 2, 1, 0, b"0")));
    assert_eq!(txn.revision(), 4);
    // Command 2 changes nothing: same revision, no events.
    txn.set_meta(b"m", b"x").expect("meta");
    assert!(txn.delete_range(b"zz", SINGLE_KEY).expect("delete").is_empty());
    assert_eq!(txn.seal().expect("seal"), SealResult { revision: 3, events: Vec::new() });
    assert_eq!(txn.revision(), 4);
    // Command 3 sees command 1, and reads the revisions before it.
    assert_eq!(txn.get(b"b").expect("get"), Some(kv(b"b", 3, 3, 1, 0, b"1")));
    assert_eq!(txn.range(b"a", SINGLE_KEY, &at(2)).expect("range").kvs[0].value.as_ref(), b"0");
    assert!(matches!(
        txn.range(b"a", SINGLE_KEY, &at(4)),
        Err(MvccError::FutureRevision { requested: 4, current: 3 })
    ));
    // Compaction goes up to the revision before the command, not beyond.
    assert!(matches!(txn.compact(4), Err(MvccError::FutureRevision { requested: 4, current: 3 })));
    txn.compact(3).expect("compact");
    assert_eq!(txn.compacted_revision(), 3);
    assert!(matches!(txn.range(b"a", SINGLE_KEY, &at(2)), Err(MvccError::Compacted { .. })));
    txn.delete_range(b"a", SINGLE_KEY).expect("delete");
    let third = txn.seal().expect("seal");
    assert_eq!(third.revision, 4);
    assert_eq!(third.events.len(), 1);
    assert_eq!(third.events[0].kind, EventKind::Delete);
    assert_eq!(third.events[0].prev_kv, Some(kv(b"a", 2, 3, 2, 0, b"1")));
    // The unsealed rest is one more command, committed with the transaction.
    txn.put(b"a", b"new", 5).expect("put");
    let res = txn.commit(9).expect("commit");
    assert_eq!(res.revision, 5);
    assert_eq!(res.events.len(), 1);
    assert_eq!(res.events[0].kv, kv(b"a", 5, 5, 1, 5, b"new"));
    assert_eq!(store.current_revision(), 5);
    assert_eq!(store.compacted_revision(), 3);
    assert_eq!(store.applied_index(), 9);
    assert_eq!(store.get_meta(b"m").expect("meta"), Some(Bytes::from_static(b"x")));
    // Sub-revisions restart at 0 with each command.
    let revisions: Vec<(Bytes, Revision)> = drain(&mut store.image().expect("image"))
        .into_iter()
        .filter_map(|r| match r {
            ImageRecord::Version { key, revision, .. } => Some((key, revision)),
            ImageRecord::Meta { .. } => None,
        })
        .collect();
    let r = |main, sub| Revision { main, sub };
    let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
    assert_eq!(
        revisions,
        vec![
            (a.clone(), r(2, 0)),
            (a.clone(), r(3, 0)),
            (a.clone(), r(4, 0)),
            (a, r(5, 0)),
            (b, r(3, 1))
        ]
    );
    assert_eq!(get(&store, b"b", 3), Some(kv(b"b", 3, 3, 1, 0, b"1")));
    let stats = store.stats().expect("stats");
    assert_eq!((stats.key_count, stats.revision), (2, 5));
}

/// A rollback undoes the current command's data, metadata, compaction and counters, and
/// nothing sealed before it; the next command gets the revision the undone one would have had.
pub fn rollback_to_seal_undoes_only_the_current_command<S: MvccStore>(make: &dyn Fn() -> S) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"0")]); // rev 2
    put_all(&store, 2, &[(b"a", b"1")]); // rev 3
    let reference = make();
    put_all(&reference, 1, &[(b"a", b"0")]);
    put_all(&reference, 2, &[(b"a", b"1")]);
    let mut txn = store.write_txn().expect("txn");
    txn.set_meta(b"m", b"kept").expect("meta");
    txn.put(b"b", b"kept", 0).expect("put");
    assert_eq!(txn.seal().expect("seal").revision, 4);
    // A command that does a bit of everything, then is undone.
    txn.compact(3).expect("compact");
    txn.put(b"a", b"undone", 0).expect("put");
    txn.put(b"c", b"undone", 0).expect("put");
    txn.delete_range(b"b", SINGLE_KEY).expect("delete");
    txn.set_meta(b"m", b"undone").expect("meta");
    txn.set_meta(b"m2", b"undone").expect("meta");
    txn.delete_meta(b"m").expect("meta");
    txn.rollback_to_seal().expect("rollback");
    assert_eq!(txn.revision(), 5);
    assert_eq!(txn.compacted_revision(), 0);
    assert_eq!(txn.get(b"a").expect("get"), Some(kv(b"a", 2, 3, 2, 0, b"1")));
    assert_eq!(txn.get(b"b").expect("get"), Some(kv(b"b", 4, 4, 1, 0, b"kept")));
    assert_eq!(txn.get(b"c").expect("get"), None);
    assert_eq!(txn.get_meta(b"m").expect("meta"), Some(Bytes::from_static(b"kept")));
    assert_eq!(txn.get_meta(b"m2").expect("meta"), None);
    assert_eq!(txn.range(b"a", SINGLE_KEY, &at(2)).expect("range").kvs.len(), 1);
    // An undone command seals as one that changed nothing.
    assert_eq!(txn.seal().expect("seal"), SealResult { revision: 4, events: Vec::new() });
    txn.put(b"c", b"1", 0).expect("put");
    txn.rollback_to_seal().expect("rollback");
    txn.put(b"d", b"1", 0).expect("put");
    let res = txn.commit(3).expect("commit");
    assert_eq!(res.revision, 5);
    assert_eq!(res.events.len(), 1);
    assert_eq!(res.events[0].kv, kv(b"d", 5, 5, 1, 0, b"1"));
    // The same as the commands that were kept, each in a transaction of its own.
    let mut txn = reference.write_txn().expect("txn");
    txn.set_meta(b"m", b"kept").expect("meta");
    txn.put(b"b", b"kept", 0).expect("put");
    txn.commit(3).expect("commit");
    put_all(&reference, 3, &[(b"d", b"1")]);
    assert_same_stores(&store, &reference);
}

/// Changes that were never committed (a dropped transaction, a command rolled back to its
/// seal, sealed commands of a dropped transaction) leave nothing behind, even when the next
/// committed changes get exactly their revisions: reads, watches, later puts and compaction
/// see only what was committed. (A leftover in a backend's key lookup structures would name
/// a revision now held by another key.)
pub fn undone_changes_leave_no_trace_when_their_revisions_are_reused<S: MvccStore>(
    make: &dyn Fn() -> S,
) {
    let store = make();
    put_all(&store, 1, &[(b"a", b"1")]); // rev 2
    {
        let mut txn = store.write_txn().expect("txn");
        txn.put(b"x", b"dropped", 0).expect("put"); // would be 3.0
        txn.put(b"a", b"dropped", 0).expect("put");
        txn.seal().expect("seal");
        txn.delete_range(b"a", SINGLE_KEY).expect("delete"); // would be 4.0
        txn.compact(2).expect("compact");
        txn.seal().expect("seal");
    }
    put_all(&store, 2, &[(b"y", b"1")]); // rev 3, reusing the dropped revision 3.0
    let mut txn = store.write_txn().expect("txn");
    txn.put(b"z", b"1", 0).expect("put");
    assert_eq!(txn.seal().expect("seal").revision, 4);
    txn.put(b"x", b"undone", 0).expect("put"); // 5.0, undone
    txn.put(b"a", b"undone", 0).expect("put");
    txn.delete_range(b"y", SINGLE_KEY).expect("delete");
    txn.rollback_to_seal().expect("rollback");
    txn.put(b"w", b"1", 0).expect("put"); // 5.0 again
    assert_eq!(txn.get(b"x").expect("get"), None);
    assert_eq!(txn.get(b"a").expect("get"), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(txn.commit(3).expect("commit").revision, 5);
    assert_eq!(store.compacted_revision(), 0);

    assert_eq!(get(&store, b"x", 0), None);
    assert_eq!(get(&store, b"a", 0), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(get(&store, b"y", 0), Some(kv(b"y", 3, 3, 1, 0, b"1")));
    assert_eq!(get(&store, b"w", 5), Some(kv(b"w", 5, 5, 1, 0, b"1")));
    let all = store.range(b"\0", ALL_FROM_KEY, &RangeOptions::default()).expect("range");
    assert_eq!(keys_of(&all.kvs), vec![&b"a"[..], b"w", b"y", b"z"]);
    assert_eq!(all.count, 4);
    let events = store.events_since(3, b"\0", ALL_FROM_KEY, 0).expect("events");
    let changed: Vec<(&[u8], i64)> =
        events.events.iter().map(|e| (e.kv.key.as_ref(), e.kv.mod_revision)).collect();
    assert_eq!(changed, vec![(&b"y"[..], 3), (b"z", 4), (b"w", 5)]);
    assert!(events.events.iter().all(|e| e.prev_kv.is_none()));
    let stats = store.stats().expect("stats");
    assert_eq!((stats.key_count, stats.version_count), (4, 4));
    // A later put of a key only the undone changes wrote creates it afresh.
    put_all(&store, 4, &[(b"x", b"2")]); // rev 6
    assert_eq!(get(&store, b"x", 0), Some(kv(b"x", 6, 6, 1, 0, b"2")));
    store.compact(6).expect("compact");
    assert_eq!(get(&store, b"a", 6), Some(kv(b"a", 2, 2, 1, 0, b"1")));
    assert_eq!(store.range(b"\0", ALL_FROM_KEY, &at(6)).expect("range").count, 5);
}

/// One operation of a command in [`check_batched_against_one_per_txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// A put.
    Put {
        /// The key (may be empty: then the command fails).
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease.
        lease: i64,
    },
    /// A delete of a range (etcd conventions).
    Delete {
        /// First key.
        key: Vec<u8>,
        /// Range end.
        range_end: Vec<u8>,
    },
    /// A metadata write.
    SetMeta {
        /// Entry name.
        name: Vec<u8>,
        /// Entry value.
        value: Vec<u8>,
    },
    /// A metadata removal.
    DeleteMeta {
        /// Entry name.
        name: Vec<u8>,
    },
    /// A compaction at the revision before the command plus `offset`: 1 is in the future,
    /// and at or below the compacted revision fails too.
    Compact {
        /// Offset from the revision before the command.
        offset: i64,
    },
    /// A range read at the command's revision minus `back` (0 = the command's own revision,
    /// readable once it changed something; a revision below 1 reads the current one).
    Read {
        /// First key.
        key: Vec<u8>,
        /// Range end.
        range_end: Vec<u8>,
        /// How far back from the command's revision to read.
        back: i64,
    },
    /// The command fails here, as a state machine's command does when a check fails
    /// part-way: everything it did is undone.
    Fail,
}

/// Runs one command's operations; returns a transcript of their answers and whether the
/// command succeeded (it stops at the first failure).
fn run_command<T: MvccTxn>(txn: &mut T, ops: &[BatchOp]) -> (Vec<String>, bool) {
    let mut log =
        vec![format!("revision {} compacted {}", txn.revision(), txn.compacted_revision())];
    for op in ops {
        let answer = match op {
            BatchOp::Put { key, value, lease } => {
                txn.put(key, value, *lease).map(|p| format!("{p:?}"))
            }
            BatchOp::Delete { key, range_end } => {
                txn.delete_range(key, range_end).map(|d| format!("{d:?}"))
            }
            BatchOp::SetMeta { name, value } => txn.set_meta(name, value).map(|()| String::new()),
            BatchOp::DeleteMeta { name } => txn.delete_meta(name).map(|()| String::new()),
            BatchOp::Compact { offset } => {
                txn.compact(txn.revision() - 1 + offset).map(|()| String::new())
            }
            BatchOp::Read { key, range_end, back } => {
                let opts = at(txn.revision() - back);
                txn.range(key, range_end, &opts).map(|r| format!("{r:?}"))
            }
            BatchOp::Fail => Err(MvccError::EmptyKey),
        };
        match answer {
            Ok(text) => log.push(text),
            Err(e) => {
                assert!(e.is_deterministic(), "engine failure in a test command: {e}");
                log.push(format!("error {e}"));
                return (log, false);
            }
        }
    }
    (log, true)
}

/// What one command gave: its transcript, revision and events.
type CommandOutcome = (Vec<String>, i64, Vec<Event>);

/// Applies `commands` (command `i` as log entry `i + 1`) to a fresh store one transaction
/// per command, and to another in transactions of `batch_sizes` commands (cycled; 0 counts
/// as 1), sealing each command (the last of a batch is left to the commit when `seal_last`
/// says no). A command that fails is undone: dropped with its transaction on one side,
/// rolled back to the seal on the other. Asserts that both give the same answers, revisions
/// and events for every command, and equal stores: every range at every revision,
/// `events_since` from each, stats and images.
pub fn check_batched_against_one_per_txn<S: MvccStore>(
    make: &dyn Fn() -> S,
    commands: &[Vec<BatchOp>],
    batch_sizes: &[usize],
    seal_last: bool,
) {
    let single = make();
    let mut want: Vec<CommandOutcome> = Vec::new();
    for (i, ops) in commands.iter().enumerate() {
        let index = i as u64 + 1;
        let mut txn = single.write_txn().expect("txn");
        let (log, ok) = run_command(&mut txn, ops);
        let res = if ok {
            txn.commit(index).expect("commit")
        } else {
            drop(txn);
            single.write_txn().expect("txn").commit(index).expect("commit")
        };
        want.push((log, res.revision, res.events));
    }

    let batched = make();
    let mut got: Vec<CommandOutcome> = Vec::new();
    let mut sizes = batch_sizes.iter().copied().cycle();
    let mut next = 0;
    while next < commands.len() {
        let size = sizes.next().unwrap_or(1).max(1).min(commands.len() - next);
        let mut txn = batched.write_txn().expect("txn");
        for (i, ops) in commands.iter().enumerate().skip(next).take(size) {
            let (log, ok) = run_command(&mut txn, ops);
            if !ok {
                txn.rollback_to_seal().expect("rollback");
            }
            if i + 1 == next + size && !seal_last {
                let res = txn.commit(i as u64 + 1).expect("commit");
                got.push((log, res.revision, res.events));
                break;
            }
            let sealed = txn.seal().expect("seal");
            got.push((log, sealed.revision, sealed.events));
            if i + 1 == next + size {
                let res = txn.commit(i as u64 + 1).expect("commit");
                assert_eq!(res, super::CommitResult { revision: sealed.revision, events: vec![] });
                break;
            }
        }
        next += size;
    }
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "command {i} ({:?})", commands[i]);
    }
    assert_eq!(want.len(), got.len());
    assert_same_stores(&single, &batched);
}

const BATCH_KEYS: [&[u8]; 6] = [b"\0", b"key/01", b"key/02", b"key/02\0", b"key/03", b"zz"];

/// Random commands with every kind of operation, some failing part-way.
pub fn random_batch_commands(rng: &mut Rng, count: usize) -> Vec<Vec<BatchOp>> {
    let key = |rng: &mut Rng| rng.pick(&BATCH_KEYS).map_or(b"a".to_vec(), |k| k.to_vec());
    let end = |rng: &mut Rng| match rng.range(0, 3) {
        0 => SINGLE_KEY.to_vec(),
        1 => ALL_FROM_KEY.to_vec(),
        _ => rng.pick(&BATCH_KEYS).map_or(b"z".to_vec(), |k| k.to_vec()),
    };
    (0..count)
        .map(|_| {
            (0..rng.range(0, 5))
                .map(|_| match rng.range(0, 24) {
                    0..=9 => BatchOp::Put {
                        key: key(rng),
                        value: rng.next_u64().to_le_bytes()[..rng.range(0, 9) as usize].to_vec(),
                        lease: rng.range(0, 3) as i64,
                    },
                    10..=13 => BatchOp::Delete { key: key(rng), range_end: end(rng) },
                    14..=15 => BatchOp::SetMeta {
                        name: key(rng),
                        value: rng.next_u64().to_le_bytes().to_vec(),
                    },
                    16 => BatchOp::DeleteMeta { name: key(rng) },
                    17..=18 => BatchOp::Compact { offset: rng.range(0, 5) as i64 - 3 },
                    19..=21 => BatchOp::Read {
                        key: key(rng),
                        range_end: end(rng),
                        back: rng.range(0, 6) as i64,
                    },
                    22 => BatchOp::Put { key: Vec::new(), value: Vec::new(), lease: 0 },
                    _ => BatchOp::Fail,
                })
                .collect()
        })
        .collect()
}

/// Random commands in random batches give what they give one transaction per command.
pub fn batched_commands_match_one_txn_per_command<S: MvccStore>(make: &dyn Fn() -> S) {
    for seed in 1..=4u64 {
        let mut rng = Rng::new(seed);
        let commands = random_batch_commands(&mut rng, 48);
        let sizes: Vec<usize> = (0..7).map(|_| rng.range(1, 12) as usize).collect();
        check_batched_against_one_per_txn(make, &commands, &sizes, seed % 2 == 0);
    }
}
