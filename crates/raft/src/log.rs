//! The replicated log as one replica holds it in memory.
//!
//! Layout: everything up to `snapshot_index` is compacted into a snapshot; `entries` hold
//! `snapshot_index + 1 ..= last_index`. Four cursors move through it, and these hold always:
//!
//! ```text
//!   snapshot_index ≤ applied ≤ committed        applied ≤ stable
//!   stable < unstable_from ≤ last_index + 1
//! ```
//!
//! - `committed`: known committed (never decreases while the replica lives).
//! - `applied`: handed to the driver to apply (an entry is handed out once).
//! - `stable`: durable on this replica's disk (the driver said so through `on_persisted`).
//! - `unstable_from`: first entry not yet handed to the driver to persist.
//!
//! Entries are applied only once both committed and stable, so a replica never applies an
//! entry it could lose in a crash.

use std::collections::VecDeque;

use quorumkv_core::{Entry, LogIndex, Term};

/// A replica's log.
#[derive(Clone, Debug)]
pub(crate) struct RaftLog {
    /// Index of the last entry covered by the snapshot (0: none).
    pub snapshot_index: LogIndex,
    /// Term of that entry.
    pub snapshot_term: Term,
    /// Entries after the snapshot, contiguous.
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index handed out for application.
    pub applied: LogIndex,
    /// Highest index known durable.
    pub stable: LogIndex,
    /// First index not yet handed out for persistence.
    pub unstable_from: LogIndex,
}

/// The requested entries were compacted into a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted;

impl RaftLog {
    /// A log restored from durable state: everything given is already stable.
    pub fn restore(
        snapshot_index: LogIndex,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: LogIndex,
        applied: LogIndex,
    ) -> Self {
        let last = snapshot_index + entries.len() as u64;
        Self {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            committed,
            applied,
            stable: last,
            unstable_from: last + 1,
        }
    }

