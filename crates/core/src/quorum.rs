//! Quorum maths, kept apart from any protocol so every protocol shares one tested copy.
//!
//! - A [`Majority`] of n voters is ⌊n/2⌋+1 of them. Its *committed index* is the highest index
//!   acknowledged by a majority: sort the acknowledged indexes in descending order and take the
//!   one at position ⌊n/2⌋ (Raft §3.6.2).
//! - A [`Joint`] configuration (C_old,new, dissertation §4.3) needs a majority of each half: its
//!   committed index is the minimum of the halves', and a vote is won only when both halves won.
//! - An empty majority is vacuous (it agrees to everything): this is what makes a non-joint
//!   configuration a joint one with an empty outgoing half.

use crate::types::{LogIndex, NodeId};

/// Outcome of a vote count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided: some voters have not answered and either outcome is still possible.
    Pending,
    /// A quorum granted.
    Won,
    /// Enough voters refused that a quorum can no longer grant.
    Lost,
}

/// A simple majority configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Majority {
    voters: Vec<NodeId>,
}

impl Majority {
    /// Builds a configuration from a set of voters (duplicates are removed).
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        Self { voters }
    }

    /// The voters, sorted.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// True if `id` is a voter.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Number of voters that make a quorum (0 for the empty configuration).
    pub fn quorum_size(&self) -> usize {
        if self.voters.is_empty() { 0 } else { self.voters.len() / 2 + 1 }
    }

    /// The highest index acknowledged by a quorum, given each voter's acknowledged index
    /// (`None` counts as 0). The empty configuration returns `u64::MAX` (it imposes no bound).
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<LogIndex>) -> LogIndex {
        if self.voters.is_empty() {
            return LogIndex::MAX;
        }
        let mut indexes: Vec<LogIndex> =
            self.voters.iter().map(|&id| acked(id).unwrap_or(0)).collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[self.quorum_size() - 1]
    }

    /// Tallies votes: `vote(id)` is `Some(true)` granted, `Some(false)` refused, `None` unknown.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0, 0);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.quorum_size();
        if granted >= quorum {
            VoteResult::Won
        } else if granted + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }

    /// True if the set of nodes for which `active` holds contains a quorum.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(active(id))) == VoteResult::Won
    }
}

/// A joint configuration: `incoming` (C_new) and `outgoing` (C_old, empty when not joint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Joint {
    /// The configuration being entered (or the only one).
    pub incoming: Majority,
    /// The configuration being left; empty when not joint.
    pub outgoing: Majority,
}

impl Joint {
    /// Builds a joint configuration; pass an empty `outgoing` for a plain majority.
    pub fn new(
        incoming: impl IntoIterator<Item = NodeId>,
        outgoing: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Self { incoming: Majority::new(incoming), outgoing: Majority::new(outgoing) }
    }

