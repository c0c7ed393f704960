//! The write-ahead log: one per node, shared by every consensus group on it.
//!
//! Many groups append to one log so that one fsync makes all their writes durable (group
//! commit). The log is a directory of segment files; each segment opens with a checkpoint of
//! every group's hard state, snapshot meta and last index, so an old segment can be deleted as
//! soon as no group has live (uncompacted, untruncated) entries in it. docs/FORMAT.md has the
//! byte layout.
//!
//! Rules this module keeps:
//! - Nothing is durable before [`Wal::sync`] returns: mutations only encode records into one
//!   reusable buffer; `sync` writes that buffer with one write and one fsync.
//! - Every mutation gets a log sequence number ([`Lsn`]); `sync` returns the durable LSN. A
//!   mutation is durable once a later `sync` succeeded. If `sync` fails, none of the mutations
//!   since the previous successful `sync` are durable, and the caller must treat them as lost.
//! - A full disk rejects the whole unsynced batch: nothing of it stays in the files or in memory,
//!   and the WAL keeps working once space is freed. Any other write or fsync error is fatal: the
//!   page cache can no longer be trusted, so the WAL refuses every later call and the node must
//!   restart and recover from what is on disk.
//! - Recovery truncates a torn tail (a damaged record at the end of the last segment with
//!   nothing valid after it, see [`recovery`]) and refuses, with the file and byte offset, any
//!   other damage: it never silently drops records that may have been acknowledged.
//! - Per group, appends are validated so the log on disk always replays: entries are
//!   consecutive, start after the snapshot index and no later than one past the last index.

pub mod codec;
mod recovery;
mod state;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use quorumkv_core::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

use crate::disk::{Disk, DiskFile, OpenMode};
pub use codec::Lsn;
use codec::RecordKind;
pub use recovery::{Recovered, RecoveredGroup, TornTail};
use state::{GroupMap, GroupState, SegmentRefs};
pub use writer::{Completion, WalWriter, WriterOptions};

/// Settings of a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment that reaches this size is closed and a new one started (default 64 MiB).
    pub segment_bytes_max: u64,
    /// Reserve each new segment's `segment_bytes_max` bytes when it is created (default on):
    /// appends then land in reserved space, so their fsync records no new file size — on the
    /// test machine a waited-for 100-byte append took 48–52 µs into reserved space against
    /// 64–71 µs growing the file (`cargo bench -p quorumkv-storage --bench wal -- wal_reserve`).
    /// Recovery reads the zeros after the last record as unused space.
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes_max: 64 << 20, preallocate: true }
    }
}

impl WalOptions {
    /// Bytes to reserve for a new segment (0: none).
    fn reserve_bytes(&self) -> u64 {
        if self.preallocate { self.segment_bytes_max } else { 0 }
    }
}

/// Everything that can go wrong with the WAL.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// Stored data is damaged somewhere a torn write cannot explain.
    #[error(
        "WAL corrupt in {path} at byte {offset}: {reason}. The node must not start on this log: \
         restore this replica from its peers or a backup, or move the file away to inspect it"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset in that file where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Every record checks out, yet the log as a whole is incomplete (e.g. a segment was
    /// deleted by hand).
    #[error("WAL in {dir} is inconsistent: {reason}. Restore this replica from its peers")]
    Inconsistent {
        /// The WAL directory.
        dir: PathBuf,
        /// What is missing or contradictory.
        reason: String,
    },
    /// A segment was written by a newer (or unknown) version of the format.
    #[error(
        "WAL segment {path} has format version {version}, this build reads version {supported}: \
         run a build that knows that version"
    )]
    UnsupportedVersion {
        /// The segment.
        path: PathBuf,
        /// Version found in its header.
        version: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The disk is full: the unsynced batch was rejected and nothing of it was kept.
    #[error(
        "disk full while writing the WAL in {dir}: {detail}. The last batch was rejected and \
         nothing of it was kept; free disk space, then retry"
    )]
    DiskFull {
        /// The WAL directory.
        dir: PathBuf,
        /// The operating system's message.
        detail: String,
    },
    /// An earlier fsync or write failed; the WAL refuses all work from then on.
    #[error(
        "WAL stopped after an earlier failure ({reason}); data in the page cache can no longer \
         be trusted: restart the node so it recovers from what is on disk"
    )]
    Failed {
        /// The failure that stopped the WAL.
        reason: Arc<str>,
    },
    /// An I/O error while opening or recovering.
    #[error("WAL I/O error: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The caller asked for something that would make the log not replay; nothing was written.
    #[error("invalid WAL operation for group {group}: {reason}")]
    Invalid {
        /// The group.
        group: GroupId,
        /// What rule the operation breaks.
        reason: String,
    },
    /// The [`WalWriter`] thread is gone (stopped, or the WAL failed and the writer shut down).
    #[error("the WAL writer has stopped; no more writes are accepted")]
    WriterStopped,
}

