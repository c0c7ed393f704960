//! Snapshots of the MVCC store: a checksummed, chunked stream format, the writer that streams
//! a store's point-in-time image, the decoder that feeds it back into a store, the assembler
//! a follower uses to receive it chunk by chunk, and a directory of snapshot files
//! ([`SnapshotFileStore`]).
//!
//! Rules this module keeps (the byte layout is in `docs/FORMAT.md`, "Snapshots"):
//! - The stream is a sequence of frames, one frame = one chunk on the wire: a header frame,
//!   record frames, a trailer frame. Every frame carries its length and a CRC-32C; the trailer
//!   carries the record counts and a CRC-32C of every byte before it. A stream is accepted only
//!   once its trailer checks out, so a truncated or spliced stream is never installed.
//! - The image keeps the whole MVCC history above the compacted revision (not just the latest
//!   version of each key): after install, reads at every retained revision and watches from
//!   every retained revision answer exactly as on the leader, so a follower that catches up by
//!   snapshot does not break a watcher that reconnects to it. The cost is a bigger snapshot,
//!   bounded by the compaction policy.
//! - Decoders never panic and never trust a length before checking it against what remains
//!   and against [`FRAME_PAYLOAD_MAX`].
//! - Install is atomic: the store is replaced in one engine transaction after the whole
//!   stream has been verified, or left untouched.

mod file;

use std::io::{self, Read};

use bytes::Bytes;
pub use quorumkv_core::SnapshotMeta;
use quorumkv_core::{ConfState, LogIndex, NodeId};

use crate::mvcc::{ImageInfo, ImageRecord, ImageSource, MvccError, MvccStore, Revision};

pub use file::{
    FileReader, SnapshotFileInfo, SnapshotFileStore, SnapshotFileWriter, SnapshotFrames,
};

/// First bytes of the header frame's payload.
pub const MAGIC: [u8; 8] = *b"QKVSNAP\0";
/// Format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a frame's fixed header: payload length (u32), CRC-32C (u32), kind (u8).
pub const FRAME_HEADER_BYTES: usize = 9;
/// Largest frame payload a decoder accepts (a bigger length is corruption).
pub const FRAME_PAYLOAD_MAX: usize = 64 << 20;
/// Payload bytes a writer aims for per record frame by default.
pub const CHUNK_BYTES_DEFAULT: usize = 1 << 20;

const KIND_HEADER: u8 = 1;
const KIND_RECORDS: u8 = 2;
const KIND_TRAILER: u8 = 3;

/// The kinds of frame a stream holds, for [`encode_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// The first frame: magic, version, counters, Raft metadata.
    Header = KIND_HEADER,
    /// A batch of records.
    Records = KIND_RECORDS,
    /// The last frame: counts and the whole-stream checksum.
    Trailer = KIND_TRAILER,
}

/// Wraps `payload` in a frame of `kind` (length, CRC-32C, kind). A building block for tools
/// and tests that craft streams; snapshots themselves come from [`SnapshotWriter`].
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Bytes, SnapshotError> {
    frame(kind as u8, payload)
}

const TAG_META: u8 = 1;
const TAG_VERSION: u8 = 2;

