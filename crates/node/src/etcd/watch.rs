//! etcd's Watch service: one bidirectional stream per client carries many watchers, with the
//! semantics of etcd's `v3rpc/watch.go` over the group's shared [`WatchHub`].
//!
//! How it is built, and why:
//! - **One hub, one dispatcher.** Every watcher of every stream is registered in the group's
//!   hub under a node-wide id taken from an atomic counter (the hub's ids are global, the
//!   client's are per stream). Each stream maps the ids its client sees — chosen by the
//!   client, or assigned from 0 up, skipping ids in use, as etcd does — to hub ids. A single
//!   dispatcher task per node drains the hub after every applied batch and routes each batch
//!   to its stream's queue: a commit costs one wake-up and work in proportion to the
//!   watchers it touched, however many streams are open.
//! - **No lost wake-ups.** The dispatcher creates (and enables) its `hub_notify` future
//!   before it looks at the hub, so a batch applied while it works wakes it again; requests
//!   that change the hub (create, resume) wake it through a `Notify` permit, which is kept
//!   when nobody waits.
//! - **Order.** A stream's responses go through one queue. Created and canceled responses
//!   are queued under the hub lock, the lock the dispatcher routes under, so a watcher's
//!   created response comes before its first event and nothing of it follows its canceled
//!   response. Events come in revision order without gaps or duplicates (the hub's rules).
//! - **Slow clients.** The queue is the only buffer of a stream. Past
//!   [`QUEUE_EVENTS_HIGH`] events or [`QUEUE_RESPONSES_HIGH`] responses the stream's watchers
//!   are paused in the hub, which keeps buffering up to its own bound and then sends them
//!   back to the store to catch up (nothing is lost; etcd's "victim" watchers); they resume
//!   when the client has drained the queue to a quarter of those marks. Memory per stream
//!   is bounded by the marks plus one batch per watcher.
//! - **Compaction.** A watcher whose next revision was compacted away gets etcd's response
//!   (`compact_revision` set, `canceled`) and is removed, as etcd does.
//! - **Progress.** A progress request is answered (watch id -1, etcd's broadcast id) at the
//!   hub's revision as soon as every watcher of the stream is synced with nothing buffered,
//!   never earlier, so the revision never claims an event the client has not been sent
//!   (etcd 3.5's rule). Watchers created with `progress_notify` get an empty response every
//!   [`PROGRESS_NOTIFY_INTERVAL`] while idle (etcd's default interval).
//! - **Fragments.** A watcher created with `fragment` gets responses larger than the
//!   node's `max_request_bytes` split as etcd splits them (`fragment` set on all but the
//!   last piece).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use prost::Message;
use quorumkv_etcd_proto::etcdserverpb::watch_server::Watch;
use quorumkv_etcd_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use quorumkv_kv::watch::{WatchBatch, WatchId, WatchSpec};
use tokio::sync::Notify;
use tonic::codegen::BoxStream;
use tonic::{Status, async_trait};

use super::Api;
use crate::group::Shared;

/// Most events in one response (whole revisions are never split, so one may exceed it).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Events queued for a stream above which its watchers are paused.
pub const QUEUE_EVENTS_HIGH: usize = 8192;
/// Responses queued for a stream above which its watchers are paused.
pub const QUEUE_RESPONSES_HIGH: usize = 256;
/// Events the dispatcher reads from the store for catching-up watchers per round; the group
/// loop catches up too, after every applied batch.
const CATCH_UP_BUDGET: usize = 4096;
/// How often watchers created with `progress_notify` hear the current revision (etcd's
/// default `--experimental-watch-progress-notify-interval`).
pub const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// The dispatcher looks again at least this often, so it notices a stopped service.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// etcd's `AutoWatchID`: the client lets the server pick the id.
const AUTO_WATCH_ID: i64 = 0;
/// The watch id of a progress response meant for every watcher of a stream.
const BROADCAST_WATCH_ID: i64 = -1;

/// One watcher as its stream knows it.
struct ClientWatcher {
    hub: WatchId,
}

