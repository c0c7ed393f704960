//! The driver of one Raft group on a real node: one tokio task owns the replica and its state
//! machine, and runs the loop the Raft crate's output contract prescribes.
//!
//! Each turn of the loop:
//! 1. delivers the ticks that came due first (after a pause the missed ticks come before any
//!    message, so leases and timeouts see the real elapsed time);
//! 2. takes everything waiting in its inbox (peer messages, proposals, reads, WAL
//!    completions) as one batch — the batch is what makes group commit and message batching
//!    happen without timers;
//! 3. drains `Ready`: sends `messages` at once; hands snapshot, entries and hard state to the
//!    shared WAL writer (one fsync for every group's writes of the moment) and releases
//!    `persisted_messages` only from the completion; applies committed entries to the etcd
//!    state machine, answers the proposers and feeds the watch hub; answers reads whose read
//!    index the state machine has reached.
//!
//! A WAL failure or a fatal apply error stops the group (and the node): carrying on could
//! acknowledge what is not durable or let replicas diverge.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use quorumkv_core::{
    ConfChange, ConfChangeStep, ConfState, EntryKind, GroupId, LogIndex, NodeId, Snapshot, Term,
};
use quorumkv_etcd_proto::etcdserverpb::{LeaseLeasesResponse, LeaseTimeToLiveResponse};
use quorumkv_kv::command::{Command, Request, encode_command};
use quorumkv_kv::watch::{WatchConfig, WatchHub};
use quorumkv_kv::{ApplyError, ApplyOutcome, LeaseClock, StateMachine};
use quorumkv_raft::{Message, Raft, RaftError, ReadId, Ready, Role};
use quorumkv_storage::disk::Disk;
use quorumkv_storage::mvcc::{MvccStore, MvccTxn, RedbStore};
use quorumkv_storage::snapshot::{ChunkSink, SnapshotDecoder, SnapshotFileStore, encode_to_vec};
use quorumkv_storage::wal::{WalOp, WalWriter};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::transport::{PeerInfo, Transport};

/// The key under which the member directory lives in the store's metadata.
const MEMBERS_META: &[u8] = b"quorumkv/members";

/// What a member is, as replicated in the member directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Peer address.
    pub peer_addr: String,
    /// Client address.
    pub client_addr: String,
}

/// Why a request to the group failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// This node does not lead; `leader` is the one it knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
    /// Too many proposals or reads waiting; back off.
    #[error("too many requests in flight; retry later")]
    Busy,
    /// The proposal may or may not have been applied (leadership moved, entry replaced).
    #[error("the outcome is unknown: leadership changed while the request was in flight; retry")]
    Unknown,
    /// The request was refused by the Raft core.
    #[error("{0}")]
    Raft(RaftError),
    /// The command failed deterministically (or fatally) when applied.
    #[error("{0}")]
    Apply(ApplyError),
    /// The group stopped (shutdown or fatal error).
    #[error("the node is stopping: {0}")]
    Stopped(String),
}

impl From<RaftError> for GroupError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader { leader } => GroupError::NotLeader { leader },
            RaftError::Busy(_) | RaftError::TooManyReads(_) => GroupError::Busy,
            other => GroupError::Raft(other),
        }
    }
}

/// An applied proposal: the state machine's outcome and the term it committed in.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What the state machine did.
    pub outcome: ApplyOutcome,
    /// Raft term of the entry.
    pub term: Term,
}

type ProposeReply = oneshot::Sender<Result<Applied, GroupError>>;

/// Inputs of the group loop.
pub enum Input {
    /// A message from a peer.
    Peer(Message),
    /// A client command.
    Propose { cmd: Command, reply: ProposeReply },
    /// A linearizable read barrier: answered once the state machine reached a safe read index.
    Read { reply: oneshot::Sender<Result<(), GroupError>> },
    /// A membership change; answered once applied.
    ConfChange { change: ConfChange, reply: oneshot::Sender<Result<ConfState, GroupError>> },
    /// Hand leadership to `to`.
    Transfer { to: NodeId, reply: oneshot::Sender<Result<(), GroupError>> },
    /// Refresh a lease (leader only); answers the TTL left.
    KeepAlive { id: i64, reply: oneshot::Sender<Result<i64, GroupError>> },
    /// Seconds left on a lease per the leader's clock.
    LeaseRemaining { id: i64, reply: oneshot::Sender<Option<i64>> },
    /// etcd's LeaseTimeToLive (leader only): the lease table lives in the state machine,
    /// which only the loop owns.
    LeaseTimeToLive {
        id: i64,
        keys: bool,
        reply: oneshot::Sender<Result<LeaseTimeToLiveResponse, GroupError>>,
    },
    /// etcd's LeaseLeases from the state machine's lease table.
    LeaseLeases { reply: oneshot::Sender<Result<LeaseLeasesResponse, GroupError>> },
}

/// A WAL submission completed.
struct Persisted {
    marker: Option<(LogIndex, Term)>,
    result: Result<(), String>,
    /// Messages the WAL thread could not hand to the transport (a peer it does not dial yet):
    /// the loop sends them.
    unsent: Vec<Message>,
}

/// Messages that may go once one WAL submission is durable. The WAL thread sends them the
/// moment its fsync returns — one thread wake-up less on the path of a follower's
/// acknowledgement than a detour through the group loop. The loop adds to a submission still
/// in flight (so order is kept), and sends at once if it is already durable.
#[derive(Default)]
struct AfterPersist {
    durable: bool,
    failed: bool,
    messages: Vec<Message>,
}

type AfterPersistSlot = Arc<Mutex<AfterPersist>>;

