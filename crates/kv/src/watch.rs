//! The watch hub: routes each commit's events to the watchers whose key range they touch,
//! and catches up watchers that start in the past from the store's history. The design is
//! etcd's `mvcc/watchable_store.go`: a synced set fed from commits and an unsynced set fed
//! from the store.
//!
//! Rules this module keeps:
//! - **Order, no gaps, no duplicates.** A watcher sees every matching event from its start
//!   revision on, in revision order (and in sub-revision order within one), each exactly
//!   once, until it is cancelled or told its position was compacted.
//! - **Synced watchers** are fed by [`WatchHub::on_commit`], which must be called with each
//!   commit's events in revision order. Matching does not scan the watchers: single-key
//!   watchers sit in a hash map by key, range watchers in an interval index (an implicit
//!   interval tree over a sorted array plus a small unsorted tail, rebuilt when the tail or
//!   the removed entries grow), so an event costs O(log n + matches).
//! - **Unsynced watchers** (start revision at or below the last fed revision) are fed by
//!   [`WatchHub::catch_up`] from `MvccStore::events_since`, never past the last fed
//!   revision; once caught up they join the synced set. A start revision in the future is
//!   synced at once and skips what comes before it; 0 means "from the next revision".
//! - **Compaction.** A watcher whose next revision is below the store's compacted revision
//!   gets a notice carrying the compacted revision (etcd's `compact_revision`, with
//!   `canceled`) after the events it already has, and is removed.
//! - **Bounded buffers; slow watchers.** Each watcher buffers at most
//!   [`WatchConfig::max_buffered_events`] events (a single revision may exceed it when the
//!   buffer was empty, so a large txn still gets through). A synced watcher whose buffer
//!   would overflow keeps what it has and is moved back to the unsynced set at the revision
//!   it did not take: it loses nothing, and reads the rest from the store once its consumer
//!   drains the buffer, or gets a compaction notice if history went meanwhile, as etcd's
//!   slow ("victim") watchers do. Memory is bounded by watchers × that limit.
//! - **Consumers** pull with [`WatchHub::poll`] / [`WatchHub::take`]; a consumer whose
//!   stream is full [`WatchHub::pause`]s its watchers. Batches never split a revision.
//! - The hub never reads a clock and never blocks: progress notifications are produced when
//!   asked for ([`WatchHub::progress_notify`], [`WatchHub::progress`]).

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use quorumkv_etcd_proto::etcdserverpb::watch_create_request::FilterType;
use quorumkv_etcd_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use quorumkv_storage::mvcc::{Event, EventKind, KeyValue, MvccError, MvccStore, RangeOptions};

use crate::read::to_pb_event;

/// A watcher's id, unique within one hub (the API layer maps its per-stream ids to these).
pub type WatchId = u64;

/// What a watcher watches, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key.
    pub key: Bytes,
    /// etcd range end: empty = just `key`, `"\0"` = every key from `key` on, else
    /// `[key, range_end)`.
    pub range_end: Bytes,
    /// First revision to report; 0 (or less) = from the next revision.
    pub start_revision: i64,
    /// Report each change's previous key-value.
    pub prev_kv: bool,
    /// Leave out puts (etcd's NOPUT filter).
    pub no_put: bool,
    /// Leave out deletes (etcd's NODELETE filter).
    pub no_delete: bool,
    /// The consumer wants periodic empty progress responses.
    pub progress_notify: bool,
}

impl WatchSpec {
    /// The spec of an etcd `WatchCreateRequest` (unknown filter values are ignored).
    pub fn from_create_request(req: &WatchCreateRequest) -> Self {
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Self {
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            start_revision: req.start_revision,
            prev_kv: req.prev_kv,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            progress_notify: req.progress_notify,
        }
    }
}

/// Settings of a hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Most events buffered per watcher (see the module rules for what happens beyond).
    pub max_buffered_events: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self { max_buffered_events: 4096 }
    }
}

