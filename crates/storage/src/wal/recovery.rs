//! Opening a WAL: scan every segment in order, replay its records, cut a torn tail.
//!
//! Rules this module keeps:
//! - Segments must be numbered without gaps, each must open with a valid header and a
//!   checkpoint, and record LSNs must increase: anything else is reported, never skipped.
//! - Only the newest segment may end in a torn write. A damaged record there counts as torn when
//!   no valid record follows it and either the file ends inside it, or the file is zeros from a
//!   512-byte sector boundary inside the record (inside its header, if the header is what fails)
//!   to its end: sectors of it that were never written. Anything else, including a flipped bit
//!   in a complete last record with unused reserved space after it, is [`WalError::Corrupt`]:
//!   such a record may have been acknowledged, and dropping it silently could lose a commit.
//! - A newest segment whose header or first checkpoint never became durable is removed: nothing
//!   in it can have been acknowledged, since a segment's start is synced before anything else
//!   is written to it.
//! - The newest segment may end in zeros right after a whole record: space reserved when the
//!   segment was created ([`WalOptions::preallocate`]) and not yet written. That is the end of
//!   the log, not a torn write; nothing is cut and later appends go there.
//! - Entry data in the result are zero-copy slices of the segment buffers read from disk.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use quorumkv_core::{Entry, GroupId, HardState, SnapshotMeta};

use super::codec::{self, DecodeError, HeaderError, Lsn, RecordHeader, RecordKind};
use super::state::{GroupMap, GroupState, SegmentRefs};
use super::{Wal, WalError, WalMetrics, WalOptions, write_new_segment};
use crate::disk::{Disk, OpenMode};

/// A sector: the unit a disk writes atomically, and so the grain of a torn write.
const SECTOR_BYTES: usize = 512;

/// Everything the WAL held when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Each group's recovered state, by group id.
    pub groups: BTreeMap<GroupId, RecoveredGroup>,
    /// The LSN of the last valid record; everything up to it is durable.
    pub durable_lsn: Lsn,
    /// The torn tail that was cut off, if there was one.
    pub torn_tail: Option<TornTail>,
}

/// One group's state after replaying the WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredGroup {
    /// Latest hard state, if one was ever recorded.
    pub hard_state: Option<HardState>,
    /// Latest snapshot meta, if the log was ever compacted.
    pub snapshot: Option<SnapshotMeta>,
    /// The live entries, consecutive, starting just after the snapshot index (or at 1).
    pub entries: Vec<Entry>,
}

/// A torn write found at the end of the newest segment and removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub path: PathBuf,
    /// Where the valid part ended (the file was cut here).
    pub offset: u64,
    /// Bytes cut off.
    pub bytes_dropped: u64,
    /// True if the whole segment was removed (its header or checkpoint was incomplete).
    pub segment_removed: bool,
}

#[derive(Default)]
struct ReplayGroup {
    state: GroupState,
    entries: VecDeque<Entry>,
}

#[derive(Default)]
struct Replay {
    groups: GroupMap<ReplayGroup>,
    refs: SegmentRefs,
    last_lsn: Lsn,
}

impl Replay {
    /// Applies one record; an error says why the record contradicts the log so far.
    fn apply(&mut self, header: RecordHeader, payload: Bytes, seg: u64) -> Result<(), String> {
        let group = header.group;
        match header.kind {
            RecordKind::Checkpoint => {
                let lines = codec::decode_checkpoint(&payload).map_err(|e| e.to_string())?;
                for line in lines {
                    // A group already replayed from older segments is more precise than the
                    // summary; the checkpoint only seeds groups whose history was deleted.
                    self.groups.entry(line.group).or_insert_with(|| {
                        let mut state = GroupState::default();
                        state.last_index = line.last_index;
                        state.hard_state = line.hard_state;
                        state.snapshot = line.snapshot.map(Arc::new);
                        ReplayGroup { state, entries: VecDeque::new() }
                    });
                }
            }
            RecordKind::Entries => {
                let mut iter = codec::EntriesIter::new(payload).map_err(|e| e.to_string())?;
                let first = iter.next_index();
                let last = first + u64::from(iter.remaining()) - 1;
                let g = self.groups.entry(group).or_default();
                let snapshot_index = g.state.snapshot_index();
                if first <= snapshot_index {
                    return Err(format!(
                        "entries for group {group} start at {first}, at or below its snapshot \
                         index {snapshot_index}"
                    ));
                }
                if first > g.state.last_index + 1 {
                    return Err(format!(
                        "entries for group {group} start at {first} but its log ends at {}",
                        g.state.last_index
                    ));
                }
                if let Some(base) = g.entries.front().map(|e| e.index) {
                    if first <= base {
                        g.entries.clear();
                    } else {
                        g.entries.truncate(usize::try_from(first - base).unwrap_or(usize::MAX));
                    }
                }
                for entry in iter.by_ref() {
                    g.entries.push_back(entry.map_err(|e| e.to_string())?);
                }
                iter.finish().map_err(|e| e.to_string())?;
                g.state.apply_append(first, last, seg, &mut self.refs);
            }
            RecordKind::HardState => {
                let hs = codec::decode_hard_state(&payload).map_err(|e| e.to_string())?;
                self.groups.entry(group).or_default().hard_state_mut(hs);
            }
            RecordKind::Compact => {
                let meta = codec::decode_snapshot_meta(&payload).map_err(|e| e.to_string())?;
                let g = self.groups.entry(group).or_default();
                let snapshot_index = g.state.snapshot_index();
                if meta.index < snapshot_index {
                    return Err(format!(
                        "group {group} compacted to {} after a snapshot at {snapshot_index}",
                        meta.index
                    ));
                }
                while g.entries.front().is_some_and(|e| e.index <= meta.index) {
                    g.entries.pop_front();
                }
                g.state.apply_compact(Arc::new(meta), &mut self.refs);
            }
            RecordKind::RemoveGroup => {
                if !payload.is_empty() {
                    return Err("remove-group record with a payload".into());
                }
                if let Some(mut g) = self.groups.remove(&group) {
                    g.state.release(&mut self.refs);
                }
            }
        }
        Ok(())
    }
}