    /// Index of the last entry (the snapshot index when no entries follow it).
    pub fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// Term of the entry at `index`, if this replica still knows it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize).map(|e| e.term)
    }

    /// The entry at `index`, if held (not compacted, not beyond the end).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// True if the entry at `index` has term `term`.
    pub fn match_term(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Election restriction (§3.6.1): is a log ending at (`last_index`, `last_term`) at least
    /// as up to date as this one?
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends a leader's own new entry.
    pub fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push_back(entry);
    }

    /// Follower side of AppendEntries: if the log matches at (`prev_index`, `prev_term`),
    /// removes any conflicting suffix, appends what is new, and returns the index of the last
    /// entry the message covers. `None` if the log does not match there.
    pub fn maybe_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
    ) -> Option<LogIndex> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        // The first entry that is new or that conflicts with ours; everything before it we
        // already hold identically (Log Matching).
        let first_new =
            entries.iter().position(|e| !self.match_term(e.index, e.term)).unwrap_or(entries.len());
        if first_new < entries.len() {
            let from = entries[first_new].index;
            assert!(
                from > self.committed,
                "raft safety: leader overwrites committed entry {from} (committed {})",
                self.committed
            );
            self.truncate_and_append(entries.into_iter().skip(first_new));
        }
        Some(last_new)
    }

    /// Replaces everything from the first given entry's index onward.
    fn truncate_and_append(&mut self, new: impl IntoIterator<Item = Entry>) {
        let mut new = new.into_iter().peekable();
        let Some(first) = new.peek().map(|e| e.index) else { return };
        debug_assert!(first > self.snapshot_index && first <= self.last_index() + 1);
        self.entries.truncate((first - self.snapshot_index - 1) as usize);
        self.entries.extend(new);
        self.unstable_from = self.unstable_from.min(first);
        self.stable = self.stable.min(first - 1);
    }

    /// Raises the commit index (never lowers it). Returns true if it moved.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond last {}", self.last_index());
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Up to `max_count` entries from `from`, stopping once `max_bytes` is reached (at least one
    /// entry if any exist). `Err(Compacted)` if `from` is inside the snapshot.
    pub fn entries_from(
        &self,
        from: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, Compacted> {
        if from <= self.snapshot_index {
            return Err(Compacted);
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().skip(start).take(max_count) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Fast back-off hint (§5.3): the largest index ≤ `index` whose term is ≤ `term`, with its
    /// term. Used by a follower rejecting an append and by a leader digesting the rejection.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term => i -= 1,
                Some(t) => return (i, t),
                // Below the snapshot we know nothing finer; the snapshot point is the answer.
                None => return (self.snapshot_index, self.snapshot_term),
            }
        }
    }

    /// Entries to hand to the driver for persistence; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from;
        self.unstable_from = self.last_index() + 1;
        if from > self.last_index() {
            return Vec::new();
        }
        self.entries.iter().skip((from - self.snapshot_index - 1) as usize).cloned().collect()
    }

    /// True if entries await persistence.
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// The driver made entries through `index` (of term `term`) durable. Ignored if the log
    /// changed at that index since (the persisted entry was replaced).
    pub fn stable_to(&mut self, index: LogIndex, term: Term) -> bool {
        if index >= self.unstable_from || index <= self.stable || !self.match_term(index, term) {
            return false;
        }
        self.stable = index;
        true
    }

    /// True if committed, durable entries await application.
    pub fn has_next_committed(&self) -> bool {
        self.committed.min(self.stable) > self.applied
    }

    /// Committed and durable entries not yet handed out, up to about `max_bytes`; marks them
    /// handed out.
    pub fn take_committed(&mut self, max_bytes: usize) -> Vec<Entry> {
        let upto = self.committed.min(self.stable);
        let mut out = Vec::new();
        let mut bytes = 0;
        while self.applied < upto {
            let Some(e) = self.entry(self.applied + 1) else { break };
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            self.applied += 1;
        }
        out
    }

    /// Drops entries through `index`, which must be applied; they now live in a snapshot.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), &'static str> {
        if index <= self.snapshot_index {
            return Err("already compacted past that index");
        }
        if index > self.applied {
            return Err("index not yet applied");
        }
        let term = self.term(index).ok_or("index not in the log")?;
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
        Ok(())
    }

    /// Replaces the whole log with a snapshot received from the leader. Nothing of it is
    /// stable until the driver persists the snapshot.
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = self.committed.max(index);
        self.applied = index;
        self.stable = self.stable.min(index.saturating_sub(1));
        self.unstable_from = index + 1;
    }

    /// Every held entry (for invariant checks and status).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quorumkv_core::EntryKind;

    fn ent(index: LogIndex, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
    }

    fn log_with(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, &t)| ent(i as u64 + 1, t)).collect();
        RaftLog::restore(0, 0, entries, 0, 0)
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_with(&[1, 1, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    fn append_truncates_conflicting_suffix_only() {
        let mut log = log_with(&[1, 1, 2, 2]);
        // Matching prefix re-sent: nothing changes.
        assert_eq!(log.maybe_append(1, 1, vec![ent(2, 1), ent(3, 2)]), Some(3));
        assert_eq!(log.last_index(), 4);
        assert!(!log.has_unstable());
        // Conflict at 3: replaced, 4 dropped.
        assert_eq!(log.maybe_append(2, 1, vec![ent(3, 3)]), Some(3));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.stable, 2);
        assert_eq!(log.take_unstable(), vec![ent(3, 3)]);
        // Mismatch at prev: rejected.
        assert_eq!(log.maybe_append(3, 2, vec![ent(4, 3)]), None);
    }

    #[test]
    #[should_panic(expected = "overwrites committed")]
    fn overwriting_a_committed_entry_is_a_safety_violation() {
        let mut log = log_with(&[1, 1, 2]);
        log.commit_to(3);
        log.maybe_append(2, 1, vec![ent(3, 3)]);
    }

    #[test]
    fn conflict_hint_skips_whole_terms() {
        let log = log_with(&[1, 1, 1, 4, 4, 5, 5]);
        // Leader has prev (7, 6): our last entry with term ≤ 6 is 7.
        assert_eq!(log.find_conflict_by_term(7, 6), (7, 5));
        // Leader has prev (6, 3): skip terms 5 and 4 down to index 3.
        assert_eq!(log.find_conflict_by_term(6, 3), (3, 1));
        assert_eq!(log.find_conflict_by_term(20, 2), (3, 1));
        assert_eq!(log.find_conflict_by_term(5, 0), (0, 0));
    }

    #[test]
    fn committed_entries_wait_for_stability() {
        let mut log = log_with(&[1]);
        log.append(ent(2, 1));
        log.append(ent(3, 1));
        assert_eq!(log.take_unstable().len(), 2);
        log.commit_to(3);
        assert_eq!(log.take_committed(usize::MAX).len(), 1);
        assert!(!log.stable_to(3, 2), "wrong term is ignored");
        assert!(log.stable_to(3, 1));
        assert_eq!(log.take_committed(usize::MAX), vec![ent(2, 1), ent(3, 1)]);
        assert!(!log.has_next_committed());
    }

    #[test]
    fn compaction_and_snapshot_install() {
        let mut log = log_with(&[1, 1, 2, 2]);
        log.commit_to(4);
        log.take_committed(usize::MAX);
        assert!(log.compact(5).is_err());
        log.compact(3).unwrap();
        assert_eq!((log.snapshot_index, log.term(3), log.term(2)), (3, Some(2), None));
        assert_eq!(log.entries_from(3, 10, 10), Err(Compacted));
        assert_eq!(log.entries_from(4, 10, 10).unwrap().len(), 1);
        log.install_snapshot(10, 3);
        assert_eq!((log.last_index(), log.committed, log.applied), (10, 10, 10));
        assert!(log.stable < 10);
        assert!(log.stable_to(10, 3));
        assert_eq!(log.stable, 10);
    }

    #[test]
    fn batches_respect_byte_bound_but_always_carry_one() {
        let mut log = RaftLog::restore(0, 0, vec![], 0, 0);
        for i in 1..=5 {
            log.append(Entry {
                index: i,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![0u8; 100]),
            });
        }
        assert_eq!(log.entries_from(1, 10, 1).unwrap().len(), 1);
        assert_eq!(log.entries_from(1, 10, 250).unwrap().len(), 2);
        assert_eq!(log.entries_from(1, 3, usize::MAX).unwrap().len(), 3);
        assert!(log.entries_from(6, 10, 10).unwrap().is_empty());
    }
}