/// Why a watcher could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The id is taken. Cancel the old watcher first, or pick another id.
    #[error("watch id {0} is already in use in this hub; cancel it or pick another id")]
    DuplicateId(WatchId),
    /// Both key and range end are empty: the watcher would watch nothing. Give a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
}

/// What a consumer gets for one watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The watcher.
    pub id: WatchId,
    /// Events, in revision order, whole revisions only (empty for a progress or compaction
    /// notice).
    pub events: Vec<Event>,
    /// The header revision: the watcher has been sent every event up to and including it.
    pub revision: i64,
    /// Non-zero: the watcher's position was compacted away; it is cancelled, and the client
    /// must restart from at least this revision.
    pub compact_revision: i64,
}

impl WatchBatch {
    /// True for the last batch of a watcher (compaction notice).
    pub fn is_canceled(&self) -> bool {
        self.compact_revision != 0
    }

    /// The etcd `WatchResponse` for this batch, under the stream's `watch_id`.
    pub fn into_response(self, watch_id: i64) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader { revision: self.revision, ..ResponseHeader::default() }),
            watch_id,
            created: false,
            canceled: self.compact_revision != 0,
            compact_revision: self.compact_revision,
            cancel_reason: if self.compact_revision != 0 {
                "etcdserver: mvcc: required revision has been compacted".to_owned()
            } else {
                String::new()
            },
            fragment: false,
            events: self.events.into_iter().map(to_pb_event).collect(),
        }
    }
}

/// An exclusive range end; `Unbounded` is above every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Bytes),
    Unbounded,
}

impl End {
    /// True if `key` lies below this end.
    fn above(&self, key: &[u8]) -> bool {
        match self {
            End::Key(e) => key < e.as_ref(),
            End::Unbounded => true,
        }
    }
}

/// Where a watcher's key range puts it in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    /// One key.
    Exact,
    /// `[key, end)`.
    Range(End),
    /// A range with no key in it.
    Empty,
}

fn shape_of(key: &[u8], range_end: &[u8]) -> Shape {
    match range_end {
        [] => Shape::Exact,
        [0] => Shape::Range(End::Unbounded),
        end if end > key => Shape::Range(End::Key(Bytes::copy_from_slice(end))),
        _ => Shape::Empty,
    }
}

#[derive(Debug)]
struct Watcher {
    spec: WatchSpec,
    shape: Shape,
    synced: bool,
    /// Unsynced: the next revision to read from the store. Synced: the first revision to
    /// deliver (above the fed revision only for a start in the future).
    next_rev: i64,
    outbox: VecDeque<Event>,
    /// Set once the watcher's position was compacted: the notice follows the outbox.
    compacted: Option<i64>,
    paused: bool,
    /// The revision `on_commit` last added events for (to undo an overflow).
    touched_rev: i64,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        match ev.kind {
            EventKind::Put => !self.spec.no_put,
            EventKind::Delete => !self.spec.no_delete,
        }
    }

    /// The copy of a store event (`events_since` fills prev_kv) this watcher gets.
    fn copy_of(&self, ev: &Event) -> Event {
        Event {
            kind: ev.kind,
            kv: ev.kv.clone(),
            prev_kv: if self.spec.prev_kv { ev.prev_kv.clone() } else { None },
        }
    }
}

/// The version `events[i]` replaced, for a watcher that asks for `prev_kv`. A delete's event
/// carries it; a put's does not when the state machine spared it the row read (see
/// `ApplyOutcome::events`), so it comes from an earlier change of the key in the same
/// commit, or else from the store at the revision before (etcd's watch reads it the same
/// way). None for a create, and when that revision is compacted meanwhile.
fn prev_kv_of<S: MvccStore + ?Sized>(store: &S, events: &[Event], i: usize) -> Option<KeyValue> {
    let ev = &events[i];
    if ev.prev_kv.is_some() || ev.kind == EventKind::Delete || ev.kv.version <= 1 {
        return ev.prev_kv.clone();
    }
    if let Some(earlier) = events[..i].iter().rev().find(|e| e.kv.key == ev.kv.key) {
        return (earlier.kind == EventKind::Put).then(|| earlier.kv.clone());
    }
    let opts = RangeOptions { revision: ev.kv.mod_revision - 1, ..RangeOptions::default() };
    store.range(&ev.kv.key, &[], &opts).ok().and_then(|r| r.kvs.into_iter().next())
}

