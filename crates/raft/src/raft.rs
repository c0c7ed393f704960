//! The Raft replica: roles, elections, replication, commitment, reads, membership, transfer.
//!
//! See the crate documentation for the rules this module keeps and the output contract.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use quorumkv_core::quorum::{Joint, VoteResult};
use quorumkv_core::rng::Rng;
use quorumkv_core::{
    ConfChange, ConfState, Entry, EntryKind, HardState, LogIndex, NodeId, Snapshot, SnapshotMeta,
    Term,
};

use crate::confchange;
use crate::config::Config;
use crate::error::{ConfigError, RaftError};
use crate::log::RaftLog;
use crate::message::{AppendResult, Message, MessageBody, ReadId};
use crate::progress::{Progress, ProgressState};
use crate::ready::{ReadState, Ready, Role, SoftState};

/// What a replica recovered from its durable storage, handed to [`Raft::new`].
#[derive(Clone, Debug, Default)]
pub struct RestoreState {
    /// Last persisted term, vote and commit index.
    pub hard_state: HardState,
    /// Where the log was last compacted (the index, term and membership it starts after), if
    /// it ever was.
    pub snapshot: Option<SnapshotMeta>,
    /// An image of the state machine at `snapshot`, if the driver keeps one: what this replica
    /// sends a follower that needs a snapshot once it leads. Without one (the log was compacted
    /// behind a durable state machine, [`Raft::compact_log`]) the leader asks for an image when
    /// a follower first needs it ([`Ready::snapshot_wanted`]).
    pub snapshot_data: Option<Bytes>,
    /// Durable log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Highest index the state machine has already applied (≥ the snapshot index). Entries
    /// above it are handed out again for application.
    pub applied: LogIndex,
}

impl RestoreState {
    /// The state of an initial member of a new group: one committed membership entry at index
    /// 1 (term 1) naming the initial voters. Every replica learns membership from the log or a
    /// snapshot, so a node that joins later with an empty log learns it the same way.
    pub fn bootstrap(voters: &[NodeId]) -> Self {
        let change = ConfChange {
            steps: voters.iter().map(|&id| quorumkv_core::ConfChangeStep::AddVoter(id)).collect(),
            context: Bytes::new(),
        };
        Self {
            hard_state: HardState { term: 1, vote: None, commit: 1 },
            snapshot: None,
            snapshot_data: None,
            entries: vec![Entry {
                index: 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: change.encode(),
            }],
            applied: 0,
        }
    }
}

/// A read waiting for a heartbeat round or for the first commit of the leader's term.
#[derive(Clone, Debug)]
struct PendingRead {
    /// Driver's (or the forwarding follower's) read id.
    id: ReadId,
    /// Follower that forwarded the read; `None` for a local read.
    from: Option<NodeId>,
    /// Commit index when the read arrived: the read index.
    index: LogIndex,
    /// The first heartbeat round sent after the read arrived; its quorum ack releases the read.
    seq: u64,
}

/// A snapshot arriving chunk by chunk.
#[derive(Debug)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    total_bytes: u64,
    buf: BytesMut,
}

/// Leader-only state; it exists only while leading.
#[derive(Debug)]
struct Leader {
    /// Replication progress of every member, this replica included.
    progress: BTreeMap<NodeId, Progress>,
    /// Ticks since the last heartbeat broadcast.
    heartbeat_elapsed: u64,
    /// Leadership is being handed to this voter; proposals are refused meanwhile.
    transferee: Option<NodeId>,
    /// Index of the latest membership change appended; a new one waits until it is applied.
    pending_conf_index: LogIndex,
    /// Latest heartbeat round sent.
    read_seq: u64,
    /// Highest round acknowledged by a quorum.
    read_seq_acked: u64,
    /// Highest round each peer acknowledged.
    read_acks: BTreeMap<NodeId, u64>,
    /// When each unacknowledged round was sent (tick), for leases.
    round_ticks: VecDeque<(u64, u64)>,
    /// Reads waiting for their round.
    reads: VecDeque<PendingRead>,
    /// Reads waiting for the first commit of this term (§6.4 step 1).
    reads_before_commit: Vec<PendingRead>,
    /// The lease is valid while `tick_count` is below this.
    lease_until: u64,
}

#[derive(Debug)]
enum RoleState {
    Follower { incoming: Option<IncomingSnapshot> },
    PreCandidate { votes: BTreeMap<NodeId, bool> },
    Candidate { votes: BTreeMap<NodeId, bool> },
    Leader(Box<Leader>),
}

/// A leader's read lease, as [`Raft::read_lease`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLease {
    /// The lease holds while fewer ticks than this have been delivered.
    pub until_tick: u64,
    /// Reads served under the lease must see the state machine at least at this index (every
    /// write a client may have seen acknowledged by an earlier leader is at or below it).
    pub commit_index: LogIndex,
}

/// Per-peer replication status, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer id.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Replication state.
    pub state: ProgressState,
    /// Appends in flight.
    pub inflight: usize,
    /// Heard from in the current CheckQuorum window.
    pub recent_active: bool,
    /// Non-voting member.
    pub is_learner: bool,
}

/// A replica's state, for operators and invariant checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: LogIndex,
    /// Highest index handed out for application.
    pub applied: LogIndex,
    /// Highest durable index.
    pub stable: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Index covered by the latest snapshot.
    pub snapshot_index: LogIndex,
    /// Membership in force.
    pub conf: ConfState,
    /// Followers' progress (leader only).
    pub peers: Vec<PeerStatus>,
}

