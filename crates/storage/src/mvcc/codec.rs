//! The row layout both backends share: the whole store is one ordered map from byte strings to
//! byte strings, and this module is the only place that knows how rows are spelled.
//!
//! Rules this module keeps:
//! - Every row key starts with a one-byte kind, so each kind is one contiguous key range:
//!   `m` + name → user metadata, `r` + revision → user key (the revision index, for watches and
//!   compaction), `s` → the store's counters, `v` + escaped user key + revision → one version.
//! - User keys are escaped so that the encoding is order-preserving and prefix-free
//!   (`0x00` → `0x00 0xFF`, end → `0x00 0x01`): the versions of one key are contiguous, sorted
//!   by revision, and keys sort as etcd sorts them (bytewise).
//! - Revisions are written big-endian in keys so that byte order is numeric order.
//! - Decoding never panics: a malformed row is a [`MvccError::Corrupt`].

use bytes::Bytes;

use super::MvccError;

/// First byte of a metadata row.
pub(crate) const META_PREFIX: u8 = b'm';
/// First byte of a revision-index row.
pub(crate) const REV_PREFIX: u8 = b'r';
/// The key of the counters row.
pub(crate) const SYS_KEY: &[u8] = b"s";
/// First byte of a version row.
pub(crate) const VERSION_PREFIX: u8 = b'v';

/// Exclusive end of the metadata rows.
pub(crate) const META_END: &[u8] = b"n";
/// Exclusive end of the revision-index rows.
pub(crate) const REV_END: &[u8] = b"s";
/// Exclusive end of the version rows.
pub(crate) const VERSION_END: &[u8] = b"w";

/// Bytes a revision takes at the end of a version row key and in a revision-index key.
pub(crate) const REV_BYTES: usize = 12;

/// Layout version written in the counters row; a store with another value is refused.
pub(crate) const LAYOUT_VERSION: u32 = 1;

/// A position in the store's history: the main revision (one per write transaction that
/// changed data) and the sub-revision (one per change inside that transaction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Store-wide revision of the transaction.
    pub main: i64,
    /// Index of the change inside the transaction, from 0.
    pub sub: u32,
}

fn corrupt(what: &str) -> MvccError {
    MvccError::Corrupt(what.to_string())
}

/// Appends the order-preserving, prefix-free escape of `key`.
pub(crate) fn push_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn push_revision(out: &mut Vec<u8>, rev: Revision) {
    // Revisions in rows are always >= 1, so the cast keeps order; assert the positive space.
    debug_assert!(rev.main >= 0, "negative revision {rev:?} in a row key");
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.extend_from_slice(&rev.sub.to_be_bytes());
}

fn read_revision(bytes: &[u8]) -> Result<Revision, MvccError> {
    let main = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("row key too short for a revision"))?;
    let sub = bytes
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("row key too short for a sub-revision"))?;
    let main = i64::try_from(main).map_err(|_| corrupt("revision out of range in a row key"))?;
    Ok(Revision { main, sub })
}

/// `v` + escaped key: every version row of `key` starts with this and nothing else does.
pub(crate) fn version_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3 + REV_BYTES);
    out.push(VERSION_PREFIX);
    push_escaped(&mut out, key);
    out
}

/// The smallest row key after every row that starts with `prefix` (a [`version_prefix`]).
/// The prefix ends with the terminator `0x00 0x01`, so bumping its last byte is enough.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    if let Some(last) = out.last_mut() {
        *last += 1;
    }
    out
}

/// The row key of `key`'s version at `rev`.
#[cfg(test)]
pub(crate) fn version_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = version_prefix(key);
    push_revision(&mut out, rev);
    out
}

/// Appends `rev` to a [`version_prefix`], giving that key's row at `rev`.
pub(crate) fn version_key_from_prefix(prefix: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + REV_BYTES);
    out.extend_from_slice(prefix);
    push_revision(&mut out, rev);
    out
}

/// Splits a version row key into (its prefix, the revision).
pub(crate) fn split_version_key(row: &[u8]) -> Result<(&[u8], Revision), MvccError> {
    let cut = row
        .len()
        .checked_sub(REV_BYTES)
        .filter(|&cut| cut >= 3)
        .ok_or_else(|| corrupt("version row key too short"))?;
    let (prefix, rev) = row.split_at(cut);
    if prefix.first() != Some(&VERSION_PREFIX) || !prefix.ends_with(&[0x00, 0x01]) {
        return Err(corrupt("version row key lacks its prefix or terminator"));
    }
    Ok((prefix, read_revision(rev)?))
}