/// The watchers of one store.
#[derive(Debug)]
pub struct WatchHub {
    config: WatchConfig,
    watchers: HashMap<WatchId, Watcher>,
    /// Synced single-key watchers by key.
    exact: HashMap<Bytes, Vec<WatchId>>,
    /// Synced range watchers.
    ranges: RangeIndex,
    /// Unsynced watchers still to catch up (compacted ones leave it).
    unsynced: BTreeSet<WatchId>,
    /// Watchers with something to deliver.
    ready: BTreeSet<WatchId>,
    /// The last revision given to `on_commit`.
    fed_revision: i64,
    /// Where the next `catch_up` starts, for fairness.
    catch_up_after: WatchId,
    scratch: Vec<WatchId>,
}

impl WatchHub {
    /// A hub over a store currently at `revision`.
    pub fn new(revision: i64, config: WatchConfig) -> Self {
        Self {
            config,
            watchers: HashMap::new(),
            exact: HashMap::new(),
            ranges: RangeIndex::default(),
            unsynced: BTreeSet::new(),
            ready: BTreeSet::new(),
            fed_revision: revision,
            catch_up_after: 0,
            scratch: Vec::new(),
        }
    }

    /// The last revision fed.
    pub fn revision(&self) -> i64 {
        self.fed_revision
    }

