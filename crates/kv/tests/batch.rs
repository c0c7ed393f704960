//! Batched application: `StateMachine::apply_batch` gives every entry exactly the outcome that
//! `apply` gives it one by one (answers, revisions, events, lease changes, session dedup,
//! deterministic failures), and leaves the same store and the same tables, on both backends,
//! however the log is cut into batches. A fatal error in a batch commits none of it and
//! poisons the state machine until its tables are reloaded (or the node restarts).

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use quorumkv_kv::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, request_op,
};
use quorumkv_kv::{
    ApplyError, ApplyOutcome, CommandResult, Config, EtcdError, Request, StateMachine, command,
    encode_command,
};
use quorumkv_storage::mvcc::conformance::assert_same_stores;
use quorumkv_storage::mvcc::{MemStore, MvccStore};

/// One log entry of a generated log.
#[derive(Clone, Debug)]
enum Entry {
    /// A command of `session` (0 = none) with sequence number `seq`.
    Cmd { session: u64, seq: u64, request: Request },
    /// Bytes that may not decode.
    Raw(Vec<u8>),
    /// A Raft leader's no-op: no data at all.
    Empty,
}

impl Entry {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Entry::Cmd { session, seq, request } => {
                encode_command(&command(*session, *seq, request.clone()))
            }
            Entry::Raw(data) => data.clone(),
            Entry::Empty => Vec::new(),
        }
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("c/1"), Just("")].prop_map(b)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => (key(), any::<u8>(), 0i64..4, any::<bool>(), 0u8..6).prop_map(
            |(k, v, lease, prev_kv, ignore)| {
                Request::Put(PutRequest {
                    key: k,
                    value: if ignore == 0 { Bytes::new() } else { vec![v].into() },
                    lease: if ignore == 1 { 0 } else { lease },
                    prev_kv,
                    ignore_value: ignore == 0,
                    ignore_lease: ignore == 1,
                })
            }
        ),
        1 => (key(), prop_oneof![Just(""), Just("\0"), Just("c0")]).prop_map(|(k, end)| {
            Request::DeleteRange(DeleteRangeRequest { key: k, range_end: b(end), prev_kv: true })
        }),
        2 => (key(), 0i32..5, 0i32..4, any::<u8>(), 0i64..4, any::<bool>(), 0i64..10).prop_map(
            |(k, target, result, v, lease, nested, read_at)| {
                let c = value_or_version_compare(k, target, result, v);
                // A put with a lease that may not exist: the txn can fail after its compares.
                let leased = PutRequest { lease, ..put_req("t", "1") };
                // A read at a past revision: compacted and future revisions fail the txn.
                let past = RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        revision: read_at,
                        ..range("a", "z")
                    })),
                };
                let mut success = vec![
                    op_put("x", "1"),
                    past,
                    RequestOp { request: Some(request_op::Request::RequestPut(leased)) },
                ];
                if nested {
                    success.push(op_txn(TxnRequest {
                        compare: vec![],
                        success: vec![op_del("a", "b"), op_range("\0", "\0")],
                        failure: vec![],
                    }));
                }
                Request::Txn(TxnRequest {
                    compare: vec![c],
                    success,
                    failure: vec![op_del("a", "c"), op_put("y", "2")],
                })
            }
        ),
        1 => (0i64..12).prop_map(|r| Request::Compact(CompactionRequest { revision: r, physical: false })),
        2 => (0i64..4, 0i64..30).prop_map(|(id, ttl)| Request::LeaseGrant(LeaseGrantRequest { ttl, id })),
        1 => (0i64..4).prop_map(revoke),
        1 => proptest::collection::vec(0i64..4, 0..3).prop_map(|ids| expire(&ids)),
        1 => Just(noop()),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        12 => (0u64..4, 1u64..5, request())
            .prop_map(|(session, seq, request)| Entry::Cmd { session, seq, request }),
        1 => proptest::collection::vec(any::<u8>(), 1..12).prop_map(Entry::Raw),
        1 => Just(Entry::Empty),
    ]
}

/// A log: entries with the index step before each (gaps stand for membership entries).
fn log() -> impl Strategy<Value = Vec<(u64, Entry)>> {
    proptest::collection::vec((prop_oneof![8 => Just(1u64), 1 => 2u64..4], entry()), 1..60)
}

/// A small session table, so eviction runs inside batches too.
fn config() -> Config {
    Config { max_sessions: 2, session_idle_entries: 25, ..Config::default() }
}