/// Recovers the user key from a [`version_prefix`].
pub(crate) fn user_key_of_prefix(prefix: &[u8]) -> Result<Vec<u8>, MvccError> {
    let body = prefix.get(1..).ok_or_else(|| corrupt("empty version prefix"))?;
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body.get(i).copied().unwrap_or_default();
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match body.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) if i + 2 == body.len() => return Ok(out),
            _ => return Err(corrupt("bad escape in a version row key")),
        }
    }
    Err(corrupt("version row key has no terminator"))
}

/// The revision-index row key of `rev`.
pub(crate) fn rev_key(rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + REV_BYTES);
    out.push(REV_PREFIX);
    push_revision(&mut out, rev);
    out
}

/// The revision of a revision-index row key.
pub(crate) fn parse_rev_key(row: &[u8]) -> Result<Revision, MvccError> {
    match row.split_first() {
        Some((&REV_PREFIX, rest)) if rest.len() == REV_BYTES => read_revision(rest),
        _ => Err(corrupt("malformed revision-index row key")),
    }
}

/// The metadata row key of `name`.
pub(crate) fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + name.len());
    out.push(META_PREFIX);
    out.extend_from_slice(name);
    out
}

/// The metadata name of a metadata row key.
pub(crate) fn meta_name(row: &[u8]) -> Result<&[u8], MvccError> {
    match row.split_first() {
        Some((&META_PREFIX, name)) => Ok(name),
        _ => Err(corrupt("malformed metadata row key")),
    }
}

/// One version of one key as stored in its row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VersionRecord {
    /// True for the marker a delete leaves; the other fields are then zero/empty.
    pub tombstone: bool,
    /// Revision at which the key was created (in this life: deletes reset it).
    pub create_revision: i64,
    /// 1 on creation, +1 per put since.
    pub version: i64,
    /// Lease attached to the key, 0 for none.
    pub lease: i64,
    /// The value.
    pub value: Bytes,
}

const FLAG_TOMBSTONE: u8 = 1;
const RECORD_HEADER_BYTES: usize = 1 + 8 * 3;

impl VersionRecord {
    /// The marker a delete leaves.
    pub(crate) fn tombstone() -> Self {
        Self { tombstone: true, create_revision: 0, version: 0, lease: 0, value: Bytes::new() }
    }

    /// Row value: flags, create revision, version, lease (little-endian), then the value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        if self.tombstone {
            return vec![FLAG_TOMBSTONE];
        }
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + self.value.len());
        out.push(0);
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes [`VersionRecord::encode`]; with `keys_only` the value is not copied.
    pub(crate) fn decode(row: &[u8], keys_only: bool) -> Result<Self, MvccError> {
        match row.first() {
            Some(&FLAG_TOMBSTONE) if row.len() == 1 => return Ok(Self::tombstone()),
            Some(&0) if row.len() >= RECORD_HEADER_BYTES => {}
            _ => return Err(corrupt("malformed version row")),
        }
        let field = |at: usize| {
            row.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_le_bytes)
                .ok_or_else(|| corrupt("version row too short"))
        };
        let value = if keys_only {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(row.get(RECORD_HEADER_BYTES..).unwrap_or_default())
        };
        Ok(Self {
            tombstone: false,
            create_revision: field(1)?,
            version: field(9)?,
            lease: field(17)?,
            value,
        })
    }
}

/// The store's counters, kept in one row so they change atomically with the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sys {
    /// Revision of the last write transaction that changed data (1 for the empty store).
    pub current_revision: i64,
    /// Reads below this revision fail with `Compacted` (0: nothing compacted yet).
    pub compacted_revision: i64,
    /// Index of the last log entry whose effects are in the store.
    pub applied_index: u64,
    /// Keys that exist at the current revision.
    pub key_count: u64,
    /// Version rows kept (history included).
    pub version_count: u64,
    /// Bytes of all rows, approximately (row keys and values, no engine overhead).
    pub approx_bytes: u64,
}

