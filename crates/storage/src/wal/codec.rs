//! The WAL's byte format: segment headers, record frames and record payloads (docs/FORMAT.md).
//!
//! Rules this module keeps:
//! - Every integer has an explicit size and is little-endian.
//! - Decoders take untrusted bytes: they never panic, never index a slice without `get`, check
//!   every length against what is left before allocating, and reject trailing bytes.
//! - Encoders append to a caller's reusable buffer and allocate nothing per entry.

use bytes::Bytes;
use quorumkv_core::{ConfState, Entry, EntryKind, GroupId, HardState, LogIndex, SnapshotMeta};

/// A log sequence number: every record gets the next one. Strictly increasing through the WAL,
/// possibly with gaps (numbers handed out to a batch that a full disk rejected are never reused).
pub type Lsn = u64;

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"qkv-wal\n";
/// The segment format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes of a record header (before the payload).
pub const RECORD_HEADER_BYTES: usize = 28;
/// Bytes of a record trailer (the record checksum, after the payload).
pub const RECORD_TRAILER_BYTES: usize = 4;
/// Largest payload a record may carry; a length above it is malformed.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;
/// Bytes one entry adds to an entries payload besides its data: term, kind, data length.
pub const ENTRY_OVERHEAD_BYTES: usize = 13;
/// Bytes an entries payload has before its first entry: first index and count.
pub const ENTRIES_PREFIX_BYTES: usize = 12;

/// What a record says. The discriminants are part of the on-disk format; 0 is never valid so
/// that zeroed space never decodes as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// State of every live group as of the start of a segment (always a segment's first record).
    Checkpoint = 1,
    /// A run of consecutive entries of one group, replacing everything from the first index on.
    Entries = 2,
    /// A group's latest hard state.
    HardState = 3,
    /// A group's log is compacted up to a snapshot: entries at or below its index are dropped.
    Compact = 4,
    /// A group is gone from this node: forget all of it.
    RemoveGroup = 5,
}

impl RecordKind {
    /// Decodes the on-disk tag.
    pub fn from_u8(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Checkpoint),
            2 => Some(Self::Entries),
            3 => Some(Self::HardState),
            4 => Some(Self::Compact),
            5 => Some(Self::RemoveGroup),
            _ => None,
        }
    }
}

/// Why bytes failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the structure does (a torn write at the end of a file looks so).
    Incomplete,
    /// The header checksum does not match: the header is damaged (or was never fully written).
    HeaderChecksum,
    /// The record checksum does not match: header fields or payload are damaged.
    RecordChecksum,
    /// Checksums pass but the content breaks a format rule.
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete => write!(f, "data ends in the middle of a record"),
            DecodeError::HeaderChecksum => write!(f, "record header checksum mismatch"),
            DecodeError::RecordChecksum => write!(f, "record checksum mismatch"),
            DecodeError::Malformed(why) => write!(f, "malformed record: {why}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Little-endian helpers
// ---------------------------------------------------------------------------------------------

/// Reads fixed-size little-endian integers from untrusted bytes, failing instead of panicking.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Incomplete)?;
        let out = self.bytes.get(self.pos..end).ok_or(DecodeError::Incomplete)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// A u8.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() == 0 { Ok(()) } else { Err(DecodeError::Malformed(what)) }
    }
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Segment header
// ---------------------------------------------------------------------------------------------

/// The name of segment `seq`: `wal-` + 20 decimal digits + `.log`, so names sort in order.
pub fn segment_file_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

/// The sequence number in a segment file name, or `None` if the name is not a segment's.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends the 32-byte header of segment `seq`.
pub fn encode_segment_header(buf: &mut Vec<u8>, seq: u64) {
    let start = buf.len();
    buf.extend_from_slice(&SEGMENT_MAGIC);
    put_u32(buf, FORMAT_VERSION);
    put_u32(buf, 0); // flags: none defined in version 1
    put_u64(buf, seq);
    put_u32(buf, 0); // reserved
    let crc = crc32c::crc32c(buf.get(start..).unwrap_or_default());
    put_u32(buf, crc);
}

/// Why a segment header is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 32 bytes.
    Incomplete,
    /// The checksum does not match.
    Checksum,
    /// Checksum passes but the magic is not ours: not a quorumkv WAL segment.
    Magic,
    /// A format version this code does not read.
    Version(u32),
    /// Flags or reserved bytes set that version 1 does not define.
    Reserved,
}