fn indexed(log: &[(u64, Entry)]) -> Vec<(u64, Vec<u8>)> {
    let mut index = 0;
    log.iter()
        .map(|(step, e)| {
            index += step;
            (index, e.bytes())
        })
        .collect()
}

fn one_by_one<S: MvccStore>(
    sm: &mut StateMachine<S>,
    entries: &[(u64, Vec<u8>)],
) -> Vec<Result<ApplyOutcome, ApplyError>> {
    entries.iter().map(|(i, data)| sm.apply(*i, data)).collect()
}

fn batched<S: MvccStore>(
    sm: &mut StateMachine<S>,
    entries: &[(u64, Vec<u8>)],
    sizes: &[usize],
) -> Vec<Result<ApplyOutcome, ApplyError>> {
    let mut out = Vec::new();
    let mut sizes = sizes.iter().copied().cycle();
    let mut rest = entries;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(n);
        let refs: Vec<(u64, &[u8])> = batch.iter().map(|(i, d)| (*i, d.as_slice())).collect();
        out.extend(sm.apply_batch(&refs).expect("no fatal error"));
        rest = tail;
    }
    out
}

/// Asserts that two state machines hold the same state: store (every range at every
/// revision, events, image, stats), lease table, session table.
fn assert_same_machines<A: MvccStore, B: MvccStore>(a: &StateMachine<A>, b: &StateMachine<B>) {
    assert_same_stores(&**a.store(), &**b.store());
    assert_eq!(a.leases(), b.leases());
    for (id, _) in a.leases() {
        assert_eq!(a.lease_keys(id), b.lease_keys(id), "keys of lease {id}");
    }
    assert_eq!(a.session_count(), b.session_count());
    for id in 0..4 {
        assert_eq!(a.session(id), b.session(id), "session {id}");
    }
}

fn check_log<S: MvccStore>(
    make: &mut dyn FnMut() -> S,
    log: &[(u64, Entry)],
    sizes: &[usize],
) -> Result<(), TestCaseError> {
    let entries = indexed(log);
    let mut single = StateMachine::open(std::sync::Arc::new(make()), config()).expect("open");
    let mut batch = StateMachine::open(std::sync::Arc::new(make()), config()).expect("open");
    let want = one_by_one(&mut single, &entries);
    let got = batched(&mut batch, &entries, sizes);
    prop_assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if let Err(e) = w {
            prop_assert!(e.is_deterministic(), "entry {} failed fatally: {}", i, e);
        }
        prop_assert_eq!(format!("{w:?}"), format!("{g:?}"), "entry {} ({:?})", i, log[i].1);
    }
    assert_same_machines(&single, &batch);
    // The batched machine's tables are what its store says they are.
    let reopened =
        StateMachine::open(std::sync::Arc::clone(batch.store()), config()).expect("open");
    assert_same_machines(&reopened, &batch);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batches_give_the_outcomes_of_one_by_one_on_memstore(
        log in log(),
        sizes in proptest::collection::vec(1usize..24, 1..6),
    ) {
        check_log(&mut MemStore::new, &log, &sizes)?;
    }

    #[test]
    fn batches_give_the_outcomes_of_one_by_one_on_redb(
        log in log(),
        sizes in proptest::collection::vec(1usize..24, 1..6),
    ) {
        let dir = TempDir::new("batch-prop");
        check_log(&mut redb_maker(&dir), &log, &sizes)?;
    }
}