/// Why a snapshot could not be written, read, received or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing bytes failed.
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The stream does not start with a quorumkv snapshot header.
    #[error("not a quorumkv snapshot: the header frame lacks the magic bytes")]
    BadMagic,
    /// The stream was written in a format version this build does not read.
    #[error(
        "snapshot format version {found} is not supported (this build reads version \
         {supported}): upgrade this node, or have the leader send a snapshot this build reads"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A frame's CRC-32C does not match its bytes.
    #[error(
        "the snapshot chunk at byte {offset} is corrupt (CRC-32C {actual:#010x}, expected \
         {expected:#010x}): re-send or re-read it"
    )]
    ChunkChecksum {
        /// Stream offset of the frame.
        offset: u64,
        /// CRC the frame carries.
        expected: u32,
        /// CRC of the bytes received.
        actual: u32,
    },
    /// A frame claims a payload larger than any valid frame.
    #[error(
        "the snapshot frame at byte {offset} claims {len} payload bytes, more than the {max} \
         allowed: the stream is corrupt"
    )]
    FrameTooLarge {
        /// Stream offset of the frame.
        offset: u64,
        /// Length it claims.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The stream ended before its trailer.
    #[error(
        "the snapshot ends at byte {offset} before its trailer: it was cut short; fetch it again"
    )]
    Truncated {
        /// Bytes read before the end.
        offset: u64,
    },
    /// A frame's contents do not parse, or frames come in an impossible order.
    #[error("the snapshot is malformed at byte {offset}: {reason}")]
    Malformed {
        /// Stream offset of the frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The trailer's counts or whole-stream checksum disagree with the frames before it.
    #[error("the snapshot trailer does not match its contents ({0}): fetch it again")]
    TrailerMismatch(String),
    /// A chunk arrived at an offset other than the one the assembler needs next.
    #[error("snapshot chunk at byte {got} arrived out of order: re-send from byte {expected}")]
    OutOfOrder {
        /// Offset the assembler needs.
        expected: u64,
        /// Offset received.
        got: u64,
    },
    /// A chunk is not exactly one frame.
    #[error(
        "a snapshot chunk must be exactly one frame: got {got} bytes, the frame needs {needed}"
    )]
    ChunkNotOneFrame {
        /// Bytes received.
        got: u64,
        /// Bytes the frame header announces.
        needed: u64,
    },
    /// A chunk arrived after the trailer.
    #[error("the snapshot is already complete: no chunk may follow its trailer")]
    AlreadyComplete,
    /// The metadata attached to a snapshot does not describe the image.
    #[error(
        "snapshot metadata says index {meta_index} but the image is at applied index \
         {applied_index}: take the metadata from the same point as the image"
    )]
    MetaMismatch {
        /// Index in the [`SnapshotMeta`].
        meta_index: LogIndex,
        /// Applied index of the image.
        applied_index: LogIndex,
    },
    /// A snapshot file is unusable.
    #[error("snapshot file {path} is unusable: {source}; delete it and fetch a new snapshot")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<SnapshotError>,
    },
    /// The store failed to produce or install the image.
    #[error(transparent)]
    Store(#[from] MvccError),
}

/// What a snapshot's header says: the Raft metadata and the image's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Index, term and membership the snapshot covers (`meta.index == image.applied_index`).
    pub meta: SnapshotMeta,
    /// Applied index, revisions and counts of the image.
    pub image: ImageInfo,
}

/// One chunk of a snapshot stream: a whole frame and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk in the stream.
    pub offset: u64,
    /// The frame's bytes.
    pub data: Bytes,
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), SnapshotError> {
    let len = u32::try_from(b.len()).map_err(|_| SnapshotError::Malformed {
        offset: 0,
        reason: format!("a field of {} bytes does not fit a snapshot record", b.len()),
    })?;
    put_u32(out, len);
    out.extend_from_slice(b);
    Ok(())
}

fn put_ids(out: &mut Vec<u8>, ids: &[NodeId]) {
    put_u32(out, ids.len() as u32);
    for id in ids {
        put_u64(out, *id);
    }
}

/// Builds one frame around `payload`.
fn frame(kind: u8, payload: &[u8]) -> Result<Bytes, SnapshotError> {
    if payload.len() > FRAME_PAYLOAD_MAX {
        return Err(SnapshotError::FrameTooLarge {
            offset: 0,
            len: payload.len() as u64,
            max: FRAME_PAYLOAD_MAX as u64,
        });
    }
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, &[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(Bytes::from(out))
}

fn encode_header(header: &SnapshotHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, FORMAT_VERSION);
    put_u64(&mut out, header.image.applied_index);
    put_u64(&mut out, header.meta.term);
    put_i64(&mut out, header.image.revision);
    put_i64(&mut out, header.image.compacted_revision);
    put_u64(&mut out, header.image.key_count);
    put_u64(&mut out, header.image.version_count);
    let cs = &header.meta.conf_state;
    for ids in [&cs.voters, &cs.voters_outgoing, &cs.learners, &cs.learners_next] {
        put_ids(&mut out, ids);
    }
    out
}

fn encode_record(out: &mut Vec<u8>, record: &ImageRecord) -> Result<(), SnapshotError> {
    match record {
        ImageRecord::Meta { name, value } => {
            out.push(TAG_META);
            put_bytes(out, name)?;
            put_bytes(out, value)?;
        }
        ImageRecord::Version {
            key,
            revision,
            tombstone,
            create_revision,
            version,
            lease,
            value,
        } => {
            out.push(TAG_VERSION);
            put_bytes(out, key)?;
            put_i64(out, revision.main);
            put_u32(out, revision.sub);
            out.push(u8::from(*tombstone));
            put_i64(out, *create_revision);
            put_i64(out, *version);
            put_i64(out, *lease);
            put_bytes(out, value)?;
        }
    }
    Ok(())
}