/// Decodes a segment header, returning the segment sequence number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    let header = bytes.get(..SEGMENT_HEADER_BYTES).ok_or(HeaderError::Incomplete)?;
    let mut r = Reader::new(header);
    let body = r.take(28).map_err(|_| HeaderError::Incomplete)?;
    let stored = r.u32().map_err(|_| HeaderError::Incomplete)?;
    if crc32c::crc32c(body) != stored {
        return Err(HeaderError::Checksum);
    }
    let mut r = Reader::new(body);
    let magic = r.take(8).map_err(|_| HeaderError::Incomplete)?;
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = r.u32().map_err(|_| HeaderError::Incomplete)?;
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let flags = r.u32().map_err(|_| HeaderError::Incomplete)?;
    let seq = r.u64().map_err(|_| HeaderError::Incomplete)?;
    let reserved = r.u32().map_err(|_| HeaderError::Incomplete)?;
    if flags != 0 || reserved != 0 {
        return Err(HeaderError::Reserved);
    }
    Ok(seq)
}

// ---------------------------------------------------------------------------------------------
// Record frame
// ---------------------------------------------------------------------------------------------

/// The frame fields of a decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the payload holds.
    pub kind: RecordKind,
    /// The group the record is about (0 for a checkpoint).
    pub group: GroupId,
    /// The record's sequence number.
    pub lsn: Lsn,
    /// Payload length in bytes.
    pub payload_len: u32,
}

impl RecordHeader {
    /// Bytes of the whole record: header, payload, trailer.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len as usize + RECORD_TRAILER_BYTES
    }
}

/// Starts a record in `buf`: writes a header with placeholders and returns the record's start.
/// Write the payload after it, then call [`finish_record`].
pub fn begin_record(buf: &mut Vec<u8>, kind: RecordKind, group: GroupId, lsn: Lsn) -> usize {
    let start = buf.len();
    put_u32(buf, 0); // header checksum, set by finish_record
    put_u32(buf, 0); // payload length, set by finish_record
    buf.push(kind as u8);
    buf.extend_from_slice(&[0u8; 3]);
    put_u64(buf, group);
    put_u64(buf, lsn);
    start
}

/// Completes the record begun at `start`: fills the payload length and both checksums.
/// Fails (leaving `buf` as it was before [`begin_record`]) if the payload is too large.
pub fn finish_record(buf: &mut Vec<u8>, start: usize) -> Result<(), usize> {
    let payload_len = buf.len() - start - RECORD_HEADER_BYTES;
    if payload_len > MAX_PAYLOAD_BYTES as usize {
        buf.truncate(start);
        return Err(payload_len);
    }
    let len_bytes = (payload_len as u32).to_le_bytes();
    if let Some(slot) = buf.get_mut(start + 4..start + 8) {
        slot.copy_from_slice(&len_bytes);
    }
    let header_fields = buf.get(start + 4..start + RECORD_HEADER_BYTES).unwrap_or_default();
    let header_crc = crc32c::crc32c(header_fields);
    let payload = buf.get(start + RECORD_HEADER_BYTES..).unwrap_or_default();
    // The record checksum continues the header checksum over the payload, so it covers the
    // header fields and the payload in one pass.
    let record_crc = crc32c::crc32c_append(header_crc, payload);
    if let Some(slot) = buf.get_mut(start..start + 4) {
        slot.copy_from_slice(&header_crc.to_le_bytes());
    }
    put_u32(buf, record_crc);
    Ok(())
}

/// Decodes only the frame header at the start of `bytes` and checks its checksum.
pub fn decode_record_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let stored_crc = r.u32()?;
    let fields = r.take(RECORD_HEADER_BYTES - 4)?;
    if crc32c::crc32c(fields) != stored_crc {
        return Err(DecodeError::HeaderChecksum);
    }
    let mut f = Reader::new(fields);
    let payload_len = f.u32()?;
    let kind_tag = f.u8()?;
    let reserved = f.take(3)?;
    let group = f.u64()?;
    let lsn = f.u64()?;
    let kind =
        RecordKind::from_u8(kind_tag).ok_or(DecodeError::Malformed("unknown record kind"))?;
    if reserved != [0, 0, 0] {
        return Err(DecodeError::Malformed("reserved header bytes are not zero"));
    }
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::Malformed("payload length above the maximum"));
    }
    Ok(RecordHeader { kind, group, lsn, payload_len })
}

