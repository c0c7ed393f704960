//! Peer wire format: frames, the handshake, and Raft messages.
//!
//! A frame is `len u32 | version u8 | kind u8 | crc32c u32 | payload[len]`, little-endian; the
//! checksum covers the kind and the payload. A frame of another version, a wrong checksum, a
//! length above [`FRAME_BYTES_MAX`] or a payload that does not decode closes that one
//! connection (the caller counts it); nothing a peer sends can panic the node: every read goes
//! through a bounds-checked [`Reader`].
//!
//! Raft messages are encoded by hand (explicit sizes, no self-description): a batch frame holds
//! a count and that many messages. Entry payloads are slices of the received frame, not copies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quorumkv_core::{ConfState, Entry, EntryKind, SnapshotMeta};
use quorumkv_raft::{AppendResult, Message, MessageBody};
use thiserror::Error;

/// Wire format version; a peer speaking another is refused.
pub const VERSION: u8 = 1;
/// Largest frame accepted.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Header bytes before the payload.
pub const HEADER_BYTES: usize = 10;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Dialer's introduction.
    Hello = 0,
    /// Acceptor's introduction in return.
    HelloAck = 1,
    /// Acceptor refuses the connection; payload is the reason.
    Reject = 2,
    /// A batch of Raft messages.
    Messages = 3,
}

/// A malformed frame or payload.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The peer speaks another wire version.
    #[error("unsupported wire version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// Frame larger than allowed.
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    /// Checksum mismatch.
    #[error("frame checksum mismatch")]
    Checksum,
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The payload ended early or holds an impossible value.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: usize,
    /// Frame kind.
    pub kind: FrameKind,
    /// Checksum of kind + payload.
    pub crc: u32,
}

/// Parses the fixed header.
pub fn parse_header(h: &[u8; HEADER_BYTES]) -> Result<FrameHeader, CodecError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if h[4] != VERSION {
        return Err(CodecError::Version(h[4]));
    }
    if len > FRAME_BYTES_MAX {
        return Err(CodecError::TooLarge(len));
    }
    let kind = match h[5] {
        0 => FrameKind::Hello,
        1 => FrameKind::HelloAck,
        2 => FrameKind::Reject,
        3 => FrameKind::Messages,
        k => return Err(CodecError::Kind(k)),
    };
    Ok(FrameHeader { len, kind, crc: u32::from_le_bytes([h[6], h[7], h[8], h[9]]) })
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload)
}

/// Verifies a payload against its header.
pub fn verify(header: &FrameHeader, payload: &[u8]) -> Result<(), CodecError> {
    if checksum(header.kind as u8, payload) != header.crc {
        return Err(CodecError::Checksum);
    }
    Ok(())
}

/// Appends a whole frame to `out`.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u32_le(payload.len() as u32);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u32_le(checksum(kind as u8, payload));
    out.put_slice(payload);
}

/// The handshake: who is calling, for which cluster, and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hello {
    /// Cluster id of the sender.
    pub cluster_id: u64,
    /// Sender's node id.
    pub node_id: u64,
    /// The node id the sender believes it is talking to (0 = unknown).
    pub expect_id: u64,
    /// Sender's member name.
    pub name: String,
    /// Sender's advertised peer address.
    pub peer_addr: String,
    /// Sender's advertised client address.
    pub client_addr: String,
    /// Sender's HTTP address.
    pub http_addr: String,
}