    /// Watchers registered (compacted ones count until their notice is taken).
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// True if no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Watchers still catching up from the store.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
    }

    /// True if watcher `id` is registered and synced.
    pub fn is_synced(&self, id: WatchId) -> bool {
        self.watchers.get(&id).is_some_and(|w| w.synced)
    }

    /// Registers a watcher.
    pub fn watch(&mut self, id: WatchId, spec: WatchSpec) -> Result<(), WatchError> {
        if self.watchers.contains_key(&id) {
            return Err(WatchError::DuplicateId(id));
        }
        if spec.key.is_empty() && spec.range_end.is_empty() {
            return Err(WatchError::EmptyKey);
        }
        let shape = shape_of(&spec.key, &spec.range_end);
        let start = spec.start_revision;
        let in_past = start > 0 && start <= self.fed_revision;
        let next_rev = if in_past { start } else { start.max(self.fed_revision + 1) };
        let w = Watcher {
            spec,
            shape,
            synced: !in_past,
            next_rev,
            outbox: VecDeque::new(),
            compacted: None,
            paused: false,
            touched_rev: 0,
        };
        if in_past {
            self.unsynced.insert(id);
        } else {
            self.index(id, &w);
        }
        self.watchers.insert(id, w);
        Ok(())
    }

    /// Removes a watcher and whatever it had buffered. False if it was not registered.
    pub fn cancel(&mut self, id: WatchId) -> bool {
        let Some(w) = self.watchers.remove(&id) else {
            return false;
        };
        if w.synced {
            self.unindex(id, &w);
        }
        self.unsynced.remove(&id);
        self.ready.remove(&id);
        true
    }

    fn index(&mut self, id: WatchId, w: &Watcher) {
        match &w.shape {
            Shape::Exact => self.exact.entry(w.spec.key.clone()).or_default().push(id),
            Shape::Range(end) => self.ranges.insert(id, w.spec.key.clone(), end.clone()),
            Shape::Empty => {}
        }
    }

    fn unindex(&mut self, id: WatchId, w: &Watcher) {
        match &w.shape {
            Shape::Exact => {
                if let Some(ids) = self.exact.get_mut(&w.spec.key) {
                    if let Some(p) = ids.iter().position(|x| *x == id) {
                        ids.swap_remove(p);
                    }
                    if ids.is_empty() {
                        self.exact.remove(&w.spec.key);
                    }
                }
            }
            Shape::Range(_) => self.ranges.remove(id),
            Shape::Empty => {}
        }
    }

    /// Moves a synced watcher back to the unsynced set; it has every event below `next_rev`.
    fn demote(&mut self, id: WatchId, next_rev: i64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        let mut w = w;
        if w.synced {
            self.unindex(id, &w);
            w.synced = false;
            w.next_rev = next_rev;
            self.unsynced.insert(id);
        }
        self.watchers.insert(id, w);
    }

    /// Makes an unsynced watcher synced.
    fn promote(&mut self, id: WatchId) {
        let Some(mut w) = self.watchers.remove(&id) else {
            return;
        };
        if !w.synced {
            w.synced = true;
            self.unsynced.remove(&id);
            self.index(id, &w);
        }
        self.watchers.insert(id, w);
    }

    /// Feeds one commit: its store revision and its events (all at `revision`). Commits must
    /// come in revision order; one that skips revisions sends every synced watcher back to
    /// the store for what it missed. Commits that changed no key (no events) may be skipped
    /// or fed alike.
    pub fn on_commit<S: MvccStore + ?Sized>(&mut self, store: &S, revision: i64, events: &[Event]) {
        if events.is_empty() || revision <= self.fed_revision {
            return;
        }
        if revision != self.fed_revision + 1 {
            let resume = self.fed_revision + 1;
            let synced: Vec<WatchId> =
                self.watchers.iter().filter(|(_, w)| w.synced).map(|(id, _)| *id).collect();
            for id in synced {
                let next = self.watchers.get(&id).map_or(resume, |w| w.next_rev.max(resume));
                self.demote(id, next);
            }
        }
        self.fed_revision = revision;
        let mut touched: Vec<(WatchId, usize)> = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        // Each event's prev_kv, read once, when a watcher first asks for it (allocated only
        // then: most commits have no such watcher, and this runs for every commit).
        let mut prev_kvs: Vec<Option<Option<KeyValue>>> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            scratch.clear();
            if let Some(ids) = self.exact.get(&ev.kv.key) {
                scratch.extend_from_slice(ids);
            }
            self.ranges.query(&ev.kv.key, &mut scratch);
            for id in &scratch {
                let Some(w) = self.watchers.get_mut(id) else {
                    continue;
                };
                if !w.synced || revision < w.next_rev || !w.wants(ev) {
                    continue;
                }
                if w.touched_rev != revision {
                    w.touched_rev = revision;
                    touched.push((*id, w.outbox.len()));
                }
                let prev_kv = if w.spec.prev_kv {
                    if prev_kvs.is_empty() {
                        prev_kvs.resize(events.len(), None);
                    }
                    prev_kvs[i].get_or_insert_with(|| prev_kv_of(store, events, i)).clone()
                } else {
                    None
                };
                w.outbox.push_back(Event { kind: ev.kind, kv: ev.kv.clone(), prev_kv });
            }
        }
        self.scratch = scratch;
        let max = self.config.max_buffered_events;
        for (id, before) in touched {
            let overflow = self
                .watchers
                .get_mut(&id)
                .map(|w| {
                    let over = w.outbox.len() > max && before > 0;
                    if over {
                        w.outbox.truncate(before);
                    }
                    over
                })
                .unwrap_or(false);
            if overflow {
                self.demote(id, revision);
            } else {
                self.ready.insert(id);
            }
        }
    }

    /// Feeds unsynced watchers from `store`, at most about `budget_events` events in all
    /// (never splitting a revision), taking watchers in turn across calls. Returns the
    /// events buffered. Errors are the store's fatal ones.
    pub fn catch_up<S: MvccStore + ?Sized>(
        &mut self,
        store: &S,
        budget_events: usize,
    ) -> Result<usize, MvccError> {
        let mut order: Vec<WatchId> =
            self.unsynced.range(self.catch_up_after.saturating_add(1)..).copied().collect();
        order.extend(self.unsynced.range(..=self.catch_up_after).copied());
        let max = self.config.max_buffered_events;
        let fed = self.fed_revision;
        let mut delivered = 0usize;
        for id in order {
            if delivered >= budget_events.max(1) {
                break;
            }
            self.catch_up_after = id;
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            if w.paused || w.outbox.len() >= max {
                continue;
            }
            if w.next_rev > fed {
                self.promote(id);
                continue;
            }
            let limit = (max - w.outbox.len()).min(budget_events.max(1) - delivered).max(1);
            let batch = match store.events_since(w.next_rev, &w.spec.key, &w.spec.range_end, limit)
            {
                Ok(batch) => batch,
                Err(MvccError::Compacted { compacted, .. }) => {
                    w.compacted = Some(compacted);
                    self.unsynced.remove(&id);
                    self.ready.insert(id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for ev in &batch.events {
                if ev.kv.mod_revision > fed {
                    break;
                }
                if w.wants(ev) {
                    let copy = w.copy_of(ev);
                    w.outbox.push_back(copy);
                    delivered += 1;
                }
            }
            w.next_rev = batch.next_revision.min(fed + 1).max(w.next_rev);
            if !w.outbox.is_empty() {
                self.ready.insert(id);
            }
            if w.next_rev > fed {
                self.promote(id);
            }
        }
        Ok(delivered)
    }

    /// Stops delivering to a watcher (its consumer is full); it keeps buffering up to the
    /// limit, then falls back to the store.
    pub fn pause(&mut self, id: WatchId) {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.paused = true;
        }
    }

    /// Resumes delivery to a paused watcher.
    pub fn resume(&mut self, id: WatchId) {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.paused = false;
        }
    }

    /// Takes up to about `max_events` buffered events (whole revisions) of every watcher
    /// that has some and is not paused, plus compaction notices.
    pub fn poll(&mut self, max_events: usize) -> Vec<WatchBatch> {
        let ids: Vec<WatchId> = self.ready.iter().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            if self.watchers.get(&id).is_some_and(|w| w.paused) {
                continue;
            }
            while let Some(batch) = self.take(id, max_events) {
                let last = batch.is_canceled() || !self.ready.contains(&id);
                out.push(batch);
                if last {
                    break;
                }
            }
        }
        out
    }

    /// Takes up to about `max_events` buffered events (whole revisions) of one watcher, or
    /// its compaction notice once its buffer is empty (which removes the watcher).
    pub fn take(&mut self, id: WatchId, max_events: usize) -> Option<WatchBatch> {
        let fed = self.fed_revision;
        let Some(w) = self.watchers.get_mut(&id) else {
            self.ready.remove(&id);
            return None;
        };
        if !w.outbox.is_empty() {
            let mut n = max_events.max(1).min(w.outbox.len());
            let last_rev = w.outbox.get(n - 1).map_or(0, |e| e.kv.mod_revision);
            while w.outbox.get(n).is_some_and(|e| e.kv.mod_revision == last_rev) {
                n += 1;
            }
            let events: Vec<Event> = w.outbox.drain(..n).collect();
            let revision = if !w.outbox.is_empty() {
                last_rev
            } else if w.synced {
                fed
            } else {
                (w.next_rev - 1).max(last_rev)
            };
            if w.outbox.is_empty() && w.compacted.is_none() {
                self.ready.remove(&id);
            }
            return Some(WatchBatch { id, events, revision, compact_revision: 0 });
        }
        if let Some(compacted) = w.compacted {
            self.watchers.remove(&id);
            self.ready.remove(&id);
            return Some(WatchBatch {
                id,
                events: Vec::new(),
                revision: fed,
                compact_revision: compacted,
            });
        }
        self.ready.remove(&id);
        None
    }

    /// The revision a progress response for these watchers may carry: the fed revision if
    /// every one of them is synced with nothing buffered, else `None` (an answer then could
    /// claim events the watcher has not been sent).
    pub fn progress(&self, ids: &[WatchId]) -> Option<i64> {
        ids.iter()
            .all(|id| self.watchers.get(id).is_some_and(|w| w.synced && w.outbox.is_empty()))
            .then_some(self.fed_revision)
    }

    /// Empty progress batches for every synced watcher that asked for them
    /// (`progress_notify`), is not paused and has nothing buffered. Call it now and then
    /// (etcd: every 10 minutes).
    pub fn progress_notify(&self) -> Vec<WatchBatch> {
        let mut out: Vec<WatchBatch> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.spec.progress_notify && w.synced && !w.paused && w.outbox.is_empty())
            .map(|(id, _)| WatchBatch {
                id: *id,
                events: Vec::new(),
                revision: self.fed_revision,
                compact_revision: 0,
            })
            .collect();
        out.sort_by_key(|b| b.id);
        out
    }

    /// The store was replaced (a snapshot was installed) and is now at `revision`: every
    /// watcher goes back to the store from where it was, so it misses nothing and gets
    /// nothing twice (or a compaction notice).
    pub fn reset(&mut self, revision: i64) {
        let resume = self.fed_revision + 1;
        let synced: Vec<WatchId> =
            self.watchers.iter().filter(|(_, w)| w.synced).map(|(id, _)| *id).collect();
        for id in synced {
            let next = self.watchers.get(&id).map_or(resume, |w| w.next_rev.max(resume));
            self.demote(id, next);
        }
        self.fed_revision = revision;
    }
}

