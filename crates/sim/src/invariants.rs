//! White-box safety invariants, checked as the run goes (Raft's Figure 3.2 properties):
//!
//! - **Election safety**: at most one leader per term.
//! - **Log matching**: two logs holding an entry with the same index and term hold the same
//!   command there, preceded by an entry of the same term (so, inductively, identical
//!   prefixes).
//! - **Leader completeness**: a new leader holds every entry any node has applied.
//! - **State machine safety**: no two nodes apply different entries at one index.
//! - **Commit monotonicity**: a replica's commit index never decreases.
//! - **Current-term commit** (§3.6.2, Figure 3.7): a leader moves its commit index only to an
//!   entry of its own term; older entries commit with it, never by counting their replicas.
//! - **No acknowledged write lost**: every write acknowledged to a client is the entry every
//!   node applies at its index.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use quorumkv_core::{Entry, LogIndex, NodeId, Term};
use quorumkv_raft::Raft;

/// Fingerprint of an entry's payload.
pub fn data_hash(e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    e.kind.hash(&mut h);
    e.data.hash(&mut h);
    h.finish()
}

/// Everything the invariants remember across the run.
#[derive(Default)]
pub struct Invariants {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (payload hash, term of the previous entry if known).
    entries: HashMap<(LogIndex, Term), (u64, Option<Term>)>,
    /// index → (term, payload hash) of the entry applied there.
    applied: BTreeMap<LogIndex, (Term, u64)>,
    /// index → term of writes acknowledged to clients.
    acked: BTreeMap<LogIndex, Term>,
    /// What went wrong, in order.
    pub violations: Vec<String>,
}

impl Invariants {
    fn fail(&mut self, what: String) {
        if self.violations.len() < 100 {
            self.violations.push(what);
        }
    }

    /// `id` became leader of `term`; its log must hold every applied entry.
    pub fn on_leader(&mut self, id: NodeId, term: Term, raft: &Raft) {
        match self.leaders.insert(term, id) {
            Some(other) if other != id => {
                self.fail(format!("election safety: nodes {other} and {id} both led term {term}"))
            }
            _ => {}
        }
        let snap = raft.snapshot_index();
        let missing: Vec<String> = self
            .applied
            .range(snap + 1..)
            .filter(|(i, (t, _))| raft.term_at(**i) != Some(*t))
            .take(3)
            .map(|(i, (t, _))| format!("{i}@t{t}"))
            .collect();
        if !missing.is_empty() {
            self.fail(format!(
                "leader completeness: node {id} leads term {term} without applied entries {}",
                missing.join(", ")
            ));
        }
    }

    /// `id` appended `entries`; `prev_term` is its term at the index before the first.
    pub fn on_append(&mut self, id: NodeId, entries: &[Entry], mut prev_term: Option<Term>) {
        for e in entries {
            let h = data_hash(e);
            match self.entries.get(&(e.index, e.term)) {
                Some(&(known, known_prev)) => {
                    let prev_differs =
                        matches!((known_prev, prev_term), (Some(a), Some(b)) if a != b);
                    if known != h || prev_differs {
                        self.fail(format!(
                            "log matching: node {id} holds a different entry at {}@t{}",
                            e.index, e.term
                        ));
                    }
                }
                None => {
                    self.entries.insert((e.index, e.term), (h, prev_term));
                }
            }
            prev_term = Some(e.term);
        }
    }

    /// `id` applied `e`.
    pub fn on_apply(&mut self, id: NodeId, e: &Entry) {
        let h = data_hash(e);
        match self.applied.get(&e.index) {
            Some(&(t, known)) if t != e.term || known != h => self.fail(format!(
                "state machine safety: node {id} applied {}@t{} where {}@t{t} was applied",
                e.index, e.term, e.index
            )),
            Some(_) => {}
            None => {
                self.applied.insert(e.index, (e.term, h));
            }
        }
    }

    /// A write at (`index`, `term`) was acknowledged to its client.
    pub fn on_ack(&mut self, index: LogIndex, term: Term) {
        self.acked.insert(index, term);
    }

    /// A replica's commit index moved from `before` to `after`; `leader` is its term and the
    /// term of the entry at `after` if it is the leader.
    pub fn on_commit(
        &mut self,
        id: NodeId,
        before: LogIndex,
        after: LogIndex,
        leader: Option<(Term, Option<Term>)>,
    ) {
        if after < before {
            self.fail(format!("commit monotonicity: node {id} commit went {before} -> {after}"));
        }
        if let Some((term, entry_term)) = leader
            && after > before
            && entry_term != Some(term)
        {
            self.fail(format!(
                "current-term commit: leader {id} of term {term} committed up to {after}, an \
                 entry of term {}",
                entry_term.map_or_else(|| "?".to_string(), |t| t.to_string())
            ));
        }
    }

    /// End of run: every acknowledged write is what was applied at its index.
    pub fn check_acked(&mut self) {
        let lost: Vec<String> = self
            .acked
            .iter()
            .filter(|(i, t)| self.applied.get(i).is_none_or(|(at, _)| at != *t))
            .take(3)
            .map(|(i, t)| format!("{i}@t{t}"))
            .collect();
        if !lost.is_empty() {
            self.fail(format!("acknowledged writes lost: {}", lost.join(", ")));
        }
    }

    /// Highest index anyone applied.
    pub fn max_applied(&self) -> LogIndex {
        self.applied.keys().next_back().copied().unwrap_or(0)
    }
}