impl Default for Sys {
    fn default() -> Self {
        Self {
            current_revision: 1,
            compacted_revision: 0,
            applied_index: 0,
            key_count: 0,
            version_count: 0,
            approx_bytes: 0,
        }
    }
}

const SYS_BYTES: usize = 4 + 8 * 6;

impl Sys {
    /// Row value: layout version (u32) then the six counters, little-endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SYS_BYTES);
        out.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.current_revision.to_le_bytes());
        out.extend_from_slice(&self.compacted_revision.to_le_bytes());
        out.extend_from_slice(&self.applied_index.to_le_bytes());
        out.extend_from_slice(&self.key_count.to_le_bytes());
        out.extend_from_slice(&self.version_count.to_le_bytes());
        out.extend_from_slice(&self.approx_bytes.to_le_bytes());
        out
    }

    /// Decodes [`Sys::encode`], refusing an unknown layout version.
    pub(crate) fn decode(row: &[u8]) -> Result<Self, MvccError> {
        if row.len() != SYS_BYTES {
            return Err(corrupt("counters row has the wrong length"));
        }
        let word = |at: usize| {
            row.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| corrupt("counters row too short"))
        };
        let layout = row
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| corrupt("counters row too short"))?;
        if layout != LAYOUT_VERSION {
            return Err(MvccError::UnsupportedLayout { found: layout, supported: LAYOUT_VERSION });
        }
        Ok(Self {
            current_revision: word(4)? as i64,
            compacted_revision: word(12)? as i64,
            applied_index: word(20)?,
            key_count: word(28)?,
            version_count: word(36)?,
            approx_bytes: word(44)?,
        })
    }
}

/// What a row costs in [`Sys::approx_bytes`]: its key and value plus a small fixed overhead
/// standing in for the engine's per-entry bookkeeping.
pub(crate) fn row_cost(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len + 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_sort_like_raw_keys_and_round_trip() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"\x00\xff",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"b",
            b"\xff",
        ];
        for a in &keys {
            for b in &keys {
                let (ea, eb) = (version_prefix(a), version_prefix(b));
                assert_eq!(a.cmp(b), ea.cmp(&eb), "{a:?} vs {b:?}");
                // Versions of a key stay between its prefix and the prefix end.
                let row = version_key(a, Revision { main: 7, sub: 2 });
                assert!(row > ea && row < prefix_end(&ea));
                if a < b {
                    assert!(prefix_end(&ea) <= eb, "{a:?} versions overlap {b:?}");
                }
            }
            let row = version_key(a, Revision { main: 9, sub: 3 });
            let (prefix, rev) = split_version_key(&row).expect("valid row");
            assert_eq!(rev, Revision { main: 9, sub: 3 });
            assert_eq!(user_key_of_prefix(prefix).expect("valid prefix"), a.to_vec());
        }
    }

    #[test]
    fn records_and_counters_round_trip_and_reject_garbage() {
        let rec = VersionRecord {
            tombstone: false,
            create_revision: 3,
            version: 2,
            lease: 99,
            value: Bytes::from_static(b"hello"),
        };
        assert_eq!(VersionRecord::decode(&rec.encode(), false).expect("ok"), rec);
        let tomb = VersionRecord::tombstone();
        assert_eq!(VersionRecord::decode(&tomb.encode(), false).expect("ok"), tomb);
        assert!(VersionRecord::decode(&[0, 1, 2], false).is_err());
        assert!(VersionRecord::decode(&[1, 0], false).is_err());
        assert!(VersionRecord::decode(&[], false).is_err());

        let sys = Sys {
            current_revision: 10,
            compacted_revision: 4,
            applied_index: 77,
            key_count: 5,
            version_count: 9,
            approx_bytes: 1234,
        };
        assert_eq!(Sys::decode(&sys.encode()).expect("ok"), sys);
        let mut bad = sys.encode();
        bad[0] = 9;
        assert!(matches!(Sys::decode(&bad), Err(MvccError::UnsupportedLayout { found: 9, .. })));
        assert!(Sys::decode(&bad[1..]).is_err());
        assert!(split_version_key(b"v\x00").is_err());
        assert!(user_key_of_prefix(b"va\x00\x02").is_err());
        assert!(parse_rev_key(b"r123").is_err());
    }
}