/// Range watchers, for "which ranges contain this key" in O(log n + matches).
#[derive(Debug, Default)]
struct RangeIndex {
    /// Sorted by start: starts, ends, ids, liveness, and per implicit-tree node the
    /// largest end in its subtree.
    starts: Vec<Bytes>,
    ends: Vec<End>,
    ids: Vec<WatchId>,
    alive: Vec<bool>,
    max_end: Vec<End>,
    built_pos: HashMap<WatchId, usize>,
    dead: usize,
    /// Recently added, not yet in the sorted part.
    pending: Vec<(Bytes, End, WatchId)>,
}

impl RangeIndex {
    fn pending_max(&self) -> usize {
        4usize.max(self.starts.len().isqrt())
    }

    fn insert(&mut self, id: WatchId, start: Bytes, end: End) {
        self.pending.push((start, end, id));
        if self.pending.len() > self.pending_max() {
            self.rebuild();
        }
    }

    fn remove(&mut self, id: WatchId) {
        if let Some(i) = self.built_pos.remove(&id) {
            if let Some(a) = self.alive.get_mut(i) {
                *a = false;
            }
            self.dead += 1;
            if self.dead > 16 && self.dead * 2 > self.starts.len() {
                self.rebuild();
            }
        } else if let Some(p) = self.pending.iter().position(|(_, _, x)| *x == id) {
            self.pending.swap_remove(p);
        }
    }