/// Entries of one batch see each other exactly as if committed one by one: a retry of a
/// command applied earlier in the batch gets its stored answer, a put sees the lease granted
/// just before it, a compaction may reach the revision of the entry before it, and each
/// entry's answer carries its own revision.
fn within_a_batch<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    let cmd = |session, seq, req| encode_command(&command(session, seq, req));
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 });
    let entries = [
        (1, cmd(7, 1, put("a", "1"))),
        (2, cmd(7, 1, put("a", "1"))),
        (3, cmd(0, 0, grant)),
        (5, cmd(0, 0, Request::Put(PutRequest { lease: 5, ..put_req("b", "1") }))),
        (6, Vec::new()),
        (7, cmd(0, 0, Request::Compact(CompactionRequest { revision: 3, physical: false }))),
        (8, cmd(0, 0, Request::Compact(CompactionRequest { revision: 4, physical: false }))),
        (9, cmd(7, 3, put("c", "1"))),
        (10, cmd(7, 2, put("c", "1"))),
        (11, cmd(7, 1, put("c", "1"))),
    ];
    let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, d)| (*i, d.as_slice())).collect();
    let out = h.sm.apply_batch(&refs).expect("batch");
    let rev = |r: &Result<ApplyOutcome, ApplyError>| r.as_ref().map(|o| o.revision).ok();
    let first = out[0].as_ref().expect("put");
    assert!(matches!(first.result, CommandResult::Applied(_)));
    assert_eq!((first.revision, first.events.len()), (2, 1));
    let retry = out[1].as_ref().expect("retry");
    match (&first.result, &retry.result) {
        (CommandResult::Applied(a), CommandResult::Duplicate(d)) => assert_eq!(a, d),
        other => panic!("not a duplicate: {other:?}"),
    }
    assert!(retry.events.is_empty());
    assert_eq!(rev(&out[2]), Some(2), "a grant changes no key");
    assert_eq!(out[2].as_ref().expect("grant").lease_changes.len(), 1);
    assert_eq!(rev(&out[3]), Some(3), "the put sees the lease granted before it");
    assert!(matches!(out[4], Err(ApplyError::Rejected(EtcdError::MalformedCommand))));
    assert_eq!(rev(&out[5]), Some(3), "compaction up to the revision before the entry");
    assert!(
        matches!(out[6], Err(ApplyError::Rejected(EtcdError::FutureRevision))),
        "revision 4 does not exist yet: {:?}",
        out[6]
    );
    // Session 7 skips to 3 (allowed), then 2 and 1 are stale.
    assert!(out[7].as_ref().is_ok_and(|o| matches!(o.result, CommandResult::Applied(_))));
    assert_eq!(rev(&out[7]), Some(4));
    for stale in &out[8..] {
        let o = stale.as_ref().expect("stale");
        assert_eq!((&o.result, o.revision), (&CommandResult::Stale { last_seq: 3 }, 4));
    }
    assert_eq!(h.sm.applied_index(), 11);
    assert_eq!(h.sm.lease_keys(5), Some(vec![b("b")]));
    assert_eq!(h.sm.store().compacted_revision(), 3);
    // The same entries one by one give the same outcomes.
    let mut other = Harness::new(mk());
    for ((i, data), want) in entries.iter().zip(&out) {
        assert_eq!(format!("{:?}", other.sm.apply(*i, data)), format!("{want:?}"));
    }
    assert_same_machines(&h.sm, &other.sm);
}
on_both_backends!(entries_see_each_other_within_a_batch, within_a_batch);

/// Batch edges: an empty batch does nothing; indexes at or below the applied index, or not
/// increasing inside the batch, are refused before anything runs, without poisoning.
fn batch_edges<S: MvccStore>(mut mk: impl FnMut() -> S) {
    let mut h = Harness::new(mk());
    assert!(h.sm.apply_batch(&[]).expect("empty batch").is_empty());
    assert_eq!(h.sm.applied_index(), 0);
    let p = encode_command(&command(0, 0, put("a", "1")));
    h.sm.apply_batch(&[(1, &p), (2, &p)]).expect("batch");
    for bad in [&[(2u64, &p[..])][..], &[(3, &p[..]), (3, &p[..])], &[(5, &p[..]), (4, &p[..])]] {
        assert!(matches!(h.sm.apply_batch(bad), Err(ApplyError::OutOfOrder { .. })));
    }
    assert_eq!((h.sm.applied_index(), h.sm.revision()), (2, 3));
    let out = h.sm.apply_batch(&[(3, &p)]).expect("not poisoned");
    assert_eq!(out[0].as_ref().expect("put").revision, 4);
}
on_both_backends!(batch_edges_are_checked_first, batch_edges);

