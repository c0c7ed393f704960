//! The output of the Raft core: what the driver must persist, send, apply and answer.

use quorumkv_core::{Entry, HardState, LogIndex, NodeId, Snapshot, Term};

use crate::error::RaftError;
use crate::message::{Message, ReadId};

/// A replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether an election could be won, without raising the term.
    PreCandidate,
    /// Campaigning in its own term.
    Candidate,
    /// Leads its term.
    Leader,
}

impl Role {
    /// Lower-case name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Volatile state worth reporting when it changes (not persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// This replica's role.
    pub role: Role,
    /// The leader it knows of, if any.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: Term,
}

/// A read request that may now be served: once the state machine has applied `index`, reading
/// it is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the driver gave the request.
    pub id: ReadId,
    /// Serve the read once `applied ≥ index`.
    pub index: LogIndex,
}

/// Everything the driver must do after a batch of inputs. See the crate documentation for the
/// order in which the fields must be handled.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed. Informational.
    pub soft_state: Option<SoftState>,
    /// Term or vote changed: persist before sending `persisted_messages`.
    pub hard_state: Option<HardState>,
    /// The commit index moved. Persisting it (in a hard state record with the current term
    /// and vote) is optional and needs no fsync of its own — a lower commit index on disk is
    /// always safe — but a recent one keeps committed membership changes in force across a
    /// restart and shortens recovery. Write it with the next batch that is written anyway.
    pub commit_index: Option<LogIndex>,
    /// A snapshot received from the leader: persist it and restore the state machine from it,
    /// replacing the whole log, before applying `committed_entries` and before sending
    /// `persisted_messages`.
    pub snapshot: Option<Snapshot>,
    /// This leader has a follower to send a snapshot to and holds no usable image (its log was
    /// compacted with [`crate::Raft::compact_log`], or past its last image): take an image of
    /// the state machine at its applied index and hand it to [`crate::Raft::compact`]. Asked
    /// again while a follower still waits; a driver already taking one may ignore the repeat.
    pub snapshot_wanted: bool,
    /// Entries to append to the durable log. The first entry's index may be at or below the
    /// last persisted one: the durable log must then drop everything from that index on first.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once, in parallel with persisting (leader appends and
    /// heartbeats, pre-votes, read forwarding).
    pub messages: Vec<Message>,
    /// Messages that may be sent only once everything above (and every earlier `Ready`) is
    /// durable: votes, vote grants, append acknowledgements.
    pub persisted_messages: Vec<Message>,
    /// Committed, durable entries to apply to the state machine, in order. Each is handed out
    /// exactly once per replica lifetime.
    pub committed_entries: Vec<Entry>,
    /// Reads that may be served once the state machine has applied their index.
    pub read_states: Vec<ReadState>,
    /// Reads that cannot be served here (answer the client with the error; it may retry).
    pub failed_reads: Vec<(ReadId, RaftError)>,
}

impl Ready {
    /// The (index, term) to report through `Raft::on_persisted` once this ready's
    /// `entries` or `snapshot` are durable; `None` if it carries neither.
    pub fn persist_marker(&self) -> Option<(LogIndex, Term)> {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => Some((e.index, e.term)),
            (None, Some(s)) => Some((s.meta.index, s.meta.term)),
            (None, None) => None,
        }
    }

    /// True if something must be made durable before `persisted_messages` go out.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }

    /// True if there is nothing at all to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.commit_index.is_none()
            && !self.must_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && !self.snapshot_wanted
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.failed_reads.is_empty()
    }
}