/// Counts a trailer promises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    record_frames: u64,
    meta_records: u64,
    version_records: u64,
}

impl Tally {
    fn add(&mut self, records: &[ImageRecord]) {
        self.record_frames += 1;
        for r in records {
            match r {
                ImageRecord::Meta { .. } => self.meta_records += 1,
                ImageRecord::Version { .. } => self.version_records += 1,
            }
        }
    }
}

fn encode_trailer(tally: &Tally, stream_bytes: u64, stream_crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    put_u64(&mut out, tally.record_frames);
    put_u64(&mut out, tally.meta_records);
    put_u64(&mut out, tally.version_records);
    put_u64(&mut out, stream_bytes);
    put_u32(&mut out, stream_crc);
    out
}

/// Where a [`SnapshotWriter`] is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteStage {
    Header,
    Records,
    Trailer,
    Done,
}

/// Streams a store image as snapshot chunks. Point-in-time: the image was frozen when taken,
/// and writes to the store go on while the chunks are produced.
pub struct SnapshotWriter<S: ImageSource> {
    source: S,
    header: SnapshotHeader,
    chunk_bytes: usize,
    stage: WriteStage,
    offset: u64,
    stream_crc: u32,
    tally: Tally,
}

impl<S: ImageSource> SnapshotWriter<S> {
    /// A writer for `source`, labelled with `meta`, whose index must be the image's applied
    /// index (take the term and membership as of that index).
    pub fn new(source: S, meta: SnapshotMeta) -> Result<Self, SnapshotError> {
        let image = source.info();
        if meta.index != image.applied_index {
            return Err(SnapshotError::MetaMismatch {
                meta_index: meta.index,
                applied_index: image.applied_index,
            });
        }
        Ok(Self {
            source,
            header: SnapshotHeader { meta, image },
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            stage: WriteStage::Header,
            offset: 0,
            stream_crc: 0,
            tally: Tally::default(),
        })
    }

    /// Sets the payload size record frames aim for (at least 1 byte; a record bigger than
    /// that gets a frame of its own).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes.clamp(1, FRAME_PAYLOAD_MAX / 2);
        self
    }

    /// What the header says.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    fn emit(&mut self, data: Bytes) -> Chunk {
        let chunk = Chunk { offset: self.offset, data };
        self.offset += chunk.data.len() as u64;
        if self.stage != WriteStage::Done {
            self.stream_crc = crc32c::crc32c_append(self.stream_crc, &chunk.data);
        }
        chunk
    }

    /// The next chunk, or `None` once the trailer has been produced.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, SnapshotError> {
        loop {
            match self.stage {
                WriteStage::Header => {
                    let data = frame(KIND_HEADER, &encode_header(&self.header))?;
                    self.stage = WriteStage::Records;
                    return Ok(Some(self.emit(data)));
                }
                WriteStage::Records => {
                    let mut records = Vec::new();
                    let more = self.source.next_records(self.chunk_bytes, &mut records)?;
                    if !more {
                        self.stage = WriteStage::Trailer;
                    }
                    if records.is_empty() {
                        continue;
                    }
                    let mut payload = Vec::with_capacity(self.chunk_bytes + 64);
                    for record in &records {
                        encode_record(&mut payload, record)?;
                    }
                    self.tally.add(&records);
                    let data = frame(KIND_RECORDS, &payload)?;
                    return Ok(Some(self.emit(data)));
                }
                WriteStage::Trailer => {
                    let payload = encode_trailer(&self.tally, self.offset, self.stream_crc);
                    let data = frame(KIND_TRAILER, &payload)?;
                    self.stage = WriteStage::Done;
                    return Ok(Some(self.emit(data)));
                }
                WriteStage::Done => return Ok(None),
            }
        }
    }

    /// Writes the whole stream to `out`; returns the bytes written.
    pub fn write_all_to(&mut self, out: &mut impl io::Write) -> Result<u64, SnapshotError> {
        let mut written = 0;
        while let Some(chunk) = self.next_chunk()? {
            out.write_all(&chunk.data)?;
            written += chunk.data.len() as u64;
        }
        Ok(written)
    }
}

