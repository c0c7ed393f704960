//! Scenario tests of the Raft core, named after the dissertation's sections. A tiny harness
//! persists every ready at once and delivers messages through a filterable queue.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use quorumkv_core::{ConfChange, ConfChangeStep, Entry, EntryKind, NodeId};

use crate::{Config, Message, MessageBody, Raft, RaftError, ReadState, RestoreState, Role};

/// Rewrites a message in flight; returns true to drop it.
type MessageFilter = Box<dyn Fn(&mut Message) -> bool>;

struct Cluster {
    nodes: BTreeMap<NodeId, Raft>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    failed_reads: BTreeMap<NodeId, Vec<u64>>,
    queue: VecDeque<Message>,
    /// Links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Drop this message kind everywhere.
    drop_kind: Option<&'static str>,
    /// Rewrites each message in flight; drops it if this returns true.
    drop_if: Option<MessageFilter>,
    delivered: Vec<Message>,
    /// Replicas whose readies asked for a snapshot image, in order.
    snapshot_wanted: Vec<NodeId>,
}

fn config(id: NodeId) -> Config {
    Config::new(id, 1)
}

impl Cluster {
    fn new(ids: &[NodeId]) -> Self {
        Self::with(ids, |_| {})
    }

    fn with(ids: &[NodeId], tweak: impl Fn(&mut Config)) -> Self {
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let mut c = config(id);
            tweak(&mut c);
            nodes.insert(id, Raft::new(c, RestoreState::bootstrap(ids), id * 7919).unwrap());
        }
        let mut cluster = Self {
            nodes,
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            failed_reads: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            drop_kind: None,
            drop_if: None,
            delivered: Vec::new(),
            snapshot_wanted: Vec::new(),
        };
        // The bootstrap membership entry takes effect when first handed out.
        cluster.stabilize();
        cluster
    }

    /// A new, empty replica that learns everything from the leader.
    fn add_node(&mut self, id: NodeId) {
        self.nodes.insert(id, Raft::new(config(id), RestoreState::default(), id * 7919).unwrap());
    }

    fn node(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.drop_kind = None;
    }

    /// Drains every ready (persisting at once) and delivers messages until quiet.
    fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let raft = self.nodes.get_mut(&id).unwrap();
                while raft.has_ready() {
                    progressed = true;
                    let rd = raft.ready();
                    self.queue.extend(rd.messages.iter().cloned());
                    if let Some((i, t)) = rd.persist_marker() {
                        raft.on_persisted(i, t);
                    }
                    self.queue.extend(rd.persisted_messages.iter().cloned());
                    self.applied.entry(id).or_default().extend(rd.committed_entries);
                    self.reads.entry(id).or_default().extend(rd.read_states);
                    if rd.snapshot_wanted {
                        self.snapshot_wanted.push(id);
                    }
                    self.failed_reads
                        .entry(id)
                        .or_default()
                        .extend(rd.failed_reads.iter().map(|(r, _)| *r));
                }
            }
            while let Some(mut m) = self.queue.pop_front() {
                progressed = true;
                if self.cut.contains(&(m.from, m.to))
                    || self.drop_kind == Some(m.body.kind())
                    || self.drop_if.as_ref().is_some_and(|f| f(&mut m))
                {
                    continue;
                }
                self.delivered.push(m.clone());
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    n.step(m);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    fn tick(&mut self, id: NodeId, n: u64) {
        for _ in 0..n {
            self.node(id).tick();
        }
    }

    fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for r in self.nodes.values_mut() {
                r.tick();
            }
            self.stabilize();
        }
    }

    /// Makes `ids` forget their leader: they time out alone and their campaign messages are
    /// dropped, so they no longer refuse votes out of loyalty (leader stickiness).
    fn expire_leader(&mut self, ids: &[NodeId]) {
        for &id in ids {
            self.tick(id, 25);
            let _ = self.node(id).ready();
        }
    }

    /// Forces `id` to win an election (ticks it alone past its timeout).
    fn elect(&mut self, id: NodeId) {
        self.tick(id, 25);
        self.stabilize();
        assert_eq!(self.nodes[&id].role(), Role::Leader, "node {id} failed to win");
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|r| r.role() == Role::Leader).map(|r| r.id()).collect()
    }

    fn applied_data(&self, id: NodeId) -> Vec<Bytes> {
        self.applied
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty())
                    .map(|e| e.data.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn propose(&mut self, id: NodeId, data: &'static str) -> Result<(u64, u64), RaftError> {
        self.node(id).propose(Bytes::from_static(data.as_bytes()))
    }
}

