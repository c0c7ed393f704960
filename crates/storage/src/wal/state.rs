//! Per-group bookkeeping shared by the live WAL and recovery: where each group's live entries
//! are, so a segment can be deleted exactly when no group needs it.
//!
//! Rules this module keeps:
//! - A group's `runs` list, by increasing first index, which segment holds the current copy of
//!   each stretch of its live log (after its snapshot index, up to its last index). Segments along
//!   the list never decrease and each appears at most once, because appends always go to the
//!   newest segment and a truncating append drops every later run first.
//! - [`SegmentRefs`] counts, per segment, the groups whose runs name it. A segment other than the
//!   active one may be deleted once its count is zero: its hard states and markers are already
//!   repeated by the checkpoint that opens the next segment.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use quorumkv_core::{GroupId, HardState, LogIndex, SnapshotMeta};

/// A hasher for integer ids: one multiply, as ids are not chosen by an adversary.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

/// A map keyed by group id.
pub(crate) type GroupMap<V> = HashMap<GroupId, V, BuildHasherDefault<IdHasher>>;

/// How many groups need each segment, by segment sequence number.
#[derive(Clone, Debug, Default)]
pub(crate) struct SegmentRefs(BTreeMap<u64, u64>);

impl SegmentRefs {
    fn inc(&mut self, seg: u64) {
        *self.0.entry(seg).or_insert(0) += 1;
    }

    fn dec(&mut self, seg: u64) {
        if let Some(count) = self.0.get_mut(&seg) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&seg);
            }
        }
    }

    /// True if some group still has live entries in `seg`.
    pub(crate) fn is_needed(&self, seg: u64) -> bool {
        self.0.contains_key(&seg)
    }
}

/// What the WAL remembers of one group between records.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupState {
    /// Index of the last entry (the snapshot index if the log is empty; 0 if neither exists).
    pub(crate) last_index: LogIndex,
    /// Latest hard state, if any.
    pub(crate) hard_state: Option<HardState>,
    /// Latest snapshot meta, if any. Shared so that saving an undo copy costs no allocation.
    pub(crate) snapshot: Option<Arc<SnapshotMeta>>,
    /// `(first index, segment)` runs of the live log, by increasing index.
    runs: Vec<(LogIndex, u64)>,
}

impl GroupState {
    /// The snapshot index, 0 if the log was never compacted.
    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot.as_ref().map_or(0, |m| m.index)
    }

    /// Records an append of `first..=last` into segment `seg`, replacing everything from
    /// `first` on.
    pub(crate) fn apply_append(
        &mut self,
        first: LogIndex,
        last: LogIndex,
        seg: u64,
        refs: &mut SegmentRefs,
    ) {
        while let Some(&(start, old_seg)) = self.runs.last() {
            if start < first {
                break;
            }
            self.runs.pop();
            refs.dec(old_seg);
        }
        if self.runs.last().map(|r| r.1) != Some(seg) {
            self.runs.push((first, seg));
            refs.inc(seg);
        }
        self.last_index = last;
    }

    /// Records a compaction up to `meta.index`: entries at or below it are no longer needed.
    pub(crate) fn apply_compact(&mut self, meta: Arc<SnapshotMeta>, refs: &mut SegmentRefs) {
        let index = meta.index;
        if index >= self.last_index {
            self.release(refs);
            self.last_index = index;
        } else {
            // Run k covers [start_k, start_{k+1}); it is dead once the next run starts at or
            // below index + 1.
            let dead = self.runs.windows(2).take_while(|w| w[1].0 <= index + 1).count();
            for (_, seg) in self.runs.drain(..dead) {
                refs.dec(seg);
            }
        }
        self.snapshot = Some(meta);
    }

    /// Drops every run (the group is removed or its whole log compacted).
    pub(crate) fn release(&mut self, refs: &mut SegmentRefs) {
        for (_, seg) in self.runs.drain(..) {
            refs.dec(seg);
        }
    }

    /// Counts this group's runs into `refs` (after restoring a saved copy).
    pub(crate) fn acquire(&self, refs: &mut SegmentRefs) {
        for &(_, seg) in &self.runs {
            refs.inc(seg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_appends_truncations_and_compactions() {
        let mut refs = SegmentRefs::default();
        let mut g = GroupState::default();
        g.apply_append(1, 10, 1, &mut refs);
        g.apply_append(11, 20, 2, &mut refs);
        g.apply_append(21, 25, 2, &mut refs);
        assert!(refs.is_needed(1) && refs.is_needed(2));
        // A truncating append in segment 3 that replaces 15.. leaves segment 2 needed for 11..14.
        g.apply_append(15, 16, 3, &mut refs);
        assert!(refs.is_needed(2) && refs.is_needed(3));
        g.apply_compact(Arc::new(SnapshotMeta { index: 10, ..Default::default() }), &mut refs);
        assert!(!refs.is_needed(1) && refs.is_needed(2));
        g.apply_compact(Arc::new(SnapshotMeta { index: 14, ..Default::default() }), &mut refs);
        assert!(!refs.is_needed(2) && refs.is_needed(3));
        // A truncation back into segment 2's stretch, from segment 4, frees segment 3.
        g.apply_append(15, 15, 4, &mut refs);
        assert!(!refs.is_needed(3) && refs.is_needed(4));
        g.apply_compact(Arc::new(SnapshotMeta { index: 30, ..Default::default() }), &mut refs);
        assert!(!refs.is_needed(4));
        assert_eq!(g.last_index, 30);
    }
}