/// One replica of one Raft group. Sans-IO: feed it inputs, drain [`Ready`], report persistence.
#[derive(Debug)]
pub struct Raft {
    cfg: Config,
    rng: Rng,
    term: Term,
    vote: Option<NodeId>,
    log: RaftLog,
    conf: ConfState,
    quorum: Joint,
    /// Membership after each applied change (and at the snapshot), to build snapshot metadata
    /// for any applied index.
    conf_history: Vec<(LogIndex, ConfState)>,
    role: RoleState,
    leader: Option<NodeId>,
    election_elapsed: u64,
    election_timeout: u64,
    /// Ticks since this replica started: the logical clock for leases.
    tick_count: u64,
    /// The latest image of the state machine, sent to followers that need it. `None` when
    /// the log was compacted past the last image (or none was ever taken): the leader then
    /// asks the driver for one.
    snapshot: Option<Snapshot>,
    /// A follower needs a snapshot and no usable image is held: reported once in the next
    /// ready (and again each time a follower is found still waiting).
    snapshot_wanted: bool,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,
    failed_reads: Vec<(ReadId, RaftError)>,
    pending_install: Option<Snapshot>,
    last_hard_state: HardState,
    /// Commit index last reported in a `Ready`.
    last_commit_emitted: LogIndex,
    last_soft_state: Option<SoftState>,
    /// Leader has new entries or a new commit index to send.
    leader_dirty: bool,
}

impl Raft {
    /// A replica restored from `state`, with randomness drawn from `seed`.
    pub fn new(cfg: Config, state: RestoreState, seed: u64) -> Result<Self, RaftError> {
        cfg.validate().map_err(|ConfigError(e)| RaftError::BadRestore(e))?;
        let (snap_index, snap_term, base_conf) = match &state.snapshot {
            Some(m) => (m.index, m.term, m.conf_state.clone()),
            None => (0, 0, ConfState::default()),
        };
        for (i, e) in state.entries.iter().enumerate() {
            if e.index != snap_index + 1 + i as u64 {
                return Err(RaftError::BadRestore(format!(
                    "entry {} found where {} was expected",
                    e.index,
                    snap_index + 1 + i as u64
                )));
            }
        }
        let last = snap_index + state.entries.len() as u64;
        if state.applied < snap_index || state.applied > last {
            return Err(RaftError::BadRestore(format!(
                "applied index {} outside the log [{snap_index}, {last}]",
                state.applied
            )));
        }
        let committed = state.hard_state.commit.max(state.applied).min(last);
        let log = RaftLog::restore(snap_index, snap_term, state.entries, committed, state.applied);
        let mut raft = Self {
            rng: Rng::new(seed),
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            quorum: Joint::default(),
            conf: ConfState::default(),
            conf_history: Vec::new(),
            role: RoleState::Follower { incoming: None },
            leader: None,
            election_elapsed: 0,
            election_timeout: 0,
            tick_count: 0,
            snapshot: state
                .snapshot
                .zip(state.snapshot_data)
                .map(|(meta, data)| Snapshot { meta, data }),
            snapshot_wanted: false,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            pending_install: None,
            last_hard_state: state.hard_state,
            last_commit_emitted: 0,
            last_soft_state: None,
            leader_dirty: false,
            log,
            cfg,
        };
        raft.set_conf(snap_index, base_conf);
        // Membership changes the state machine already applied are in force again.
        let replay: Vec<(LogIndex, Bytes)> = raft
            .log
            .entries()
            .take_while(|e| e.index <= raft.log.applied)
            .filter(|e| e.kind == EntryKind::ConfChange)
            .map(|e| (e.index, e.data.clone()))
            .collect();
        for (index, data) in replay {
            raft.apply_conf_change(index, &data);
        }
        raft.reset_election_timer();
        Ok(raft)
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.tick_count += 1;
        self.election_elapsed += 1;
        if matches!(self.role, RoleState::Leader(_)) {
            self.tick_leader();
        } else if self.election_elapsed >= self.election_timeout && self.promotable() {
            // Only a replica that may stand resets its timer: a learner (or a removed node)
            // keeps counting, so it stops refusing votes out of loyalty to a leader it no
            // longer hears from (a learner's vote can be needed in a joint configuration).
            self.election_elapsed = 0;
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        let id = self.cfg.id;
        let timeout_min = self.cfg.election_timeout_ticks_min;
        let check_quorum = self.cfg.check_quorum;
        let election_elapsed = self.election_elapsed;
        let RoleState::Leader(l) = &mut self.role else { return };
        l.heartbeat_elapsed += 1;
        if election_elapsed >= timeout_min {
            self.election_elapsed = 0;
            if check_quorum {
                let active =
                    |n: NodeId| n == id || l.progress.get(&n).is_some_and(|p| p.recent_active);
                if !self.quorum.has_quorum(active) {
                    self.become_follower(self.term, None);
                    return;
                }
                for (&n, p) in l.progress.iter_mut() {
                    p.recent_active = n == id;
                }
            }
            l.transferee = None;
        }
        if l.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            l.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Proposes a command. On success returns the (index, term) it was appended at: it is
    /// committed exactly when an entry with that index *and* term is applied; if a different
    /// term is ever applied at that index, the proposal was lost.
    pub fn propose(&mut self, data: Bytes) -> Result<(LogIndex, Term), RaftError> {
        self.propose_entry(EntryKind::Normal, data)
    }

    fn propose_entry(
        &mut self,
        kind: EntryKind,
        data: Bytes,
    ) -> Result<(LogIndex, Term), RaftError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(RaftError::NotLeader { leader: self.leader });
        };
        if l.transferee.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let uncommitted = (self.log.last_index() - self.log.committed) as usize;
        if uncommitted >= self.cfg.max_uncommitted_entries {
            return Err(RaftError::Busy(uncommitted));
        }
        let index = self.log.last_index() + 1;
        self.log.append(Entry { index, term: self.term, kind, data });
        self.leader_dirty = true;
        Ok((index, self.term))
    }