/// Decodes the record at the start of `bytes`: its header and payload, both checksums checked.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    let header = decode_record_header(bytes)?;
    let payload_end = RECORD_HEADER_BYTES + header.payload_len as usize;
    let payload = bytes.get(RECORD_HEADER_BYTES..payload_end).ok_or(DecodeError::Incomplete)?;
    let trailer = bytes.get(payload_end..payload_end + 4).ok_or(DecodeError::Incomplete)?;
    let stored = u32::from_le_bytes([
        trailer.first().copied().unwrap_or(0),
        trailer.get(1).copied().unwrap_or(0),
        trailer.get(2).copied().unwrap_or(0),
        trailer.get(3).copied().unwrap_or(0),
    ]);
    let header_fields = bytes.get(4..RECORD_HEADER_BYTES).ok_or(DecodeError::Incomplete)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(header_fields), payload);
    if crc != stored {
        return Err(DecodeError::RecordChecksum);
    }
    Ok((header, payload))
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// Appends an entries payload for `entries`, which must be consecutive (the caller checks).
pub fn encode_entries(buf: &mut Vec<u8>, entries: &[Entry]) {
    let first = entries.first().map_or(0, |e| e.index);
    put_u64(buf, first);
    put_u32(buf, entries.len() as u32);
    for entry in entries {
        put_u64(buf, entry.term);
        buf.push(entry.kind as u8);
        put_u32(buf, entry.data.len() as u32);
        buf.extend_from_slice(&entry.data);
    }
}

/// The entries in an entries payload, decoded lazily. Entry data are zero-copy slices of the
/// payload's [`Bytes`].
#[derive(Debug)]
pub struct EntriesIter {
    payload: Bytes,
    pos: usize,
    next_index: LogIndex,
    left: u32,
}

impl EntriesIter {
    /// Checks the prefix of an entries payload; the entries follow from the iterator.
    pub fn new(payload: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&payload);
        let first = r.u64()?;
        let count = r.u32()?;
        if count == 0 {
            return Err(DecodeError::Malformed("entries record with no entries"));
        }
        if first == 0 {
            return Err(DecodeError::Malformed("entry index 0"));
        }
        if first.checked_add(u64::from(count)).is_none() {
            return Err(DecodeError::Malformed("entry index overflows"));
        }
        // Each entry takes at least its fixed fields: reject counts the bytes cannot hold
        // before anyone allocates room for them.
        if (count as usize).saturating_mul(ENTRY_OVERHEAD_BYTES) > r.remaining() {
            return Err(DecodeError::Malformed("entry count larger than the payload holds"));
        }
        let pos = r.position();
        Ok(EntriesIter { payload, pos, next_index: first, left: count })
    }

    /// Index of the first entry not yet returned.
    pub fn next_index(&self) -> LogIndex {
        self.next_index
    }

    /// Entries not yet returned.
    pub fn remaining(&self) -> u32 {
        self.left
    }

    /// Fails if bytes remain after the last entry (call once the iterator is exhausted).
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.left == 0 && self.pos == self.payload.len() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("bytes after the last entry"))
        }
    }

    fn decode_next(&mut self) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(self.payload.get(self.pos..).ok_or(DecodeError::Incomplete)?);
        let term = r.u64()?;
        let kind =
            EntryKind::from_u8(r.u8()?).ok_or(DecodeError::Malformed("unknown entry kind"))?;
        let len = r.u32()? as usize;
        let start = self.pos + r.position();
        let end = start.checked_add(len).ok_or(DecodeError::Incomplete)?;
        if end > self.payload.len() {
            return Err(DecodeError::Malformed("entry data runs past the payload"));
        }
        let data = self.payload.slice(start..end);
        self.pos = end;
        let entry = Entry { index: self.next_index, term, kind, data };
        self.next_index += 1;
        self.left -= 1;
        Ok(entry)
    }
}

impl Iterator for EntriesIter {
    type Item = Result<Entry, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let item = self.decode_next();
        if item.is_err() {
            // Stop after the first error: the rest of the payload cannot be trusted.
            self.left = 0;
        }
        Some(item)
    }
}

/// Appends a hard-state payload: term, vote (0 = none), commit.
pub fn encode_hard_state(buf: &mut Vec<u8>, hs: &HardState) {
    put_u64(buf, hs.term);
    put_u64(buf, hs.vote.unwrap_or(0));
    put_u64(buf, hs.commit);
}

fn read_hard_state(r: &mut Reader<'_>) -> Result<HardState, DecodeError> {
    let term = r.u64()?;
    let vote = r.u64()?;
    let commit = r.u64()?;
    Ok(HardState { term, vote: (vote != 0).then_some(vote), commit })
}