/// What a stream has queued for its client and which watchers it owns.
#[derive(Default)]
struct StreamState {
    queue: VecDeque<WatchResponse>,
    queued_events: usize,
    /// Client watch id → the watcher.
    watchers: HashMap<i64, ClientWatcher>,
    next_auto_id: i64,
    /// Its watchers are paused in the hub because the client reads too slowly.
    paused: bool,
    /// A progress request waits for the watchers to be synced.
    progress_pending: bool,
    waker: Option<Waker>,
    /// The stream is over: the client went away or broke the protocol.
    closed: bool,
}

impl StreamState {
    fn push(&mut self, resp: WatchResponse) {
        self.queued_events += resp.events.len();
        self.queue.push_back(resp);
    }

    fn over_high_water(&self) -> bool {
        self.queued_events > QUEUE_EVENTS_HIGH || self.queue.len() > QUEUE_RESPONSES_HIGH
    }

    fn under_low_water(&self) -> bool {
        self.queued_events <= QUEUE_EVENTS_HIGH / 4 && self.queue.len() <= QUEUE_RESPONSES_HIGH / 4
    }

    fn hub_ids(&self) -> Vec<WatchId> {
        self.watchers.values().map(|w| w.hub).collect()
    }

    /// Picks the id of a new watcher (etcd's rule), or `None` if the client's is taken.
    fn assign_id(&mut self, requested: i64) -> Option<i64> {
        if requested != AUTO_WATCH_ID {
            return (!self.watchers.contains_key(&requested)).then_some(requested);
        }
        while self.watchers.contains_key(&self.next_auto_id) {
            self.next_auto_id += 1;
        }
        let id = self.next_auto_id;
        self.next_auto_id += 1;
        Some(id)
    }
}

/// One client stream.
struct WatchStream {
    id: u64,
    state: Mutex<StreamState>,
}

/// Who owns a hub watcher.
struct Owner {
    stream: Arc<WatchStream>,
    client_id: i64,
    fragment: bool,
}

#[derive(Default)]
struct Routes {
    owners: HashMap<WatchId, Owner>,
    /// Streams with an unanswered progress request.
    progress_waiting: HashMap<u64, Weak<WatchStream>>,
}

/// The node's watch streams and the hub they share. Locks are taken in the order hub,
/// routes, stream state, never the other way.
struct Router {
    api: Api,
    shared: Arc<Shared>,
    next_hub_id: AtomicU64,
    next_stream_id: AtomicU64,
    routes: Mutex<Routes>,
    kick: Arc<Notify>,
    max_response_bytes: usize,
}

impl Router {
    fn response(&self, revision: i64) -> WatchResponse {
        WatchResponse { header: Some(self.api.header(revision)), ..WatchResponse::default() }
    }

    fn create(&self, stream: &Arc<WatchStream>, req: WatchCreateRequest) {
        let mut hub = self.shared.hub.lock();
        let mut routes = self.routes.lock();
        let mut st = stream.state.lock();
        let revision = hub.revision();
        let refuse = |st: &mut StreamState, reason: &str| {
            st.push(WatchResponse {
                watch_id: BROADCAST_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..self.response(revision)
            });
        };
        let mut spec = WatchSpec::from_create_request(&req);
        // etcd: an empty key means the smallest key, "\0".
        if spec.key.is_empty() {
            spec.key = Bytes::from_static(b"\0");
        }
        let inverted = !spec.range_end.is_empty()
            && spec.range_end.as_ref() != [0u8]
            && spec.key >= spec.range_end;
        let assigned = if inverted { None } else { st.assign_id(req.watch_id) };
        let waker = match assigned {
            None if inverted => {
                refuse(&mut st, "mvcc: watcher range is empty");
                st.waker.take()
            }
            None => {
                refuse(&mut st, "mvcc: duplicate watch ID provided on the WatchStream");
                st.waker.take()
            }
            Some(client_id) => {
                let hub_id = self.next_hub_id.fetch_add(1, Relaxed);
                match hub.watch(hub_id, spec) {
                    Err(e) => refuse(&mut st, &e.to_string()),
                    Ok(()) => {
                        if st.paused {
                            hub.pause(hub_id);
                        }
                        st.watchers.insert(client_id, ClientWatcher { hub: hub_id });
                        routes.owners.insert(
                            hub_id,
                            Owner { stream: stream.clone(), client_id, fragment: req.fragment },
                        );
                        st.push(WatchResponse {
                            watch_id: client_id,
                            created: true,
                            ..self.response(revision)
                        });
                    }
                }
                st.waker.take()
            }
        };
        drop((st, routes, hub));
        if let Some(w) = waker {
            w.wake();
        }
        // A watcher starting in the past needs the dispatcher to read the store.
        self.kick.notify_one();
    }