// §3.4: a leader is elected and every node learns it.
#[test]
fn election_3_4_leader_elected_and_known() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    assert_eq!(c.leaders(), vec![1]);
    for id in [2, 3] {
        c.tick_all(3);
        assert_eq!(c.nodes[&id].leader(), Some(1));
        assert_eq!(c.nodes[&id].term(), c.nodes[&1].term());
    }
}

#[test]
fn single_node_elects_itself_and_commits_after_persisting() {
    let mut c = Cluster::new(&[1]);
    c.elect(1);
    c.propose(1, "x").unwrap();
    c.stabilize();
    assert_eq!(c.applied_data(1), vec![Bytes::from_static(b"x")]);
}

// The candidate's own vote must be durable before its vote requests leave; grants too.
#[test]
fn votes_are_sent_only_after_persisting() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.tick(1, 25);
    let rd = c.node(1).ready();
    // Pre-vote goes at once; it promises nothing.
    assert!(rd.messages.iter().all(|m| matches!(m.body, MessageBody::PreVote { .. })));
    assert_eq!(rd.messages.len(), 2);
    for m in rd.messages {
        c.node(m.to).step(m);
    }
    for id in [2, 3] {
        let rd = c.node(id).ready();
        for m in rd.messages {
            c.node(1).step(m);
        }
    }
    let rd = c.node(1).ready();
    assert!(rd.hard_state.is_some_and(|hs| hs.vote == Some(1) && hs.term == 2));
    assert!(rd.messages.is_empty());
    assert!(rd.persisted_messages.iter().all(|m| matches!(m.body, MessageBody::Vote { .. })));
    for m in rd.persisted_messages {
        c.node(m.to).step(m);
    }
    let rd = c.node(2).ready();
    assert!(rd.hard_state.is_some_and(|hs| hs.vote == Some(1)));
    assert!(
        rd.persisted_messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true }))
    );
}

// §3.6.1: a candidate with a stale log cannot win.
#[test]
fn election_restriction_3_6_1_stale_log_cannot_win() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a").unwrap();
    c.stabilize();
    c.heal();
    // 3 has not got "a"; 1 and 2 have. 3 campaigns (skipping pre-vote via a forced timeout).
    c.isolate(1);
    c.tick(3, 25);
    c.stabilize();
    c.tick(3, 25);
    c.stabilize();
    assert_ne!(c.nodes[&3].role(), Role::Leader);
    c.tick(2, 25);
    c.stabilize();
    assert_eq!(c.nodes[&2].role(), Role::Leader);
}

// §3.5 + §3.6: entries replicate and commit on a majority, with a minority down.
#[test]
fn replication_3_5_commits_with_a_minority_down() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.isolate(4);
    c.isolate(5);
    for d in ["a", "b", "c"] {
        c.propose(1, d).unwrap();
    }
    c.stabilize();
    for id in [1, 2, 3] {
        assert_eq!(c.applied_data(id).len(), 3, "node {id}");
    }
    assert!(c.applied_data(4).is_empty());
    c.heal();
    c.tick_all(4);
    assert_eq!(c.applied_data(4).len(), 3);
    assert_eq!(c.applied_data(5), c.applied_data(1));
}