/// Decodes a hard-state payload.
pub fn decode_hard_state(payload: &[u8]) -> Result<HardState, DecodeError> {
    let mut r = Reader::new(payload);
    let hs = read_hard_state(&mut r)?;
    r.finish("bytes after the hard state")?;
    Ok(hs)
}

fn put_ids(buf: &mut Vec<u8>, ids: &[u64]) {
    put_u32(buf, ids.len() as u32);
    for id in ids {
        put_u64(buf, *id);
    }
}

fn read_ids(r: &mut Reader<'_>) -> Result<Vec<u64>, DecodeError> {
    let count = r.u32()? as usize;
    if count.saturating_mul(8) > r.remaining() {
        return Err(DecodeError::Malformed("member count larger than the payload holds"));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(r.u64()?);
    }
    Ok(ids)
}

/// Appends a snapshot-meta payload: index, term, then voters, outgoing voters, learners and
/// next learners, each as a u32 count and that many u64 ids.
pub fn encode_snapshot_meta(buf: &mut Vec<u8>, meta: &SnapshotMeta) {
    put_u64(buf, meta.index);
    put_u64(buf, meta.term);
    put_ids(buf, &meta.conf_state.voters);
    put_ids(buf, &meta.conf_state.voters_outgoing);
    put_ids(buf, &meta.conf_state.learners);
    put_ids(buf, &meta.conf_state.learners_next);
}

fn read_snapshot_meta(r: &mut Reader<'_>) -> Result<SnapshotMeta, DecodeError> {
    let index = r.u64()?;
    let term = r.u64()?;
    let conf_state = ConfState {
        voters: read_ids(r)?,
        voters_outgoing: read_ids(r)?,
        learners: read_ids(r)?,
        learners_next: read_ids(r)?,
    };
    Ok(SnapshotMeta { index, term, conf_state })
}

/// Decodes a snapshot-meta payload (a compact record).
pub fn decode_snapshot_meta(payload: &[u8]) -> Result<SnapshotMeta, DecodeError> {
    let mut r = Reader::new(payload);
    let meta = read_snapshot_meta(&mut r)?;
    r.finish("bytes after the snapshot meta")?;
    Ok(meta)
}

/// One group's line in a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointGroup {
    /// The group.
    pub group: GroupId,
    /// Index of the group's last entry at the checkpoint (its snapshot index if the log is
    /// empty; 0 if it has neither).
    pub last_index: LogIndex,
    /// Its latest hard state, if it ever had one.
    pub hard_state: Option<HardState>,
    /// Its latest snapshot meta, if its log was ever compacted.
    pub snapshot: Option<SnapshotMeta>,
}

const CHECKPOINT_HAS_HARD_STATE: u8 = 1;
const CHECKPOINT_HAS_SNAPSHOT: u8 = 2;

/// Appends a checkpoint payload: a u32 group count, then per group its id, last index, a flags
/// byte (bit 0: hard state follows, bit 1: snapshot meta follows) and those parts.
pub fn encode_checkpoint<'a>(
    buf: &mut Vec<u8>,
    count: u32,
    groups: impl Iterator<Item = (GroupId, LogIndex, Option<&'a HardState>, Option<&'a SnapshotMeta>)>,
) {
    put_u32(buf, count);
    for (group, last_index, hs, snapshot) in groups {
        put_u64(buf, group);
        put_u64(buf, last_index);
        let mut flags = 0u8;
        if hs.is_some() {
            flags |= CHECKPOINT_HAS_HARD_STATE;
        }
        if snapshot.is_some() {
            flags |= CHECKPOINT_HAS_SNAPSHOT;
        }
        buf.push(flags);
        if let Some(hs) = hs {
            encode_hard_state(buf, hs);
        }
        if let Some(meta) = snapshot {
            encode_snapshot_meta(buf, meta);
        }
    }
}

/// Decodes a checkpoint payload.
pub fn decode_checkpoint(payload: &[u8]) -> Result<Vec<CheckpointGroup>, DecodeError> {
    let mut r = Reader::new(payload);
    let count = r.u32()? as usize;
    // Each line takes at least id, last index and flags (17 bytes).
    if count.saturating_mul(17) > r.remaining() {
        return Err(DecodeError::Malformed("checkpoint group count larger than the payload holds"));
    }
    let mut groups = Vec::with_capacity(count);
    let mut previous: Option<GroupId> = None;
    for _ in 0..count {
        let group = r.u64()?;
        if previous.is_some_and(|p| p >= group) {
            return Err(DecodeError::Malformed("checkpoint groups not in increasing order"));
        }
        previous = Some(group);
        let last_index = r.u64()?;
        let flags = r.u8()?;
        if flags & !(CHECKPOINT_HAS_HARD_STATE | CHECKPOINT_HAS_SNAPSHOT) != 0 {
            return Err(DecodeError::Malformed("unknown checkpoint flags"));
        }
        let hard_state = if flags & CHECKPOINT_HAS_HARD_STATE != 0 {
            Some(read_hard_state(&mut r)?)
        } else {
            None
        };
        let snapshot = if flags & CHECKPOINT_HAS_SNAPSHOT != 0 {
            Some(read_snapshot_meta(&mut r)?)
        } else {
            None
        };
        groups.push(CheckpointGroup { group, last_index, hard_state, snapshot });
    }
    r.finish("bytes after the last checkpoint group")?;
    Ok(groups)
}