impl ReplayGroup {
    fn hard_state_mut(&mut self, hs: HardState) {
        self.state.hard_state = Some(hs);
    }
}

/// How a segment's scan ended.
enum ScanEnd {
    /// Every byte is valid; the file is this long.
    Complete(u64),
    /// A torn write starts at this offset.
    Torn(u64),
    /// The header or first checkpoint is incomplete: the segment never came into being.
    Unborn,
}

fn corrupt(path: &Path, offset: usize, reason: impl Into<String>) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason: reason.into() }
}

/// True if `data` is zeros from a sector boundary strictly inside `pos..pos + extent` to its
/// end (or from `pos` on): the look of a structure at `pos`, `extent` bytes long, whose sectors
/// from that boundary on were never written. A structure whose every sector holds data is
/// whole, so a checksum failure there is damage, even with unused zeros after it.
fn zeros_from_inside(data: &[u8], pos: usize, extent: usize) -> bool {
    let tail = data.get(pos..).unwrap_or_default();
    match tail.iter().rposition(|b| *b != 0) {
        None => true,
        Some(last_nonzero) => {
            let boundary = (pos + last_nonzero + 1).next_multiple_of(SECTOR_BYTES);
            boundary < pos.saturating_add(extent) && boundary < data.len()
        }
    }
}

/// True if a complete, valid record with an LSN above `last_lsn` starts anywhere in
/// `data[from..]`.
fn valid_record_after(data: &[u8], from: usize, last_lsn: Lsn) -> bool {
    let min_record = codec::RECORD_HEADER_BYTES + codec::RECORD_TRAILER_BYTES;
    let end = data.len().saturating_sub(min_record);
    let mut off = from;
    while off <= end {
        // Cheap filters first (kind byte, zero reserved bytes, LSN) so that checksums are
        // computed only at plausible offsets.
        let plausible = data.get(off + 8).is_some_and(|k| RecordKind::from_u8(*k).is_some())
            && data.get(off + 9..off + 12) == Some(&[0, 0, 0][..])
            && data
                .get(off + 20..off + 28)
                .and_then(|b| b.try_into().ok())
                .is_some_and(|b: [u8; 8]| u64::from_le_bytes(b) > last_lsn);
        if plausible && data.get(off..).is_some_and(|rest| codec::decode_record(rest).is_ok()) {
            return true;
        }
        off += 1;
    }
    false
}

/// Decides whether a record that failed to decode at `pos` of the newest segment is a torn
/// write (see the module rules).
fn is_torn(data: &[u8], pos: usize, err: &DecodeError, last_lsn: Lsn) -> bool {
    let rest = data.get(pos..).unwrap_or_default();
    let shape_fits = match err {
        DecodeError::Incomplete => true,
        // The header is unreadable: only a tear inside the header itself explains that.
        DecodeError::HeaderChecksum => zeros_from_inside(data, pos, codec::RECORD_HEADER_BYTES),
        DecodeError::RecordChecksum => match codec::decode_record_header(rest) {
            Ok(header) => zeros_from_inside(data, pos, header.record_len()),
            Err(_) => false,
        },
        DecodeError::Malformed(_) => false,
    };
    shape_fits && !valid_record_after(data, pos + 1, last_lsn)
}