// §3.6.2, Figure 3.7: S1, leader again in a later term, has the earlier-term entry on a
// majority (S1, S2, S3) but its own no-op only on itself. Counting replicas of the old entry
// would commit it — and a leader elected by S3, S4, S5 could still overwrite it.
#[test]
fn figure_3_7_majority_of_old_term_is_not_commitment() {
    let mut c = Cluster::with(&[1, 2, 3, 4, 5], |cfg| cfg.max_entries_per_msg = 1);
    c.elect(1);
    for id in [3, 4, 5] {
        c.isolate(id);
    }
    c.propose(1, "old").unwrap();
    c.stabilize();
    let old_index = c.nodes[&1].last_index();
    let old_term = c.nodes[&1].term();
    assert_eq!(c.nodes[&2].term_at(old_index), Some(old_term));
    assert!(c.nodes[&1].commit_index() < old_index);
    // S1 loses leadership, then is re-elected with the votes of S2 and S3.
    c.heal();
    c.isolate(1);
    c.tick(1, 25);
    c.stabilize();
    assert_ne!(c.nodes[&1].role(), Role::Leader);
    c.expire_leader(&[2, 3]);
    c.heal();
    c.isolate(4);
    c.isolate(5);
    let noop_index = old_index + 1;
    // The no-op is stripped from every append: S2 and S3 acknowledge the old entry only.
    c.drop_if = Some(Box::new(move |m: &mut Message| {
        if let MessageBody::Append { entries, .. } = &mut m.body {
            entries.retain(|e| e.index < noop_index);
        }
        false
    }));
    c.tick(1, 25);
    c.stabilize();
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    assert!(c.nodes[&1].term() > old_term);
    assert_eq!(c.nodes[&3].term_at(old_index), Some(old_term), "S3 received the old entry");
    assert_eq!(c.nodes[&3].last_index(), old_index, "S3 did not receive the no-op");
    let commit = c.nodes[&1].commit_index();
    if cfg!(feature = "bug-commit-old-term") {
        assert!(commit >= old_index, "the planted bug commits by counting old replicas");
    } else {
        assert!(commit < old_index, "commit {commit} reached old-term index {old_index}");
    }
    // Once the no-op reaches a quorum, both commit together.
    c.drop_if = None;
    c.tick_all(3);
    assert!(c.nodes[&1].commit_index() >= noop_index);
}

// §3.5: a follower with a long conflicting suffix is repaired with few round trips.
#[test]
fn fast_backoff_skips_conflicting_terms() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    // Node 1, cut off, appends many entries of its term that will never commit.
    c.isolate(1);
    for _ in 0..50 {
        c.propose(1, "doomed").unwrap();
    }
    c.stabilize();
    c.expire_leader(&[2, 3]);
    c.tick(2, 25);
    c.stabilize();
    assert_eq!(c.nodes[&2].role(), Role::Leader);
    c.propose(2, "winner").unwrap();
    c.stabilize();
    c.heal();
    c.delivered.clear();
    c.tick_all(5);
    let rejections = c
        .delivered
        .iter()
        .filter(|m| {
            m.from == 1
                && matches!(
                    m.body,
                    MessageBody::AppendResponse { result: crate::AppendResult::Reject { .. } }
                )
        })
        .count();
    assert!(rejections <= 2, "{rejections} rejections to repair a 50-entry conflict");
    assert_eq!(c.applied_data(1), c.applied_data(2));
    assert!(!c.applied_data(1).contains(&Bytes::from_static(b"doomed")));
}

// §9.6: a partitioned node rejoining does not disrupt the leader (pre-vote).
#[test]
fn pre_vote_9_6_rejoining_node_does_not_disrupt() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.nodes[&1].term();
    c.isolate(3);
    c.tick(3, 100);
    c.stabilize();
    assert_eq!(c.nodes[&3].term(), term, "pre-vote keeps the term");
    c.heal();
    c.tick_all(30);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(c.nodes[&1].term(), term);
}

// §6.2: a leader cut off from a quorum steps down (CheckQuorum).
#[test]
fn check_quorum_6_2_isolated_leader_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(1);
    c.tick_all(25);
    assert_ne!(c.nodes[&1].role(), Role::Leader);
    assert!(c.propose(1, "x").is_err());
}