    /// Proposes a membership change (one at a time; voter changes go through joint consensus).
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
    ) -> Result<(LogIndex, Term), RaftError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(RaftError::NotLeader { leader: self.leader });
        };
        if l.pending_conf_index > self.log.applied {
            return Err(RaftError::ConfChangeInProgress(l.pending_conf_index));
        }
        confchange::apply(&self.conf, &change).map_err(RaftError::InvalidConfChange)?;
        let at = self.propose_entry(EntryKind::ConfChange, change.encode())?;
        if let RoleState::Leader(l) = &mut self.role {
            l.pending_conf_index = at.0;
        }
        Ok(at)
    }

    /// Hands leadership to voter `to` (§3.10): brings it up to date, then tells it to campaign.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        let RoleState::Leader(l) = &mut self.role else {
            return Err(RaftError::NotLeader { leader: self.leader });
        };
        if to == self.cfg.id {
            return Ok(());
        }
        if !self.quorum.contains(to) {
            return Err(RaftError::NotAVoter(to));
        }
        l.transferee = Some(to);
        // The target will campaign past every follower's stickiness: the lease ends now.
        l.lease_until = 0;
        self.election_elapsed = 0;
        let caught_up = l.progress.get(&to).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Asks for a linearizable read (§6.4). The answer arrives as a [`ReadState`] (serve once
    /// the state machine has applied its index) or a failed read in a later [`Ready`].
    pub fn read_index(&mut self, id: ReadId) -> Result<(), RaftError> {
        if matches!(self.role, RoleState::Leader(_)) {
            return self.leader_read(id, None);
        }
        if cfg!(feature = "bug-stale-read") {
            // Planted bug: answer from local state with no leader confirmation.
            self.read_states.push(ReadState { id, index: self.log.applied });
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, MessageBody::ReadIndex { id });
                Ok(())
            }
            None => Err(RaftError::NotLeader { leader: None }),
        }
    }

    /// The metadata a snapshot of the state machine at applied index `index` must carry (its
    /// term and the membership in force there); `None` if `index` is not applied or not held.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.log.applied || index < self.log.snapshot_index {
            return None;
        }
        Some(SnapshotMeta { index, term: self.log.term(index)?, conf_state: self.conf_at(index) })
    }

    /// The driver took a snapshot of the state machine at applied index `index`; the log is
    /// compacted through it and `data` is kept to send to followers that fall behind (those
    /// already waiting for one get it now).
    pub fn compact(&mut self, index: LogIndex, data: Bytes) -> Result<SnapshotMeta, RaftError> {
        let meta = self.compact_to(index)?;
        self.snapshot = Some(Snapshot { meta: meta.clone(), data });
        self.offer_snapshot();
        Ok(meta)
    }

    /// The driver made its state machine durable through applied index `index` (it will come
    /// back at or after `index` from a restart) and kept no image of it: the log is compacted
    /// through `index` with no snapshot to send. An image is asked for, with
    /// [`Ready::snapshot_wanted`], only when a follower needs one; until then no replica
    /// encodes its state machine at all.
    pub fn compact_log(&mut self, index: LogIndex) -> Result<SnapshotMeta, RaftError> {
        let meta = self.compact_to(index)?;
        // An older image cannot serve a follower any more: the entries after it are gone.
        if self.snapshot.as_ref().is_some_and(|s| s.meta.index < meta.index) {
            self.snapshot = None;
        }
        Ok(meta)
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<SnapshotMeta, RaftError> {
        let bad = |reason| RaftError::BadCompaction { index, reason };
        if index > self.log.applied {
            return Err(bad("index not yet applied"));
        }
        if index < self.log.snapshot_index {
            return Err(bad("a newer snapshot exists"));
        }
        let term = self.log.term(index).ok_or(bad("index not in the log"))?;
        let meta = SnapshotMeta { index, term, conf_state: self.conf_at(index) };
        if index > self.log.snapshot_index {
            self.log.compact(index).map_err(bad)?;
        }
        self.conf_history.retain(|(i, _)| *i >= index);
        if self.conf_history.first().is_none_or(|(i, _)| *i > index) {
            self.conf_history.insert(0, (index, meta.conf_state.clone()));
        }
        Ok(meta)
    }

    /// A leader that just got an image starts sending it to every follower stuck behind the
    /// log's start.
    fn offer_snapshot(&mut self) {
        let first_held = self.log.snapshot_index + 1;
        let Some(l) = self.leader_mut() else { return };
        let waiting: Vec<NodeId> = l
            .progress
            .iter()
            .filter(|(_, p)| p.state != ProgressState::Snapshot && p.next_index < first_held)
            .map(|(&id, _)| id)
            .collect();
        for to in waiting {
            if to != self.cfg.id {
                self.start_snapshot(to);
            }
        }
    }

    /// The driver made this replica's log durable through (`index`, `term`) — the
    /// [`Ready::persist_marker`] of a ready it persisted.
    pub fn on_persisted(&mut self, index: LogIndex, term: Term) {
        if !self.log.stable_to(index, term) {
            return;
        }
        let id = self.cfg.id;
        let stable = self.log.stable;
        if let RoleState::Leader(l) = &mut self.role {
            if let Some(p) = l.progress.get_mut(&id) {
                p.maybe_update(stable);
            }
            self.maybe_commit();
        }
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.group != self.cfg.group || m.to != self.cfg.id || m.from == self.cfg.id {
            return;
        }
        if m.term > self.term {
            let is_vote_request = matches!(m.body, MessageBody::PreVote { .. })
                || matches!(m.body, MessageBody::Vote { transfer: false, .. });
            if is_vote_request && self.in_lease() {
                // Leader stickiness (§4.2.3): we heard from a live leader recently; a candidate
                // that cannot hear it must not depose it. Ignored without raising our term.
                return;
            }
            match m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader: tell it our term so it steps down.
                    self.send(m.from, MessageBody::HeartbeatResponse { read_seq: 0 });
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::PreVote { last_index, last_term } => {
                self.handle_vote_request(from, term, last_index, last_term, true)
            }
            MessageBody::Vote { last_index, last_term, .. } => {
                self.handle_vote_request(from, term, last_index, last_term, false)
            }
            MessageBody::PreVoteResponse { granted } => {
                if matches!(self.role, RoleState::PreCandidate { .. })
                    && (term == self.term + 1 || !granted)
                {
                    self.tally(from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if matches!(self.role, RoleState::Candidate { .. }) {
                    self.tally(from, granted);
                }
            }
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                if self.follow(from) {
                    self.handle_append(from, prev_index, prev_term, entries, commit);
                }
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                if self.follow(from) {
                    self.election_elapsed = 0;
                    self.log.commit_to(commit.min(self.log.last_index()));
                    self.send(from, MessageBody::HeartbeatResponse { read_seq });
                }
            }
            MessageBody::SnapshotChunk { meta, offset, total_bytes, data } => {
                if self.follow(from) {
                    self.handle_snapshot_chunk(from, meta, offset, total_bytes, data);
                }
            }
            MessageBody::AppendResponse { result } => self.handle_append_response(from, result),
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(from, read_seq)
            }
            MessageBody::SnapshotResponse { index, next_offset, done } => {
                self.handle_snapshot_response(from, index, next_offset, done)
            }
            MessageBody::TimeoutNow => {
                if matches!(self.role, RoleState::Follower { .. }) && self.promotable() {
                    self.campaign(false, true);
                }
            }
            MessageBody::ReadIndex { id } => {
                if matches!(self.role, RoleState::Leader(_)) {
                    if let Err(_busy) = self.leader_read(id, Some(from)) {
                        self.send(from, MessageBody::ReadIndexResponse { id, index: None });
                    }
                } else {
                    self.send(from, MessageBody::ReadIndexResponse { id, index: None });
                }
            }
            MessageBody::ReadIndexResponse { id, index } => match index {
                Some(index) => self.read_states.push(ReadState { id, index }),
                None => self.failed_reads.push((id, RaftError::NotLeader { leader: self.leader })),
            },
        }
    }

    // ----- output -------------------------------------------------------------------------

    /// True if [`Raft::ready`] has something for the driver.
    pub fn has_ready(&self) -> bool {
        self.leader_dirty
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.has_unstable()
            || self.log.has_next_committed()
            || self.pending_install.is_some()
            || self.snapshot_wanted
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || (self.term, self.vote) != (self.last_hard_state.term, self.last_hard_state.vote)
            || self.log.committed != self.last_commit_emitted
            || self.last_soft_state != Some(self.soft_state())
    }

    /// Drains everything the driver must now do (see the crate documentation for the order).
    pub fn ready(&mut self) -> Ready {
        let committed_entries = self.log.take_committed(self.cfg.max_committed_bytes_per_ready);
        for e in committed_entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            self.apply_conf_change(e.index, &e.data);
        }
        self.maybe_leave_joint();
        if self.leader_dirty {
            self.leader_dirty = false;
            if matches!(self.role, RoleState::Leader(_)) {
                self.broadcast_append();
            }
        }
        let entries = self.log.take_unstable();
        let hard_state = ((self.term, self.vote)
            != (self.last_hard_state.term, self.last_hard_state.vote))
            .then_some(HardState { term: self.term, vote: self.vote, commit: self.log.committed });
        if let Some(hs) = hard_state {
            self.last_hard_state = hs;
        }
        let commit_index =
            (self.log.committed != self.last_commit_emitted).then_some(self.log.committed);
        self.last_commit_emitted = self.log.committed;
        let soft = self.soft_state();
        let soft_state = (self.last_soft_state != Some(soft)).then_some(soft);
        self.last_soft_state = Some(soft);
        Ready {
            soft_state,
            hard_state,
            commit_index,
            snapshot: self.pending_install.take(),
            snapshot_wanted: std::mem::take(&mut self.snapshot_wanted)
                && matches!(self.role, RoleState::Leader(_)),
            entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
        }
    }

    // ----- queries ------------------------------------------------------------------------

    /// Term, vote and commit index as they stand (what a hard state record would hold now).
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower { .. } => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// Highest index handed out for application.
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }

    /// Last log index.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// Term of the entry at `index`, if held.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The entry at `index`, if held (not compacted).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Highest index known durable on this replica.
    pub fn stable_index(&self) -> LogIndex {
        self.log.stable
    }

    /// Index covered by the latest snapshot.
    pub fn snapshot_index(&self) -> LogIndex {
        self.log.snapshot_index
    }

    /// Membership in force.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Ticks delivered since this replica was created (the clock of [`ReadLease::until_tick`]).
    pub fn tick_count(&self) -> u64 {
        self.tick_count
    }

    /// True if a lease read would be served right now without a heartbeat round.
    pub fn lease_valid(&self) -> bool {
        self.read_lease().is_some_and(|lease| self.tick_count < lease.until_tick)
    }

    /// The leader's read lease as a driver with its own clock serves reads from it: reads may
    /// be answered from the local state machine without a heartbeat round while the driver's
    /// clock is below tick `until_tick` (ticks counted as [`Raft::tick`] counts them, so a
    /// driver that never delivers a tick before its time can map it to an instant) and the
    /// state machine has applied `commit_index`. `None` unless this replica is a leader with
    /// leases enabled, no leadership transfer under way and an entry of its term committed.
    /// The lease may already have run out: comparing with the clock is the driver's part.
    pub fn read_lease(&self) -> Option<ReadLease> {
        match &self.role {
            RoleState::Leader(l)
                if self.cfg.lease_read_max_drift_ticks.is_some()
                    && l.transferee.is_none()
                    && self.log.term(self.log.committed) == Some(self.term) =>
            {
                Some(ReadLease { until_tick: l.lease_until, commit_index: self.log.committed })
            }
            _ => None,
        }
    }

    /// Snapshot of the replica's state for operators.
    pub fn status(&self) -> Status {
        let peers = match &self.role {
            RoleState::Leader(l) => l
                .progress
                .iter()
                .map(|(&id, p)| PeerStatus {
                    id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: p.state,
                    inflight: p.inflight_count(),
                    recent_active: p.recent_active,
                    is_learner: p.is_learner,
                })
                .collect(),
            _ => Vec::new(),
        };
        Status {
            id: self.cfg.id,
            term: self.term,
            vote: self.vote,
            role: self.role(),
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            stable: self.log.stable,
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_index,
            conf: self.conf.clone(),
            peers,
        }
    }

    // ----- roles --------------------------------------------------------------------------

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role(), leader: self.leader, term: self.term }
    }

    /// A voter with no membership change left to apply may campaign.
    fn promotable(&self) -> bool {
        if !self.quorum.contains(self.cfg.id) {
            return false;
        }
        // A committed but unapplied membership change could change who votes: wait for it.
        let from = self.log.applied + 1;
        !(from..=self.log.committed)
            .any(|i| self.log.entry(i).is_some_and(|e| e.kind == EntryKind::ConfChange))
    }

    /// True while this replica must not help depose the leader it last heard from.
    fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        let recently_heard =
            self.leader.is_some() && self.election_elapsed < self.cfg.election_timeout_ticks_min;
        // A restarted replica does not remember whom it heard from; with leases on, it keeps
        // quiet for one election timeout so a lease granted before the crash stays sound.
        let just_started = self.cfg.lease_read_max_drift_ticks.is_some()
            && self.tick_count < self.cfg.election_timeout_ticks_min;
        recently_heard || just_started
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self
            .rng
            .range(self.cfg.election_timeout_ticks_min, self.cfg.election_timeout_ticks_max);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.fail_leader_reads();
        let keep_incoming =
            matches!(self.role, RoleState::Follower { .. }) && self.leader == leader;
        if !keep_incoming {
            self.role = RoleState::Follower { incoming: None };
        }
        self.leader = leader;
        self.leader_dirty = false;
        self.reset_election_timer();
    }

    /// Accepts `from` as leader of the current term; false if we lead it ourselves (which only a
    /// broken build can reach: two leaders in one term).
    fn follow(&mut self, from: NodeId) -> bool {
        match self.role {
            RoleState::Leader(_) => false,
            RoleState::Follower { .. } if self.leader == Some(from) => true,
            _ => {
                self.become_follower(self.term, Some(from));
                true
            }
        }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        self.fail_leader_reads();
        self.leader = None;
        self.reset_election_timer();
        let mut votes = BTreeMap::new();
        votes.insert(self.cfg.id, true);
        let campaign_term = if pre {
            self.role = RoleState::PreCandidate { votes };
            self.term + 1
        } else {
            self.term += 1;
            self.vote = Some(self.cfg.id);
            self.role = RoleState::Candidate { votes };
            self.term
        };
        if self.poll() != VoteResult::Pending {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.quorum.voters() {
            if to == self.cfg.id {
                continue;
            }
            let msg = |body| Message {
                group: self.cfg.group,
                from: self.cfg.id,
                to,
                term: campaign_term,
                body,
            };
            if pre {
                self.msgs.push(msg(MessageBody::PreVote { last_index, last_term }));
            } else {
                // Our own vote must be durable before anyone learns of the candidacy.
                self.msgs_after_persist.push(msg(MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer,
                }));
            }
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: LogIndex,
        last_term: Term,
        pre: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && term > self.term)
            // Planted bug: grant a second vote in the same term.
            || (cfg!(feature = "bug-double-vote") && !pre && !matches!(self.role, RoleState::Leader(_)));
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if pre {
            let reply_term = if granted { term } else { self.term };
            self.send_at(from, reply_term, MessageBody::PreVoteResponse { granted }, false);
        } else {
            if granted {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            // A grant is a promise: it may leave only once the vote is durable.
            self.send_at(from, self.term, MessageBody::VoteResponse { granted }, granted);
        }
    }

    fn tally(&mut self, from: NodeId, granted: bool) {
        match &mut self.role {
            RoleState::PreCandidate { votes } | RoleState::Candidate { votes } => {
                votes.insert(from, granted);
            }
            _ => return,
        }
        self.poll();
    }

    /// Counts the votes and acts on a decision.
    fn poll(&mut self) -> VoteResult {
        let (pre, result) = match &self.role {
            RoleState::PreCandidate { votes } => {
                (true, self.quorum.vote_result(|id| votes.get(&id).copied()))
            }
            RoleState::Candidate { votes } => {
                (false, self.quorum.vote_result(|id| votes.get(&id).copied()))
            }
            _ => return VoteResult::Pending,
        };
        match result {
            VoteResult::Won if pre => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
        result
    }

    fn become_leader(&mut self) {
        let next = self.log.last_index() + 1;
        let mut progress = BTreeMap::new();
        for id in self.conf.all_members() {
            let learner = !self.quorum.contains(id);
            progress.insert(id, Progress::new(next, self.cfg.max_inflight_msgs, learner));
        }
        if let Some(own) = progress.get_mut(&self.cfg.id) {
            own.maybe_update(self.log.stable);
            own.become_replicate();
            own.recent_active = true;
        }
        self.role = RoleState::Leader(Box::new(Leader {
            progress,
            heartbeat_elapsed: 0,
            transferee: None,
            // No membership change until this term's first entry is applied.
            pending_conf_index: self.log.last_index() + 1,
            read_seq: 0,
            read_seq_acked: 0,
            read_acks: BTreeMap::new(),
            round_ticks: VecDeque::new(),
            reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            lease_until: 0,
        }));
        self.leader = Some(self.cfg.id);
        self.election_elapsed = 0;
        // §6.4 / Figure 3.7: a no-op of our own term lets us commit (and read) without waiting
        // for a client write.
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            index,
            term: self.term,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        });
        self.leader_dirty = true;
    }

    // ----- replication (leader) -----------------------------------------------------------

    fn leader_mut(&mut self) -> Option<&mut Leader> {
        match &mut self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = match &self.role {
            RoleState::Leader(l) => {
                l.progress.keys().copied().filter(|&p| p != self.cfg.id).collect()
            }
            _ => return,
        };
        for to in peers {
            while self.send_append(to, false) {}
        }
    }

    /// Sends the next append (or snapshot) to `to` if its window allows. With `allow_empty`,
    /// an append without entries is sent even if the follower knows the commit index (a probe).
    /// Returns true if an append carrying entries was sent and more may follow.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let committed = self.log.committed;
        let Some(l) = self.leader_mut() else { return false };
        let Some(p) = l.progress.get(&to) else { return false };
        if p.is_paused() {
            return false;
        }
        let next = p.next_index;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries =
            self.log.entries_from(next, self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg);
        let (Some(prev_term), Ok(entries)) = (prev_term, entries) else {
            self.start_snapshot(to);
            return false;
        };
        let Some(l) = self.leader_mut() else { return false };
        let Some(p) = l.progress.get_mut(&to) else { return false };
        if entries.is_empty() && !allow_empty && p.commit_sent >= committed {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        p.sent_entries(last);
        p.commit_sent = p.commit_sent.max(committed);
        let more = last.is_some() && p.state == ProgressState::Replicate;
        self.send(to, MessageBody::Append { prev_index, prev_term, entries, commit: committed });
        more
    }

    fn broadcast_heartbeat(&mut self) {
        let committed = self.log.committed;
        let id = self.cfg.id;
        let tick = self.tick_count;
        let Some(l) = self.leader_mut() else { return };
        l.read_seq += 1;
        let read_seq = l.read_seq;
        l.round_ticks.push_back((read_seq, tick));
        // Bounded: rounds older than the acknowledged one are dropped as acks arrive; a
        // leader that hears from nobody keeps at most this many.
        while l.round_ticks.len() > 1024 {
            l.round_ticks.pop_front();
        }
        let targets: Vec<(NodeId, LogIndex)> = l
            .progress
            .iter()
            .filter(|(n, _)| **n != id)
            .map(|(&n, p)| (n, p.match_index.min(committed)))
            .collect();
        for (to, commit) in targets {
            self.send(to, MessageBody::Heartbeat { commit, read_seq });
        }
        // A single-voter group confirms itself.
        self.process_read_acks();
    }

    fn maybe_commit(&mut self) -> bool {
        let Some(l) = (match &self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }) else {
            return false;
        };
        let index = self.quorum.committed_index(|id| l.progress.get(&id).map(|p| p.match_index));
        // §3.6.2: only an entry of the leader's own term is committed by counting replicas;
        // earlier entries commit with it (Figure 3.8's hazard otherwise).
        let current_term_only = !cfg!(feature = "bug-commit-old-term");
        if index <= self.log.committed
            || (current_term_only && self.log.term(index) != Some(self.term))
        {
            return false;
        }
        let first_in_term = self.log.term(self.log.committed) != Some(self.term);
        self.log.commit_to(index);
        self.leader_dirty = true;
        if first_in_term && self.log.term(self.log.committed) == Some(self.term) {
            let waiting = self.leader_mut().map(|l| std::mem::take(&mut l.reads_before_commit));
            for r in waiting.unwrap_or_default() {
                if self.leader_read(r.id, r.from).is_err() {
                    self.reject_read(r.id, r.from);
                }
            }
        }
        true
    }

    fn handle_append_response(&mut self, from: NodeId, result: AppendResult) {
        let last_index = self.log.last_index();
        let hint_point = match result {
            AppendResult::Reject { hint_index, hint_term, .. } if hint_term > 0 => {
                self.log.find_conflict_by_term(hint_index, hint_term).0
            }
            AppendResult::Reject { hint_index, .. } => hint_index,
            AppendResult::Success { .. } => 0,
        };
        let Some(l) = self.leader_mut() else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        p.recent_active = true;
        match result {
            AppendResult::Reject { rejected_index, .. } => {
                if p.maybe_decrease(rejected_index, hint_point) {
                    if p.state == ProgressState::Replicate {
                        p.become_probe();
                    }
                    self.send_append(from, true);
                }
            }
            AppendResult::Success { match_index } => {
                let updated = p.maybe_update(match_index);
                match p.state {
                    ProgressState::Probe if updated || p.match_index + 1 == p.next_index => {
                        p.become_replicate()
                    }
                    ProgressState::Snapshot
                        if p.snapshot.as_ref().is_some_and(|s| p.match_index >= s.index) =>
                    {
                        p.become_probe()
                    }
                    _ => {}
                }
                let caught_up = p.match_index == last_index;
                let transfer_now = caught_up && l.transferee == Some(from);
                if updated {
                    self.maybe_commit();
                }
                if transfer_now {
                    self.send(from, MessageBody::TimeoutNow);
                }
                while self.send_append(from, false) {}
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let last_index = self.log.last_index();
        let Some(l) = self.leader_mut() else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        p.recent_active = true;
        p.probe_sent = false;
        if p.state == ProgressState::Replicate && p.is_paused() {
            p.free_first_inflight();
        }
        let mut resend_snapshot = false;
        if let Some(s) = p.snapshot.as_mut() {
            // No acknowledgement since the last heartbeat: assume chunks were lost, resend.
            if !s.progressed {
                s.sent_offset = s.acked_offset;
                s.sent_empty = false;
            }
            s.progressed = false;
            resend_snapshot = true;
        }
        let behind = p.match_index < last_index;
        if read_seq > 0 && !p.is_learner {
            let ack = l.read_acks.entry(from).or_insert(0);
            *ack = (*ack).max(read_seq);
        }
        if resend_snapshot {
            self.send_snapshot_chunks(from);
        } else if behind {
            self.send_append(from, true);
        }
        self.process_read_acks();
    }

    // ----- follower -----------------------------------------------------------------------

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) {
        self.election_elapsed = 0;
        if prev_index < self.log.committed {
            let match_index = self.log.committed;
            let body =
                MessageBody::AppendResponse { result: AppendResult::Success { match_index } };
            self.send_at(from, self.term, body, true);
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Some(last_new) => {
                self.log.commit_to(commit.min(last_new));
                let body = MessageBody::AppendResponse {
                    result: AppendResult::Success { match_index: last_new },
                };
                // The acknowledgement counts towards commitment: the entries must be durable.
                self.send_at(from, self.term, body, true);
            }
            None => {
                let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
                let body = MessageBody::AppendResponse {
                    result: AppendResult::Reject {
                        rejected_index: prev_index,
                        hint_index,
                        hint_term,
                    },
                };
                self.send(from, body);
            }
        }
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        total_bytes: u64,
        data: Bytes,
    ) {
        self.election_elapsed = 0;
        let index = meta.index;
        if index <= self.log.committed {
            // We already hold everything it covers.
            let match_index = self.log.committed;
            let body =
                MessageBody::AppendResponse { result: AppendResult::Success { match_index } };
            self.send_at(from, self.term, body, true);
            return;
        }
        let RoleState::Follower { incoming } = &mut self.role else { return };
        let fresh = incoming.as_ref().is_none_or(|s| {
            s.meta.index != index || s.meta.term != meta.term || s.total_bytes != total_bytes
        });
        if fresh {
            if offset != 0 {
                self.send(
                    from,
                    MessageBody::SnapshotResponse { index, next_offset: 0, done: false },
                );
                return;
            }
            *incoming = Some(IncomingSnapshot { meta, total_bytes, buf: BytesMut::new() });
        }
        let Some(asm) = incoming.as_mut() else { return };
        let have = asm.buf.len() as u64;
        if offset == have && have + data.len() as u64 <= asm.total_bytes {
            asm.buf.extend_from_slice(&data);
        }
        let have = asm.buf.len() as u64;
        if have < asm.total_bytes {
            self.send(
                from,
                MessageBody::SnapshotResponse { index, next_offset: have, done: false },
            );
            return;
        }
        let Some(asm) = incoming.take() else { return };
        let snapshot = Snapshot { meta: asm.meta, data: asm.buf.freeze() };
        self.install_snapshot(snapshot);
        let body = MessageBody::SnapshotResponse { index, next_offset: total_bytes, done: true };
        // Done means "my log now matches through index": only once the snapshot is durable.
        self.send_at(from, self.term, body, true);
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        if self.log.match_term(meta.index, meta.term) {
            // Our log already holds that entry, hence (Log Matching) everything before it.
            self.log.commit_to(meta.index);
            return;
        }
        self.log.install_snapshot(meta.index, meta.term);
        self.conf_history.clear();
        self.set_conf(meta.index, meta.conf_state.clone());
        self.snapshot = Some(snapshot.clone());
        self.pending_install = Some(snapshot);
    }

    // ----- snapshot sending (leader) -------------------------------------------------------

    /// The held image, if a follower that installs it can go on from the log.
    fn usable_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().filter(|s| s.meta.index >= self.log.snapshot_index)
    }

    fn start_snapshot(&mut self, to: NodeId) {
        let Some(index) = self.usable_snapshot().map(|s| s.meta.index) else {
            // Nothing to send yet: ask the driver for an image; the probe stays as it is and
            // `compact` starts the transfer when the image arrives.
            self.snapshot_wanted = true;
            return;
        };
        let Some(l) = self.leader_mut() else { return };
        let Some(p) = l.progress.get_mut(&to) else { return };
        p.become_snapshot(index);
        self.send_snapshot_chunks(to);
    }

    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let Some(snap) = self.usable_snapshot().cloned() else {
            // The image being sent was dropped by a later compaction: probe again, which
            // asks for a new one.
            if let Some(p) = self.leader_mut().and_then(|l| l.progress.get_mut(&to)) {
                p.become_probe();
            }
            self.start_snapshot(to);
            return;
        };
        let chunk = self.cfg.snapshot_chunk_bytes as u64;
        let window = chunk * self.cfg.snapshot_chunks_in_flight as u64;
        let total = snap.data.len() as u64;
        let Some(l) = self.leader_mut() else { return };
        let Some(p) = l.progress.get_mut(&to) else { return };
        let Some(s) = p.snapshot.as_mut() else { return };
        if s.index != snap.meta.index {
            // A newer snapshot replaced the one being sent: start over with it.
            p.become_snapshot(snap.meta.index);
        }
        let Some(s) = p.snapshot.as_mut() else { return };
        let mut chunks = Vec::new();
        while (s.sent_offset < total && s.sent_offset - s.acked_offset < window)
            || (total == 0 && !s.sent_empty)
        {
            let end = (s.sent_offset + chunk).min(total);
            chunks.push((s.sent_offset, snap.data.slice(s.sent_offset as usize..end as usize)));
            s.sent_offset = end;
            s.sent_empty = true;
        }
        for (offset, data) in chunks {
            let body = MessageBody::SnapshotChunk {
                meta: snap.meta.clone(),
                offset,
                total_bytes: total,
                data,
            };
            self.send(to, body);
        }
    }

    fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        next_offset: u64,
        done: bool,
    ) {
        let Some(l) = self.leader_mut() else { return };
        let Some(p) = l.progress.get_mut(&from) else { return };
        p.recent_active = true;
        if done {
            if p.maybe_update(index) {
                self.maybe_commit();
            }
            let Some(l) = self.leader_mut() else { return };
            let Some(p) = l.progress.get_mut(&from) else { return };
            if p.state == ProgressState::Snapshot {
                p.become_probe();
            }
            self.send_append(from, true);
            return;
        }
        let Some(s) = p.snapshot.as_mut().filter(|s| s.index == index) else { return };
        if next_offset > s.acked_offset {
            s.acked_offset = next_offset;
            s.sent_offset = s.sent_offset.max(next_offset);
            s.progressed = true;
        } else if next_offset < s.acked_offset {
            // The follower started its assembly over (it restarted): resend from there.
            s.acked_offset = next_offset;
            s.sent_offset = next_offset;
            s.sent_empty = false;
        }
        // An ack that does not advance (a gap after a lost chunk) is left to the heartbeat
        // timer, which resends from the acknowledged offset if nothing advances.
        self.send_snapshot_chunks(from);
    }

    // ----- reads --------------------------------------------------------------------------

    fn leader_read(&mut self, id: ReadId, from: Option<NodeId>) -> Result<(), RaftError> {
        let committed = self.log.committed;
        let committed_in_term = self.log.term(committed) == Some(self.term);
        let single_voter = self.quorum.voters() == [self.cfg.id];
        let max = self.cfg.max_pending_reads;
        let lease = self.lease_valid();
        let RoleState::Leader(l) = &mut self.role else {
            return Err(RaftError::NotLeader { leader: self.leader });
        };
        let waiting = l.reads.len() + l.reads_before_commit.len();
        if waiting >= max {
            return Err(RaftError::TooManyReads(waiting));
        }
        if !committed_in_term {
            l.reads_before_commit.push(PendingRead { id, from, index: 0, seq: 0 });
            return Ok(());
        }
        if single_voter || lease {
            self.release_read(id, from, committed);
            return Ok(());
        }
        let seq = l.read_seq + 1;
        l.reads.push_back(PendingRead { id, from, index: committed, seq });
        if l.read_seq_acked == l.read_seq {
            // No round in flight: start one now. Reads arriving meanwhile share the next one.
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn process_read_acks(&mut self) {
        let id = self.cfg.id;
        let timeout_min = self.cfg.election_timeout_ticks_min;
        let drift = self.cfg.lease_read_max_drift_ticks;
        let Some(l) = (match &mut self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }) else {
            return;
        };
        let own = l.read_seq;
        let acked = self
            .quorum
            .committed_index(|n| if n == id { Some(own) } else { l.read_acks.get(&n).copied() });
        if acked <= l.read_seq_acked {
            return;
        }
        l.read_seq_acked = acked;
        let mut sent_tick = None;
        while l.round_ticks.front().is_some_and(|&(seq, _)| seq <= acked) {
            sent_tick = l.round_ticks.pop_front().map(|(_, t)| t);
        }
        if let (Some(drift), Some(t), None) = (drift, sent_tick, l.transferee) {
            // Followers that acknowledged a round sent at `t` will not vote for anyone else
            // before `t + election_timeout_min` of their own time; shave off the drift bound.
            l.lease_until = l.lease_until.max(t + timeout_min - drift);
        }
        let mut released = Vec::new();
        while l.reads.front().is_some_and(|r| r.seq <= acked) {
            released.extend(l.reads.pop_front());
        }
        let start_next = l.reads.back().is_some_and(|r| r.seq > l.read_seq);
        for r in released {
            self.release_read(r.id, r.from, r.index);
        }
        if start_next {
            self.broadcast_heartbeat();
        }
    }

    fn release_read(&mut self, id: ReadId, from: Option<NodeId>, index: LogIndex) {
        match from {
            None => self.read_states.push(ReadState { id, index }),
            Some(f) => self.send(f, MessageBody::ReadIndexResponse { id, index: Some(index) }),
        }
    }

    fn reject_read(&mut self, id: ReadId, from: Option<NodeId>) {
        match from {
            None => self.failed_reads.push((id, RaftError::NotLeader { leader: self.leader })),
            Some(f) => self.send(f, MessageBody::ReadIndexResponse { id, index: None }),
        }
    }

    /// A deposed leader fails every read it was holding.
    fn fail_leader_reads(&mut self) {
        let RoleState::Leader(l) = &mut self.role else { return };
        let reads: Vec<PendingRead> =
            l.reads.drain(..).chain(l.reads_before_commit.drain(..)).collect();
        for r in reads {
            self.reject_read(r.id, r.from);
        }
    }

    // ----- membership ---------------------------------------------------------------------

    fn set_conf(&mut self, index: LogIndex, conf: ConfState) {
        self.quorum = Joint::new(conf.voters.iter().copied(), conf.voters_outgoing.iter().copied());
        self.conf_history.push((index, conf.clone()));
        self.conf = conf;
    }

    fn conf_at(&self, index: LogIndex) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.conf.clone(), |(_, c)| c.clone())
    }

    fn apply_conf_change(&mut self, index: LogIndex, data: &[u8]) {
        // A change that does not decode or no longer applies is a no-op on every replica alike.
        let Some(change) = ConfChange::decode(data) else { return };
        let Ok(next) = confchange::apply(&self.conf, &change) else { return };
        self.set_conf(index, next);
        let id = self.cfg.id;
        let next_index = self.log.last_index() + 1;
        let inflight_max = self.cfg.max_inflight_msgs;
        let members = self.conf.all_members();
        let quorum = self.quorum.clone();
        let RoleState::Leader(l) = &mut self.role else { return };
        l.progress.retain(|n, _| members.contains(n));
        for &n in &members {
            let learner = !quorum.contains(n);
            l.progress
                .entry(n)
                .or_insert_with(|| Progress::new(next_index, inflight_max, learner))
                .is_learner = learner;
        }
        l.read_acks.retain(|n, _| quorum.contains(*n));
        if l.transferee.is_some_and(|t| !quorum.contains(t)) {
            l.transferee = None;
        }
        if !self.quorum.contains(id) && !self.quorum.is_joint() {
            // Removed (or demoted) leader: hand over by stepping down once C_new is in force.
            self.become_follower(self.term, None);
        } else {
            self.leader_dirty = true;
        }
    }

    /// A leader in a joint configuration leaves it as soon as the joint entry is applied.
    fn maybe_leave_joint(&mut self) {
        let applied = self.log.applied;
        let Some(l) = (match &self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }) else {
            return;
        };
        if self.conf.is_joint() && l.pending_conf_index <= applied && l.transferee.is_none() {
            // Cannot fail for a reason other than back-pressure; then the next ready retries.
            let _ = self.propose_conf_change(ConfChange::default());
        }
    }

    // ----- sending ------------------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_at(to, self.term, body, false);
    }

    fn send_at(&mut self, to: NodeId, term: Term, body: MessageBody, after_persist: bool) {
        let m = Message { group: self.cfg.group, from: self.cfg.id, to, term, body };
        if after_persist {
            self.msgs_after_persist.push(m);
        } else {
            self.msgs.push(m);
        }
    }
}