/// Starts a snapshot of `store` as of now; `meta_for` gets the image's applied index and gives
/// the term and membership as of that index.
pub fn snapshot_of<S: MvccStore>(
    store: &S,
    meta_for: impl FnOnce(LogIndex) -> SnapshotMeta,
) -> Result<SnapshotWriter<S::Image>, SnapshotError> {
    let image = store.image()?;
    let meta = meta_for(image.info().applied_index);
    SnapshotWriter::new(image, meta)
}

/// Encodes the whole snapshot of `source` into memory.
pub fn encode_to_vec<S: ImageSource>(
    source: S,
    meta: SnapshotMeta,
) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::new();
    SnapshotWriter::new(source, meta)?.write_all_to(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A bounds-checked reader over a frame payload.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("a field of {n} bytes runs past the end of its frame"))?;
        let out = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| "short u32")?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short u64")?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn ids(&mut self) -> Result<Vec<NodeId>, String> {
        let n = self.u32()? as usize;
        if n > self.remaining() / 8 {
            return Err(format!("a list of {n} node ids runs past the end of its frame"));
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn finish(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} unexpected bytes at the end of the frame")),
        }
    }
}

fn decode_header(payload: &[u8], offset: u64) -> Result<SnapshotHeader, SnapshotError> {
    let malformed = |reason: String| SnapshotError::Malformed { offset, reason };
    let mut f = Fields::new(payload);
    if f.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
        return Err(SnapshotError::BadMagic);
    }
    let version = f.u32().map_err(malformed)?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut read = || -> Result<SnapshotHeader, String> {
        let applied_index = f.u64()?;
        let term = f.u64()?;
        let revision = f.i64()?;
        let compacted_revision = f.i64()?;
        let key_count = f.u64()?;
        let version_count = f.u64()?;
        let conf_state = ConfState {
            voters: f.ids()?,
            voters_outgoing: f.ids()?,
            learners: f.ids()?,
            learners_next: f.ids()?,
        };
        f.finish()?;
        if revision < 1 || compacted_revision < 0 || compacted_revision > revision {
            return Err(format!(
                "revision {revision} and compacted revision {compacted_revision} are impossible \
                 together"
            ));
        }
        Ok(SnapshotHeader {
            meta: SnapshotMeta { index: applied_index, term, conf_state },
            image: ImageInfo {
                applied_index,
                revision,
                compacted_revision,
                key_count,
                version_count,
            },
        })
    };
    read().map_err(malformed)
}

fn decode_records(
    payload: &[u8],
    offset: u64,
    out: &mut Vec<ImageRecord>,
) -> Result<(), SnapshotError> {
    let mut f = Fields::new(payload);
    let mut read = || -> Result<(), String> {
        if f.remaining() == 0 {
            return Err("a record frame holds no record".into());
        }
        while f.remaining() > 0 {
            let record = match f.u8()? {
                TAG_META => ImageRecord::Meta { name: f.bytes()?, value: f.bytes()? },
                TAG_VERSION => {
                    let key = f.bytes()?;
                    let main = f.i64()?;
                    let sub = f.u32()?;
                    let tombstone = match f.u8()? {
                        0 => false,
                        1 => true,
                        other => return Err(format!("bad tombstone flag {other}")),
                    };
                    ImageRecord::Version {
                        key,
                        revision: Revision { main, sub },
                        tombstone,
                        create_revision: f.i64()?,
                        version: f.i64()?,
                        lease: f.i64()?,
                        value: f.bytes()?,
                    }
                }
                other => return Err(format!("unknown record tag {other}")),
            };
            out.push(record);
        }
        Ok(())
    };
    read().map_err(|reason| SnapshotError::Malformed { offset, reason })
}

fn decode_trailer(payload: &[u8], offset: u64) -> Result<(Tally, u64, u32), SnapshotError> {
    let mut f = Fields::new(payload);
    let mut read = || -> Result<(Tally, u64, u32), String> {
        let tally =
            Tally { record_frames: f.u64()?, meta_records: f.u64()?, version_records: f.u64()? };
        let stream_bytes = f.u64()?;
        let stream_crc = f.u32()?;
        f.finish()?;
        Ok((tally, stream_bytes, stream_crc))
    };
    read().map_err(|reason| SnapshotError::Malformed { offset, reason })
}