/// A fully decoded record, for tools, tests and fuzzing (recovery decodes lazily instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// See [`RecordKind::Checkpoint`].
    Checkpoint(Vec<CheckpointGroup>),
    /// See [`RecordKind::Entries`].
    Entries(Vec<Entry>),
    /// See [`RecordKind::HardState`].
    HardState(HardState),
    /// See [`RecordKind::Compact`].
    Compact(SnapshotMeta),
    /// See [`RecordKind::RemoveGroup`].
    RemoveGroup,
}

/// Decodes a payload of the given kind in full.
pub fn decode_payload(kind: RecordKind, payload: Bytes) -> Result<Record, DecodeError> {
    match kind {
        RecordKind::Checkpoint => decode_checkpoint(&payload).map(Record::Checkpoint),
        RecordKind::Entries => {
            let mut iter = EntriesIter::new(payload)?;
            let mut entries = Vec::with_capacity(iter.remaining() as usize);
            for entry in iter.by_ref() {
                entries.push(entry?);
            }
            iter.finish()?;
            Ok(Record::Entries(entries))
        }
        RecordKind::HardState => decode_hard_state(&payload).map(Record::HardState),
        RecordKind::Compact => decode_snapshot_meta(&payload).map(Record::Compact),
        RecordKind::RemoveGroup => {
            if payload.is_empty() {
                Ok(Record::RemoveGroup)
            } else {
                Err(DecodeError::Malformed("remove-group record with a payload"))
            }
        }
    }
}

/// What [`decode_all`] returns: the records decoded, then the first failure and its offset.
pub type DecodedRecords = (Vec<(RecordHeader, Record)>, Option<(usize, DecodeError)>);

/// Decodes every record in `bytes` (records only, no segment header) until the first failure;
/// returns the records and the failure, if any, with its offset. For fuzzing and tools.
pub fn decode_all(bytes: &Bytes) -> DecodedRecords {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = bytes.get(pos..).unwrap_or_default();
        let header = match decode_record(rest) {
            Ok((header, _)) => header,
            Err(e) => return (out, Some((pos, e))),
        };
        let start = pos + RECORD_HEADER_BYTES;
        let payload = bytes.slice(start..start + header.payload_len as usize);
        match decode_payload(header.kind, payload) {
            Ok(record) => out.push((header, record)),
            Err(e) => return (out, Some((pos, e))),
        }
        pos += header.record_len();
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_file_name(7), "wal-00000000000000000007.log");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_file_name("wal-7.log"), None);
        assert_eq!(parse_segment_file_name("wal-0000000000000000000x.log"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_round_trip_and_damage() {
        let mut buf = Vec::new();
        encode_segment_header(&mut buf, 42);
        assert_eq!(buf.len(), SEGMENT_HEADER_BYTES);
        assert_eq!(decode_segment_header(&buf), Ok(42));
        assert_eq!(decode_segment_header(&buf[..31]), Err(HeaderError::Incomplete));
        let mut bad = buf.clone();
        bad[17] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::Checksum));
    }

    #[test]
    fn record_round_trip() {
        let mut buf = Vec::new();
        let start = begin_record(&mut buf, RecordKind::HardState, 9, 77);
        encode_hard_state(&mut buf, &HardState { term: 3, vote: Some(2), commit: 5 });
        finish_record(&mut buf, start).unwrap();
        let (header, payload) = decode_record(&buf).unwrap();
        assert_eq!(header.kind, RecordKind::HardState);
        assert_eq!((header.group, header.lsn, header.record_len()), (9, 77, buf.len()));
        assert_eq!(decode_hard_state(payload).unwrap().vote, Some(2));
        assert_eq!(decode_record(&buf[..buf.len() - 1]), Err(DecodeError::Incomplete));
    }
}