fn scan_segment(
    data: &Bytes,
    seq: u64,
    is_last: bool,
    path: &Path,
    replay: &mut Replay,
) -> Result<ScanEnd, WalError> {
    match codec::decode_segment_header(data) {
        Ok(found) if found == seq => {}
        Ok(found) => {
            return Err(corrupt(path, 0, format!("header says segment {found}, name says {seq}")));
        }
        Err(HeaderError::Incomplete) if is_last => return Ok(ScanEnd::Unborn),
        Err(HeaderError::Checksum)
            if is_last && zeros_from_inside(data, 0, codec::SEGMENT_HEADER_BYTES) =>
        {
            return Ok(ScanEnd::Unborn);
        }
        Err(HeaderError::Version(version)) => {
            return Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                supported: codec::FORMAT_VERSION,
            });
        }
        Err(e) => return Err(corrupt(path, 0, format!("bad segment header: {e:?}"))),
    }
    let mut pos = codec::SEGMENT_HEADER_BYTES;
    let mut first = true;
    while pos < data.len() {
        let rest = data.get(pos..).unwrap_or_default();
        if is_last && !first && rest.iter().all(|b| *b == 0) {
            // Space reserved when the segment was created and never written: the log ends here.
            return Ok(ScanEnd::Complete(pos as u64));
        }
        let header = match codec::decode_record(rest) {
            Ok((header, _)) => header,
            Err(e) => {
                if is_last && is_torn(data, pos, &e, replay.last_lsn) {
                    return Ok(if first { ScanEnd::Unborn } else { ScanEnd::Torn(pos as u64) });
                }
                return Err(corrupt(path, pos, e.to_string()));
            }
        };
        if header.lsn <= replay.last_lsn {
            return Err(corrupt(
                path,
                pos,
                format!("record LSN {} does not follow LSN {}", header.lsn, replay.last_lsn),
            ));
        }
        if first != (header.kind == RecordKind::Checkpoint) {
            let why = if first {
                "segment does not start with a checkpoint"
            } else {
                "checkpoint record in the middle of a segment"
            };
            return Err(corrupt(path, pos, why));
        }
        let start = pos + codec::RECORD_HEADER_BYTES;
        let payload = data.slice(start..start + header.payload_len as usize);
        replay.apply(header, payload, seq).map_err(|reason| corrupt(path, pos, reason))?;
        replay.last_lsn = header.lsn;
        first = false;
        pos += header.record_len();
    }
    if first {
        if is_last {
            return Ok(ScanEnd::Unborn);
        }
        return Err(corrupt(path, pos, "segment holds no checkpoint"));
    }
    Ok(ScanEnd::Complete(pos as u64))
}

/// Lists the segment sequence numbers in `dir`, checking there is no gap.
fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<u64>, WalError> {
    let names = disk.list(dir).map_err(|e| WalError::io("list", dir, e))?;
    let mut seqs: Vec<u64> =
        names.iter().filter_map(|n| codec::parse_segment_file_name(n)).collect();
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::Inconsistent {
                dir: dir.to_path_buf(),
                reason: format!(
                    "segment files {} to {} are missing",
                    codec::segment_file_name(pair[0] + 1),
                    codec::segment_file_name(pair[1] - 1)
                ),
            });
        }
    }
    Ok(seqs)
}