/// What operators and the API layer see of the group.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupStatus {
    /// This node.
    pub id: NodeId,
    /// Role name.
    pub role: String,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: Term,
    /// Commit index.
    pub commit: LogIndex,
    /// Applied index.
    pub applied: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// The log is compacted through this index (0: never compacted).
    pub snapshot_index: LogIndex,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Joint configuration in force.
    pub joint: bool,
    /// Per-peer match index (leader only).
    pub peers: BTreeMap<NodeId, LogIndex>,
    /// Store revision.
    pub revision: i64,
    /// The group stopped on a fatal error.
    pub failed: Option<String>,
    /// Replicated member directory.
    pub members: Vec<Member>,
}

/// State shared between the loop and the API layer.
pub struct Shared {
    /// Group status, refreshed every loop turn.
    pub status: RwLock<GroupStatus>,
    /// The MVCC store (reads go straight to it once a read barrier passed).
    pub store: Arc<RedbStore>,
    /// The watch hub.
    pub hub: Mutex<WatchHub>,
    /// Woken whenever the hub may have something for a watcher.
    pub hub_notify: Notify,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The leader's read lease as of the loop's last turn, on this process's monotonic clock.
    pub read_lease: RwLock<Option<LeaseWindow>>,
}

/// Until when, and from which applied index on, a leader may answer linearizable reads from
/// its store without a heartbeat round (Raft dissertation §6.4.1). The loop publishes it;
/// client tasks check it without a trip through the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseWindow {
    /// The lease holds before this instant.
    pub deadline: Instant,
    /// The store must have applied this index (the commit index when the window was taken).
    pub commit_index: LogIndex,
}

impl Shared {
    /// True if a linearizable read may be served from the store right now under the leader's
    /// lease. Sound because the deadline comes from ticks the loop never delivers early, and
    /// every write acknowledged before now is either applied here (this leader acknowledges
    /// only what it applied) or at or below `commit_index` (an earlier leader's).
    pub fn lease_read_now(&self) -> bool {
        let Some(window) = *self.read_lease.read() else { return false };
        let ok =
            Instant::now() < window.deadline && self.store.applied_index() >= window.commit_index;
        if ok {
            self.metrics.lease_reads.fetch_add(1, Relaxed);
        }
        ok
    }
}

/// Handle on a running group.
#[derive(Clone)]
pub struct GroupHandle {
    tx: mpsc::Sender<Input>,
    /// Shared state.
    pub shared: Arc<Shared>,
}