impl WalError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        WalError::Io { op, path: path.to_path_buf(), source: Arc::new(source) }
    }
}

/// One mutation, as submitted to a [`WalWriter`] (or [`Wal::apply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalOp {
    /// [`Wal::append`].
    Append {
        /// The group.
        group: GroupId,
        /// Consecutive entries; everything from the first one's index on is replaced.
        entries: Vec<Entry>,
    },
    /// [`Wal::set_hard_state`].
    HardState {
        /// The group.
        group: GroupId,
        /// Its new hard state.
        hard_state: HardState,
    },
    /// [`Wal::compact`].
    Compact {
        /// The group.
        group: GroupId,
        /// The snapshot the log is compacted to.
        meta: SnapshotMeta,
    },
    /// [`Wal::remove_group`].
    RemoveGroup {
        /// The group.
        group: GroupId,
    },
}

impl WalOp {
    /// The group the operation is about.
    pub fn group(&self) -> GroupId {
        match self {
            WalOp::Append { group, .. }
            | WalOp::HardState { group, .. }
            | WalOp::Compact { group, .. }
            | WalOp::RemoveGroup { group } => *group,
        }
    }

    /// Approximate encoded size, for batch bounds.
    pub fn size_bytes(&self) -> usize {
        match self {
            WalOp::Append { entries, .. } => {
                entries.iter().map(|e| e.data.len() + codec::ENTRY_OVERHEAD_BYTES).sum::<usize>()
                    + 64
            }
            WalOp::Compact { meta, .. } => 64 + 8 * meta.conf_state.all_members().len() * 2,
            _ => 64,
        }
    }
}

/// Counters the runtime can read at any time (shared with the writer thread).
#[derive(Debug, Default)]
pub struct WalMetrics {
    fsyncs: AtomicU64,
    fsync_nanos_total: AtomicU64,
    fsync_nanos_max: AtomicU64,
    bytes_written: AtomicU64,
    records: AtomicU64,
    entries: AtomicU64,
    entries_per_fsync_max: AtomicU64,
    submissions: AtomicU64,
    submissions_per_batch_max: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    disk_full_rejections: AtomicU64,
}

fn fetch_max(cell: &AtomicU64, value: u64) {
    cell.fetch_max(value, Ordering::Relaxed);
}

impl WalMetrics {
    /// A consistent-enough copy of the counters (each read on its own).
    pub fn snapshot(&self) -> WalStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WalStats {
            fsyncs: get(&self.fsyncs),
            fsync_nanos_total: get(&self.fsync_nanos_total),
            fsync_nanos_max: get(&self.fsync_nanos_max),
            bytes_written: get(&self.bytes_written),
            records: get(&self.records),
            entries: get(&self.entries),
            entries_per_fsync_max: get(&self.entries_per_fsync_max),
            submissions: get(&self.submissions),
            submissions_per_batch_max: get(&self.submissions_per_batch_max),
            segments_created: get(&self.segments_created),
            segments_deleted: get(&self.segments_deleted),
            disk_full_rejections: get(&self.disk_full_rejections),
        }
    }
}