// §6.4: many reads share one heartbeat round, and are served at the commit index.
#[test]
fn read_index_6_4_batches_reads_into_one_round() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, "a").unwrap();
    c.stabilize();
    c.delivered.clear();
    for id in 0..10 {
        c.node(1).read_index(id).unwrap();
    }
    c.stabilize();
    let heartbeats =
        c.delivered.iter().filter(|m| matches!(m.body, MessageBody::Heartbeat { .. })).count();
    // One round to two followers (a second round at most, for reads that arrived mid-round).
    assert!(heartbeats <= 4, "{heartbeats} heartbeats for 10 reads");
    let commit = c.nodes[&1].commit_index();
    let reads = &c.reads[&1];
    assert_eq!(reads.len(), 10);
    assert!(reads.iter().all(|r| r.index == commit));
}

#[test]
fn read_index_fails_without_quorum_and_from_follower_goes_via_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    // Follower read: forwarded, answered.
    c.node(2).read_index(42).unwrap();
    c.stabilize();
    assert_eq!(c.reads[&2].iter().map(|r| r.id).collect::<Vec<_>>(), vec![42]);
    // Leader cut off: its read never completes, and fails once it steps down.
    c.isolate(1);
    c.node(1).read_index(7).unwrap();
    c.tick_all(25);
    assert!(!c.reads[&1].iter().any(|r| r.id == 7));
    assert!(c.failed_reads[&1].contains(&7));
}

// §6.4.1: with leases, a recently confirmed leader answers without a round.
#[test]
fn lease_read_answers_without_heartbeat_round_and_expires() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| cfg.lease_read_max_drift_ticks = Some(2));
    // Freshly started replicas refuse votes for one election timeout; let that pass.
    c.tick_all(30);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    let l = leaders[0];
    c.tick_all(3);
    assert!(c.nodes[&l].lease_valid());
    // What a driver with its own clock sees: a lease ending ahead, at the commit index.
    let lease = c.nodes[&l].read_lease().expect("leader with a lease");
    assert_eq!(lease.commit_index, c.nodes[&l].commit_index());
    assert!(lease.until_tick > c.nodes[&l].tick_count());
    c.delivered.clear();
    c.node(l).read_index(1).unwrap();
    c.stabilize();
    assert!(c.delivered.is_empty(), "lease read sent messages");
    assert_eq!(c.reads[&l].len(), 1);
    // Cut off: the lease runs out before anyone else could be elected.
    c.isolate(l);
    c.tick(l, 10);
    assert!(!c.nodes[&l].lease_valid());
    let lease = c.nodes[&l].read_lease().expect("still leader, lease run out");
    assert!(lease.until_tick <= c.nodes[&l].tick_count());
    // Followers report none.
    let follower = *c.nodes.keys().find(|&&n| n != l).unwrap();
    assert_eq!(c.nodes[&follower].read_lease(), None);
}

// §3.10 with §6.4.1: the transfer target campaigns past every follower's stickiness, so the
// lease a driver serves reads from must be gone before `TimeoutNow` can leave.
#[test]
fn leadership_transfer_withdraws_the_read_lease_at_once() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| cfg.lease_read_max_drift_ticks = Some(2));
    c.tick_all(30);
    let l = c.leaders()[0];
    c.tick_all(3);
    assert!(c.nodes[&l].read_lease().is_some_and(|r| r.until_tick > c.nodes[&l].tick_count()));
    let target = *c.nodes.keys().find(|&&n| n != l).unwrap();
    c.node(l).transfer_leader(target).unwrap();
    // Before any message of the transfer is drained (the driver publishes before sending).
    assert_eq!(c.nodes[&l].read_lease(), None);
    assert!(!c.nodes[&l].lease_valid());
}