    fn rebuild(&mut self) {
        let mut all: Vec<(Bytes, End, WatchId)> = std::mem::take(&mut self.pending);
        for i in 0..self.starts.len() {
            if self.alive[i] {
                all.push((self.starts[i].clone(), self.ends[i].clone(), self.ids[i]));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        self.starts.clear();
        self.ends.clear();
        self.ids.clear();
        self.built_pos.clear();
        for (i, (s, e, id)) in all.into_iter().enumerate() {
            self.starts.push(s);
            self.ends.push(e);
            self.ids.push(id);
            self.built_pos.insert(id, i);
        }
        self.alive = vec![true; self.starts.len()];
        self.max_end = self.ends.clone();
        self.dead = 0;
        let n = self.starts.len();
        self.build_max(0, n);
    }

    /// Fills `max_end` for the implicit tree over `[lo, hi)`; returns its largest end.
    fn build_max(&mut self, lo: usize, hi: usize) -> Option<End> {
        if lo >= hi {
            return None;
        }
        let mid = lo + (hi - lo) / 2;
        let mut m = self.ends[mid].clone();
        if let Some(l) = self.build_max(lo, mid) {
            m = m.max(l);
        }
        if let Some(r) = self.build_max(mid + 1, hi) {
            m = m.max(r);
        }
        self.max_end[mid] = m.clone();
        Some(m)
    }

    fn query(&self, key: &[u8], out: &mut Vec<WatchId>) {
        self.query_built(0, self.starts.len(), key, out);
        for (start, end, id) in &self.pending {
            if start.as_ref() <= key && end.above(key) {
                out.push(*id);
            }
        }
    }

    fn query_built(&self, lo: usize, hi: usize, key: &[u8], out: &mut Vec<WatchId>) {
        if lo >= hi {
            return;
        }
        let mid = lo + (hi - lo) / 2;
        if !self.max_end[mid].above(key) {
            return;
        }
        self.query_built(lo, mid, key, out);
        if self.starts[mid].as_ref() <= key {
            if self.alive[mid] && self.ends[mid].above(key) {
                out.push(self.ids[mid]);
            }
            self.query_built(mid + 1, hi, key, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_storage::mvcc::{MemStore, MvccTxn};

    /// A put event's missing prev_kv comes from an earlier change of the key in the same
    /// commit, else from the store at the revision before; a create has none.
    #[test]
    fn prev_kv_is_filled_from_the_commit_and_the_store() {
        let store = MemStore::new();
        let mut txn = store.write_txn().expect("txn");
        txn.put(b"a", b"1", 0).expect("put");
        txn.commit(1).expect("commit");
        let mut hub = WatchHub::new(store.current_revision(), WatchConfig::default());
        let spec = WatchSpec {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"\0"),
            prev_kv: true,
            ..WatchSpec::default()
        };
        hub.watch(1, spec).expect("watch");
        let kv = |key: &'static [u8], value: &'static [u8], version: i64| KeyValue {
            key: Bytes::from_static(key),
            create_revision: 2,
            mod_revision: 3,
            version,
            lease: 0,
            value: Bytes::from_static(value),
        };
        let put = |kv: KeyValue| Event { kind: EventKind::Put, kv, prev_kv: None };
        // Two changes of one key in one commit (the store's own rules allow it).
        let events = [put(kv(b"a", b"2", 2)), put(kv(b"a", b"3", 3)), put(kv(b"b", b"1", 1))];
        hub.on_commit(&store, 3, &events);
        let got: Vec<Option<Bytes>> = hub
            .poll(16)
            .into_iter()
            .flat_map(|b| b.events)
            .map(|e| e.prev_kv.map(|p| p.value))
            .collect();
        assert_eq!(
            got,
            vec![Some(Bytes::from_static(b"1")), Some(Bytes::from_static(b"2")), None],
            "prev of the first from the store, of the second from the commit, none for a create"
        );
    }

    #[test]
    fn range_index_matches_a_scan() {
        let mut idx = RangeIndex::default();
        let mut all: Vec<(Vec<u8>, End, WatchId)> = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8 % 20
        };
        for id in 0..300u64 {
            let a = next();
            let b = next();
            let start = vec![b'a' + a];
            let end = if b % 7 == 0 {
                End::Unbounded
            } else {
                End::Key(Bytes::from(vec![b'a' + a + 1 + b % 5]))
            };
            idx.insert(id, Bytes::from(start.clone()), end.clone());
            all.push((start, end, id));
            if id % 3 == 0 {
                let victim = (next() as u64 * 7) % (id + 1);
                idx.remove(victim);
                all.retain(|x| x.2 != victim);
            }
        }
        for k in 0..30u8 {
            let key = [b'a' + k];
            let mut got = Vec::new();
            idx.query(&key, &mut got);
            got.sort_unstable();
            let mut want: Vec<WatchId> = all
                .iter()
                .filter(|(s, e, _)| s.as_slice() <= &key[..] && e.above(&key))
                .map(|x| x.2)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "key {key:?}");
        }
    }
}