/// A fatal error in a batch commits none of it and poisons the state machine, whose tables
/// (which took the earlier entries of the batch) are not used again; after a restart the same
/// batch applies as on a machine that never failed.
#[test]
fn a_fatal_error_in_a_batch_commits_nothing_and_poisons() {
    use quorumkv_storage::disk::SimDisk;
    use quorumkv_storage::mvcc::{CommitDurability, RedbOptions, RedbStore};
    let disk = std::sync::Arc::new(SimDisk::new(11));
    let opts = RedbOptions { durability: CommitDurability::Immediate, cache_bytes: 1 << 20 };
    let store = RedbStore::open(disk.clone(), std::path::Path::new("/state.redb"), opts).unwrap();
    let mut h = Harness::with_config(store, config());
    let mut reference = Harness::with_config(MemStore::new(), config());
    let cmd = |session, seq, req| encode_command(&command(session, seq, req));
    let setup = [(1, cmd(0, 0, put("a", "1"))), (2, cmd(3, 1, put("s", "1")))];
    let setup: Vec<(u64, &[u8])> = setup.iter().map(|(i, d)| (*i, d.as_slice())).collect();
    h.sm.apply_batch(&setup).expect("setup");
    reference.sm.apply_batch(&setup).expect("setup");

    let batch = [
        (3, cmd(0, 0, Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 9 }))),
        (4, cmd(0, 0, Request::Put(PutRequest { lease: 9, ..put_req("k", "1") }))),
        (5, cmd(3, 2, put("s", "2"))),
        (6, cmd(4, 1, put("t", "1"))),
    ];
    let batch: Vec<(u64, &[u8])> = batch.iter().map(|(i, d)| (*i, d.as_slice())).collect();
    disk.fail_next_sync();
    let r = h.sm.apply_batch(&batch);
    assert!(matches!(r, Err(ApplyError::Store(_))), "got {r:?}");
    assert!(matches!(h.sm.apply_batch(&batch), Err(ApplyError::Poisoned)));
    assert!(matches!(h.sm.apply(3, batch[0].1), Err(ApplyError::Poisoned)));
    // Nothing of the batch was committed.
    assert_eq!((h.sm.applied_index(), h.sm.revision()), (2, 3));
    assert_eq!(h.get("k").count, 0);
    // The node restarts (redb refuses writes after an I/O error until reopened): the tables
    // are the store's again, and the batch applies as it should.
    drop(h);
    let store = RedbStore::open(disk, std::path::Path::new("/state.redb"), opts).unwrap();
    let mut h = Harness::with_config(store, config());
    assert_eq!(h.sm.leases(), vec![]);
    assert_eq!(h.sm.session(3), Some((1, 2)));
    assert_eq!(h.sm.session(4), None);
    let got = h.sm.apply_batch(&batch).expect("batch");
    let want = reference.sm.apply_batch(&batch).expect("batch");
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
    assert_same_machines(&h.sm, &reference.sm);
}

/// A `MemStore` whose next commit can be made to fail, the way a disk error fails it, but
/// recoverably: the state machine can reload from it in the same process.
#[derive(Default)]
struct FailingStore {
    inner: MemStore,
    fail_next_commit: std::sync::atomic::AtomicBool,
}

struct FailingTxn<'a> {
    inner: quorumkv_storage::mvcc::MemTxn<'a>,
    fail: bool,
}

mod failing {
    use super::{FailingStore, FailingTxn};
    use bytes::Bytes;
    use quorumkv_core::LogIndex;
    use quorumkv_storage::mvcc::{
        CommitResult, EventBatch, ImageSource, KeyValue, MemImage, MvccError, MvccStore, MvccTxn,
        RangeOptions, RangeResult, Replaced, SealResult, StoreStats,
    };
    use std::sync::atomic::Ordering;