/// Opens the WAL in `dir` (see [`Wal::open`]).
pub(super) fn open(
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
) -> Result<(Wal, Recovered), WalError> {
    disk.create_dir_all(&dir).map_err(|e| WalError::io("create directory", &dir, e))?;
    let mut seqs = list_segments(disk.as_ref(), &dir)?;
    let mut replay = Replay::default();
    let mut torn_tail = None;
    // Durable length of the newest segment, once known.
    let mut active_len = 0u64;
    let count = seqs.len();
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == count;
        let path = dir.join(codec::segment_file_name(seq));
        let data = Bytes::from(disk.read_all(&path).map_err(|e| WalError::io("read", &path, e))?);
        match scan_segment(&data, seq, is_last, &path, &mut replay)? {
            ScanEnd::Complete(len) => active_len = len,
            ScanEnd::Torn(offset) => {
                let mut file = disk
                    .open(&path, OpenMode::ReadWrite)
                    .map_err(|e| WalError::io("open", &path, e))?;
                file.truncate(offset)
                    .map_err(|e| WalError::io("truncate torn tail of", &path, e))?;
                file.sync().map_err(|e| WalError::io("sync", &path, e))?;
                torn_tail = Some(TornTail {
                    path: path.clone(),
                    offset,
                    bytes_dropped: data.len() as u64 - offset,
                    segment_removed: false,
                });
                active_len = offset;
            }
            ScanEnd::Unborn => {
                disk.remove(&path).map_err(|e| WalError::io("remove unborn segment", &path, e))?;
                disk.sync_dir(&dir).map_err(|e| WalError::io("sync", &dir, e))?;
                torn_tail = Some(TornTail {
                    path: path.clone(),
                    offset: 0,
                    bytes_dropped: data.len() as u64,
                    segment_removed: true,
                });
            }
        }
    }
    if torn_tail.as_ref().is_some_and(|t| t.segment_removed) {
        let removed = seqs.pop().unwrap_or(1);
        if let Some(&previous) = seqs.last() {
            // The previous segment was scanned complete; its length is its file length.
            let path = dir.join(codec::segment_file_name(previous));
            let file =
                disk.open(&path, OpenMode::Read).map_err(|e| WalError::io("open", &path, e))?;
            active_len = file.len().map_err(|e| WalError::io("stat", &path, e))?;
        } else {
            seqs.push(removed);
            active_len = 0;
        }
    }

    let recovered_groups = finish_replay(&dir, &mut replay)?;
    let metrics = Arc::new(WalMetrics::default());
    let fresh = seqs.is_empty() || active_len == 0;
    if seqs.is_empty() {
        seqs.push(1);
    }
    let active_seq = seqs.last().copied().unwrap_or(1);
    let active_path = dir.join(codec::segment_file_name(active_seq));
    let mut next_lsn = replay.last_lsn + 1;
    let (active, synced_len) = if fresh {
        // No segment holds anything: start one with an empty checkpoint.
        let mut bytes = Vec::new();
        codec::encode_segment_header(&mut bytes, active_seq);
        let start = codec::begin_record(&mut bytes, RecordKind::Checkpoint, 0, next_lsn);
        codec::encode_checkpoint(&mut bytes, 0, std::iter::empty());
        let _ = codec::finish_record(&mut bytes, start);
        next_lsn += 1;
        let file =
            write_new_segment(disk.as_ref(), &dir, &active_path, &bytes, opts.reserve_bytes())
                .map_err(|e| WalError::io("create segment", &active_path, e))?;
        metrics.segments_created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (file, bytes.len() as u64)
    } else {
        let file = disk
            .open(&active_path, OpenMode::ReadWrite)
            .map_err(|e| WalError::io("open", &active_path, e))?;
        (file, active_len)
    };

    let groups: GroupMap<GroupState> =
        replay.groups.into_iter().map(|(id, g)| (id, g.state)).collect();
    let mut wal = Wal {
        disk,
        dir,
        opts,
        groups,
        refs: replay.refs,
        segments: seqs.into_iter().collect(),
        active,
        synced_len,
        buf: Vec::new(),
        buf_records: 0,
        buf_entries: 0,
        next_lsn,
        durable_lsn: next_lsn - 1,
        undo: GroupMap::default(),
        failed: None,
        metrics,
        scratch: Vec::new(),
    };
    wal.maintain();
    if let Some(reason) = wal.failed.clone() {
        return Err(WalError::Failed { reason });
    }
    let recovered = Recovered { groups: recovered_groups, durable_lsn: wal.durable_lsn, torn_tail };
    Ok((wal, recovered))
}

/// Checks every group's log is whole and turns the replay into the caller's view.
fn finish_replay(
    dir: &Path,
    replay: &mut Replay,
) -> Result<BTreeMap<GroupId, RecoveredGroup>, WalError> {
    let mut out = BTreeMap::new();
    for (&id, g) in replay.groups.iter_mut() {
        let snapshot_index = g.state.snapshot_index();
        let last_index = g.state.last_index;
        let whole = match (g.entries.front(), g.entries.back()) {
            (Some(front), Some(back)) => {
                front.index == snapshot_index + 1 && back.index == last_index
            }
            _ => last_index == snapshot_index,
        };
        if !whole {
            let have = g.entries.front().map_or(last_index + 1, |e| e.index);
            return Err(WalError::Inconsistent {
                dir: dir.to_path_buf(),
                reason: format!(
                    "group {id} is missing entries {}..{} (its snapshot ends at {snapshot_index}): \
                     a segment that held them is gone",
                    snapshot_index + 1,
                    have - 1
                ),
            });
        }
        let entries = Vec::from(std::mem::take(&mut g.entries));
        out.insert(
            id,
            RecoveredGroup {
                hard_state: g.state.hard_state,
                snapshot: g.state.snapshot.as_deref().cloned(),
                entries,
            },
        );
    }
    Ok(out)
}