// §4.3: adding a voter goes through the joint configuration and back out.
#[test]
fn membership_4_3_add_learner_promote_remove() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_node(4);
    let add = ConfChange { steps: vec![ConfChangeStep::AddLearner(4)], ..Default::default() };
    c.node(1).propose_conf_change(add).unwrap();
    c.tick_all(5);
    assert_eq!(c.nodes[&1].conf_state().learners, vec![4]);
    c.propose(1, "x").unwrap();
    c.tick_all(3);
    assert_eq!(c.applied_data(4), c.applied_data(1), "learner receives the log");
    let promote = ConfChange { steps: vec![ConfChangeStep::AddVoter(4)], ..Default::default() };
    c.node(1).propose_conf_change(promote).unwrap();
    c.tick_all(5);
    let cs = c.nodes[&1].conf_state().clone();
    assert_eq!(cs.voters, vec![1, 2, 3, 4]);
    assert!(!cs.is_joint(), "joint configuration left automatically");
    assert!(c.nodes[&4].conf_state().voters.contains(&4));
    let remove = ConfChange { steps: vec![ConfChangeStep::RemoveNode(1)], ..Default::default() };
    c.node(1).propose_conf_change(remove).unwrap();
    c.tick_all(5);
    // The removed leader stepped down once C_new was in force; a new leader emerges.
    c.tick_all(40);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    assert_eq!(c.nodes[&leaders[0]].conf_state().voters, vec![2, 3, 4]);
}

#[test]
fn one_membership_change_at_a_time() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    let add = ConfChange { steps: vec![ConfChangeStep::AddVoter(4)], ..Default::default() };
    c.node(1).propose_conf_change(add).unwrap();
    let again = ConfChange { steps: vec![ConfChangeStep::AddVoter(5)], ..Default::default() };
    assert!(matches!(
        c.node(1).propose_conf_change(again),
        Err(RaftError::ConfChangeInProgress(_))
    ));
}

// §3.10: leadership transfer.
#[test]
fn leadership_transfer_3_10() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a").unwrap();
    c.stabilize();
    c.heal();
    c.node(1).transfer_leader(3).unwrap();
    assert!(matches!(c.propose(1, "b"), Err(RaftError::TransferInProgress)));
    c.stabilize();
    c.tick_all(2);
    assert_eq!(c.leaders(), vec![3]);
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

// §5: a follower behind the leader's snapshot receives it in chunks, resuming after a loss.
#[test]
fn snapshot_5_chunked_install_resumes_after_lost_chunk() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_bytes = 10;
        cfg.snapshot_chunks_in_flight = 2;
    });
    c.elect(1);
    c.isolate(3);
    for d in ["a", "b", "c", "d"] {
        c.propose(1, d).unwrap();
    }
    c.stabilize();
    let applied = c.nodes[&1].applied_index();
    let image = Bytes::from(vec![7u8; 95]);
    c.node(1).compact(applied, image.clone()).unwrap();
    c.heal();
    // Lose the first chunk once.
    let mut lost = false;
    for _ in 0..40 {
        for r in c.nodes.values_mut() {
            r.tick();
        }
        for _ in 0..100 {
            let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
            for id in ids {
                let raft = c.nodes.get_mut(&id).unwrap();
                while raft.has_ready() {
                    let rd = raft.ready();
                    if let Some(s) = &rd.snapshot {
                        assert_eq!(s.data, image);
                    }
                    let marker = rd.persist_marker();
                    c.queue.extend(rd.messages);
                    if let Some((i, t)) = marker {
                        raft.on_persisted(i, t);
                    }
                    c.queue.extend(rd.persisted_messages);
                    c.applied.entry(id).or_default().extend(rd.committed_entries);
                }
            }
            let Some(m) = c.queue.pop_front() else { break };
            if !lost && matches!(m.body, MessageBody::SnapshotChunk { offset: 0, .. }) {
                lost = true;
                continue;
            }
            let to = m.to;
            c.nodes.get_mut(&to).unwrap().step(m);
        }
    }
    assert!(lost);
    assert_eq!(c.nodes[&3].snapshot_index(), applied);
    assert_eq!(c.nodes[&3].applied_index(), c.nodes[&1].applied_index());
    c.propose(1, "after").unwrap();
    c.tick_all(2);
    assert_eq!(c.applied_data(3), vec![Bytes::from_static(b"after")]);
}

