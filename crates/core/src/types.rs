//! Ids, log entries, hard state, membership and snapshot metadata.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's id: unique within a cluster, never 0 (0 stands for "none" on disk and on the wire).
pub type NodeId = u64;
/// A consensus group's id: one node hosts many groups (one per shard replica).
pub type GroupId = u64;
/// A Raft term (Paxos ballot round, PBFT view): a logical epoch in which at most one leader acts.
pub type Term = u64;
/// A position in a replicated log, starting at 1 (0 means "before the first entry").
pub type LogIndex = u64;

/// What a log entry carries. The discriminants are part of the on-disk and wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum EntryKind {
    /// A state-machine command (empty data: the no-op a new leader appends, §6.4).
    Normal = 0,
    /// A membership change: data is an encoded [`ConfChange`].
    ConfChange = 1,
}

impl EntryKind {
    /// Decodes the on-disk / wire tag.
    pub fn from_u8(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Self::Normal),
            1 => Some(Self::ConfChange),
            _ => None,
        }
    }
}

/// One replicated log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// What `data` holds.
    pub kind: EntryKind,
    /// Opaque command bytes (or an encoded [`ConfChange`]).
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry costs in a message batch (payload plus fixed header), used for batch bounds.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// The state a replica must persist before it acts on it (Raft's "persistent state on all
/// servers", Figure 3.1): the current term, the vote cast in it, and the commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this replica has seen.
    pub term: Term,
    /// Candidate that received this replica's vote in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known committed. Persisting it is an optimisation (faster restart), not a
    /// safety requirement: a lower value on disk is always safe.
    pub commit: LogIndex,
}

/// Membership of a group. `voters_outgoing` is non-empty only during joint consensus
/// (C_old,new, dissertation §4.3): decisions then need a majority of both `voters` (C_new) and
/// `voters_outgoing` (C_old).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: Vec<NodeId>,
    /// Voters of the outgoing configuration that become learners when the joint state is left.
    pub learners_next: Vec<NodeId>,
}

impl ConfState {
    /// True while a joint configuration is in force.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every member, voter or learner, old or new, sorted and without duplicates.
    pub fn all_members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .chain(&self.learners_next)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeStep {
    /// Make `node` a voter (a learner is promoted; a new node joins as a voter).
    AddVoter(NodeId),
    /// Make `node` a learner (a voter is demoted through the joint configuration).
    AddLearner(NodeId),
    /// Remove `node` from the group entirely.
    RemoveNode(NodeId),
}

/// A membership change proposed as one log entry. A change that alters the set of voters goes
/// through joint consensus: the entry enters C_old,new and the leader then proposes an empty
/// change that leaves it (C_new). A change that only adds or removes learners applies directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    /// The steps, applied together. Empty means "leave the joint configuration".
    pub steps: Vec<ConfChangeStep>,
    /// Opaque data for the application, carried with the change and ignored by the protocol
    /// (the node runtime puts the new members' addresses here).
    pub context: Bytes,
}

/// Metadata of a snapshot: the state machine as of `index`, and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// Term of that entry.
    pub term: Term,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// A snapshot: its metadata and the state machine's serialized state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The state machine's image, opaque to the protocol.
    pub data: Bytes,
}

impl ConfChange {
    /// Encodes as entry data: a u32 step count, then per step a tag byte and a u64 node id,
    /// then a u32 context length and the context, all little-endian. Stable: it is stored in
    /// logs and snapshots.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(8 + self.steps.len() * 9 + self.context.len());
        out.extend_from_slice(&(self.steps.len() as u32).to_le_bytes());
        for step in &self.steps {
            let (tag, id) = match *step {
                ConfChangeStep::AddVoter(id) => (0u8, id),
                ConfChangeStep::AddLearner(id) => (1u8, id),
                ConfChangeStep::RemoveNode(id) => (2u8, id),
            };
            out.push(tag);
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.context);
        Bytes::from(out)
    }

    /// Decodes [`ConfChange::encode`]'s output; `None` on any malformed input.
    pub fn decode(data: &[u8]) -> Option<Self> {
        let count = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let steps_end = 4usize.checked_add(count.checked_mul(9)?)?;
        let body = data.get(4..steps_end)?;
        let context_len =
            u32::from_le_bytes(data.get(steps_end..steps_end + 4)?.try_into().ok()?) as usize;
        let context = data.get(steps_end + 4..)?;
        if context.len() != context_len {
            return None;
        }
        let steps = body
            .chunks_exact(9)
            .map(|chunk| {
                let id = u64::from_le_bytes(chunk[1..9].try_into().ok()?);
                match chunk[0] {
                    0 => Some(ConfChangeStep::AddVoter(id)),
                    1 => Some(ConfChangeStep::AddLearner(id)),
                    2 => Some(ConfChangeStep::RemoveNode(id)),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { steps, context: Bytes::copy_from_slice(context) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_and_rejects_garbage() {
        let cc = ConfChange {
            steps: vec![
                ConfChangeStep::AddVoter(4),
                ConfChangeStep::AddLearner(5),
                ConfChangeStep::RemoveNode(1),
            ],
            context: Bytes::from_static(b"addr"),
        };
        assert_eq!(ConfChange::decode(&cc.encode()), Some(cc));
        assert_eq!(
            ConfChange::decode(&ConfChange::default().encode()),
            Some(ConfChange::default())
        );
        assert_eq!(ConfChange::decode(&[1, 0, 0]), None);
        assert_eq!(ConfChange::decode(&[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(ConfChange::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut long = cc_bytes_with_context_len(5);
        long.push(0);
        assert_eq!(ConfChange::decode(&long), None);
        assert_eq!(ConfChange::decode(&cc_bytes_with_context_len(5)[..10]), None);
    }

    fn cc_bytes_with_context_len(n: usize) -> Vec<u8> {
        ConfChange { steps: vec![ConfChangeStep::AddVoter(1)], context: Bytes::from(vec![9u8; n]) }
            .encode()
            .to_vec()
    }

    #[test]
    fn conf_state_members() {
        let cs = ConfState {
            voters: vec![3, 1],
            voters_outgoing: vec![1, 2],
            learners: vec![4],
            learners_next: vec![2],
        };
        assert!(cs.is_joint());
        assert_eq!(cs.all_members(), vec![1, 2, 3, 4]);
        assert!(cs.is_voter(2) && !cs.is_voter(4));
    }
}