/// Splits a frame's fixed header into (payload length, CRC, kind).
fn parse_frame_header(
    head: &[u8; FRAME_HEADER_BYTES],
    offset: u64,
) -> Result<(usize, u32, u8), SnapshotError> {
    let [l0, l1, l2, l3, c0, c1, c2, c3, kind] = *head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > FRAME_PAYLOAD_MAX {
        return Err(SnapshotError::FrameTooLarge {
            offset,
            len: len as u64,
            max: FRAME_PAYLOAD_MAX as u64,
        });
    }
    Ok((len, u32::from_le_bytes([c0, c1, c2, c3]), kind))
}

fn check_frame_crc(
    head: &[u8; FRAME_HEADER_BYTES],
    payload: &[u8],
    expected: u32,
    offset: u64,
) -> Result<(), SnapshotError> {
    let mut actual = crc32c::crc32c(head.get(..4).unwrap_or_default());
    actual = crc32c::crc32c_append(actual, head.get(8..9).unwrap_or_default());
    actual = crc32c::crc32c_append(actual, payload);
    if actual != expected {
        return Err(SnapshotError::ChunkChecksum { offset, expected, actual });
    }
    Ok(())
}

/// Checks the frame order and contents of a stream, frame by frame; shared by the decoder and
/// the assembler so both accept exactly the same streams.
#[derive(Debug, Default)]
struct StreamCheck {
    header: Option<SnapshotHeader>,
    offset: u64,
    stream_crc: u32,
    tally: Tally,
    complete: bool,
}

impl StreamCheck {
    /// Checks one whole frame at the current offset (the caller has its bytes) and moves past
    /// it. Records go to `out`. On error nothing changes, so the frame can be offered again.
    fn frame(
        &mut self,
        head: &[u8; FRAME_HEADER_BYTES],
        payload: &[u8],
        out: &mut Vec<ImageRecord>,
    ) -> Result<(), SnapshotError> {
        let offset = self.offset;
        if self.complete {
            return Err(SnapshotError::AlreadyComplete);
        }
        let (len, crc, kind) = parse_frame_header(head, offset)?;
        if len != payload.len() {
            return Err(SnapshotError::ChunkNotOneFrame {
                got: (FRAME_HEADER_BYTES + payload.len()) as u64,
                needed: (FRAME_HEADER_BYTES + len) as u64,
            });
        }
        check_frame_crc(head, payload, crc, offset)?;
        let malformed =
            |reason: &str| SnapshotError::Malformed { offset, reason: reason.to_string() };
        match (kind, &self.header) {
            (KIND_HEADER, None) => self.header = Some(decode_header(payload, offset)?),
            (KIND_HEADER, Some(_)) => return Err(malformed("a second header frame")),
            (_, None) => return Err(malformed("the stream does not start with a header frame")),
            (KIND_RECORDS, Some(_)) => {
                let before = out.len();
                if let Err(e) = decode_records(payload, offset, out) {
                    out.truncate(before);
                    return Err(e);
                }
                self.tally.add(out.get(before..).unwrap_or_default());
            }
            (KIND_TRAILER, Some(header)) => {
                let (tally, stream_bytes, stream_crc) = decode_trailer(payload, offset)?;
                if tally != self.tally {
                    return Err(SnapshotError::TrailerMismatch(format!(
                        "it counts {tally:?}, the stream holds {:?}",
                        self.tally
                    )));
                }
                if stream_bytes != offset || stream_crc != self.stream_crc {
                    return Err(SnapshotError::TrailerMismatch(format!(
                        "it covers {stream_bytes} bytes with CRC-32C {stream_crc:#010x}, the \
                         stream has {offset} bytes with CRC-32C {:#010x}",
                        self.stream_crc
                    )));
                }
                if tally.version_records != header.image.version_count {
                    return Err(SnapshotError::TrailerMismatch(format!(
                        "the header promises {} versions, the stream holds {}",
                        header.image.version_count, tally.version_records
                    )));
                }
                self.complete = true;
            }
            (other, Some(_)) => return Err(malformed(&format!("unknown frame kind {other}"))),
        }
        if !self.complete {
            self.stream_crc = crc32c::crc32c_append(self.stream_crc, head);
            self.stream_crc = crc32c::crc32c_append(self.stream_crc, payload);
        }
        self.offset += (FRAME_HEADER_BYTES + len) as u64;
        Ok(())
    }
}

