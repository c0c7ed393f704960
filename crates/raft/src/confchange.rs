//! Membership changes by joint consensus (dissertation §4.3).
//!
//! Rules kept:
//! - A change that alters the set of voters never jumps from C_old to C_new: it enters the
//!   joint configuration C_old,new, in which elections and commitment need a majority of both.
//!   The leader leaves it (C_new) with an empty change once the joint entry is applied.
//! - A change that only adds or removes learners applies in one step: learners never count in a
//!   quorum, so no two majorities can disagree.
//! - A voter demoted to learner stays a voter of C_old until the joint configuration is left
//!   (`learners_next`), so C_old's majority is intact while it still decides.
//! - One change at a time: a change while joint (other than leaving) is refused, and so is
//!   leaving when not joint, or a change that leaves no voter.

use quorumkv_core::{ConfChange, ConfChangeStep, ConfState, NodeId};

fn remove(list: &mut Vec<NodeId>, id: NodeId) {
    list.retain(|&x| x != id);
}

fn insert(list: &mut Vec<NodeId>, id: NodeId) {
    if !list.contains(&id) {
        list.push(id);
        list.sort_unstable();
    }
}

/// Applies `change` to `conf`, returning the new configuration or why it is refused.
pub fn apply(conf: &ConfState, change: &ConfChange) -> Result<ConfState, String> {
    if change.steps.is_empty() {
        if !conf.is_joint() {
            return Err("cannot leave a joint configuration: none is in force".into());
        }
        let mut next = conf.clone();
        next.voters_outgoing.clear();
        for id in std::mem::take(&mut next.learners_next) {
            insert(&mut next.learners, id);
        }
        return Ok(next);
    }
    if conf.is_joint() {
        return Err("a joint configuration is in force; leave it before the next change".into());
    }
    let mut next = conf.clone();
    for step in &change.steps {
        match *step {
            ConfChangeStep::AddVoter(id) => {
                if id == 0 {
                    return Err("node id 0 is reserved".into());
                }
                remove(&mut next.learners, id);
                insert(&mut next.voters, id);
            }
            ConfChangeStep::AddLearner(id) => {
                if id == 0 {
                    return Err("node id 0 is reserved".into());
                }
                remove(&mut next.voters, id);
                // A current voter keeps voting in C_old until the joint state is left.
                if conf.voters.contains(&id) {
                    insert(&mut next.learners_next, id);
                } else {
                    insert(&mut next.learners, id);
                }
            }
            ConfChangeStep::RemoveNode(id) => {
                remove(&mut next.voters, id);
                remove(&mut next.learners, id);
                remove(&mut next.learners_next, id);
            }
        }
    }
    if next.voters.is_empty() {
        return Err("the change would leave no voter".into());
    }
    let mut old = conf.voters.clone();
    old.sort_unstable();
    let mut new = next.voters.clone();
    new.sort_unstable();
    next.voters = new;
    // Leaving an empty configuration (bootstrap) needs no joint phase: there is no C_old
    // majority to protect.
    if old != next.voters && !old.is_empty() {
        next.voters_outgoing = old;
    } else {
        // Voters unchanged: a learner-only change takes effect at once.
        for id in std::mem::take(&mut next.learners_next) {
            insert(&mut next.learners, id);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeStep::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState { voters: voters.to_vec(), learners: learners.to_vec(), ..Default::default() }
    }

    fn change(steps: &[ConfChangeStep]) -> ConfChange {
        ConfChange { steps: steps.to_vec(), ..Default::default() }
    }

    #[test]
    fn adding_a_voter_goes_through_joint() {
        let c = apply(&conf(&[1, 2, 3], &[]), &change(&[AddVoter(4)])).unwrap();
        assert_eq!(c.voters, vec![1, 2, 3, 4]);
        assert_eq!(c.voters_outgoing, vec![1, 2, 3]);
        let left = apply(&c, &ConfChange::default()).unwrap();
        assert_eq!(left, conf(&[1, 2, 3, 4], &[]));
    }

    #[test]
    fn learner_changes_apply_directly() {
        let c = apply(&conf(&[1, 2, 3], &[]), &change(&[AddLearner(4)])).unwrap();
        assert_eq!(c, conf(&[1, 2, 3], &[4]));
        let c = apply(&c, &change(&[RemoveNode(4)])).unwrap();
        assert_eq!(c, conf(&[1, 2, 3], &[]));
    }

    #[test]
    fn promoting_a_learner_and_demoting_a_voter() {
        let c = apply(&conf(&[1, 2, 3], &[4]), &change(&[AddVoter(4), AddLearner(1)])).unwrap();
        assert_eq!(c.voters, vec![2, 3, 4]);
        assert_eq!(c.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(c.learners_next, vec![1]);
        assert!(c.learners.is_empty());
        let left = apply(&c, &ConfChange::default()).unwrap();
        assert_eq!(left, conf(&[2, 3, 4], &[1]));
    }

    #[test]
    fn bootstrap_from_empty_is_direct() {
        let c = apply(&ConfState::default(), &change(&[AddVoter(1), AddVoter(2)])).unwrap();
        assert_eq!(c, conf(&[1, 2], &[]));
    }

    #[test]
    fn refusals() {
        let joint = apply(&conf(&[1], &[]), &change(&[AddVoter(2)])).unwrap();
        assert!(apply(&joint, &change(&[AddVoter(3)])).is_err());
        assert!(apply(&conf(&[1], &[]), &ConfChange::default()).is_err());
        assert!(apply(&conf(&[1], &[]), &change(&[RemoveNode(1)])).is_err());
        assert!(apply(&conf(&[1], &[]), &change(&[AddVoter(0)])).is_err());
    }

    #[test]
    fn removing_a_voter_keeps_it_in_c_old() {
        let c = apply(&conf(&[1, 2, 3], &[]), &change(&[RemoveNode(3)])).unwrap();
        assert_eq!(c.voters, vec![1, 2]);
        assert_eq!(c.voters_outgoing, vec![1, 2, 3]);
        assert!(c.is_voter(3));
        assert!(!apply(&c, &ConfChange::default()).unwrap().is_voter(3));
    }
}
