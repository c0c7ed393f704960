//! Errors the Raft core returns to its driver. None of them is fatal to the replica: they
//! refuse one request and say why, so the caller can redirect or retry.

use quorumkv_core::{LogIndex, NodeId};
use thiserror::Error;

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid raft configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a proposal, read or administrative request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RaftError {
    /// Only the leader accepts this; `leader` is the last known leader, to redirect to.
    #[error("not the leader (leader hint: {leader:?}); retry against the leader")]
    NotLeader {
        /// The last known leader, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals resume on the new leader.
    #[error("leadership transfer in progress; retry shortly against the new leader")]
    TransferInProgress,
    /// Too many entries are waiting to commit; back off.
    #[error("too many uncommitted proposals ({0}); back off and retry")]
    Busy(usize),
    /// Too many reads are waiting; back off.
    #[error("too many pending reads ({0}); back off and retry")]
    TooManyReads(usize),
    /// A membership change is still pending; one at a time.
    #[error("a membership change is still in progress (index {0}); retry once it is applied")]
    ConfChangeInProgress(LogIndex),
    /// The requested membership change is not allowed from the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The request refers to a node that is not a member.
    #[error("node {0} is not a voting member of this group")]
    NotAVoter(NodeId),
    /// A snapshot or compaction request refers to entries this replica does not have.
    #[error("cannot compact to index {index}: {reason}")]
    BadCompaction {
        /// Requested index.
        index: LogIndex,
        /// Why it is not possible.
        reason: &'static str,
    },
    /// The restored state handed to `Raft::new` is inconsistent.
    #[error("inconsistent restored state: {0}")]
    BadRestore(String),
}