    fn cancel(&self, stream: &WatchStream, client_id: i64) {
        let mut hub = self.shared.hub.lock();
        let mut routes = self.routes.lock();
        let mut st = stream.state.lock();
        // etcd answers nothing for an id it does not know.
        let Some(w) = st.watchers.remove(&client_id) else { return };
        hub.cancel(w.hub);
        routes.owners.remove(&w.hub);
        let revision = hub.revision();
        st.push(WatchResponse { watch_id: client_id, canceled: true, ..self.response(revision) });
        let waker = st.waker.take();
        drop((st, routes, hub));
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn progress(&self, stream: &Arc<WatchStream>) {
        let hub = self.shared.hub.lock();
        let mut routes = self.routes.lock();
        let mut st = stream.state.lock();
        match hub.progress(&st.hub_ids()) {
            Some(revision) => {
                st.push(WatchResponse { watch_id: BROADCAST_WATCH_ID, ..self.response(revision) });
                let waker = st.waker.take();
                drop((st, routes, hub));
                if let Some(w) = waker {
                    w.wake();
                }
            }
            None => {
                st.progress_pending = true;
                routes.progress_waiting.insert(stream.id, Arc::downgrade(stream));
            }
        }
    }

    /// Drains the hub into the streams' queues; true if more catching up is waiting.
    fn pump(&self, progress_due: bool) -> bool {
        let mut wake = Vec::new();
        let mut more = false;
        {
            let mut hub = self.shared.hub.lock();
            if hub.unsynced_len() > 0 {
                match hub.catch_up(&*self.shared.store, CATCH_UP_BUDGET) {
                    Ok(n) => more = n >= CATCH_UP_BUDGET,
                    Err(e) => tracing::warn!(error = %e, "watch catch-up from the store failed"),
                }
            }
            let mut batches = hub.poll(MAX_EVENTS_PER_RESPONSE);
            if progress_due {
                batches.extend(hub.progress_notify());
            }
            let mut routes = self.routes.lock();
            for batch in batches {
                let hub_id = batch.id;
                let canceled = batch.is_canceled();
                let Some(owner) = routes.owners.get(&hub_id) else { continue };
                let (stream, client_id, fragment) =
                    (owner.stream.clone(), owner.client_id, owner.fragment);
                if canceled {
                    routes.owners.remove(&hub_id);
                }
                let mut st = stream.state.lock();
                if canceled {
                    st.watchers.remove(&client_id);
                }
                let resp = self.batch_response(batch, client_id);
                if fragment {
                    for piece in split_fragments(resp, self.max_response_bytes) {
                        st.push(piece);
                    }
                } else {
                    st.push(resp);
                }
                if !st.paused && st.over_high_water() {
                    st.paused = true;
                    for id in st.hub_ids() {
                        hub.pause(id);
                    }
                }
                wake.extend(st.waker.take());
            }
            routes.progress_waiting.retain(|_, weak| {
                let Some(stream) = weak.upgrade() else { return false };
                let mut st = stream.state.lock();
                if !st.progress_pending {
                    return false;
                }
                match hub.progress(&st.hub_ids()) {
                    Some(revision) => {
                        st.progress_pending = false;
                        st.push(WatchResponse {
                            watch_id: BROADCAST_WATCH_ID,
                            ..self.response(revision)
                        });
                        wake.extend(st.waker.take());
                        false
                    }
                    None => true,
                }
            });
        }
        for w in wake {
            w.wake();
        }
        more
    }

    fn batch_response(&self, batch: WatchBatch, client_id: i64) -> WatchResponse {
        let revision = batch.revision;
        let mut resp = batch.into_response(client_id);
        resp.header = Some(self.api.header(revision));
        resp
    }

    /// Resumes a paused stream once its client has drained the queue.
    fn resume(&self, stream: &WatchStream) {
        let mut hub = self.shared.hub.lock();
        let mut st = stream.state.lock();
        if !(st.paused && st.under_low_water()) {
            return;
        }
        st.paused = false;
        for id in st.hub_ids() {
            hub.resume(id);
        }
        drop((st, hub));
        self.kick.notify_one();
    }

    /// Forgets a stream and every watcher it had.
    fn close(&self, stream: &WatchStream) {
        let mut hub = self.shared.hub.lock();
        let mut routes = self.routes.lock();
        let mut st = stream.state.lock();
        for (_, w) in st.watchers.drain() {
            hub.cancel(w.hub);
            routes.owners.remove(&w.hub);
        }
        routes.progress_waiting.remove(&stream.id);
        st.queue.clear();
        st.queued_events = 0;
        st.closed = true;
        let waker = st.waker.take();
        drop((st, routes, hub));
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Splits a response whose encoding exceeds `limit` bytes the way etcd does: as many events
/// per piece as fit (at least one), `fragment` set on every piece but the last.
fn split_fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.events.len() <= 1 || resp.encoded_len() <= limit {
        return vec![resp];
    }
    let empty = WatchResponse { events: Vec::new(), fragment: true, ..resp.clone() };
    let base = empty.encoded_len();
    let mut out = Vec::new();
    let mut piece = empty.clone();
    let mut size = base;
    for ev in resp.events {
        // Field tag and length prefix of the embedded event.
        let n = ev.encoded_len() + 1 + prost::length_delimiter_len(ev.encoded_len());
        if !piece.events.is_empty() && size + n > limit {
            out.push(std::mem::replace(&mut piece, empty.clone()));
            size = base;
        }
        size += n;
        piece.events.push(ev);
    }
    piece.fragment = false;
    out.push(piece);
    out
}

/// The dispatcher: wakes after every applied batch, on a kick, and for progress notices.
async fn dispatch(router: Weak<Router>, shared: Arc<Shared>, kick: Arc<Notify>) {
    let mut next_progress = tokio::time::Instant::now() + PROGRESS_NOTIFY_INTERVAL;
    loop {
        let applied = shared.hub_notify.notified();
        tokio::pin!(applied);
        // Registered before the hub is looked at: a batch applied from here on wakes us.
        applied.as_mut().enable();
        let now = tokio::time::Instant::now();
        let due = now >= next_progress;
        if due {
            next_progress = now + PROGRESS_NOTIFY_INTERVAL;
        }
        let more = match router.upgrade() {
            Some(r) => r.pump(due),
            None => return,
        };
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = &mut applied => {}
            _ = kick.notified() => {}
            _ = tokio::time::sleep_until(next_progress.min(now + IDLE_RECHECK)) => {}
        }
    }
}

/// Reads a client's requests until it stops sending.
async fn receive(
    router: Arc<Router>,
    stream: Arc<WatchStream>,
    mut inbound: tonic::Streaming<WatchRequest>,
) {
    loop {
        match inbound.message().await {
            Ok(Some(req)) => match req.request_union {
                Some(watch_request::RequestUnion::CreateRequest(c)) => router.create(&stream, c),
                Some(watch_request::RequestUnion::CancelRequest(c)) => {
                    router.cancel(&stream, c.watch_id)
                }
                Some(watch_request::RequestUnion::ProgressRequest(_)) => router.progress(&stream),
                // etcd ignores a request that carries nothing.
                None => {}
            },
            // The client closed its side; etcd keeps delivering until it goes away.
            Ok(None) => return,
            Err(_) => {
                router.close(&stream);
                return;
            }
        }
        if stream.state.lock().closed {
            return;
        }
    }
}

/// The response side of one stream: pops the queue, resumes paused watchers as it drains,
/// and forgets the stream's watchers when dropped (the client went away).
struct Outbound {
    router: Arc<Router>,
    stream: Arc<WatchStream>,
}

impl Stream for Outbound {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (item, resume) = {
            let mut st = self.stream.state.lock();
            match st.queue.pop_front() {
                Some(resp) => {
                    st.queued_events -= resp.events.len();
                    let resume = st.paused && st.under_low_water();
                    (resp, resume)
                }
                None if st.closed => return Poll::Ready(None),
                None => {
                    st.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        if resume {
            self.router.resume(&self.stream);
        }
        Poll::Ready(Some(Ok(item)))
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.router.close(&self.stream);
    }
}

/// The Watch service.
pub struct WatchService {
    router: Arc<Router>,
}

impl WatchService {
    /// The Watch service of a node; starts its dispatcher task (which ends shortly after the
    /// service and its streams are gone). Must be called inside a tokio runtime.
    pub fn new(api: Api, max_response_bytes: usize) -> Self {
        let shared = api.group().shared.clone();
        let kick = Arc::new(Notify::new());
        let router = Arc::new(Router {
            api,
            shared: shared.clone(),
            next_hub_id: AtomicU64::new(1),
            next_stream_id: AtomicU64::new(1),
            routes: Mutex::new(Routes::default()),
            kick: kick.clone(),
            max_response_bytes: max_response_bytes.max(1),
        });
        tokio::spawn(dispatch(Arc::downgrade(&router), shared, kick));
        Self { router }
    }
}

#[async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: tonic::Request<tonic::Streaming<WatchRequest>>,
    ) -> Result<tonic::Response<BoxStream<WatchResponse>>, Status> {
        let stream = Arc::new(WatchStream {
            id: self.router.next_stream_id.fetch_add(1, Relaxed),
            state: Mutex::new(StreamState::default()),
        });
        tokio::spawn(receive(self.router.clone(), stream.clone(), req.into_inner()));
        let out = Outbound { router: self.router.clone(), stream };
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use quorumkv_etcd_proto::mvccpb::{Event, KeyValue};

    use super::*;

    #[test]
    fn auto_ids_start_at_zero_and_skip_ids_in_use() {
        let mut st = StreamState::default();
        assert_eq!(st.assign_id(1), Some(1));
        st.watchers.insert(1, ClientWatcher { hub: 10 });
        assert_eq!(st.assign_id(AUTO_WATCH_ID), Some(0));
        st.watchers.insert(0, ClientWatcher { hub: 11 });
        assert_eq!(st.assign_id(AUTO_WATCH_ID), Some(2), "1 is taken by the client's choice");
        assert_eq!(st.assign_id(1), None, "a client id in use is refused");
    }

    #[test]
    fn fragments_keep_every_event_in_order_and_mark_all_but_the_last() {
        let events: Vec<Event> = (0..10)
            .map(|i| Event {
                kv: Some(KeyValue {
                    key: Bytes::from(format!("key{i}")),
                    value: Bytes::from(vec![b'v'; 100]),
                    mod_revision: 5,
                    ..KeyValue::default()
                }),
                ..Event::default()
            })
            .collect();
        let resp = WatchResponse { watch_id: 3, events: events.clone(), ..Default::default() };
        let pieces = split_fragments(resp.clone(), 300);
        assert!(pieces.len() > 1);
        for p in &pieces {
            assert!(p.encoded_len() <= 300 || p.events.len() == 1, "piece too large");
            assert_eq!(p.watch_id, 3);
        }
        assert!(pieces[..pieces.len() - 1].iter().all(|p| p.fragment));
        assert!(!pieces.last().is_some_and(|p| p.fragment));
        let joined: Vec<Event> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
        assert_eq!(split_fragments(resp.clone(), 1 << 20), vec![resp], "small: untouched");
    }

    #[test]
    fn queue_marks_pause_and_resume_with_hysteresis() {
        let mut st = StreamState::default();
        let ev = Event::default();
        for _ in 0..QUEUE_RESPONSES_HIGH {
            st.push(WatchResponse { events: vec![ev.clone()], ..Default::default() });
        }
        assert!(!st.over_high_water());
        st.push(WatchResponse::default());
        assert!(st.over_high_water());
        while st.queue.len() > QUEUE_RESPONSES_HIGH / 2 {
            let r = st.queue.pop_front().unwrap_or_default();
            st.queued_events -= r.events.len();
        }
        assert!(!st.over_high_water() && !st.under_low_water(), "between the marks");
        while st.queue.len() > QUEUE_RESPONSES_HIGH / 4 {
            let r = st.queue.pop_front().unwrap_or_default();
            st.queued_events -= r.events.len();
        }
        assert!(st.under_low_water());
    }
}