// §5, compaction behind a durable state machine: the leader drops its log with no image, asks
// for one only when a follower needs a compacted entry, and the follower catches up from it.
#[test]
fn snapshot_5_image_taken_only_when_a_follower_needs_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    for d in ["a", "b", "c"] {
        c.propose(1, d).unwrap();
    }
    c.stabilize();
    for id in [1, 2] {
        let applied = c.nodes[&id].applied_index();
        c.node(id).compact_log(applied).unwrap();
    }
    c.stabilize();
    assert!(c.snapshot_wanted.is_empty(), "nobody needs an image while followers keep up");
    let behind = c.nodes[&3].applied_index();
    c.heal();
    c.tick_all(3);
    assert_eq!(c.snapshot_wanted.first(), Some(&1), "the leader asks for an image for node 3");
    assert!(c.snapshot_wanted.iter().all(|&id| id == 1), "only a leader asks");
    assert_eq!(c.nodes[&3].applied_index(), behind, "nothing reaches node 3 before the image");
    // Hand it an image at its applied index: the waiting follower gets it at once.
    let applied = c.nodes[&1].applied_index();
    c.node(1).compact(applied, Bytes::from_static(b"image")).unwrap();
    c.stabilize();
    assert_eq!(c.nodes[&3].snapshot_index(), applied);
    c.propose(1, "after").unwrap();
    c.tick_all(2);
    assert_eq!(c.applied_data(3), vec![Bytes::from_static(b"after")]);
    // A later log-only compaction drops the image (no follower could go on from it).
    c.propose(1, "more").unwrap();
    c.stabilize();
    let applied = c.nodes[&1].applied_index();
    c.node(1).compact_log(applied).unwrap();
    c.snapshot_wanted.clear();
    c.isolate(2);
    c.propose(1, "x").unwrap();
    c.stabilize();
    let applied = c.nodes[&1].applied_index();
    c.node(1).compact_log(applied).unwrap();
    c.heal();
    c.tick_all(3);
    assert_eq!(c.snapshot_wanted.first(), Some(&1));
}

// Restart: a replica rebuilt from its durable state keeps its term, vote and log.
#[test]
fn restart_restores_term_vote_log_and_membership() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, "a").unwrap();
    c.stabilize();
    let before = c.nodes[&2].status();
    let entries: Vec<Entry> =
        (1..=before.last_index).map(|i| c.nodes[&2].entry(i).unwrap().clone()).collect();
    let state = RestoreState {
        hard_state: quorumkv_core::HardState {
            term: before.term,
            vote: before.vote,
            commit: before.commit,
        },
        snapshot: None,
        snapshot_data: None,
        entries,
        applied: 1,
    };
    let restarted = Raft::new(config(2), state, 5).unwrap();
    let after = restarted.status();
    assert_eq!(
        (after.term, after.vote, after.last_index),
        (before.term, before.vote, before.last_index)
    );
    assert_eq!(after.conf, before.conf);
    // A malformed restore is refused.
    let bad = RestoreState { applied: 99, ..Default::default() };
    assert!(Raft::new(config(2), bad, 5).is_err());
}

#[test]
fn proposals_are_bounded_and_refused_off_leader() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| cfg.max_uncommitted_entries = 3);
    c.elect(1);
    c.stabilize();
    assert!(matches!(c.propose(2, "x"), Err(RaftError::NotLeader { leader: Some(1) })));
    c.isolate(1);
    let mut accepted = 0;
    while c.propose(1, "y").is_ok() {
        accepted += 1;
        assert!(accepted <= 3);
    }
    assert!(matches!(c.propose(1, "z"), Err(RaftError::Busy(3))));
}

#[test]
fn messages_carry_the_group_and_foreign_groups_are_ignored() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    assert!(c.delivered.iter().all(|m| m.group == 1));
    let term = c.nodes[&2].term();
    let foreign = Message {
        group: 99,
        from: 3,
        to: 2,
        term: term + 5,
        body: MessageBody::Heartbeat { commit: 0, read_seq: 0 },
    };
    c.node(2).step(foreign);
    assert_eq!(c.nodes[&2].term(), term);
}