impl GroupHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, GroupError>>) -> Input,
    ) -> Result<T, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| GroupError::Stopped("group loop gone".into()))?;
        rx.await.map_err(|_| GroupError::Unknown)?
    }

    /// Proposes a command and waits for it to be applied.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, GroupError> {
        self.call(|reply| Input::Propose { cmd, reply }).await
    }

    /// Waits until a linearizable read may be served from the store.
    pub async fn read_barrier(&self) -> Result<(), GroupError> {
        if self.shared.lease_read_now() {
            return Ok(());
        }
        self.call(|reply| Input::Read { reply }).await
    }

    /// Changes membership (answers once applied).
    pub async fn conf_change(&self, change: ConfChange) -> Result<ConfState, GroupError> {
        self.call(|reply| Input::ConfChange { change, reply }).await
    }

    /// Transfers leadership.
    pub async fn transfer(&self, to: NodeId) -> Result<(), GroupError> {
        self.call(|reply| Input::Transfer { to, reply }).await
    }

    /// Refreshes a lease on the leader.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, GroupError> {
        self.call(|reply| Input::KeepAlive { id, reply }).await
    }

    /// Seconds left on a lease (leader's clock); `None` if unknown here.
    pub async fn lease_remaining(&self, id: i64) -> Option<i64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::LeaseRemaining { id, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// etcd's LeaseTimeToLive, answered by the leader (its clock knows the time left).
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, GroupError> {
        self.call(|reply| Input::LeaseTimeToLive { id, keys, reply }).await
    }

    /// etcd's LeaseLeases, from this replica's lease table.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, GroupError> {
        self.call(|reply| Input::LeaseLeases { reply }).await
    }

    /// The latest status.
    pub fn status(&self) -> GroupStatus {
        self.shared.status.read().clone()
    }

    /// The current term and store revision: what every response header carries, read
    /// without copying the rest of the status (members, peers) per request.
    pub fn term_and_revision(&self) -> (Term, i64) {
        let s = self.shared.status.read();
        (s.term, s.revision)
    }

    /// Delivers a peer message (drops it if the loop is overloaded: Raft resends).
    pub fn deliver(&self, m: Message) {
        if self.tx.try_send(Input::Peer(m)).is_err() {
            self.shared.metrics.peer_messages_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Everything a group needs to start.
pub struct GroupParams {
    /// Group id.
    pub group: GroupId,
    /// Raft configuration (id included).
    pub raft: quorumkv_raft::Config,
    /// Restored Raft state.
    pub restore: quorumkv_raft::RestoreState,
    /// State machine over the store.
    pub sm: StateMachine<RedbStore>,
    /// The node's WAL writer.
    pub wal: Arc<WalWriter>,
    /// Snapshot files.
    pub snapshots: SnapshotFileStore,
    /// The transport.
    pub transport: Transport,
    /// Tick length.
    pub tick: Duration,
    /// Compact the log every this many applied entries.
    pub snapshot_entries: u64,
    /// Proposal bound.
    pub max_inflight_proposals: usize,
    /// Initial members (bootstrap), to seed the member directory.
    pub initial_members: Vec<Member>,
    /// Answer reads without a read barrier (unsafe; tests only).
    pub unsafe_stale_reads: bool,
    /// Offset of the lease clock (unsafe; tests only).
    pub clock_offset_ms: i64,
    /// Publish a read lease that never ends (unsafe; tests only).
    pub unsafe_lease_never_expires: bool,
    /// Compact the log without syncing the store first (unsafe; tests only).
    pub unsafe_compact_before_store_sync: bool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Disk, for snapshot files.
    pub disk: Arc<dyn Disk>,
    /// Where snapshot files live.
    pub snapshot_dir: PathBuf,
}

struct Group {
    group: GroupId,
    id: NodeId,
    raft: Raft,
    sm: StateMachine<RedbStore>,
    wal: Arc<WalWriter>,
    snapshots: Arc<SnapshotFileStore>,
    /// A compaction (store sync or image) is running off the loop; its result comes on this
    /// channel.
    snapshotting: bool,
    snapshot_tx: mpsc::UnboundedSender<Result<Compaction, String>>,
    transport: Transport,
    shared: Arc<Shared>,
    tick: Duration,
    snapshot_entries: u64,
    max_inflight: usize,
    proposals: BTreeMap<LogIndex, (Term, ProposeReply)>,
    conf_waiters: BTreeMap<LogIndex, (Term, oneshot::Sender<Result<ConfState, GroupError>>)>,
    /// Changes applied while the configuration is still joint, answered once it is not.
    leave_waiters: Vec<oneshot::Sender<Result<ConfState, GroupError>>>,
    reads: BTreeMap<ReadId, oneshot::Sender<Result<(), GroupError>>>,
    ready_reads: Vec<(LogIndex, oneshot::Sender<Result<(), GroupError>>)>,
    next_read: ReadId,
    /// Each in-flight WAL submission with the messages waiting for it, oldest first.
    after_persist: VecDeque<AfterPersistSlot>,
    persist_tx: mpsc::UnboundedSender<Persisted>,
    lease_clock: LeaseClock,
    epoch: Instant,
    clock_offset_ms: i64,
    unsafe_stale_reads: bool,
    members: BTreeMap<NodeId, Member>,
    failed: Option<String>,
    was_leader: bool,
    leader: Option<NodeId>,
    /// The commit index moved since the last hard state record was written.
    commit_unwritten: bool,
    /// Ticks handled.
    ticks: u64,
    /// Raft's tick count when the loop started, and the instant its tick schedule starts
    /// from: tick `tick_base + k` is delivered no earlier than `tick_epoch + k * tick`.
    tick_base: u64,
    tick_epoch: Instant,
    /// UNSAFE (tests only): publish the read lease without its end and keep it after losing
    /// leadership, to show that the checkers catch a broken lease.
    unsafe_lease_never_expires: bool,
    /// UNSAFE (tests only): compact the log without syncing the store first, to show that a
    /// power cut after such a compaction is caught.
    unsafe_compact_before_store_sync: bool,
}

/// Starts the group's loop; returns its handle and the join handle of its task.
pub fn start(p: GroupParams) -> Result<(GroupHandle, tokio::task::JoinHandle<()>), GroupError> {
    let raft = Raft::new(p.raft.clone(), p.restore, seed()).map_err(GroupError::Raft)?;
    let store = Arc::clone(p.sm.store());
    let hub = WatchHub::new(p.sm.revision(), WatchConfig::default());
    let shared = Arc::new(Shared {
        status: RwLock::new(GroupStatus::default()),
        store,
        hub: Mutex::new(hub),
        hub_notify: Notify::new(),
        metrics: p.metrics.clone(),
        read_lease: RwLock::new(None),
    });
    let (tx, rx) = mpsc::channel(65_536);
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let (snapshot_tx, snapshot_rx) = mpsc::unbounded_channel();
    let epoch = Instant::now();
    let mut lease_clock = LeaseClock::new(Default::default());
    let members = load_members(&shared.store, &p.initial_members);
    for m in members.values() {
        p.transport.learn(
            m.id,
            PeerInfo {
                name: m.name.clone(),
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
                http_addr: String::new(),
            },
        );
    }
    let mut g = Group {
        group: p.group,
        id: p.raft.id,
        raft,
        wal: p.wal,
        snapshots: Arc::new(p.snapshots),
        snapshotting: false,
        snapshot_tx,
        transport: p.transport,
        shared: shared.clone(),
        tick: p.tick,
        snapshot_entries: p.snapshot_entries.max(1),
        max_inflight: p.max_inflight_proposals,
        proposals: BTreeMap::new(),
        conf_waiters: BTreeMap::new(),
        leave_waiters: Vec::new(),
        reads: BTreeMap::new(),
        ready_reads: Vec::new(),
        next_read: 1,
        after_persist: VecDeque::new(),
        persist_tx,
        lease_clock: {
            lease_clock.sync_with(p.sm.leases(), 0);
            lease_clock
        },
        sm: p.sm,
        epoch,
        clock_offset_ms: p.clock_offset_ms,
        unsafe_stale_reads: p.unsafe_stale_reads,
        members,
        failed: None,
        was_leader: false,
        leader: None,
        commit_unwritten: false,
        ticks: 0,
        tick_base: 0,
        tick_epoch: epoch,
        unsafe_lease_never_expires: p.unsafe_lease_never_expires,
        unsafe_compact_before_store_sync: p.unsafe_compact_before_store_sync,
    };
    g.connect_members();
    g.refresh_status();
    let handle = GroupHandle { tx, shared };
    let task = tokio::spawn(async move { g.run(rx, persist_rx, snapshot_rx).await });
    Ok((handle, task))
}

/// What woke the loop, handled after the ticks that came due.
enum Woke {
    Persisted(Persisted),
    Input(Input),
    Compaction(Result<Compaction, String>),
    Tick,
}

/// Entries a log compaction leaves behind the applied index (etcd keeps 5,000 as well), capped
/// at half of `snapshot_entries`.
const CATCH_UP_ENTRIES: u64 = 5_000;

/// What a compaction run off the loop produced.
enum Compaction {
    /// The store is durable through this index: compact the log there, no image.
    StoreSynced(LogIndex),
    /// An image of the store, saved to its file: compact the log and send it to followers.
    Image(Snapshot),
}

/// Writes a snapshot file (durably) and drops the oldest beyond what the store keeps.
fn save_snapshot_file(snapshots: &SnapshotFileStore, snap: &Snapshot) -> Result<(), String> {
    let mut file = snapshots.create(snap.meta.index, snap.meta.term).map_err(|e| e.to_string())?;
    file.write_chunk(0, &snap.data).map_err(|e| e.to_string())?;
    file.finish().map_err(|e| e.to_string())?;
    let _ = snapshots.gc();
    Ok(())
}

fn seed() -> u64 {
    // Election timeouts must differ between nodes; nothing else depends on this value.
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn load_members(store: &RedbStore, initial: &[Member]) -> BTreeMap<NodeId, Member> {
    let stored: Option<Vec<Member>> =
        store.get_meta(MEMBERS_META).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
    stored.unwrap_or_else(|| initial.to_vec()).into_iter().map(|m| (m.id, m)).collect()
}

impl Group {
    fn now_ms(&self) -> u64 {
        let ms = self.epoch.elapsed().as_millis() as i64 + self.clock_offset_ms;
        ms.max(0) as u64
    }

    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Input>,
        mut persist_rx: mpsc::UnboundedReceiver<Persisted>,
        mut snapshot_rx: mpsc::UnboundedReceiver<Result<Compaction, String>>,
    ) {
        let start = tokio::time::Instant::now();
        self.tick_base = self.raft.tick_count();
        self.tick_epoch = start.into_std();
        let mut next_tick = start + self.tick;
        loop {
            if self.failed.is_some() {
                // Refuse everything from now on; the node's supervisor stops the process.
                *self.shared.read_lease.write() = None;
                while let Some(input) = rx.recv().await {
                    self.refuse(input);
                }
                return;
            }
            let woke = tokio::select! {
                biased;
                p = persist_rx.recv() => match p {
                    Some(p) => Woke::Persisted(p),
                    None => return,
                },
                input = rx.recv() => match input {
                    Some(input) => Woke::Input(input),
                    None => return,
                },
                Some(done) = snapshot_rx.recv() => Woke::Compaction(done),
                _ = tokio::time::sleep_until(next_tick) => Woke::Tick,
            };
            // Let the tasks that are ready to run (client requests, peer connections) queue
            // their inputs first: one turn then carries many proposals — one log append, one
            // WAL submission and one message per follower for all of them.
            tokio::task::yield_now().await;
            // Ticks that came due go in before what woke the loop: after a pause, a read must
            // not be judged against a lease the missed ticks have ended.
            let now = tokio::time::Instant::now();
            let mut due = 0;
            while now >= next_tick && due < 10_000 {
                self.raft.tick();
                next_tick += self.tick;
                due += 1;
            }
            if due > 0 {
                self.on_tick();
            }
            match woke {
                Woke::Persisted(p) => self.on_persisted(p),
                Woke::Input(input) => self.handle(input),
                Woke::Compaction(done) => self.on_compaction(done),
                Woke::Tick => {}
            }
            for _ in 0..4096 {
                match persist_rx.try_recv() {
                    Ok(p) => self.on_persisted(p),
                    Err(_) => break,
                }
            }
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            self.drain_ready();
            self.publish_read_lease();
            self.refresh_status();
        }
    }

    /// Publishes Raft's read lease on the monotonic clock for [`Shared::lease_read_now`].
    /// Called before each `Ready`'s messages go out too, so a leadership transfer's
    /// `TimeoutNow` never leaves while the old window is still published.
    fn publish_read_lease(&self) {
        let window = self.raft.read_lease().map(|lease| {
            let ticks = lease.until_tick.saturating_sub(self.tick_base);
            let after = u32::try_from(ticks).map_or(Duration::MAX, |t| self.tick.saturating_mul(t));
            let deadline = self.tick_epoch.checked_add(after).unwrap_or(self.tick_epoch);
            LeaseWindow { deadline, commit_index: lease.commit_index }
        });
        if self.unsafe_lease_never_expires {
            // The planted bug: no end, and kept after losing leadership.
            if let Some(w) = window {
                let forever = Instant::now() + Duration::from_secs(365 * 86_400);
                *self.shared.read_lease.write() = Some(LeaseWindow { deadline: forever, ..w });
            }
            return;
        }
        // Called every turn and every Ready: take the write lock (which stalls client tasks
        // checking the lease) only when the window moved, as on each acknowledged round.
        if *self.shared.read_lease.read() != window {
            *self.shared.read_lease.write() = window;
        }
    }

    fn refuse(&mut self, input: Input) {
        let why = GroupError::Stopped(self.failed.clone().unwrap_or_default());
        match input {
            Input::Peer(_) => {}
            Input::Propose { reply, .. } => drop(reply.send(Err(why))),
            Input::Read { reply } => drop(reply.send(Err(why))),
            Input::ConfChange { reply, .. } => drop(reply.send(Err(why))),
            Input::Transfer { reply, .. } => drop(reply.send(Err(why))),
            Input::KeepAlive { reply, .. } => drop(reply.send(Err(why))),
            Input::LeaseRemaining { reply, .. } => drop(reply.send(None)),
            Input::LeaseTimeToLive { reply, .. } => drop(reply.send(Err(why))),
            Input::LeaseLeases { reply } => drop(reply.send(Err(why))),
        }
    }

    fn fail(&mut self, why: String) {
        error!(group = self.group, error = %why, "stopping: fatal storage error");
        self.failed = Some(why.clone());
        for (_, (_, r)) in std::mem::take(&mut self.proposals) {
            let _ = r.send(Err(GroupError::Stopped(why.clone())));
        }
        self.refresh_status();
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(m) => self.raft.step(m),
            Input::Propose { cmd, reply } => {
                if self.proposals.len() >= self.max_inflight {
                    let _ = reply.send(Err(GroupError::Busy));
                    return;
                }
                let data = Bytes::from(encode_command(&cmd));
                match self.raft.propose(data) {
                    Ok((index, term)) => {
                        self.shared.metrics.proposals.fetch_add(1, Relaxed);
                        self.proposals.insert(index, (term, reply));
                    }
                    Err(e) => {
                        self.shared.metrics.proposals_failed.fetch_add(1, Relaxed);
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Input::Read { reply } => {
                if self.unsafe_stale_reads {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if self.reads.len() + self.ready_reads.len() >= self.max_inflight {
                    let _ = reply.send(Err(GroupError::Busy));
                    return;
                }
                let id = self.next_read;
                self.next_read += 1;
                match self.raft.read_index(id) {
                    Ok(()) => {
                        self.reads.insert(id, reply);
                    }
                    Err(e) => drop(reply.send(Err(e.into()))),
                }
            }
            Input::ConfChange { change, reply } => match self.raft.propose_conf_change(change) {
                Ok((index, term)) => {
                    self.conf_waiters.insert(index, (term, reply));
                }
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Input::Transfer { to, reply } => {
                let _ = reply.send(self.raft.transfer_leader(to).map_err(Into::into));
            }
            Input::KeepAlive { id, reply } => {
                if self.raft.role() != Role::Leader {
                    let _ = reply.send(Err(GroupError::NotLeader { leader: self.raft.leader() }));
                    return;
                }
                let now = self.now_ms();
                let r = self.lease_clock.keep_alive(id, now).map_err(|e| match e {
                    quorumkv_kv::KeepAliveError::NotLeader => {
                        GroupError::NotLeader { leader: self.raft.leader() }
                    }
                    quorumkv_kv::KeepAliveError::NotFound => GroupError::Apply(
                        ApplyError::Rejected(quorumkv_kv::EtcdError::LeaseNotFound),
                    ),
                });
                let _ = reply.send(r);
            }
            Input::LeaseRemaining { id, reply } => {
                let now = self.now_ms();
                let _ = reply.send(self.lease_clock.remaining_secs(id, now));
            }
            Input::LeaseTimeToLive { id, keys, reply } => {
                if self.raft.role() != Role::Leader {
                    let _ = reply.send(Err(GroupError::NotLeader { leader: self.raft.leader() }));
                    return;
                }
                let now = self.now_ms();
                // A lease the clock does not know yet (grant just applied) has its full TTL.
                let left = self.lease_clock.remaining_secs(id, now).unwrap_or(i64::MAX);
                let _ = reply.send(Ok(self.sm.lease_time_to_live(id, keys, left)));
            }
            Input::LeaseLeases { reply } => {
                let _ = reply.send(Ok(self.sm.lease_leases()));
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        // At most every tenth tick: on a busy group the commit rides along with writes anyway.
        if self.commit_unwritten && self.after_persist.is_empty() && self.ticks.is_multiple_of(10) {
            self.commit_unwritten = false;
            let hs = self.raft.hard_state();
            let op = WalOp::HardState { group: self.group, hard_state: hs };
            if !self.submit_wal(vec![op], None, Vec::new()) {
                return;
            }
        }
        if self.raft.role() != Role::Leader {
            return;
        }
        let now = self.now_ms();
        let expired = self.lease_clock.expired(now, 64);
        if !expired.is_empty() {
            let cmd = quorumkv_kv::command::command(
                0,
                0,
                Request::LeaseExpire(quorumkv_etcd_proto::internal::LeaseExpire { ids: expired }),
            );
            // Refused only if not leader any more or overloaded: the next tick retries.
            let _ = self.raft.propose(Bytes::from(encode_command(&cmd)));
        }
    }

    fn on_persisted(&mut self, p: Persisted) {
        if let Err(e) = p.result {
            self.fail(format!("write-ahead log: {e}"));
            return;
        }
        if let Some((index, term)) = p.marker {
            self.raft.on_persisted(index, term);
        }
        // The WAL thread has sent the submission's messages already, all but these.
        self.after_persist.pop_front();
        for m in p.unsent {
            self.send(m);
        }
    }

    /// Submits `ops` to the WAL; once durable, `messages` go out (from the WAL thread) and
    /// the loop hears of it with `marker`. False if the group failed.
    fn submit_wal(
        &mut self,
        ops: Vec<WalOp>,
        marker: Option<(LogIndex, Term)>,
        messages: Vec<Message>,
    ) -> bool {
        let slot: AfterPersistSlot =
            Arc::new(Mutex::new(AfterPersist { messages, ..Default::default() }));
        self.after_persist.push_back(slot.clone());
        let (tx, transport) = (self.persist_tx.clone(), self.transport.clone());
        let metrics = self.shared.metrics.clone();
        let started = Instant::now();
        let submitted = self.wal.submit(ops, move |r| {
            metrics.wal_fsync.observe(started.elapsed().as_secs_f64());
            let result = r.map(|_| ()).map_err(|e| e.to_string());
            let messages = {
                let mut s = slot.lock();
                s.durable = true;
                s.failed = result.is_err();
                std::mem::take(&mut s.messages)
            };
            let mut unsent = Vec::new();
            if result.is_ok() {
                for m in messages {
                    unsent.extend(transport.send_if_dialled(m));
                }
            }
            let _ = tx.send(Persisted { marker, result, unsent });
        });
        if let Err(e) = submitted {
            self.fail(format!("write-ahead log: {e}"));
            return false;
        }
        true
    }

    fn send(&mut self, m: Message) {
        self.transport.send(m);
    }

    fn drain_ready(&mut self) {
        while self.failed.is_none() && self.raft.has_ready() {
            let rd = self.raft.ready();
            self.handle_ready(rd);
        }
    }

    fn handle_ready(&mut self, rd: Ready) {
        if let Some(ss) = rd.soft_state {
            self.on_soft_state(ss.role, ss.leader);
        }
        self.publish_read_lease();
        let marker = rd.persist_marker();
        for m in rd.messages {
            self.send(m);
        }
        let mut ops = Vec::new();
        if let Some(snap) = &rd.snapshot {
            if let Err(e) = self.install_snapshot(snap) {
                self.fail(format!("installing snapshot {}: {e}", snap.meta.index));
                return;
            }
            ops.push(WalOp::Compact { group: self.group, meta: snap.meta.clone() });
        }
        if !rd.entries.is_empty() {
            self.shared.metrics.wal_batch_entries.observe(rd.entries.len() as f64);
            ops.push(WalOp::Append { group: self.group, entries: rd.entries });
        }
        if let Some(hs) = rd.hard_state {
            ops.push(WalOp::HardState { group: self.group, hard_state: hs });
            self.commit_unwritten = false;
        } else if rd.commit_index.is_some() {
            self.commit_unwritten = true;
        }
        // A moved commit index rides along with a write that happens anyway; on an idle
        // group the tick writes it (it needs no fsync of its own: a lower one on disk is safe).
        if self.commit_unwritten && !ops.is_empty() {
            ops.push(WalOp::HardState { group: self.group, hard_state: self.raft.hard_state() });
            self.commit_unwritten = false;
        }
        if ops.is_empty() {
            if !rd.persisted_messages.is_empty() {
                // Earlier writes still in flight: these wait for them (and so keep order).
                let mut now = rd.persisted_messages;
                if let Some(last) = self.after_persist.back() {
                    let mut s = last.lock();
                    if s.failed {
                        now.clear();
                    } else if !s.durable {
                        s.messages.append(&mut now);
                    }
                }
                for m in now {
                    self.send(m);
                }
            }
        } else if !self.submit_wal(ops, marker, rd.persisted_messages) {
            return;
        }
        self.apply(&rd.committed_entries);
        for rs in rd.read_states {
            if let Some(reply) = self.reads.remove(&rs.id) {
                self.ready_reads.push((rs.index, reply));
            }
        }
        for (id, e) in rd.failed_reads {
            if let Some(reply) = self.reads.remove(&id) {
                let _ = reply.send(Err(e.into()));
            }
        }
        self.serve_reads();
        if rd.snapshot_wanted {
            self.take_image();
        }
        self.maybe_compact_log();
    }

    fn on_soft_state(&mut self, role: Role, leader: Option<NodeId>) {
        let is_leader = role == Role::Leader;
        let m = &self.shared.metrics;
        if leader != self.leader {
            m.leader_changes.fetch_add(1, Relaxed);
            info!(group = self.group, term = self.raft.term(), leader = ?leader, role = role.as_str(), "leader changed");
            self.leader = leader;
        }
        m.raft_is_leader.store(u64::from(is_leader), Relaxed);
        let now = self.now_ms();
        if is_leader && !self.was_leader {
            m.elections_won.fetch_add(1, Relaxed);
            self.lease_clock.sync_with(self.sm.leases(), now);
            self.lease_clock.on_become_leader(now);
        } else if !is_leader && self.was_leader {
            self.lease_clock.on_step_down();
        }
        self.was_leader = is_leader;
    }

    fn apply(&mut self, entries: &[quorumkv_core::Entry]) {
        let Some(last) = entries.last().map(|e| e.index) else { return };
        let now = self.now_ms();
        // Runs of commands go to the state machine as one batch (one store transaction);
        // a membership entry ends a run, since it writes the member directory itself.
        let mut rest = entries;
        while !rest.is_empty() {
            let run = rest.iter().take_while(|e| e.kind == EntryKind::Normal).count();
            if run > 0 {
                let (commands, tail) = rest.split_at(run);
                rest = tail;
                if !self.apply_commands(commands, now) {
                    return;
                }
                continue;
            }
            let e = &rest[0];
            rest = &rest[1..];
            if let Err(err) = self.apply_membership(e.index, &e.data) {
                self.fail(format!("applying membership entry {}: {err}", e.index));
                return;
            }
            if let Some((term, reply)) = self.conf_waiters.remove(&e.index) {
                if term == e.term {
                    self.leave_waiters.push(reply);
                } else {
                    let _ = reply.send(Err(GroupError::Unknown));
                }
            }
            // A change is answered once the configuration has left the joint state (the
            // leader proposes that by itself), so the caller's next change is not refused
            // as "still in progress".
            if !self.raft.conf_state().is_joint() {
                for reply in self.leave_waiters.drain(..) {
                    let _ = reply.send(Ok(self.raft.conf_state().clone()));
                }
            }
        }
        // Proposals at indexes now applied by other entries are settled (lost).
        while let Some((&i, _)) = self.proposals.first_key_value() {
            if i > last {
                break;
            }
            if let Some((_, (_, r))) = self.proposals.pop_first() {
                let _ = r.send(Err(GroupError::Unknown));
            }
        }
        {
            let mut hub = self.shared.hub.lock();
            let _ = hub.catch_up(&*self.shared.store, 10_000);
        }
        self.shared.hub_notify.notify_waiters();
        self.shared.metrics.raft_applied_index.store(last, Relaxed);
    }

    /// Applies a run of normal entries in one state machine batch and answers their
    /// proposers. False if the group failed (a fatal store error).
    fn apply_commands(&mut self, entries: &[quorumkv_core::Entry], now: u64) -> bool {
        // A leader's no-op carries no command: it only moves the applied index.
        let batch: Vec<(LogIndex, &[u8])> =
            entries.iter().filter(|e| !e.data.is_empty()).map(|e| (e.index, &e.data[..])).collect();
        self.shared.metrics.apply_batch_entries.observe(entries.len() as f64);
        let outcomes = match self.sm.apply_batch(&batch) {
            Ok(outcomes) => outcomes,
            Err(err) => {
                let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
                self.fail(format!("applying entries {first}..={last}: {err}"));
                return false;
            }
        };
        let commands = entries.iter().filter(|e| !e.data.is_empty());
        for (e, result) in commands.zip(outcomes) {
            if let Ok(outcome) = &result {
                if !outcome.events.is_empty() {
                    self.shared.hub.lock().on_commit(
                        &*self.shared.store,
                        outcome.revision,
                        &outcome.events,
                    );
                }
                self.lease_clock.on_changes(&outcome.lease_changes, now);
            }
            if let Some((term, reply)) = self.proposals.remove(&e.index) {
                let answer = if term != e.term {
                    Err(GroupError::Unknown)
                } else {
                    result.map(|outcome| Applied { outcome, term }).map_err(GroupError::Apply)
                };
                let _ = reply.send(answer);
            }
        }
        true
    }

    fn apply_membership(&mut self, index: LogIndex, data: &[u8]) -> Result<(), String> {
        let change = ConfChange::decode(data).unwrap_or_default();
        let added: Vec<Member> = serde_json::from_slice(&change.context).unwrap_or_default();
        for step in &change.steps {
            match *step {
                ConfChangeStep::AddVoter(id) | ConfChangeStep::AddLearner(id) => {
                    if let Some(m) = added.iter().find(|m| m.id == id) {
                        self.members.insert(id, m.clone());
                    } else {
                        self.members
                            .entry(id)
                            .or_insert_with(|| Member { id, ..Default::default() });
                    }
                }
                ConfChangeStep::RemoveNode(id) => {
                    self.members.remove(&id);
                }
            }
        }
        // Keep the directory in the store, atomically with the applied index.
        let list: Vec<Member> = self.members.values().cloned().collect();
        let bytes = serde_json::to_vec(&list).map_err(|e| e.to_string())?;
        let store = Arc::clone(self.sm.store());
        let mut txn = store.write_txn().map_err(|e| e.to_string())?;
        txn.set_meta(MEMBERS_META, &bytes).map_err(|e| e.to_string())?;
        txn.commit(index).map_err(|e| e.to_string())?;
        self.connect_members();
        Ok(())
    }

    /// Points the transport at every member of the configuration.
    fn connect_members(&mut self) {
        let conf = self.raft.conf_state().clone();
        let wanted = conf.all_members();
        let directory = self.transport.directory();
        for &id in &wanted {
            if id == self.id {
                continue;
            }
            let addr = self
                .members
                .get(&id)
                .map(|m| m.peer_addr.clone())
                .filter(|a| !a.is_empty())
                .or_else(|| {
                    directory.get(&id).map(|p| p.peer_addr.clone()).filter(|a| !a.is_empty())
                });
            match addr {
                Some(addr) => self.transport.set_peer(id, &addr),
                None => warn!(peer = id, "no address known for member yet"),
            }
        }
        for id in self.transport.peer_ids() {
            if !wanted.contains(&id) {
                self.transport.remove_peer(id);
            }
        }
    }

    fn serve_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.sm.applied_index().max(self.raft.applied_index());
        let (now, later): (Vec<_>, Vec<_>) =
            self.ready_reads.drain(..).partition(|(i, _)| *i <= applied);
        self.ready_reads = later;
        for (_, reply) in now {
            let _ = reply.send(Ok(()));
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), String> {
        info!(
            group = self.group,
            index = snap.meta.index,
            bytes = snap.data.len(),
            "installing snapshot from the leader"
        );
        save_snapshot_file(&self.snapshots, snap)?;
        let mut decoder = SnapshotDecoder::new(&snap.data[..]).map_err(|e| e.to_string())?;
        self.sm.install_snapshot(&mut decoder).map_err(|e| e.to_string())?;
        self.shared.hub.lock().reset(self.sm.revision());
        self.lease_clock.sync_with(self.sm.leases(), self.now_ms());
        self.members = load_members(&self.shared.store, &[]);
        self.connect_members();
        // Waiting proposals inside the snapshot cannot be matched to their entries any more.
        let covered: Vec<LogIndex> =
            self.proposals.range(..=snap.meta.index).map(|(i, _)| *i).collect();
        for i in covered {
            if let Some((_, r)) = self.proposals.remove(&i) {
                let _ = r.send(Err(GroupError::Unknown));
            }
        }
        Ok(())
    }

    /// Every `snapshot_entries` applied entries, compacts the log behind the store: the store
    /// is synced (off the loop), then the log is dropped up to [`CATCH_UP_ENTRIES`] behind the
    /// applied index.
    /// No image is encoded: the store is the durable state machine a restart comes back to,
    /// and an image is taken only when a leader has a follower to send one to
    /// ([`Group::take_image`]).
    fn maybe_compact_log(&mut self) {
        let applied = self.raft.applied_index();
        // Keep the newest entries, so a follower a little behind (a restart, a slow disk)
        // catches up from the log rather than with a whole image.
        let keep = CATCH_UP_ENTRIES.min(self.snapshot_entries / 2);
        let through = applied.saturating_sub(keep);
        if self.snapshotting
            || through < self.raft.snapshot_index() + self.snapshot_entries
            || self.sm.applied_index() < applied
        {
            return;
        }
        self.snapshotting = true;
        let (store, tx) = (self.shared.store.clone(), self.snapshot_tx.clone());
        if self.unsafe_compact_before_store_sync {
            // The planted bug: the log goes while the store's commits may not be durable.
            let _ = tx.send(Ok(Compaction::StoreSynced(through)));
            return;
        }
        tokio::task::spawn_blocking(move || {
            // Every commit through `through` happened before this sync began.
            let synced = store.sync().map(|()| Compaction::StoreSynced(through));
            let _ = tx.send(synced.map_err(|e| e.to_string()));
        });
    }

    /// A leader asked for an image to send a follower behind the log's start. The image is a
    /// point-in-time read of the store taken here; encoding and saving it (the expensive
    /// part: the whole store) run on a blocking thread, so the loop keeps answering heartbeats
    /// and proposals meanwhile. The file is what a restart finds if the log is then compacted
    /// through the image.
    fn take_image(&mut self) {
        if self.snapshotting {
            return; // Raft asks again while the follower still waits.
        }
        let Some(meta) = self.raft.snapshot_meta_at(self.sm.applied_index()) else { return };
        let image = match self.shared.store.image() {
            Ok(image) => image,
            Err(e) => {
                warn!(group = self.group, error = %e, "snapshot failed; will retry later");
                return;
            }
        };
        self.snapshotting = true;
        let (snapshots, tx) = (self.snapshots.clone(), self.snapshot_tx.clone());
        tokio::task::spawn_blocking(move || {
            let taken =
                encode_to_vec(image, meta.clone()).map_err(|e| e.to_string()).and_then(|data| {
                    let snap = Snapshot { meta, data: Bytes::from(data) };
                    save_snapshot_file(&snapshots, &snap)?;
                    Ok(Compaction::Image(snap))
                });
            let _ = tx.send(taken);
        });
    }

    fn on_compaction(&mut self, done: Result<Compaction, String>) {
        self.snapshotting = false;
        // Either is refused if a snapshot from the leader got past it meanwhile: nothing to do.
        let compacted = match done {
            Ok(Compaction::StoreSynced(index)) => self.raft.compact_log(index),
            Ok(Compaction::Image(snap)) => {
                info!(
                    group = self.group,
                    index = snap.meta.index,
                    bytes = snap.data.len(),
                    "took an image of the store for a follower"
                );
                self.raft.compact(snap.meta.index, snap.data)
            }
            Err(e) => {
                warn!(group = self.group, error = %e, "compaction failed; will retry later");
                return;
            }
        };
        if let Ok(meta) = compacted {
            self.submit_wal(vec![WalOp::Compact { group: self.group, meta }], None, vec![]);
        }
    }

    fn refresh_status(&mut self) {
        let st = self.raft.status();
        let m = &self.shared.metrics;
        m.raft_term.store(st.term, Relaxed);
        m.raft_commit_index.store(st.commit, Relaxed);
        let mut s = self.shared.status.write();
        s.id = self.id;
        s.role = st.role.as_str().to_string();
        s.leader = st.leader;
        s.term = st.term;
        s.commit = st.commit;
        s.applied = self
            .sm
            .applied_index()
            .max(st.applied.min(self.sm.applied_index().max(st.snapshot_index)));
        s.last_index = st.last_index;
        s.snapshot_index = st.snapshot_index;
        s.voters = st.conf.voters.clone();
        s.learners = st.conf.learners.clone();
        s.joint = st.conf.is_joint();
        s.peers = st.peers.iter().map(|p| (p.id, p.match_index)).collect();
        s.revision = self.sm.revision();
        s.failed = self.failed.clone();
        s.members = self.members.values().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use quorumkv_storage::disk::SimDisk;
    use quorumkv_storage::mvcc::{CommitDurability, RedbOptions};

    use super::*;

    fn shared() -> Shared {
        let disk = SimDisk::new(1);
        disk.create_dir_all(Path::new("/data")).expect("mkdir");
        let options =
            RedbOptions { durability: CommitDurability::ON_SYNC_ONLY, cache_bytes: 1 << 20 };
        let store = RedbStore::open(Arc::new(disk), Path::new("/data/state.redb"), options)
            .expect("open store");
        Shared {
            status: RwLock::new(GroupStatus::default()),
            store: Arc::new(store),
            hub: Mutex::new(WatchHub::new(1, WatchConfig::default())),
            hub_notify: Notify::new(),
            metrics: Arc::new(Metrics::default()),
            read_lease: RwLock::new(None),
        }
    }

    fn apply(shared: &Shared, index: LogIndex) {
        let mut txn = shared.store.write_txn().expect("txn");
        txn.put(b"k", &index.to_le_bytes(), 0).expect("put");
        txn.commit(index).expect("commit");
    }

    /// A lease read needs both: the window still open, and the store caught up with the
    /// commit index the window was taken at (a new leader may hold a lease before it applied
    /// what its predecessor acknowledged). Fails with either check removed.
    #[test]
    fn a_lease_read_needs_an_open_window_and_the_windows_commit_index_applied() {
        let shared = shared();
        apply(&shared, 1);
        assert!(!shared.lease_read_now(), "no lease published");
        let later = Instant::now() + Duration::from_secs(60);
        *shared.read_lease.write() = Some(LeaseWindow { deadline: later, commit_index: 2 });
        assert!(!shared.lease_read_now(), "index 2 is committed but not applied here yet");
        apply(&shared, 2);
        assert!(shared.lease_read_now(), "open window, commit index applied");
        let past =
            Instant::now().checked_sub(Duration::from_millis(1)).expect("an instant before now");
        *shared.read_lease.write() = Some(LeaseWindow { deadline: past, commit_index: 2 });
        assert!(!shared.lease_read_now(), "the window has closed");
        assert_eq!(shared.metrics.lease_reads.load(Relaxed), 1, "only the read served is counted");
    }
}