    /// True while both halves are in force.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters().is_empty()
    }

    /// True if `id` votes in either half.
    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// Every voter of either half, sorted, without duplicates.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.incoming.voters().iter().chain(self.outgoing.voters()).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Highest index acknowledged by a quorum of both halves. For an entirely empty
    /// configuration this is 0: nothing can commit without voters.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<LogIndex> + Copy) -> LogIndex {
        let index = self.incoming.committed_index(acked).min(self.outgoing.committed_index(acked));
        if index == LogIndex::MAX { 0 } else { index }
    }

    /// Both halves must grant; either half refusing loses.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool> + Copy) -> VoteResult {
        if self.incoming.voters().is_empty() && self.outgoing.voters().is_empty() {
            return VoteResult::Lost;
        }
        match (self.incoming.vote_result(vote), self.outgoing.vote_result(vote)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// True if the active nodes hold a quorum of both halves.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool + Copy) -> bool {
        self.vote_result(|id| Some(active(id))) == VoteResult::Won
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type CommitCase<'a> = (&'a [NodeId], &'a [(NodeId, LogIndex)], LogIndex);
    type VoteCase<'a> = (&'a [NodeId], &'a [(NodeId, bool)], VoteResult);

    fn acks(pairs: &[(NodeId, LogIndex)]) -> HashMap<NodeId, LogIndex> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn majority_committed_index_table() {
        // (voters, acknowledged indexes, expected committed index)
        let table: &[CommitCase] = &[
            (&[1], &[(1, 5)], 5),
            (&[1, 2], &[(1, 5), (2, 3)], 3),
            (&[1, 2, 3], &[(1, 5), (2, 3), (3, 1)], 3),
            (&[1, 2, 3], &[(1, 5)], 0),
            (&[1, 2, 3], &[(1, 5), (2, 5)], 5),
            (&[1, 2, 3, 4], &[(1, 9), (2, 7), (3, 4), (4, 2)], 4),
            (&[1, 2, 3, 4, 5], &[(1, 9), (2, 7), (3, 4), (4, 2), (5, 8)], 7),
            // Acks from non-voters do not count.
            (&[1, 2, 3], &[(1, 5), (7, 5), (8, 5)], 0),
        ];
        for (voters, acked, want) in table {
            let m = Majority::new(voters.iter().copied());
            let a = acks(acked);
            assert_eq!(m.committed_index(|id| a.get(&id).copied()), *want, "{voters:?} {acked:?}");
        }
    }

    #[test]
    fn majority_vote_table() {
        use VoteResult::*;
        // (voters, votes, expected)
        let table: &[VoteCase] = &[
            (&[1], &[(1, true)], Won),
            (&[1], &[(1, false)], Lost),
            (&[1], &[], Pending),
            (&[1, 2, 3], &[(1, true)], Pending),
            (&[1, 2, 3], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[(1, true), (2, false)], Pending),
            (&[1, 2, 3], &[(1, false), (2, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true)], Pending),
            (&[1, 2, 3, 4], &[(1, true), (2, true), (3, false), (4, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true), (3, true)], Won),
        ];
        for (voters, votes, want) in table {
            let m = Majority::new(voters.iter().copied());
            let v: HashMap<NodeId, bool> = votes.iter().copied().collect();
            assert_eq!(m.vote_result(|id| v.get(&id).copied()), *want, "{voters:?} {votes:?}");
        }
    }

    #[test]
    fn joint_needs_both_halves() {
        let j = Joint::new([1, 2, 3], [3, 4, 5]);
        assert!(j.is_joint());
        assert_eq!(j.voters(), vec![1, 2, 3, 4, 5]);
        let a = acks(&[(1, 10), (2, 10), (3, 6), (4, 4), (5, 2)]);
        // incoming majority at 10, outgoing (3,4,5 -> 6,4,2) at 4.
        assert_eq!(j.committed_index(|id| a.get(&id).copied()), 4);
        let v: HashMap<NodeId, bool> = [(1, true), (2, true)].into_iter().collect();
        assert_eq!(j.vote_result(|id| v.get(&id).copied()), VoteResult::Pending);
        let v: HashMap<NodeId, bool> =
            [(1, true), (2, true), (4, false), (5, false)].into_iter().collect();
        assert_eq!(j.vote_result(|id| v.get(&id).copied()), VoteResult::Lost);
        let v: HashMap<NodeId, bool> = [(1, true), (3, true), (4, true)].into_iter().collect();
        assert_eq!(j.vote_result(|id| v.get(&id).copied()), VoteResult::Won);
    }

    #[test]
    fn non_joint_behaves_as_majority() {
        let j = Joint::new([1, 2, 3], []);
        assert!(!j.is_joint());
        let a = acks(&[(1, 7), (2, 3)]);
        assert_eq!(j.committed_index(|id| a.get(&id).copied()), 3);
        assert!(j.has_quorum(|id| id != 3));
        assert!(!j.has_quorum(|id| id == 3));
        assert_eq!(Joint::default().committed_index(|_| Some(9)), 0);
        assert_eq!(Joint::default().vote_result(|_| Some(true)), VoteResult::Lost);
    }
}
