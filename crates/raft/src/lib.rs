//! Raft consensus, sans-IO.
//!
//! This crate is the Raft algorithm and nothing else: no clock, no socket, no disk, no
//! thread, no async runtime. Its inputs are a tick, a message from a peer, a proposal, a read
//! request or an administrative request; its output is a [`Ready`]: entries and hard state to
//! persist, messages to send, committed entries to apply and reads to answer. The same code
//! runs under the node runtime (tokio, TCP, the write-ahead log) and under the deterministic
//! simulator (one thread, virtual time, simulated network and disk). Randomness (election
//! timeouts) comes only from a seeded generator the driver supplies.
//!
//! The reference is Diego Ongaro's dissertation, *Consensus: Bridging Theory and Practice*
//! (2014); section numbers below refer to it. The shape of the interface follows the etcd raft
//! library (`Ready` / persist / advance).
//!
//! # The algorithm in brief
//!
//! **Log and state machine.** Each replica holds a log of entries, each stamped with the term
//! of the leader that created it. An entry is *committed* once the leader has stored it on a
//! quorum; committed entries are applied to the state machine in index order on every replica,
//! so all replicas compute the same state.
//!
//! **Elections (§3.4).** Time is counted in ticks. A follower that hears nothing from a leader
//! for a randomized timeout (between `election_timeout_ticks_min` and `_max`) first runs a
//! *pre-vote* (§9.6): it asks whether it could win without raising its term, so a node that
//! was cut off cannot depose a healthy leader when it returns. If a quorum says yes, it becomes
//! a candidate, raises the term, votes for itself and asks for votes. A voter grants at most one
//! vote per term, and only to a candidate whose log is at least as up to date as its own
//! (§3.6.1), which guarantees the new leader holds every committed entry (Leader Completeness).
//! A follower that heard from its leader less than `election_timeout_ticks_min` ago ignores
//! vote requests (leader stickiness, §4.2.3), and a leader that has not heard from a quorum
//! for that long steps down (CheckQuorum, §6.2).
//!
//! **Replication (§3.5).** The leader sends AppendEntries carrying the index and term of the
//! entry before the new ones; a follower accepts only if it holds that entry (Log Matching),
//! dropping any conflicting suffix. On a rejection the follower returns a hint — its last
//! entry with a term no higher than the leader's — so the leader skips whole terms instead of
//! one index at a time. Per follower the leader is probing (one message at a time), replicating
//! (pipelined, at most `max_inflight_msgs` messages in flight, each at most
//! `max_entries_per_msg` entries and about `max_bytes_per_msg` bytes), or sending a snapshot.
//!
//! **Commitment (§3.6.2).** The leader advances the commit index to the highest index stored
//! on a quorum *whose entry is of the leader's own term*; earlier entries commit with it. An
//! older-term entry is never committed by counting replicas (Figure 3.7 shows how that loses
//! committed data). A new leader therefore appends an empty entry at once. The leader counts
//! itself only once its own copy is durable, but it may send entries to followers before
//! persisting them (§10.2.1): persisting and replicating proceed in parallel.
//!
//! **Snapshots (§5).** The driver periodically compacts the log: either with an image of the
//! state machine ([`Raft::compact`]), or, when its state machine is itself durable, with none
//! ([`Raft::compact_log`]: the state machine is made durable through the index and the log
//! dropped up to it). A leader holding no image asks for one ([`Ready::snapshot_wanted`]) only
//! when a follower needs a compacted entry, so in a healthy group no replica ever encodes its
//! whole state. The follower receives the snapshot in chunks of `snapshot_chunk_bytes`, a few
//! in flight; a lost chunk is resent from the follower's acknowledged offset, so a transfer
//! resumes rather than restarts.
//!
//! **Reads (§6.4).** A linearizable read needs proof that the leader still leads. ReadIndex:
//! the leader records its commit index (once an entry of its term has committed), confirms
//! leadership with one heartbeat round, and the read may be served once the state machine
//! has applied that index. Reads that arrive while a round is in flight share the next round,
//! so many reads cost one round trip. Followers forward read requests to the leader. With
//! `lease_read_max_drift_ticks` set, a leader that had a round acknowledged within the last
//! `election_timeout_ticks_min - drift` ticks answers at once (§6.4.1): safe only while clock
//! rates differ by less than the bound, which is why it is off by default.
//!
//! **Membership (§4.3).** A change to the voters goes through joint consensus: the change
//! entry puts C_old,new in force, in which elections and commitment need a majority of both;
//! once it is applied the leader appends the change that leaves it. Learners receive the log
//! without voting and are promoted by a later change. Changes take effect when applied, one at
//! a time. Leadership transfer (§3.10) brings the target up to date, then tells it to
//! campaign at once; proposals are refused meanwhile, and the attempt is abandoned after an
//! election timeout.
//!
//! **Many groups.** Every message carries its group id and the replica holds no global state,
//! so a node runs one `Raft` per shard replica and routes messages by group.
//!
//! Exactly-once application of client commands (§6.3) is the state machine's business: it
//! keeps, per client id, the last sequence number applied and its result, and answers a retried
//! command from that table instead of applying it twice.
//!
//! # The output contract
//!
//! After feeding inputs, the driver checks [`Raft::has_ready`] and calls [`Raft::ready`]. It
//! must handle the [`Ready`] fields in this order, and handle readies in the order produced:
//!
//! 1. `soft_state` — informational: role, leader and term changed.
//! 2. `messages` — may be sent at once, before or while persisting. These never promise
//!    anything about local durable state: leader appends and heartbeats, pre-votes, read
//!    forwarding, rejections.
//! 3. `snapshot` — if set, persist it and restore the state machine from it; it replaces the
//!    whole log.
//! 4. `entries` — append to the durable log; if the first entry's index is at or below the
//!    last durable index, first drop everything from that index on.
//! 5. `hard_state` — if set (term or vote changed), persist it. `commit_index` — if set, the
//!    commit index moved: record it with the next write (no fsync of its own needed).
//! 6. Make 3–5 durable (one fsync may cover many readies and many groups), then call
//!    [`Raft::on_persisted`] with [`Ready::persist_marker`], if any.
//! 7. `persisted_messages` — only now may they be sent: vote requests (the candidate's own vote
//!    is durable), vote grants and append acknowledgements (a durable promise).
//! 8. `committed_entries` — apply in order (they are always durable locally). A
//!    [`quorumkv_core::EntryKind::ConfChange`] entry has already been applied to the
//!    membership by the time it is handed out.
//! 9. `read_states` — serve each read once the state machine has applied its index;
//!    `failed_reads` — answer with the error (the client may retry elsewhere).
//! 10. `snapshot_wanted` — take an image of the state machine at its applied index (off the
//!     hot path if it is large) and hand it to [`Raft::compact`].
//!
//! A driver that pauses (a stopped process, a long GC) must deliver the ticks it missed
//! before handling any message or request after it resumes, so leases and timeouts see the
//! real elapsed time.
//!
//! # Planted bugs
//!
//! The cargo features `bug-commit-old-term`, `bug-double-vote` and `bug-stale-read` each plant
//! one real protocol mistake. They exist so tests can show that the simulator and the checkers
//! catch broken builds; never enable them otherwise.

mod confchange;
mod config;
mod error;
mod log;
mod message;
mod progress;
mod raft;
mod ready;

pub use config::Config;
pub use error::{ConfigError, RaftError};
pub use message::{AppendResult, Message, MessageBody, ReadId};
pub use progress::ProgressState;
pub use raft::{PeerStatus, Raft, ReadLease, RestoreState, Status};
pub use ready::{ReadState, Ready, Role, SoftState};

/// Applies a membership change to a configuration, exactly as the replicas will; lets a driver
/// validate a request before proposing it.
pub fn apply_conf_change(
    conf: &quorumkv_core::ConfState,
    change: &quorumkv_core::ConfChange,
) -> Result<quorumkv_core::ConfState, String> {
    confchange::apply(conf, change)
}

#[cfg(test)]
mod tests;