impl Hello {
    /// Encodes the handshake payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u64_le(self.cluster_id);
        b.put_u64_le(self.node_id);
        b.put_u64_le(self.expect_id);
        for s in [&self.name, &self.peer_addr, &self.client_addr, &self.http_addr] {
            put_str(&mut b, s);
        }
        b.to_vec()
    }

    /// Decodes a handshake payload.
    pub fn decode(payload: Bytes) -> Result<Self, CodecError> {
        let mut r = Reader(payload);
        let h = Hello {
            cluster_id: r.u64()?,
            node_id: r.u64()?,
            expect_id: r.u64()?,
            name: r.string()?,
            peer_addr: r.string()?,
            client_addr: r.string()?,
            http_addr: r.string()?,
        };
        r.finish()?;
        Ok(h)
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

/// Bounds-checked reader over a frame payload.
pub struct Reader(pub Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.0.remaining() < n {
            Err(CodecError::Malformed("payload ended early"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        self.need(2)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, CodecError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u16()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed("string is not UTF-8"))
    }
    fn ids(&mut self) -> Result<Vec<u64>, CodecError> {
        let n = self.u32()? as usize;
        // Each id takes 8 bytes: refuse counts the payload cannot hold before allocating.
        self.need(n.saturating_mul(8))?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn finish(&self) -> Result<(), CodecError> {
        if self.0.has_remaining() { Err(CodecError::Malformed("trailing bytes")) } else { Ok(()) }
    }
}

fn put_ids(b: &mut BytesMut, ids: &[u64]) {
    b.put_u32_le(ids.len() as u32);
    for &id in ids {
        b.put_u64_le(id);
    }
}

fn put_entry(b: &mut BytesMut, e: &Entry) {
    b.put_u64_le(e.index);
    b.put_u64_le(e.term);
    b.put_u8(e.kind as u8);
    b.put_u32_le(e.data.len() as u32);
    b.put_slice(&e.data);
}

fn put_meta(b: &mut BytesMut, m: &SnapshotMeta) {
    b.put_u64_le(m.index);
    b.put_u64_le(m.term);
    put_ids(b, &m.conf_state.voters);
    put_ids(b, &m.conf_state.voters_outgoing);
    put_ids(b, &m.conf_state.learners);
    put_ids(b, &m.conf_state.learners_next);
}

/// Bytes a message will take on the wire (close upper bound), for batch limits.
pub fn message_size(m: &Message) -> usize {
    40 + match &m.body {
        MessageBody::Append { entries, .. } => entries.iter().map(|e| e.data.len() + 21).sum(),
        MessageBody::SnapshotChunk { data, meta, .. } => {
            data.len()
                + 64
                + 8 * (meta.conf_state.voters.len()
                    + meta.conf_state.voters_outgoing.len()
                    + meta.conf_state.learners.len()
                    + meta.conf_state.learners_next.len())
        }
        _ => 24,
    }
}

/// Appends one message.
pub fn encode_message(m: &Message, b: &mut BytesMut) {
    b.put_u64_le(m.group);
    b.put_u64_le(m.from);
    b.put_u64_le(m.to);
    b.put_u64_le(m.term);
    match &m.body {
        MessageBody::PreVote { last_index, last_term } => {
            b.put_u8(0);
            b.put_u64_le(*last_index);
            b.put_u64_le(*last_term);
        }
        MessageBody::PreVoteResponse { granted } => {
            b.put_u8(1);
            b.put_u8(u8::from(*granted));
        }
        MessageBody::Vote { last_index, last_term, transfer } => {
            b.put_u8(2);
            b.put_u64_le(*last_index);
            b.put_u64_le(*last_term);
            b.put_u8(u8::from(*transfer));
        }
        MessageBody::VoteResponse { granted } => {
            b.put_u8(3);
            b.put_u8(u8::from(*granted));
        }
        MessageBody::Append { prev_index, prev_term, entries, commit } => {
            b.put_u8(4);
            b.put_u64_le(*prev_index);
            b.put_u64_le(*prev_term);
            b.put_u64_le(*commit);
            b.put_u32_le(entries.len() as u32);
            for e in entries {
                put_entry(b, e);
            }
        }
        MessageBody::AppendResponse { result } => {
            b.put_u8(5);
            match result {
                AppendResult::Success { match_index } => {
                    b.put_u8(0);
                    b.put_u64_le(*match_index);
                }
                AppendResult::Reject { rejected_index, hint_index, hint_term } => {
                    b.put_u8(1);
                    b.put_u64_le(*rejected_index);
                    b.put_u64_le(*hint_index);
                    b.put_u64_le(*hint_term);
                }
            }
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            b.put_u8(6);
            b.put_u64_le(*commit);
            b.put_u64_le(*read_seq);
        }
        MessageBody::HeartbeatResponse { read_seq } => {
            b.put_u8(7);
            b.put_u64_le(*read_seq);
        }
        MessageBody::SnapshotChunk { meta, offset, total_bytes, data } => {
            b.put_u8(8);
            put_meta(b, meta);
            b.put_u64_le(*offset);
            b.put_u64_le(*total_bytes);
            b.put_u32_le(data.len() as u32);
            b.put_slice(data);
        }
        MessageBody::SnapshotResponse { index, next_offset, done } => {
            b.put_u8(9);
            b.put_u64_le(*index);
            b.put_u64_le(*next_offset);
            b.put_u8(u8::from(*done));
        }
        MessageBody::TimeoutNow => b.put_u8(10),
        MessageBody::ReadIndex { id } => {
            b.put_u8(11);
            b.put_u64_le(*id);
        }
        MessageBody::ReadIndexResponse { id, index } => {
            b.put_u8(12);
            b.put_u64_le(*id);
            b.put_u8(u8::from(index.is_some()));
            b.put_u64_le(index.unwrap_or(0));
        }
    }
}

fn bool_of(v: u8) -> Result<bool, CodecError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(CodecError::Malformed("boolean is neither 0 nor 1")),
    }
}

fn read_entry(r: &mut Reader) -> Result<Entry, CodecError> {
    let index = r.u64()?;
    let term = r.u64()?;
    let kind = EntryKind::from_u8(r.u8()?).ok_or(CodecError::Malformed("unknown entry kind"))?;
    let len = r.u32()? as usize;
    Ok(Entry { index, term, kind, data: r.bytes(len)? })
}

fn read_meta(r: &mut Reader) -> Result<SnapshotMeta, CodecError> {
    Ok(SnapshotMeta {
        index: r.u64()?,
        term: r.u64()?,
        conf_state: ConfState {
            voters: r.ids()?,
            voters_outgoing: r.ids()?,
            learners: r.ids()?,
            learners_next: r.ids()?,
        },
    })
}

/// Reads one message.
pub fn decode_message(r: &mut Reader) -> Result<Message, CodecError> {
    let group = r.u64()?;
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let body = match r.u8()? {
        0 => MessageBody::PreVote { last_index: r.u64()?, last_term: r.u64()? },
        1 => MessageBody::PreVoteResponse { granted: bool_of(r.u8()?)? },
        2 => MessageBody::Vote {
            last_index: r.u64()?,
            last_term: r.u64()?,
            transfer: bool_of(r.u8()?)?,
        },
        3 => MessageBody::VoteResponse { granted: bool_of(r.u8()?)? },
        4 => {
            let prev_index = r.u64()?;
            let prev_term = r.u64()?;
            let commit = r.u64()?;
            let n = r.u32()? as usize;
            // An entry takes at least 21 bytes: bound the allocation by what is there.
            r.need(n.saturating_mul(21))?;
            let entries = (0..n).map(|_| read_entry(r)).collect::<Result<Vec<_>, _>>()?;
            MessageBody::Append { prev_index, prev_term, entries, commit }
        }
        5 => MessageBody::AppendResponse {
            result: match r.u8()? {
                0 => AppendResult::Success { match_index: r.u64()? },
                1 => AppendResult::Reject {
                    rejected_index: r.u64()?,
                    hint_index: r.u64()?,
                    hint_term: r.u64()?,
                },
                _ => return Err(CodecError::Malformed("unknown append result")),
            },
        },
        6 => MessageBody::Heartbeat { commit: r.u64()?, read_seq: r.u64()? },
        7 => MessageBody::HeartbeatResponse { read_seq: r.u64()? },
        8 => {
            let meta = read_meta(r)?;
            let offset = r.u64()?;
            let total_bytes = r.u64()?;
            let len = r.u32()? as usize;
            MessageBody::SnapshotChunk { meta, offset, total_bytes, data: r.bytes(len)? }
        }
        9 => MessageBody::SnapshotResponse {
            index: r.u64()?,
            next_offset: r.u64()?,
            done: bool_of(r.u8()?)?,
        },
        10 => MessageBody::TimeoutNow,
        11 => MessageBody::ReadIndex { id: r.u64()? },
        12 => {
            let id = r.u64()?;
            let some = bool_of(r.u8()?)?;
            let index = r.u64()?;
            MessageBody::ReadIndexResponse { id, index: some.then_some(index) }
        }
        _ => return Err(CodecError::Malformed("unknown message kind")),
    };
    Ok(Message { group, from, to, term, body })
}

/// Encodes a batch of messages as one frame payload.
pub fn encode_batch(msgs: &[Message]) -> BytesMut {
    let mut b = BytesMut::with_capacity(msgs.iter().map(message_size).sum::<usize>() + 4);
    b.put_u32_le(msgs.len() as u32);
    for m in msgs {
        encode_message(m, &mut b);
    }
    b
}

/// Decodes a batch frame payload.
pub fn decode_batch(payload: Bytes) -> Result<Vec<Message>, CodecError> {
    let mut r = Reader(payload);
    let n = r.u32()? as usize;
    // A message takes at least 33 bytes.
    r.need(n.saturating_mul(33))?;
    let msgs = (0..n).map(|_| decode_message(&mut r)).collect::<Result<Vec<_>, _>>()?;
    r.finish()?;
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Message> {
        let meta = SnapshotMeta {
            index: 9,
            term: 2,
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                voters_outgoing: vec![1],
                learners: vec![4],
                learners_next: vec![],
            },
        };
        let bodies = vec![
            MessageBody::PreVote { last_index: 5, last_term: 2 },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::Vote { last_index: 5, last_term: 2, transfer: true },
            MessageBody::VoteResponse { granted: false },
            MessageBody::Append {
                prev_index: 4,
                prev_term: 1,
                entries: vec![
                    Entry {
                        index: 5,
                        term: 2,
                        kind: EntryKind::Normal,
                        data: Bytes::from_static(b"abc"),
                    },
                    Entry { index: 6, term: 2, kind: EntryKind::ConfChange, data: Bytes::new() },
                ],
                commit: 4,
            },
            MessageBody::AppendResponse { result: AppendResult::Success { match_index: 6 } },
            MessageBody::AppendResponse {
                result: AppendResult::Reject { rejected_index: 6, hint_index: 3, hint_term: 1 },
            },
            MessageBody::Heartbeat { commit: 6, read_seq: 11 },
            MessageBody::HeartbeatResponse { read_seq: 11 },
            MessageBody::SnapshotChunk {
                meta,
                offset: 10,
                total_bytes: 30,
                data: Bytes::from_static(b"chunk"),
            },
            MessageBody::SnapshotResponse { index: 9, next_offset: 15, done: false },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex { id: 77 },
            MessageBody::ReadIndexResponse { id: 77, index: Some(6) },
            MessageBody::ReadIndexResponse { id: 78, index: None },
        ];
        bodies.into_iter().map(|body| Message { group: 1, from: 2, to: 3, term: 7, body }).collect()
    }

    #[test]
    fn every_message_kind_round_trips() {
        let msgs = sample();
        let payload = encode_batch(&msgs).freeze();
        assert_eq!(decode_batch(payload).unwrap(), msgs);
    }

    #[test]
    fn frames_check_version_checksum_and_size() {
        let mut out = BytesMut::new();
        encode_frame(FrameKind::Messages, b"hello", &mut out);
        let header: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
        let h = parse_header(&header).unwrap();
        assert_eq!((h.len, h.kind), (5, FrameKind::Messages));
        assert_eq!(verify(&h, b"hello"), Ok(()));
        assert_eq!(verify(&h, b"hellp"), Err(CodecError::Checksum));
        let mut bad = header;
        bad[4] = 9;
        assert_eq!(parse_header(&bad), Err(CodecError::Version(9)));
        let mut big = header;
        big[..4].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(parse_header(&big), Err(CodecError::TooLarge(_))));
        let mut kind = header;
        kind[5] = 42;
        assert_eq!(parse_header(&kind), Err(CodecError::Kind(42)));
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            cluster_id: 1,
            node_id: 2,
            expect_id: 3,
            name: "n2".into(),
            peer_addr: "127.0.0.1:2380".into(),
            client_addr: "127.0.0.1:2379".into(),
            http_addr: "x".into(),
        };
        assert_eq!(Hello::decode(Bytes::from(h.encode())).unwrap(), h);
        assert!(Hello::decode(Bytes::from_static(b"\x01\x02")).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(Bytes::from(data.clone()));
            let _ = Hello::decode(Bytes::from(data));
        }

        #[test]
        fn truncated_batches_are_refused(cut in 0usize..400) {
            let payload = encode_batch(&sample()).freeze();
            if cut < payload.len() {
                prop_assert!(decode_batch(payload.slice(..cut)).is_err());
            }
        }
    }
}
