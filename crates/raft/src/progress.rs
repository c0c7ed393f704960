//! What a leader knows of each follower's log, and how fast it may send to it.
//!
//! A follower's progress is in one of three states (the etcd raft design):
//! - **Probe**: the leader does not know where the logs diverge; it sends one append at a time
//!   and waits for the answer (or the next heartbeat) before sending another.
//! - **Replicate**: the logs match through `match_index`; appends are pipelined, optimistically
//!   advancing `next_index`, bounded by a window of in-flight messages.
//! - **Snapshot**: the entries the follower needs are compacted; a snapshot is being streamed
//!   in chunks and no appends are sent until it is installed.

use std::collections::VecDeque;

use quorumkv_core::LogIndex;

/// Replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One append at a time until the match point is found.
    Probe,
    /// Pipelined appends.
    Replicate,
    /// Receiving a snapshot.
    Snapshot,
}

/// A snapshot being streamed to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTransfer {
    /// Index of the snapshot being sent.
    pub index: LogIndex,
    /// Bytes the follower acknowledged receiving.
    pub acked_offset: u64,
    /// Bytes sent so far (≥ acked).
    pub sent_offset: u64,
    /// Whether the follower acknowledged anything since the last heartbeat (resend otherwise).
    pub progressed: bool,
    /// For an empty image: its single empty chunk was sent.
    pub sent_empty: bool,
}

/// Leader's view of one follower (or learner).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known replicated on the follower.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Current state.
    pub state: ProgressState,
    /// In Probe: an append is out and unanswered.
    pub probe_sent: bool,
    /// In Replicate: the last index of each in-flight append, oldest first.
    inflight: VecDeque<LogIndex>,
    /// Bound on `inflight`.
    inflight_max: usize,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// In Snapshot: the transfer under way.
    pub snapshot: Option<SnapshotTransfer>,
    /// Highest commit index sent to this follower (to know when an empty append is needed).
    pub commit_sent: LogIndex,
    /// Non-voting member.
    pub is_learner: bool,
}

impl Progress {
    /// Progress of a follower the leader knows nothing about yet.
    pub fn new(next_index: LogIndex, inflight_max: usize, is_learner: bool) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_max,
            recent_active: false,
            snapshot: None,
            commit_sent: 0,
            is_learner,
        }
    }

    /// True if nothing may be sent right now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= self.inflight_max,
            ProgressState::Snapshot => true,
        }
    }

    /// Records that an append ending at `last` was sent.
    pub fn sent_entries(&mut self, last: Option<LogIndex>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                    debug_assert!(self.inflight.len() <= self.inflight_max);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// The follower acknowledged its log matches through `index`. Returns true if that is news.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// The follower rejected an append at `rejected`; `hint` is the leader-side next probe point.
    /// Returns false if the rejection is stale (answers an older message).
    pub fn maybe_decrease(&mut self, rejected: LogIndex, hint: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
            }
            _ => {
                if self.next_index == 0 || rejected != self.next_index - 1 {
                    return false;
                }
            }
        }
        self.next_index = rejected.min(hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Back to one-at-a-time probing.
    pub fn become_probe(&mut self) {
        let after_snapshot = self.snapshot.take().map_or(0, |s| s.index + 1);
        self.state = ProgressState::Probe;
        self.next_index = (self.match_index + 1).max(after_snapshot);
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Logs match: pipeline from `match_index + 1`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.snapshot = None;
        self.inflight.clear();
    }

    /// Start streaming the snapshot at `index`.
    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = Some(SnapshotTransfer {
            index,
            acked_offset: 0,
            sent_offset: 0,
            progressed: true,
            sent_empty: false,
        });
    }

    /// Forgets the oldest in-flight append. Called when a heartbeat gets through while the
    /// window is full: appends were probably lost, and one more send either fills the window
    /// again or draws the rejection that sends the follower back to probing.
    pub fn free_first_inflight(&mut self) {
        self.inflight.pop_front();
    }

    /// Number of appends in flight (Replicate state).
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_and_frees() {
        let mut p = Progress::new(1, 2, false);
        p.maybe_update(0);
        p.become_replicate();
        assert!(!p.is_paused());
        p.sent_entries(Some(3));
        p.sent_entries(Some(5));
        assert!(p.is_paused());
        assert_eq!(p.next_index, 6);
        assert!(p.maybe_update(3));
        assert!(!p.is_paused());
        assert_eq!(p.inflight_count(), 1);
        assert!(!p.maybe_update(2), "old ack is no news");
    }

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(10, 8, false);
        assert!(!p.is_paused());
        p.sent_entries(Some(12));
        assert!(p.is_paused());
        assert_eq!(p.next_index, 10, "probe does not advance optimistically");
        // A rejection of an older message is stale.
        assert!(!p.maybe_decrease(5, 3));
        assert!(p.maybe_decrease(9, 4));
        assert_eq!(p.next_index, 5);
        assert!(!p.is_paused());
    }

    #[test]
    fn rejection_never_goes_below_match() {
        let mut p = Progress::new(1, 8, false);
        p.maybe_update(7);
        p.become_replicate();
        p.sent_entries(Some(9));
        assert!(!p.maybe_decrease(6, 0), "below match: stale");
        assert!(p.maybe_decrease(9, 2));
        assert_eq!(p.next_index, 8);
    }

    #[test]
    fn snapshot_state_then_probe_resumes_after_it() {
        let mut p = Progress::new(1, 8, false);
        p.become_snapshot(40);
        assert!(p.is_paused());
        p.become_probe();
        assert_eq!(p.next_index, 41);
        assert!(p.snapshot.is_none());
    }
}
