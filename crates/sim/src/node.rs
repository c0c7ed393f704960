//! A simulated machine: its durable disk (only what was fsynced survives a crash), the Raft
//! replica and state machine of the process running on it, and the driver's bookkeeping.

use std::collections::{BTreeMap, VecDeque};

use quorumkv_core::rng::Rng;
use quorumkv_core::{Entry, HardState, LogIndex, NodeId, Snapshot, Term};
use quorumkv_raft::{Message, Raft, ReadId, RestoreState};

use crate::kv::{Key, KvState};

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// Last durable term, vote and commit.
    pub hard_state: HardState,
    /// Latest durable snapshot.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl Durable {
    /// Applies a write's parts in the order they are laid out on disk (snapshot, entries, hard
    /// state), keeping only the first `parts` of them — a torn write keeps a prefix.
    fn apply(&mut self, w: &PendingWrite, parts: usize) {
        let mut budget = parts;
        if let Some(s) = &w.snapshot {
            if budget == 0 {
                return;
            }
            budget -= 1;
            self.entries.retain(|e| e.index > s.meta.index);
            if self.entries.first().is_some_and(|e| e.index != s.meta.index + 1) {
                self.entries.clear();
            }
            self.snapshot = Some(s.clone());
        }
        for e in &w.entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let base = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
            if e.index <= base {
                continue;
            }
            self.entries.truncate((e.index - base - 1) as usize);
            self.entries.push(e.clone());
        }
        if let Some(hs) = w.hard_state {
            if budget == 0 {
                return;
            }
            self.hard_state = hs;
        }
    }

    /// Installs a locally taken snapshot and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot);
    }

    /// The state a restarting process recovers.
    pub fn restore_state(&self) -> RestoreState {
        let applied = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
        RestoreState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied,
        }
    }
}

/// One ready's worth of durable work, waiting for its fsync.
#[derive(Debug)]
pub struct PendingWrite {
    /// Term or vote to persist.
    pub hard_state: Option<HardState>,
    /// Snapshot to persist.
    pub snapshot: Option<Snapshot>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// What to report to Raft once durable.
    pub marker: Option<(LogIndex, Term)>,
    /// Messages released once durable.
    pub after: Vec<Message>,
}

impl PendingWrite {
    fn parts(&self) -> usize {
        usize::from(self.snapshot.is_some())
            + self.entries.len()
            + usize::from(self.hard_state.is_some())
    }
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
    /// Bumped at every crash, so stale timer and fsync events are recognised.
    pub incarnation: u32,
    /// Process state.
    pub status: Status,
    /// The replica, while the process runs.
    pub raft: Option<Raft>,
    /// The state machine.
    pub kv: KvState,
    /// The disk.
    pub durable: Durable,
    /// Writes handed to the disk, not yet fsynced, oldest first.
    pub pending: VecDeque<PendingWrite>,
    /// Writes covered by the fsync in flight (0 = none in flight).
    pub fsync_covers: usize,
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
}

impl SimNode {
    /// A machine whose process starts from `durable`.
    pub fn new(id: NodeId, durable: Durable) -> Self {
        Self {
            id,
            incarnation: 0,
            status: Status::Down,
            raft: None,
            kv: KvState::default(),
            durable,
            pending: VecDeque::new(),
            fsync_covers: 0,
            proposals: BTreeMap::new(),
            reads_pending: BTreeMap::new(),
            reads_ready: Vec::new(),
            next_read_id: 1,
            clock_rate: 1.0,
            missed_ticks: 0,
            held: Vec::new(),
            commit_seen: 0,
        }
    }

    /// The process dies. Of the writes not yet fsynced, a random prefix reaches the disk (the
    /// last of them possibly torn); the rest is lost. Returns the waiting client requests,
    /// whose answers are now never coming.
    pub fn crash(&mut self, rng: &mut Rng) -> Vec<Waiting> {
        let total: usize = self.pending.iter().map(PendingWrite::parts).sum();
        let mut survive = rng.range(0, total as u64 + 1) as usize;
        for w in self.pending.drain(..) {
            let parts = w.parts();
            self.durable.apply(&w, survive.min(parts));
            survive = survive.saturating_sub(parts);
        }
        self.incarnation += 1;
        self.status = Status::Down;
        self.raft = None;
        self.kv = KvState::default();
        self.fsync_covers = 0;
        self.held.clear();
        self.missed_ticks = 0;
        let mut lost: Vec<Waiting> = self.proposals.values().map(|(_, w)| *w).collect();
        lost.extend(self.reads_pending.values().copied());
        lost.extend(self.reads_ready.iter().map(|(_, w)| *w));
        self.proposals.clear();
        self.reads_pending.clear();
        self.reads_ready.clear();
        lost
    }

    /// The fsync in flight completed: the covered writes are durable. Returns their markers
    /// (the last one matters) and released messages.
    pub fn complete_fsync(&mut self) -> (Option<(LogIndex, Term)>, Vec<Message>) {
        let mut marker = None;
        let mut after = Vec::new();
        for _ in 0..self.fsync_covers {
            let Some(w) = self.pending.pop_front() else { break };
            let parts = w.parts();
            self.durable.apply(&w, parts);
            if w.marker.is_some() {
                marker = w.marker;
            }
            after.extend(w.after);
        }
        self.fsync_covers = 0;
        (marker, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quorumkv_core::EntryKind;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn crash_keeps_a_prefix_of_unsynced_writes() {
        for seed in 0..50 {
            let mut n = SimNode::new(1, Durable::default());
            n.pending.push_back(PendingWrite {
                hard_state: Some(HardState { term: 2, vote: Some(1), commit: 0 }),
                snapshot: None,
                entries: vec![ent(1, 1), ent(2, 2)],
                marker: Some((2, 2)),
                after: vec![],
            });
            n.pending.push_back(PendingWrite {
                hard_state: None,
                snapshot: None,
                entries: vec![ent(2, 3)],
                marker: Some((2, 3)),
                after: vec![],
            });
            n.crash(&mut Rng::new(seed));
            let idx: Vec<(u64, u64)> =
                n.durable.entries.iter().map(|e| (e.index, e.term)).collect();
            let prefixes: [&[(u64, u64)]; 4] =
                [&[], &[(1, 1)], &[(1, 1), (2, 2)], &[(1, 1), (2, 3)]];
            assert!(prefixes.contains(&idx.as_slice()), "seed {seed}: {idx:?}");
            // The vote comes after the entries in the first write: kept only if they all were.
            if n.durable.hard_state.vote.is_some() {
                assert!(idx.len() == 2);
            }
        }
    }
}
