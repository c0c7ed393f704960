//! Tunables of one Raft group, all in logical ticks or counts; validated before use.

use quorumkv_core::{GroupId, NodeId};

use crate::error::ConfigError;

/// Configuration of one replica of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's node id (non-zero).
    pub id: NodeId,
    /// The group this replica belongs to; stamped on every message.
    pub group: GroupId,
    /// Lower bound of the randomized election timeout, in ticks. Also the time a follower that
    /// heard from a leader refuses to vote for anyone else (leader stickiness, §4.2.3).
    pub election_timeout_ticks_min: u64,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    pub election_timeout_ticks_max: u64,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_interval_ticks: u64,
    /// Run a pre-vote round before a real election (§9.6), so a partitioned node that rejoins
    /// does not disrupt a working leader by raising the term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down (§6.2).
    pub check_quorum: bool,
    /// Serve reads from a leader lease without a heartbeat round (§6.4.1). `Some(drift)` enables
    /// it, with `drift` ticks subtracted from the lease to bound clock-rate differences. Safe only
    /// while the real drift between any two nodes' tick rates stays within the bound.
    pub lease_read_max_drift_ticks: Option<u64>,
    /// At most this many append messages in flight to one follower (pipelining window).
    pub max_inflight_msgs: usize,
    /// At most this many entries in one append message.
    pub max_entries_per_msg: usize,
    /// At most about this many bytes of entries in one append message (at least one entry is
    /// always sent, so an entry larger than this still moves).
    pub max_bytes_per_msg: usize,
    /// A leader refuses new proposals while this many entries are appended but not committed.
    pub max_uncommitted_entries: usize,
    /// At most this many read requests may wait for a heartbeat round or for the first commit
    /// of a term.
    pub max_pending_reads: usize,
    /// Committed entries handed out in one `Ready` stop after about this many bytes.
    pub max_committed_bytes_per_ready: usize,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks sent ahead of the follower's acknowledgement.
    pub snapshot_chunks_in_flight: usize,
}

impl Config {
    /// Defaults suited to a 10 ms tick: elections after 100–200 ms, heartbeats every 20 ms.
    pub fn new(id: NodeId, group: GroupId) -> Self {
        Self {
            id,
            group,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_read_max_drift_ticks: None,
            max_inflight_msgs: 256,
            max_entries_per_msg: 1024,
            max_bytes_per_msg: 1 << 20,
            max_uncommitted_entries: 100_000,
            max_pending_reads: 100_000,
            max_committed_bytes_per_ready: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_in_flight: 4,
        }
    }

    /// Checks the relations between the tunables.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &str| Err(ConfigError(what.to_string()));
        if self.id == 0 {
            return fail("node id must be non-zero");
        }
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks must be at least 1");
        }
        if self.election_timeout_ticks_min <= self.heartbeat_interval_ticks {
            return fail("election_timeout_ticks_min must exceed heartbeat_interval_ticks");
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return fail("election_timeout_ticks_max must exceed election_timeout_ticks_min");
        }
        if let Some(drift) = self.lease_read_max_drift_ticks {
            if !self.check_quorum {
                return fail("lease reads need check_quorum (leader stickiness bounds the lease)");
            }
            if drift >= self.election_timeout_ticks_min {
                return fail("lease_read_max_drift_ticks must be below election_timeout_ticks_min");
            }
        }
        if self.max_inflight_msgs == 0
            || self.max_entries_per_msg == 0
            || self.max_bytes_per_msg == 0
            || self.max_uncommitted_entries == 0
            || self.max_pending_reads == 0
            || self.max_committed_bytes_per_ready == 0
            || self.snapshot_chunk_bytes == 0
            || self.snapshot_chunks_in_flight == 0
        {
            return fail("every max_* / snapshot_* bound must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_relations_are_rejected() {
        let ok = Config::new(1, 7);
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.id = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.election_timeout_ticks_max = c.election_timeout_ticks_min;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.heartbeat_interval_ticks = c.election_timeout_ticks_min;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.lease_read_max_drift_ticks = Some(c.election_timeout_ticks_min);
        assert!(c.validate().is_err());
        let mut c = ok;
        c.check_quorum = false;
        c.lease_read_max_drift_ticks = Some(1);
        assert!(c.validate().is_err());
    }
}
