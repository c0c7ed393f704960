//! Messages between replicas of one group. Every message names its group, sender, receiver
//! and the sender's term, so one transport can carry the traffic of many groups.

use bytes::Bytes;
use quorumkv_core::{Entry, GroupId, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// Identifies a read request across the ReadIndex protocol; chosen by the driver.
pub type ReadId = u64;

/// One message from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The group both replicas belong to.
    pub group: GroupId,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The payload of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me in `term`? Changes no state on either side (§9.6).
    PreVote {
        /// Candidate's last log index.
        last_index: LogIndex,
        /// Candidate's last log term.
        last_term: Term,
    },
    /// Answer to [`MessageBody::PreVote`].
    PreVoteResponse {
        /// True if the voter would grant a real vote.
        granted: bool,
    },
    /// RequestVote (§3.4).
    Vote {
        /// Candidate's last log index.
        last_index: LogIndex,
        /// Candidate's last log term.
        last_term: Term,
        /// The election follows a leadership transfer: voters skip leader stickiness.
        transfer: bool,
    },
    /// Answer to [`MessageBody::Vote`].
    VoteResponse {
        /// True if the vote was granted.
        granted: bool,
    },
    /// AppendEntries (§3.5): `entries` follow the entry at (`prev_index`, `prev_term`).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: LogIndex,
        /// Term of that entry.
        prev_term: Term,
        /// New entries (possibly none: then it only carries `commit`).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: LogIndex,
    },
    /// Answer to [`MessageBody::Append`].
    AppendResponse {
        /// Accepted up to an index, or rejected with a hint for fast back-off.
        result: AppendResult,
    },
    /// Leader liveness and ReadIndex confirmation; carries no entries.
    Heartbeat {
        /// min(leader commit, follower's match index): never ahead of the follower's log.
        commit: LogIndex,
        /// Read round this heartbeat belongs to; echoed back.
        read_seq: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echo of the heartbeat's `read_seq`.
        read_seq: u64,
    },
    /// One chunk of a snapshot (§5.3): bytes [offset, offset + data.len()) of `total_bytes`.
    SnapshotChunk {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// Offset of `data` within the snapshot image.
        offset: u64,
        /// Length of the whole image.
        total_bytes: u64,
        /// The chunk.
        data: Bytes,
    },
    /// Answer to [`MessageBody::SnapshotChunk`].
    SnapshotResponse {
        /// Index of the snapshot being transferred.
        index: LogIndex,
        /// The next offset the follower needs (resume point after a lost chunk).
        next_offset: u64,
        /// The whole snapshot is installed and durable; `index` is now the follower's match.
        done: bool,
    },
    /// Start an election now, skipping pre-vote and stickiness (leadership transfer, §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        /// The follower's read id.
        id: ReadId,
    },
    /// The leader's answer: the index to wait for, or `None` if it cannot serve the read.
    ReadIndexResponse {
        /// The follower's read id.
        id: ReadId,
        /// Safe read index, once the leader confirmed its leadership.
        index: Option<LogIndex>,
    },
}

/// Outcome of an append at the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's through `match_index`.
    Success {
        /// Highest index known to match.
        match_index: LogIndex,
    },
    /// The follower has no entry matching (`rejected_index`, leader's term there). The hint is
    /// the follower's last entry at or before `rejected_index` whose term is ≤ the leader's
    /// `prev_term`: the leader can skip every index above it in one step (§5.3 optimisation).
    Reject {
        /// The `prev_index` that did not match.
        rejected_index: LogIndex,
        /// Follower's candidate index for the next probe.
        hint_index: LogIndex,
        /// Term of the follower's entry at `hint_index`.
        hint_term: Term,
    },
}

impl MessageBody {
    /// A short name, for logs, metrics and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PreVote { .. } => "pre_vote",
            Self::PreVoteResponse { .. } => "pre_vote_resp",
            Self::Vote { .. } => "vote",
            Self::VoteResponse { .. } => "vote_resp",
            Self::Append { .. } => "append",
            Self::AppendResponse { .. } => "append_resp",
            Self::Heartbeat { .. } => "heartbeat",
            Self::HeartbeatResponse { .. } => "heartbeat_resp",
            Self::SnapshotChunk { .. } => "snapshot_chunk",
            Self::SnapshotResponse { .. } => "snapshot_resp",
            Self::TimeoutNow => "timeout_now",
            Self::ReadIndex { .. } => "read_index",
            Self::ReadIndexResponse { .. } => "read_index_resp",
        }
    }
}