    impl MvccTxn for FailingTxn<'_> {
        fn revision(&self) -> i64 {
            self.inner.revision()
        }
        fn compacted_revision(&self) -> i64 {
            self.inner.compacted_revision()
        }
        fn range(&self, k: &[u8], e: &[u8], o: &RangeOptions) -> Result<RangeResult, MvccError> {
            self.inner.range(k, e, o)
        }
        fn put(&mut self, k: &[u8], v: &[u8], l: i64) -> Result<Option<Replaced>, MvccError> {
            self.inner.put(k, v, l)
        }
        fn set_events_carry_prev_kv(&mut self, on: bool) {
            self.inner.set_events_carry_prev_kv(on);
        }
        fn delete_range(&mut self, k: &[u8], e: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
            self.inner.delete_range(k, e)
        }
        fn set_meta(&mut self, n: &[u8], v: &[u8]) -> Result<(), MvccError> {
            self.inner.set_meta(n, v)
        }
        fn delete_meta(&mut self, n: &[u8]) -> Result<(), MvccError> {
            self.inner.delete_meta(n)
        }
        fn get_meta(&self, n: &[u8]) -> Result<Option<Bytes>, MvccError> {
            self.inner.get_meta(n)
        }
        fn compact(&mut self, r: i64) -> Result<(), MvccError> {
            self.inner.compact(r)
        }
        fn seal(&mut self) -> Result<SealResult, MvccError> {
            self.inner.seal()
        }
        fn rollback_to_seal(&mut self) -> Result<(), MvccError> {
            self.inner.rollback_to_seal()
        }
        fn commit(self, applied_index: LogIndex) -> Result<CommitResult, MvccError> {
            if self.fail {
                // Dropping the inner transaction rolls everything back.
                return Err(MvccError::Engine("injected commit failure".into()));
            }
            self.inner.commit(applied_index)
        }
    }

    impl MvccStore for FailingStore {
        type Txn<'a> = FailingTxn<'a>;
        type Image = MemImage;

        fn write_txn(&self) -> Result<FailingTxn<'_>, MvccError> {
            let fail = self.fail_next_commit.swap(false, Ordering::Relaxed);
            Ok(FailingTxn { inner: self.inner.write_txn()?, fail })
        }
        fn range(&self, k: &[u8], e: &[u8], o: &RangeOptions) -> Result<RangeResult, MvccError> {
            self.inner.range(k, e, o)
        }
        fn events_since(
            &self,
            start: i64,
            k: &[u8],
            e: &[u8],
            limit: usize,
        ) -> Result<EventBatch, MvccError> {
            self.inner.events_since(start, k, e, limit)
        }
        fn get_meta(&self, n: &[u8]) -> Result<Option<Bytes>, MvccError> {
            self.inner.get_meta(n)
        }
        fn current_revision(&self) -> i64 {
            self.inner.current_revision()
        }
        fn compacted_revision(&self) -> i64 {
            self.inner.compacted_revision()
        }
        fn applied_index(&self) -> LogIndex {
            self.inner.applied_index()
        }
        fn stats(&self) -> Result<StoreStats, MvccError> {
            self.inner.stats()
        }
        fn sync(&self) -> Result<(), MvccError> {
            self.inner.sync()
        }
        fn image(&self) -> Result<MemImage, MvccError> {
            self.inner.image()
        }
        fn restore(&self, source: &mut dyn ImageSource) -> Result<(), MvccError> {
            self.inner.restore(source)
        }
    }
}

/// Applies `entries` as one batch; the result as text, for comparing machines of two store
/// types.
fn run<S: MvccStore>(sm: &mut StateMachine<S>, entries: &[(u64, Vec<u8>)]) -> String {
    let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, d)| (*i, d.as_slice())).collect();
    format!("{:?}", sm.apply_batch(&refs))
}

/// The in-process path: after a fatal batch, `reload` brings the tables back to what the
/// store holds (the batch's grants, attachments and sessions are gone from them) and clears
/// the poison; the batch then applies as on a machine that never failed.
#[test]
fn reload_after_a_fatal_batch_restores_the_tables() {
    let mut h = Harness::with_config(FailingStore::default(), config());
    let mut reference = Harness::with_config(MemStore::new(), config());
    let cmd = |session, seq, req| encode_command(&command(session, seq, req));
    let grant = |id| Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id });
    let setup = [
        (1, cmd(0, 0, grant(1))),
        (2, cmd(0, 0, Request::Put(PutRequest { lease: 1, ..put_req("k1", "1") }))),
        (3, cmd(3, 1, put("s", "1"))),
    ];
    let batch = [
        (4, cmd(0, 0, grant(9))),
        (5, cmd(0, 0, Request::Put(PutRequest { lease: 9, ..put_req("k1", "2") }))),
        (6, cmd(3, 2, put("s", "2"))),
        (7, cmd(4, 1, put("t", "1"))),
        (8, cmd(0, 0, revoke(1))),
    ];
    assert_eq!(run(&mut h.sm, &setup), run(&mut reference.sm, &setup));
    let before = (h.sm.leases(), h.sm.lease_keys(1), h.sm.session(3));
    h.sm.store().fail_next_commit.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = run(&mut h.sm, &batch);
    assert!(failed.starts_with("Err(Store(Engine("), "{failed}");
    // The tables took the batch's entries before the commit failed: poisoned.
    assert!(run(&mut h.sm, &batch).starts_with("Err(Poisoned"));
    assert_eq!(h.sm.applied_index(), 3);
    h.sm.reload().expect("reload");
    assert_eq!((h.sm.leases(), h.sm.lease_keys(1), h.sm.session(3)), before);
    assert_eq!(h.sm.session(4), None);
    assert_eq!(run(&mut h.sm, &batch), run(&mut reference.sm, &batch));
    assert_same_machines(&h.sm, &reference.sm);
}