/// A plain copy of [`WalMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Successful data fsyncs of batches (rotation syncs not counted).
    pub fsyncs: u64,
    /// Time spent in those fsyncs, in nanoseconds.
    pub fsync_nanos_total: u64,
    /// The longest of them, in nanoseconds.
    pub fsync_nanos_max: u64,
    /// Bytes written to segment files (batches, headers and checkpoints).
    pub bytes_written: u64,
    /// Records made durable.
    pub records: u64,
    /// Entries made durable.
    pub entries: u64,
    /// Most entries made durable by one fsync.
    pub entries_per_fsync_max: u64,
    /// Submissions completed by a [`WalWriter`].
    pub submissions: u64,
    /// Most submissions completed by one fsync.
    pub submissions_per_batch_max: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted by garbage collection.
    pub segments_deleted: u64,
    /// Batches rejected because the disk was full.
    pub disk_full_rejections: u64,
}

impl WalStats {
    /// Average entries per fsync: how well group commit works.
    pub fn entries_per_fsync(&self) -> f64 {
        if self.fsyncs == 0 { 0.0 } else { self.entries as f64 / self.fsyncs as f64 }
    }

    /// Average fsync duration in microseconds.
    pub fn fsync_micros_avg(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.fsync_nanos_total as f64 / self.fsyncs as f64 / 1e3
        }
    }
}

