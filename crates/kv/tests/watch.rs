//! The watch hub against a naive model: every watcher must receive exactly the events a
//! per-watcher scan of the whole history gives (in order, no gaps, no duplicates), across
//! catch-up from the past, slow consumers, pauses, cancels and compaction.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use quorumkv_kv::proto::etcdserverpb::{CompactionRequest, TxnRequest};
use quorumkv_kv::{Request, WatchBatch, WatchConfig, WatchHub, WatchId, WatchSpec};
use quorumkv_storage::mvcc::{Event, EventKind, KeyValue, MemStore, MvccStore};

/// What the model knows of one watcher.
struct Model {
    spec: WatchSpec,
    /// First revision it must see.
    from: i64,
    delivered: Vec<Event>,
    compacted: Option<i64>,
    cancelled: bool,
    last_header: i64,
}

impl Model {
    fn matches(&self, ev: &Event) -> bool {
        let k: &[u8] = &ev.kv.key;
        let key: &[u8] = &self.spec.key;
        let end: &[u8] = &self.spec.range_end;
        let in_range = match end {
            [] => k == key,
            [0] => k >= key,
            _ => k >= key && k < end,
        };
        let kind_ok = match ev.kind {
            EventKind::Put => !self.spec.no_put,
            EventKind::Delete => !self.spec.no_delete,
        };
        in_range && kind_ok && ev.kv.mod_revision >= self.from
    }

    fn expected(&self, history: &[Event]) -> Vec<Event> {
        history
            .iter()
            .filter(|e| self.matches(e))
            .map(|e| Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: if self.spec.prev_kv { e.prev_kv.clone() } else { None },
            })
            .collect()
    }
}

/// A hub, its store, the history of every event, and the model of every watcher.
struct World {
    h: Harness<MemStore>,
    hub: WatchHub,
    history: Vec<Event>,
    /// Each live key's latest version, from the events themselves: the model's own source
    /// of prev_kv (the state machine's put events leave it out).
    latest: BTreeMap<Bytes, KeyValue>,
    models: BTreeMap<WatchId, Model>,
    next_id: WatchId,
}

