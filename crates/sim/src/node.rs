//! A simulated machine: its disk (a `SimDisk` that outlives the process, so only what was
//! fsynced survives a crash), the storage, Raft replica and state machine of the process
//! running on it, and the driver's bookkeeping.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quorumkv_core::{LogIndex, NodeId, Term};
use quorumkv_raft::{Message, Raft, ReadId};
use quorumkv_storage::disk::SimDisk;

use crate::kv::{Key, KvState};
use crate::store::NodeStore;

/// A ready whose durable parts were handed to the WAL and wait for the next group fsync.
#[derive(Debug)]
pub struct Unsynced {
    /// What to report to Raft once durable.
    pub marker: Option<(LogIndex, Term)>,
    /// Messages released once durable.
    pub after: Vec<Message>,
}

/// A client request waiting at a node.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// Client index.
    pub client: usize,
    /// The client's operation id.
    pub op_id: u64,
    /// For reads: the key.
    pub key: Key,
}

/// Process state of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running.
    Up,
    /// Stopped (SIGSTOP): events wait until it resumes.
    Paused,
    /// Crashed: the process is gone, the disk keeps what was fsynced.
    Down,
}

/// A simulated machine.
pub struct SimNode {
    /// The node id of the process (changes when the machine is wiped and re-added).
    pub id: NodeId,
    /// Bumped whenever the process stops, so stale timer and fsync events are recognised.
    pub incarnation: u32,
    /// Process state.
    pub status: Status,
    /// The machine's disk: outlives the process; a wipe replaces it with a blank one.
    pub disk: SimDisk,
    /// The WAL and snapshot files the process holds open, while it runs.
    pub store: Option<NodeStore>,
    /// The replica, while the process runs.
    pub raft: Option<Raft>,
    /// The state machine.
    pub kv: KvState,
    /// Readies logged since the last group fsync, oldest first.
    pub unsynced: Vec<Unsynced>,
    /// A group fsync event is scheduled.
    pub fsync_scheduled: bool,
    /// Proposals awaiting application: index → (term, waiting client).
    pub proposals: BTreeMap<LogIndex, (Term, Waiting)>,
    /// Reads waiting for their read index.
    pub reads_pending: BTreeMap<ReadId, Waiting>,
    /// Reads with a read index, waiting for the state machine to catch up.
    pub reads_ready: Vec<(LogIndex, Waiting)>,
    /// Next read id.
    pub next_read_id: ReadId,
    /// Tick period multiplier (clock skew): 1.0 is nominal.
    pub clock_rate: f64,
    /// Ticks that fired while paused, delivered first on resume.
    pub missed_ticks: u64,
    /// Events that arrived while paused, replayed in order on resume.
    pub held: Vec<crate::world::Ev>,
    /// Highest commit index seen in this incarnation (it must never decrease).
    pub commit_seen: LogIndex,
    /// An image a leader asked for is being "encoded" (an `ImageReady` event is on its way).
    pub image_pending: bool,
    /// A bit was flipped in a durable WAL record on this disk, at (file, byte offset): the
    /// next start must refuse with a corruption error naming that file.
    pub flipped: Option<(PathBuf, u64)>,
    /// The process refused to start on a corrupt disk; the machine waits to be wiped.
    pub corrupt: bool,
    /// The next sync on this disk was told to fail and has not yet.
    pub sync_fault_armed: bool,
    /// The disk is out of space (a disk-full episode is under way).
    pub disk_full: bool,
}

impl SimNode {
    /// A machine with `disk`, its process not started.
    pub fn new(id: NodeId, disk: SimDisk) -> Self {
        Self {
            id,
            incarnation: 0,
            status: Status::Down,
            disk,
            store: None,
            raft: None,
            kv: KvState::default(),
            unsynced: Vec::new(),
            fsync_scheduled: false,
            proposals: BTreeMap::new(),
            reads_pending: BTreeMap::new(),
            reads_ready: Vec::new(),
            next_read_id: 1,
            clock_rate: 1.0,
            missed_ticks: 0,
            held: Vec::new(),
            commit_seen: 0,
            image_pending: false,
            flipped: None,
            corrupt: false,
            sync_fault_armed: false,
            disk_full: false,
        }
    }

    /// The process is gone (crashed or stopped itself): its memory, open files and waiting
    /// requests with it; the disk keeps what it keeps. Returns the storage it held open, for
    /// a caller that simulates a crash in the middle of its fsync, and the waiting client
    /// requests, whose answers are now never coming.
    pub fn stop_process(&mut self) -> (Option<NodeStore>, Vec<Waiting>) {
        self.incarnation += 1;
        self.status = Status::Down;
        self.raft = None;
        let store = self.store.take();
        self.kv = KvState::default();
        self.unsynced.clear();
        self.fsync_scheduled = false;
        self.held.clear();
        self.missed_ticks = 0;
        let mut lost: Vec<Waiting> = self.proposals.values().map(|(_, w)| *w).collect();
        lost.extend(self.reads_pending.values().copied());
        lost.extend(self.reads_ready.iter().map(|(_, w)| *w));
        self.proposals.clear();
        self.reads_pending.clear();
        self.reads_ready.clear();
        (store, lost)
    }

    /// The group fsync completed: every logged ready is durable. Returns the last marker (the
    /// one Raft needs) and the released messages, in order.
    pub fn take_synced(&mut self) -> (Option<(LogIndex, Term)>, Vec<Message>) {
        let mut marker = None;
        let mut after = Vec::new();
        for w in self.unsynced.drain(..) {
            if w.marker.is_some() {
                marker = w.marker;
            }
            after.extend(w.after);
        }
        (marker, after)
    }
}