/// Reads a snapshot stream, verifying every frame and the trailer, and serves its records as
/// an [`ImageSource`] for [`MvccStore::restore`]. The source reports its end only after the
/// trailer has been verified, so a restore from a damaged stream fails and changes nothing.
pub struct SnapshotDecoder<R: Read> {
    reader: R,
    check: StreamCheck,
    header: SnapshotHeader,
    /// Records decoded but not yet handed out.
    pending: std::collections::VecDeque<ImageRecord>,
    /// The first error met while serving records (kept for [`SnapshotDecoder::take_error`]).
    error: Option<SnapshotError>,
}

impl<R: Read> SnapshotDecoder<R> {
    /// Reads and checks the header frame.
    pub fn new(reader: R) -> Result<Self, SnapshotError> {
        let mut decoder = Self {
            reader,
            check: StreamCheck::default(),
            header: SnapshotHeader::default(),
            pending: Default::default(),
            error: None,
        };
        let mut sink = Vec::new();
        if !decoder.read_frame(&mut sink)? {
            return Err(SnapshotError::Truncated { offset: 0 });
        }
        decoder.header =
            decoder.check.header.clone().ok_or(SnapshotError::Truncated { offset: 0 })?;
        Ok(decoder)
    }

    /// What the header says.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// True once the trailer has been read and verified.
    pub fn is_complete(&self) -> bool {
        self.check.complete
    }

    /// The error that stopped a restore, with its details (the store only sees a summary).
    pub fn take_error(&mut self) -> Option<SnapshotError> {
        self.error.take()
    }

    /// Reads one frame into `out`; `false` at a clean end of input.
    fn read_frame(&mut self, out: &mut Vec<ImageRecord>) -> Result<bool, SnapshotError> {
        let offset = self.check.offset;
        let mut head = [0u8; FRAME_HEADER_BYTES];
        let got = read_full(&mut self.reader, &mut head)?;
        if got == 0 {
            return Ok(false);
        }
        if got < FRAME_HEADER_BYTES {
            return Err(SnapshotError::Truncated { offset: offset + got as u64 });
        }
        let (len, _, _) = parse_frame_header(&head, offset)?;
        // Grow the buffer as bytes arrive rather than trusting the length up front.
        let mut payload = Vec::new();
        (&mut self.reader).take(len as u64).read_to_end(&mut payload)?;
        if payload.len() < len {
            return Err(SnapshotError::Truncated {
                offset: offset + (FRAME_HEADER_BYTES + payload.len()) as u64,
            });
        }
        self.check.frame(&head, &payload, out)?;
        Ok(true)
    }

    /// Appends the records of the next record frame to `out`. Returns `false` once the
    /// trailer has been verified and nothing follows it.
    pub fn next_frame_records(
        &mut self,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, SnapshotError> {
        if self.check.complete {
            return Ok(false);
        }
        if !self.read_frame(out)? {
            return Err(SnapshotError::Truncated { offset: self.check.offset });
        }
        if self.check.complete {
            let mut probe = [0u8; 1];
            if read_full(&mut self.reader, &mut probe)? != 0 {
                return Err(SnapshotError::Malformed {
                    offset: self.check.offset,
                    reason: "bytes follow the trailer".into(),
                });
            }
            return Ok(false);
        }
        Ok(true)
    }
}

/// Fills `buf` as far as the input allows; returns the bytes read (less only at the end).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> ImageSource for SnapshotDecoder<R> {
    fn info(&self) -> ImageInfo {
        self.header.image
    }