impl World {
    fn new(max_buffered_events: usize) -> Self {
        let h = Harness::new(MemStore::new());
        let hub = WatchHub::new(h.sm.revision(), WatchConfig { max_buffered_events });
        Self {
            h,
            hub,
            history: Vec::new(),
            latest: BTreeMap::new(),
            models: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn apply(&mut self, req: Request) {
        if let Ok(out) = self.h.apply_in(0, 0, req) {
            self.hub.on_commit(&**self.h.sm.store(), out.revision, &out.events);
            self.record_history(out.events);
        }
    }

    /// Adds events to the history with the prev_kv the model knows for them.
    fn record_history(&mut self, events: Vec<Event>) {
        for mut e in events {
            let prev = match e.kind {
                EventKind::Put => self.latest.insert(e.kv.key.clone(), e.kv.clone()),
                EventKind::Delete => self.latest.remove(&e.kv.key),
            };
            if e.kind == EventKind::Delete {
                assert_eq!(e.prev_kv, prev, "a delete's event carries the version it removed");
            }
            e.prev_kv = prev;
            self.history.push(e);
        }
    }

    fn watch(&mut self, spec: WatchSpec) -> WatchId {
        let id = self.next_id;
        self.next_id += 1;
        let from =
            if spec.start_revision <= 0 { self.hub.revision() + 1 } else { spec.start_revision };
        self.hub.watch(id, spec.clone()).expect("watch");
        self.models.insert(
            id,
            Model {
                spec,
                from,
                delivered: Vec::new(),
                compacted: None,
                cancelled: false,
                last_header: 0,
            },
        );
        id
    }

    fn record(&mut self, batches: Vec<WatchBatch>) {
        for b in batches {
            let m = self.models.get_mut(&b.id).expect("batch for a known watcher");
            assert!(!m.cancelled, "batch after cancel");
            assert!(m.compacted.is_none(), "batch after the compaction notice");
            if let Some(last) = b.events.last() {
                assert!(b.revision >= last.kv.mod_revision, "header below its events");
            }
            assert!(b.revision >= m.last_header, "header revision went backwards");
            m.last_header = b.revision;
            if b.is_canceled() {
                m.compacted = Some(b.compact_revision);
            }
            m.delivered.extend(b.events);
        }
    }

    fn poll(&mut self, max: usize) {
        let batches = self.hub.poll(max);
        self.record(batches);
    }

    fn cancel(&mut self, id: WatchId) {
        if self.hub.cancel(id)
            && let Some(m) = self.models.get_mut(&id)
        {
            m.cancelled = true;
        }
    }

    /// Resumes everyone and drains until every watcher is synced and empty.
    fn settle(&mut self) {
        let ids: Vec<WatchId> = self.models.keys().copied().collect();
        for id in &ids {
            self.hub.resume(*id);
        }
        for _ in 0..10_000 {
            self.hub.catch_up(&**self.h.sm.store(), 64).expect("catch up");
            self.poll(7);
            if self.hub.unsynced_len() == 0 && self.hub.poll(1).is_empty() {
                return;
            }
        }
        panic!("the hub did not settle");
    }

    fn check(&self) {
        for (id, m) in &self.models {
            if m.cancelled {
                continue;
            }
            let want = m.expected(&self.history);
            match m.compacted {
                None => assert_eq!(m.delivered, want, "watcher {id} ({:?})", m.spec),
                Some(c) => {
                    assert!(m.delivered.len() <= want.len());
                    assert_eq!(
                        m.delivered[..],
                        want[..m.delivered.len()],
                        "watcher {id}: not a prefix"
                    );
                    let next_rev = m.delivered.last().map_or(m.from, |e| e.kv.mod_revision + 1);
                    assert!(
                        next_rev < c,
                        "watcher {id} told compacted at {c} though it was at {next_rev}"
                    );
                }
            }
        }
    }
}

fn spec(key: &str, end: &str, start: i64) -> WatchSpec {
    WatchSpec { key: b(key), range_end: b(end), start_revision: start, ..WatchSpec::default() }
}

// ---------------------------------------------------------------------------------------------

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const KEYS: [&str; 8] = ["a", "b", "ba", "bb", "c", "d", "e", "f"];

#[test]
fn many_watchers_on_overlapping_ranges_get_exactly_their_events() {
    let mut w = World::new(1024);
    let mut rng = Lcg(42);
    // Single keys, prefixes, from-key, everything, an empty range; with filters and prev_kv.
    let shapes =
        [("a", ""), ("b", "c"), ("b", "\0"), ("\0", "\0"), ("ba", "bc"), ("c", "a"), ("e", "")];
    for i in 0..60 {
        let (k, e) = shapes[i % shapes.len()];
        let mut s = spec(k, e, 0);
        s.prev_kv = i % 2 == 0;
        s.no_put = i % 5 == 1;
        s.no_delete = i % 5 == 2;
        w.watch(s);
    }
    for step in 0..300 {
        let k = KEYS[rng.next(KEYS.len() as u64) as usize];
        match rng.next(10) {
            0 => w.apply(del(k, "")),
            1 => w.apply(del("b", "c")),
            2 => w.apply(Request::Txn(TxnRequest {
                compare: vec![],
                success: vec![op_put("a", "t"), op_put("bb", "t"), op_del("e", "")],
                failure: vec![],
            })),
            _ => w.apply(put(k, &format!("v{step}"))),
        }
        if step % 7 == 0 {
            w.poll(5);
        }
    }
    w.settle();
    w.check();
    assert!(w.models.values().any(|m| m.delivered.len() > 100));
}

#[test]
fn a_watcher_from_a_past_revision_catches_up_then_continues() {
    let mut w = World::new(16);
    for i in 0..50 {
        w.apply(put(KEYS[i % 4], &format!("{i}")));
    }
    let id = w.watch(spec("a", "c", 3));
    assert!(!w.hub.is_synced(id));
    // Catch up a little at a time while new commits arrive.
    for i in 0..30 {
        w.hub.catch_up(&**w.h.sm.store(), 5).unwrap();
        w.poll(4);
        w.apply(put(KEYS[i % 4], "new"));
    }
    w.settle();
    assert!(w.hub.is_synced(id));
    w.check();
    let m = &w.models[&id];
    assert_eq!(m.delivered.first().map(|e| e.kv.mod_revision), Some(3));
    assert!(m.delivered.windows(2).all(|p| p[0].kv.mod_revision < p[1].kv.mod_revision));
}

#[test]
fn a_start_below_the_compacted_revision_gets_a_compaction_notice() {
    let mut w = World::new(64);
    for i in 0..10 {
        w.apply(put("k", &format!("{i}")));
    }
    w.apply(Request::Compact(CompactionRequest { revision: 8, physical: false }));
    let early = w.watch(spec("k", "", 2));
    let ok = w.watch(spec("k", "", 8));
    w.settle();
    w.check();
    let m = &w.models[&early];
    assert_eq!(m.compacted, Some(8));
    assert!(m.delivered.is_empty());
    assert!(w.hub.take(early, 10).is_none(), "the watcher is gone after its notice");
    assert_eq!(w.models[&ok].delivered.len(), 4);
    // The etcd response for a notice.
    let mut hub = WatchHub::new(w.h.sm.revision(), WatchConfig::default());
    hub.watch(1, spec("k", "", 1)).unwrap();
    hub.catch_up(&**w.h.sm.store(), 10).unwrap();
    let notice = hub.poll(10).pop().unwrap();
    let resp = notice.into_response(5);
    assert!(resp.canceled);
    assert_eq!((resp.watch_id, resp.compact_revision), (5, 8));
}

#[test]
fn a_slow_watcher_falls_back_to_the_store_without_losing_events() {
    let mut w = World::new(4);
    let slow = w.watch(spec("\0", "\0", 0));
    let fast = w.watch(spec("\0", "\0", 0));
    w.hub.pause(slow);
    for i in 0..40 {
        w.apply(put(KEYS[i % 8], &format!("{i}")));
        w.poll(100);
    }
    assert!(!w.hub.is_synced(slow), "an overflowing watcher leaves the synced set");
    assert!(w.hub.is_synced(fast));
    assert_eq!(w.models[&fast].delivered.len(), 40);
    w.settle();
    w.check();
    assert_eq!(w.models[&slow].delivered.len(), 40);

    // If history is compacted while it is behind, it gets a notice instead.
    let lagging = w.watch(spec("\0", "\0", 0));
    w.hub.pause(lagging);
    for i in 0..20 {
        w.apply(put("a", &format!("{i}")));
    }
    let rev = w.h.sm.revision();
    w.apply(Request::Compact(CompactionRequest { revision: rev, physical: false }));
    w.settle();
    w.check();
    assert_eq!(w.models[&lagging].compacted, Some(rev));
    assert_eq!(w.models[&lagging].delivered.len(), 4, "it keeps what it had buffered");
}

#[test]
fn a_big_revision_is_delivered_whole_and_batches_never_split_a_revision() {
    let mut w = World::new(2);
    let id = w.watch(spec("\0", "\0", 0));
    let ops: Vec<_> = (0..10).map(|i| op_put(&format!("k{i}"), "v")).collect();
    w.apply(Request::Txn(TxnRequest { compare: vec![], success: ops, failure: vec![] }));
    w.apply(put("z", "1"));
    let first = w.hub.take(id, 1).unwrap();
    assert_eq!(first.events.len(), 10, "one revision, whole, even past the buffer limit");
    w.record(vec![first]);
    w.settle();
    w.check();
}

#[test]
fn future_start_progress_and_cancel() {
    let mut w = World::new(64);
    w.apply(put("a", "1")); // rev 2
    let future = w.watch(spec("a", "", 4));
    let mut s = spec("b", "", 0);
    s.progress_notify = true;
    let quiet = w.watch(s);
    assert_eq!(w.hub.progress(&[quiet, future]), Some(2));
    assert_eq!(w.hub.progress_notify().iter().map(|b| b.id).collect::<Vec<_>>(), vec![quiet]);
    w.apply(put("a", "2")); // rev 3: before the future start
    w.apply(put("a", "3")); // rev 4
    assert_eq!(w.hub.progress(&[future]), None, "an event is waiting");
    w.settle();
    w.check();
    assert_eq!(w.models[&future].delivered.len(), 1);
    let gone = w.watch(spec("a", "", 0));
    w.cancel(gone);
    w.apply(put("a", "4"));
    w.settle();
    w.check();
    assert!(w.hub.take(gone, 10).is_none());
    assert!(w.hub.watch(future, spec("x", "", 0)).is_err(), "ids are unique");
    assert!(w.hub.watch(999, WatchSpec::default()).is_err(), "an empty key watches nothing");
}

#[test]
fn reset_after_a_snapshot_sends_watchers_back_to_the_store() {
    let mut w = World::new(64);
    let id = w.watch(spec("\0", "\0", 0));
    w.apply(put("a", "1"));
    w.poll(10);
    // Simulate commits the hub never saw (as after installing a snapshot).
    for i in 0..5 {
        let out = w.h.apply_in(0, 0, put("b", &format!("{i}"))).unwrap();
        w.record_history(out.events);
    }
    w.hub.reset(w.h.sm.revision());
    assert!(!w.hub.is_synced(id));
    w.apply(put("c", "1"));
    w.settle();
    w.check();
    assert_eq!(w.models[&id].delivered.len(), 7);
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Put(usize),
    Del(usize, usize),
    Txn(usize, usize),
    Watch { key: usize, end: usize, back: i64, prev_kv: bool, filter: u8 },
    Cancel(usize),
    Pause(usize),
    Resume(usize),
    Compact(i64),
    Poll(usize),
    CatchUp(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS.len()).prop_map(Op::Put),
        1 => (0..KEYS.len(), 0..KEYS.len() + 2).prop_map(|(a, b)| Op::Del(a, b)),
        1 => (0..KEYS.len(), 0..KEYS.len()).prop_map(|(a, b)| Op::Txn(a, b)),
        4 => (0..KEYS.len(), 0..KEYS.len() + 3, -2i64..12, any::<bool>(), 0u8..4)
            .prop_map(|(key, end, back, prev_kv, filter)| Op::Watch { key, end, back, prev_kv, filter }),
        1 => (0usize..40).prop_map(Op::Cancel),
        1 => (0usize..40).prop_map(Op::Pause),
        1 => (0usize..40).prop_map(Op::Resume),
        1 => (1i64..8).prop_map(Op::Compact),
        2 => (1usize..6).prop_map(Op::Poll),
        2 => (1usize..10).prop_map(Op::CatchUp),
    ]
}

/// The range end for index `end`: a key, "" (single key) or "\0" (from key).
fn end_of(end: usize) -> &'static str {
    match end {
        e if e < KEYS.len() => KEYS[e],
        e if e == KEYS.len() => "",
        _ => "\0",
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hub_matches_a_naive_scan(ops in proptest::collection::vec(op(), 1..200), buffer in 1usize..6) {
        let mut w = World::new(buffer);
        let mut n = 0u64;
        for op in ops {
            n += 1;
            let ids: Vec<WatchId> = w.models.keys().copied().collect();
            let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
            match op {
                Op::Put(k) => w.apply(put(KEYS[k], &format!("v{n}"))),
                Op::Del(k, e) => w.apply(del(KEYS[k], end_of(e))),
                Op::Txn(a, c) => w.apply(Request::Txn(TxnRequest {
                    compare: vec![],
                    success: if a == c { vec![op_put(KEYS[a], "t")] } else { vec![op_put(KEYS[a], "t"), op_put(KEYS[c], "t")] },
                    failure: vec![],
                })),
                Op::Watch { key, end, back, prev_kv, filter } => {
                    let start = if back < 0 { 0 } else { (w.hub.revision() - back).max(1) };
                    let mut s = spec(KEYS[key], end_of(end), start);
                    s.prev_kv = prev_kv;
                    s.no_put = filter == 1;
                    s.no_delete = filter == 2;
                    w.watch(s);
                }
                Op::Cancel(i) => if let Some(id) = pick(i) { w.cancel(id) },
                Op::Pause(i) => if let Some(id) = pick(i) { w.hub.pause(id) },
                Op::Resume(i) => if let Some(id) = pick(i) { w.hub.resume(id) },
                Op::Compact(back) => {
                    let rev = w.h.sm.revision() - back;
                    if rev > w.h.sm.store().compacted_revision() {
                        w.apply(Request::Compact(CompactionRequest { revision: rev, physical: false }));
                    }
                }
                Op::Poll(max) => w.poll(max),
                Op::CatchUp(budget) => { w.hub.catch_up(&**w.h.sm.store(), budget).unwrap(); }
            }
        }
        w.settle();
        w.check();
    }
}

/// The hub's events are the store's: the same events a fresh scan of the store's history
/// gives (a cross-check of the model's history itself).
#[test]
fn history_equals_the_stores_events() {
    let mut w = World::new(8);
    for i in 0..30 {
        w.apply(put(KEYS[i % 5], &format!("{i}")));
        if i % 4 == 0 {
            w.apply(del(KEYS[(i + 1) % 5], ""));
        }
    }
    let all = w.h.sm.store().events_since(1, &[0], &[0], 0).unwrap();
    assert_eq!(all.events, w.history);
    assert!(w.history.iter().any(|e| e.kind == EventKind::Delete));
    let _ = Bytes::new();
}