/// The node's write-ahead log. Not thread safe by itself: one owner (usually a [`WalWriter`]).
pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
    groups: GroupMap<GroupState>,
    refs: SegmentRefs,
    /// Sequence numbers of the segment files, oldest first; the last is the active one.
    segments: VecDeque<u64>,
    active: Box<dyn DiskFile>,
    /// Bytes of the active segment that are durable.
    synced_len: u64,
    /// Records encoded since the last successful sync.
    buf: Vec<u8>,
    buf_records: u64,
    buf_entries: u64,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    /// Each group's state as of the last successful sync, saved before its first change since:
    /// restored if the batch is rejected (`None`: the group did not exist).
    undo: GroupMap<Option<GroupState>>,
    failed: Option<Arc<str>>,
    metrics: Arc<WalMetrics>,
    /// A scratch buffer for checkpoints, kept to reuse its allocation.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("groups", &self.groups.len())
            .field("durable_lsn", &self.durable_lsn)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering every group's state from it.
    ///
    /// A torn tail is cut off (and reported in [`Recovered::torn_tail`]); any other damage
    /// fails with [`WalError::Corrupt`] naming the file and byte offset.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: impl Into<PathBuf>,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered), WalError> {
        recovery::open(disk, dir.into(), opts)
    }

    /// Appends consecutive entries for `group`, replacing its log from the first entry's index
    /// on (the Raft append with conflict truncation). Returns the record's LSN.
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<Lsn, WalError> {
        self.check_usable()?;
        let state = self.groups.get(&group);
        check_append(group, state.map_or(0, |s| s.last_index), state, entries)?;
        Ok(self.apply_append(group, entries))
    }

    /// Records `group`'s new hard state. Returns the record's LSN.
    pub fn set_hard_state(
        &mut self,
        group: GroupId,
        hard_state: HardState,
    ) -> Result<Lsn, WalError> {
        self.check_usable()?;
        Ok(self.apply_hard_state(group, hard_state))
    }

    /// Compacts `group`'s log up to `meta.index` (entries at or below it are dropped) and
    /// remembers `meta`. A `meta` past the last index empties the log (a snapshot was installed).
    pub fn compact(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<Lsn, WalError> {
        self.check_usable()?;
        check_compact(group, self.groups.get(&group).map_or(0, GroupState::snapshot_index), &meta)?;
        Ok(self.apply_compact(group, meta))
    }

    /// Forgets everything about `group`. Returns the record's LSN.
    pub fn remove_group(&mut self, group: GroupId) -> Result<Lsn, WalError> {
        self.check_usable()?;
        Ok(self.apply_remove(group))
    }

    /// Applies one operation (see [`WalOp`]).
    pub fn apply(&mut self, op: &WalOp) -> Result<Lsn, WalError> {
        match op {
            WalOp::Append { group, entries } => self.append(*group, entries),
            WalOp::HardState { group, hard_state } => self.set_hard_state(*group, *hard_state),
            WalOp::Compact { group, meta } => self.compact(*group, meta.clone()),
            WalOp::RemoveGroup { group } => self.remove_group(*group),
        }
    }

    /// Applies all of `ops` or none: they are checked together first. Returns the last LSN.
    pub fn apply_all(&mut self, ops: &[WalOp]) -> Result<Lsn, WalError> {
        self.check_usable()?;
        self.validate(ops)?;
        let mut lsn = self.next_lsn.saturating_sub(1);
        for op in ops {
            lsn = match op {
                WalOp::Append { group, entries } => self.apply_append(*group, entries),
                WalOp::HardState { group, hard_state } => {
                    self.apply_hard_state(*group, *hard_state)
                }
                WalOp::Compact { group, meta } => self.apply_compact(*group, meta.clone()),
                WalOp::RemoveGroup { group } => self.apply_remove(*group),
            };
        }
        Ok(lsn)
    }

    /// Writes every buffered record with one write, fsyncs, and returns the durable LSN. Then
    /// starts a new segment if the active one is full, and deletes segments no group needs.
    pub fn sync(&mut self) -> Result<Lsn, WalError> {
        self.check_usable()?;
        if !self.buf.is_empty() {
            self.flush()?;
        }
        self.maintain();
        Ok(self.durable_lsn)
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// True if mutations are buffered and not yet synced.
    pub fn has_unsynced(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes buffered and not yet synced.
    pub fn unsynced_bytes(&self) -> usize {
        self.buf.len()
    }

    /// `group`'s last index as the WAL sees it (including unsynced appends); 0 if unknown.
    pub fn last_index(&self, group: GroupId) -> LogIndex {
        self.groups.get(&group).map_or(0, |g| g.last_index)
    }

    /// `group`'s latest hard state (including unsynced changes).
    pub fn hard_state(&self, group: GroupId) -> Option<HardState> {
        self.groups.get(&group).and_then(|g| g.hard_state)
    }

    /// `group`'s latest snapshot meta (including unsynced compactions).
    pub fn snapshot_meta(&self, group: GroupId) -> Option<SnapshotMeta> {
        self.groups.get(&group).and_then(|g| g.snapshot.as_deref().cloned())
    }

    /// Number of groups the WAL knows.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Sequence numbers of the segment files, oldest first (the last one is being written).
    pub fn segments(&self) -> Vec<u64> {
        self.segments.iter().copied().collect()
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The failure that stopped the WAL, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The live counters, shareable with a metrics exporter.
    pub fn metrics(&self) -> Arc<WalMetrics> {
        self.metrics.clone()
    }

    /// A copy of the counters now.
    pub fn stats(&self) -> WalStats {
        self.metrics.snapshot()
    }

    // -----------------------------------------------------------------------------------------
    // Internals
    // -----------------------------------------------------------------------------------------

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(reason) => Err(WalError::Failed { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, reason: String) -> WalError {
        let reason: Arc<str> = reason.into();
        self.failed = Some(reason.clone());
        WalError::Failed { reason }
    }

    fn active_seq(&self) -> u64 {
        self.segments.back().copied().unwrap_or(0)
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(codec::segment_file_name(self.active_seq()))
    }

    fn take_lsn(&mut self) -> Lsn {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        lsn
    }

    /// Saves `group`'s pre-batch state once per batch, for rollback on a full disk.
    fn save_undo(&mut self, group: GroupId) {
        if !self.undo.contains_key(&group) {
            let saved = self.groups.get(&group).cloned();
            self.undo.insert(group, saved);
        }
    }

    /// Checks `ops` in order against the current state plus the effect of the earlier ops.
    fn validate(&self, ops: &[WalOp]) -> Result<(), WalError> {
        // (group, last index, snapshot index) as changed by earlier ops in this list. Lists are
        // short and touch few groups, so a linear scan beats a map.
        let mut overlay: Vec<(GroupId, LogIndex, LogIndex)> = Vec::new();
        for op in ops {
            let group = op.group();
            let (last, snap) = match overlay.iter().rev().find(|o| o.0 == group) {
                Some(&(_, last, snap)) => (last, snap),
                None => {
                    self.groups.get(&group).map_or((0, 0), |g| (g.last_index, g.snapshot_index()))
                }
            };
            let next = match op {
                WalOp::Append { entries, .. } => {
                    let state = GroupView { snapshot_index: snap };
                    check_append_view(group, last, state, entries)?;
                    (entries.last().map_or(last, |e| e.index), snap)
                }
                WalOp::Compact { meta, .. } => {
                    check_compact(group, snap, meta)?;
                    (last.max(meta.index), meta.index)
                }
                WalOp::HardState { .. } => (last, snap),
                WalOp::RemoveGroup { .. } => (0, 0),
            };
            overlay.push((group, next.0, next.1));
        }
        Ok(())
    }

    fn apply_append(&mut self, group: GroupId, entries: &[Entry]) -> Lsn {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return self.next_lsn.saturating_sub(1);
        };
        let (first_index, last_index) = (first.index, last.index);
        self.save_undo(group);
        let mut lsn = 0;
        // Split runs too large for one record; each part replaces from its own first index,
        // which for every part after the first is just past the previous part: no truncation.
        let mut rest = entries;
        while !rest.is_empty() {
            let mut bytes = codec::ENTRIES_PREFIX_BYTES;
            let mut take = 0;
            for e in rest {
                let size = codec::ENTRY_OVERHEAD_BYTES + e.data.len();
                if take > 0 && bytes + size > codec::MAX_PAYLOAD_BYTES as usize {
                    break;
                }
                bytes += size;
                take += 1;
            }
            let (part, tail) = rest.split_at(take);
            lsn = self.take_lsn();
            let start = codec::begin_record(&mut self.buf, RecordKind::Entries, group, lsn);
            codec::encode_entries(&mut self.buf, part);
            // Sizes were checked by check_append, so finishing cannot fail.
            let _ = codec::finish_record(&mut self.buf, start);
            self.buf_records += 1;
            rest = tail;
        }
        self.buf_entries += entries.len() as u64;
        let seg = self.active_seq();
        let state = self.groups.entry(group).or_default();
        state.apply_append(first_index, last_index, seg, &mut self.refs);
        lsn
    }

    fn apply_hard_state(&mut self, group: GroupId, hard_state: HardState) -> Lsn {
        self.save_undo(group);
        let lsn = self.take_lsn();
        let start = codec::begin_record(&mut self.buf, RecordKind::HardState, group, lsn);
        codec::encode_hard_state(&mut self.buf, &hard_state);
        let _ = codec::finish_record(&mut self.buf, start);
        self.buf_records += 1;
        self.groups.entry(group).or_default().hard_state = Some(hard_state);
        lsn
    }

    fn apply_compact(&mut self, group: GroupId, meta: SnapshotMeta) -> Lsn {
        self.save_undo(group);
        let lsn = self.take_lsn();
        let start = codec::begin_record(&mut self.buf, RecordKind::Compact, group, lsn);
        codec::encode_snapshot_meta(&mut self.buf, &meta);
        let _ = codec::finish_record(&mut self.buf, start);
        self.buf_records += 1;
        let state = self.groups.entry(group).or_default();
        state.apply_compact(Arc::new(meta), &mut self.refs);
        lsn
    }

    fn apply_remove(&mut self, group: GroupId) -> Lsn {
        self.save_undo(group);
        let lsn = self.take_lsn();
        let start = codec::begin_record(&mut self.buf, RecordKind::RemoveGroup, group, lsn);
        let _ = codec::finish_record(&mut self.buf, start);
        self.buf_records += 1;
        if let Some(mut state) = self.groups.remove(&group) {
            state.release(&mut self.refs);
        }
        lsn
    }

    /// Writes the buffer at the end of the active segment and fsyncs it.
    fn flush(&mut self) -> Result<(), WalError> {
        if let Err(e) = self.active.write_at(self.synced_len, &self.buf) {
            if e.kind() == io::ErrorKind::StorageFull {
                return Err(self.reject_batch(e));
            }
            let path = self.active_path();
            return Err(self.fail(format!("write to {} failed: {e}", path.display())));
        }
        let started = Instant::now();
        if let Err(e) = self.active.sync() {
            let path = self.active_path();
            return Err(self.fail(format!("fsync of {} failed: {e}", path.display())));
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let m = &self.metrics;
        m.fsyncs.fetch_add(1, Ordering::Relaxed);
        m.fsync_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        fetch_max(&m.fsync_nanos_max, nanos);
        m.bytes_written.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        m.records.fetch_add(self.buf_records, Ordering::Relaxed);
        m.entries.fetch_add(self.buf_entries, Ordering::Relaxed);
        fetch_max(&m.entries_per_fsync_max, self.buf_entries);
        self.synced_len += self.buf.len() as u64;
        self.durable_lsn = self.next_lsn - 1;
        self.buf.clear();
        self.buf_records = 0;
        self.buf_entries = 0;
        self.undo.clear();
        Ok(())
    }

    /// Forgets the unsynced batch after a full disk refused it: cuts the segment back to its
    /// durable length (a real disk may have taken part of the write) and restores every group
    /// to its state at the last successful sync.
    fn reject_batch(&mut self, cause: io::Error) -> WalError {
        let path = self.active_path();
        if let Err(e) = self.active.truncate(self.synced_len) {
            return self.fail(format!(
                "could not cut {} back after a full disk refused a write: {e}",
                path.display()
            ));
        }
        self.buf.clear();
        self.buf_records = 0;
        self.buf_entries = 0;
        for (group, saved) in std::mem::take(&mut self.undo) {
            if let Some(mut current) = self.groups.remove(&group) {
                current.release(&mut self.refs);
            }
            if let Some(saved) = saved {
                saved.acquire(&mut self.refs);
                self.groups.insert(group, saved);
            }
        }
        self.metrics.disk_full_rejections.fetch_add(1, Ordering::Relaxed);
        WalError::DiskFull { dir: self.dir.clone(), detail: cause.to_string() }
    }

    /// Rotation and garbage collection, run after a successful sync with an empty buffer.
    /// A full disk only postpones them; any other failure stops the WAL.
    fn maintain(&mut self) {
        if self.failed.is_some() || !self.buf.is_empty() {
            return;
        }
        if self.synced_len >= self.opts.segment_bytes_max
            && let Err(e) = self.rotate()
            && e.kind() != io::ErrorKind::StorageFull
        {
            self.fail(format!("starting a new WAL segment failed: {e}"));
            return;
        }
        if let Err(e) = self.collect_garbage() {
            self.fail(format!("deleting old WAL segments failed: {e}"));
        }
    }

    /// Encodes a segment header and a checkpoint of every group into `out`.
    fn encode_segment_start(&mut self, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        codec::encode_segment_header(out, seq);
        let lsn = self.take_lsn();
        let start = codec::begin_record(out, RecordKind::Checkpoint, 0, lsn);
        let mut ids: Vec<GroupId> = self.groups.keys().copied().collect();
        ids.sort_unstable();
        let groups = &self.groups;
        let lines = ids.iter().filter_map(|id| {
            groups
                .get(id)
                .map(|g| (*id, g.last_index, g.hard_state.as_ref(), g.snapshot.as_deref()))
        });
        codec::encode_checkpoint(out, ids.len() as u32, lines);
        let _ = codec::finish_record(out, start);
    }

    /// Creates segment `seq`, writes its header and checkpoint, and makes both and its name
    /// durable. On failure the half-made file is removed.
    fn create_segment(&mut self, seq: u64) -> io::Result<Box<dyn DiskFile>> {
        let path = self.dir.join(codec::segment_file_name(seq));
        let mut out = std::mem::take(&mut self.scratch);
        self.encode_segment_start(seq, &mut out);
        let reserve = self.opts.reserve_bytes();
        let result = write_new_segment(self.disk.as_ref(), &self.dir, &path, &out, reserve);
        if result.is_ok() {
            self.metrics.bytes_written.fetch_add(out.len() as u64, Ordering::Relaxed);
            self.metrics.segments_created.fetch_add(1, Ordering::Relaxed);
            self.synced_len = out.len() as u64;
            self.durable_lsn = self.next_lsn - 1;
        }
        self.scratch = out;
        result
    }

    fn rotate(&mut self) -> io::Result<()> {
        // Only the newest segment may end in unused reserved space (recovery is strict about
        // the others). A segment fills its reservation before it rotates, unless the segment
        // size was lowered since it was created: cut the rest off first, durably.
        if self.active.len()? > self.synced_len {
            self.active.truncate(self.synced_len)?;
            self.active.sync()?;
        }
        let seq = self.active_seq() + 1;
        let previous_len = self.synced_len;
        match self.create_segment(seq) {
            Ok(file) => {
                self.active = file;
                self.segments.push_back(seq);
                Ok(())
            }
            Err(e) => {
                self.synced_len = previous_len;
                Err(e)
            }
        }
    }

    /// Deletes the oldest segments while no group needs them (never the active one).
    fn collect_garbage(&mut self) -> io::Result<()> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let Some(&oldest) = self.segments.front() else { break };
            if self.refs.is_needed(oldest) {
                break;
            }
            self.disk.remove(&self.dir.join(codec::segment_file_name(oldest)))?;
            self.segments.pop_front();
            self.metrics.segments_deleted.fetch_add(1, Ordering::Relaxed);
            deleted = true;
        }
        if deleted {
            // Not needed for safety (a resurrected old segment replays harmlessly), but it keeps
            // the space freed after a crash.
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Creates a segment holding `bytes` (its header and first checkpoint), reserves `reserve`
/// bytes for it, and makes both and its name durable.
fn write_new_segment(
    disk: &dyn Disk,
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    reserve: u64,
) -> io::Result<Box<dyn DiskFile>> {
    let attempt = (|| {
        let mut file = disk.open(path, OpenMode::CreateTruncate)?;
        file.write_at(0, bytes)?;
        file.allocate(reserve)?;
        file.sync()?;
        disk.sync_dir(dir)?;
        Ok(file)
    })();
    if attempt.is_err() && disk.exists(path).unwrap_or(false) {
        // Best effort: a half-written newest segment is also recognised and removed by
        // recovery, so failing to remove it here loses nothing.
        let _ = disk.remove(path).and_then(|()| disk.sync_dir(dir));
    }
    attempt
}

/// What validation needs to know of a group.
struct GroupView {
    snapshot_index: LogIndex,
}

fn check_append(
    group: GroupId,
    last: LogIndex,
    state: Option<&GroupState>,
    entries: &[Entry],
) -> Result<(), WalError> {
    let view = GroupView { snapshot_index: state.map_or(0, GroupState::snapshot_index) };
    check_append_view(group, last, view, entries)
}

fn check_append_view(
    group: GroupId,
    last: LogIndex,
    view: GroupView,
    entries: &[Entry],
) -> Result<(), WalError> {
    let invalid = |reason: String| Err(WalError::Invalid { group, reason });
    let Some(first) = entries.first() else { return Ok(()) };
    if first.index == 0 {
        return invalid("entry index 0; indexes start at 1".into());
    }
    if first.index <= view.snapshot_index {
        return invalid(format!(
            "entries start at {} but the log is compacted up to {}",
            first.index, view.snapshot_index
        ));
    }
    if first.index > last + 1 {
        return invalid(format!(
            "entries start at {} but the log ends at {last}: that would leave a gap",
            first.index
        ));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return invalid(format!(
                "entries are not consecutive: {} follows {}",
                pair[1].index, pair[0].index
            ));
        }
    }
    let limit = codec::MAX_PAYLOAD_BYTES as usize
        - codec::ENTRIES_PREFIX_BYTES
        - codec::ENTRY_OVERHEAD_BYTES;
    if let Some(big) = entries.iter().find(|e| e.data.len() > limit) {
        return invalid(format!(
            "entry {} has {} bytes of data, more than the {limit} one record can hold",
            big.index,
            big.data.len()
        ));
    }
    Ok(())
}

fn check_compact(
    group: GroupId,
    snapshot_index: LogIndex,
    meta: &SnapshotMeta,
) -> Result<(), WalError> {
    if meta.index < snapshot_index {
        return Err(WalError::Invalid {
            group,
            reason: format!(
                "compaction to {} is older than the current snapshot at {snapshot_index}",
                meta.index
            ),
        });
    }
    Ok(())
}