    fn next_records(
        &mut self,
        bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError> {
        let mut buffered = Vec::new();
        let mut more = true;
        while self.pending.is_empty() && more {
            match self.next_frame_records(&mut buffered) {
                Ok(m) => more = m,
                Err(e) => {
                    let summary = MvccError::ImageSource(e.to_string().into());
                    self.error = Some(e);
                    return Err(summary);
                }
            }
            self.pending.extend(buffered.drain(..));
        }
        let mut bytes = 0;
        while bytes < bytes_max.max(1) {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            bytes += match &record {
                ImageRecord::Meta { name, value } => name.len() + value.len(),
                ImageRecord::Version { key, value, .. } => key.len() + value.len() + 36,
            };
            out.push(record);
        }
        Ok(!self.pending.is_empty() || !self.check.complete)
    }
}

/// Decodes a whole in-memory stream: its header and every record. For tests and the fuzz
/// target; installs use [`SnapshotDecoder`], which streams.
pub fn decode_all(bytes: &[u8]) -> Result<(SnapshotHeader, Vec<ImageRecord>), SnapshotError> {
    let mut decoder = SnapshotDecoder::new(bytes)?;
    let mut records = Vec::new();
    while decoder.next_frame_records(&mut records)? {}
    Ok((decoder.header.clone(), records))
}

/// Replaces `store`'s contents with the snapshot `decoder` reads, atomically; returns the
/// snapshot's header. On any error (corrupt stream, invalid image, I/O) the store is unchanged.
pub fn install<S: MvccStore, R: Read>(
    store: &S,
    decoder: &mut SnapshotDecoder<R>,
) -> Result<SnapshotHeader, SnapshotError> {
    match store.restore(decoder) {
        Ok(()) => Ok(decoder.header.clone()),
        Err(e) => Err(decoder.take_error().unwrap_or(SnapshotError::Store(e))),
    }
}

// ---------------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------------

/// Where a [`SnapshotAssembler`] puts the chunks it accepted (in order, each exactly once).
pub trait ChunkSink {
    /// Stores the chunk that starts at `offset` (always the end of what was stored before).
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

impl ChunkSink for Vec<u8> {
    fn write_chunk(&mut self, _offset: u64, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// What [`SnapshotAssembler::accept`] did with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored; the next chunk needed starts at this offset.
    Next(u64),
    /// Already had it (a re-sent chunk); the next chunk needed starts at this offset.
    Duplicate(u64),
    /// That was the trailer and it checks out: the snapshot is complete.
    Complete,
}

/// Receives a snapshot chunk by chunk (a follower's side of InstallSnapshot). Accepts chunks
/// strictly in order, verifies each one before storing it, and after any rejected chunk still
/// needs the same offset, so the sender can re-send from [`SnapshotAssembler::next_offset`].
pub struct SnapshotAssembler<W: ChunkSink> {
    sink: W,
    check: StreamCheck,
}

impl<W: ChunkSink> SnapshotAssembler<W> {
    /// An assembler that stores accepted chunks in `sink`.
    pub fn new(sink: W) -> Self {
        Self { sink, check: StreamCheck::default() }
    }

    /// Offers the chunk that starts at `offset`.
    pub fn accept(&mut self, offset: u64, data: &[u8]) -> Result<Accepted, SnapshotError> {
        let next = self.check.offset;
        if offset < next {
            if offset.saturating_add(data.len() as u64) <= next {
                return Ok(Accepted::Duplicate(next));
            }
            return Err(SnapshotError::OutOfOrder { expected: next, got: offset });
        }
        if offset > next {
            return Err(SnapshotError::OutOfOrder { expected: next, got: offset });
        }
        if self.check.complete {
            return Err(SnapshotError::AlreadyComplete);
        }
        let (head, payload) = match data.split_first_chunk::<FRAME_HEADER_BYTES>() {
            Some(split) => split,
            None => {
                return Err(SnapshotError::ChunkNotOneFrame {
                    got: data.len() as u64,
                    needed: FRAME_HEADER_BYTES as u64,
                });
            }
        };
        // Check the frame on a copy of the state: only a stored chunk may advance it.
        let mut check = StreamCheck {
            header: self.check.header.clone(),
            offset: self.check.offset,
            stream_crc: self.check.stream_crc,
            tally: self.check.tally,
            complete: false,
        };
        let mut scratch = Vec::new();
        check.frame(head, payload, &mut scratch)?;
        self.sink.write_chunk(offset, data)?;
        self.check = check;
        Ok(if self.check.complete { Accepted::Complete } else { Accepted::Next(self.check.offset) })
    }

    /// The offset of the next chunk needed.
    pub fn next_offset(&self) -> u64 {
        self.check.offset
    }

    /// The snapshot's header, once its first chunk was accepted.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.check.header.as_ref()
    }

    /// True once the trailer was accepted.
    pub fn is_complete(&self) -> bool {
        self.check.complete
    }

    /// The sink, with every accepted chunk.
    pub fn into_sink(self) -> W {
        self.sink
    }

    /// The sink, borrowed.
    pub fn sink_mut(&mut self) -> &mut W {
        &mut self.sink
    }
}
