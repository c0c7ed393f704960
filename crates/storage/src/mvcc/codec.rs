//! The row layout both backends share: the whole store is one ordered map from byte strings to
//! byte strings, and this module is the only place that knows how rows are spelled.
//!
//! Rules this module keeps:
//! - Every row key starts with a one-byte kind, so each kind is one contiguous key range:
//!   `m` + name → user metadata, `r` + revision → one version (its user key inside the row
//!   value), `s` → the store's counters.
//! - Versions are keyed by revision alone, so every write appends at the right edge of the
//!   engine's B-tree (a batch of puts dirties one or two leaves, not one per key). Finding a
//!   key's versions is the in-memory key index's job (`index.rs`), rebuilt from these rows.
//! - Revisions are written big-endian in keys so that byte order is numeric order.
//! - Decoding never panics: a malformed row is a [`MvccError::Corrupt`].

use bytes::Bytes;

use super::MvccError;
use super::index::{IndexedRev, LiveFields};

/// First byte of a metadata row.
pub(crate) const META_PREFIX: u8 = b'm';
/// First byte of a version row.
pub(crate) const REV_PREFIX: u8 = b'r';
/// The key of the counters row.
pub(crate) const SYS_KEY: &[u8] = b"s";

/// Exclusive end of the metadata rows.
pub(crate) const META_END: &[u8] = b"n";
/// Exclusive end of the version rows.
pub(crate) const REV_END: &[u8] = b"s";

/// Bytes a revision takes in a version row key.
pub(crate) const REV_BYTES: usize = 12;

/// Layout version written in the counters row; a store with another value is refused.
/// 1: versions keyed by escaped user key + revision, plus a revision-index row per version.
/// 2: one row per version keyed by revision, user key in the value.
pub(crate) const LAYOUT_VERSION: u32 = 2;

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

/// The version row key of `rev` (on the stack: one is built per point lookup).
pub(crate) fn rev_key(rev: Revision) -> [u8; 1 + REV_BYTES] {
    // Revisions in rows are always >= 1, so the cast keeps order; assert the positive space.
    debug_assert!(rev.main >= 0, "negative revision {rev:?} in a row key");
    let mut out = [0u8; 1 + REV_BYTES];
    out[0] = REV_PREFIX;
    out[1..9].copy_from_slice(&(rev.main as u64).to_be_bytes());
    out[9..].copy_from_slice(&rev.sub.to_be_bytes());
    out
}

/// The revision of a version row key.
pub(crate) fn parse_rev_key(row: &[u8]) -> Result<Revision, MvccError> {
    match row.split_first() {
        Some((&REV_PREFIX, rest)) if rest.len() == REV_BYTES => read_revision(rest),
        _ => Err(corrupt("malformed version row key")),
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
    /// The user key (never empty).
    pub key: Bytes,
    /// True for the marker a delete leaves; the fields below are then zero/empty.
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
/// Flags byte and key length.
const KEY_HEADER_BYTES: usize = 1 + 4;
/// Create revision, version and lease of a live version.
const LIVE_FIELDS_BYTES: usize = 8 * 3;

/// The user key and tombstone flag of a version row, without decoding the rest.
pub(crate) fn version_key_of(row: &[u8]) -> Result<(&[u8], bool), MvccError> {
    let tombstone = match row.first() {
        Some(&FLAG_TOMBSTONE) => true,
        Some(&0) => false,
        _ => return Err(corrupt("version row has unknown flags")),
    };
    let len = row
        .get(1..KEY_HEADER_BYTES)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| corrupt("version row too short for its key length"))?;
    let end = KEY_HEADER_BYTES
        .checked_add(len as usize)
        .ok_or_else(|| corrupt("version row key length out of range"))?;
    let key = row
        .get(KEY_HEADER_BYTES..end)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| corrupt("version row key missing or empty"))?;
    if tombstone && row.len() != end {
        return Err(corrupt("tombstone row has bytes after its key"));
    }
    Ok((key, tombstone))
}

/// A live version row's create revision, version and lease, which start at `at`.
fn live_fields(row: &[u8], at: usize) -> Result<LiveFields, MvccError> {
    let field = |n: usize| {
        row.get(at + 8 * n..at + 8 * (n + 1))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| corrupt("version row too short"))
    };
    Ok(LiveFields { create_revision: field(0)?, version: field(1)?, lease: field(2)? })
}

/// The user key of the version row at `rev`, its key index entry and its version's fields
/// (the value is not read).
pub(crate) fn indexed_rev_of(
    row: &[u8],
    rev: Revision,
) -> Result<(&[u8], IndexedRev, LiveFields), MvccError> {
    let (key, tombstone) = version_key_of(row)?;
    if tombstone {
        return Ok((key, IndexedRev::new(rev, true), LiveFields::default()));
    }
    let fields = live_fields(row, KEY_HEADER_BYTES + key.len())?;
    Ok((key, IndexedRev::new(rev, false), fields))
}

impl VersionRecord {
    /// The marker a delete of `key` leaves.
    pub(crate) fn tombstone(key: Bytes) -> Self {
        Self { key, tombstone: true, create_revision: 0, version: 0, lease: 0, value: Bytes::new() }
    }

    /// Row value: flags (`u8`: 0 live, 1 tombstone), key length (`u32`), key; a live version
    /// then has create revision, version, lease (`i64`), then the value to the end of the row.
    /// Integers are little-endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let live_bytes = if self.tombstone { 0 } else { LIVE_FIELDS_BYTES + self.value.len() };
        let mut out = Vec::with_capacity(KEY_HEADER_BYTES + self.key.len() + live_bytes);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        // Keys are limited far below 4 GiB at the API edge.
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.key);
        if !self.tombstone {
            out.extend_from_slice(&self.create_revision.to_le_bytes());
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&self.lease.to_le_bytes());
            out.extend_from_slice(&self.value);
        }
        out
    }

    /// Decodes [`VersionRecord::encode`]; with `skip_value` the value is not copied.
    pub(crate) fn decode(row: &[u8], skip_value: bool) -> Result<Self, MvccError> {
        let (key, tombstone) = version_key_of(row)?;
        Self::decode_fields(row, Bytes::copy_from_slice(key), tombstone, skip_value)
    }

    /// Decodes a row whose key the caller expects to be `key`: checked, and shared instead
    /// of copied.
    pub(crate) fn decode_known(
        row: &[u8],
        key: &Bytes,
        skip_value: bool,
    ) -> Result<Self, MvccError> {
        let (row_key, tombstone) = version_key_of(row)?;
        if row_key != key.as_ref() {
            return Err(corrupt("a version row holds another key than the key index says"));
        }
        Self::decode_fields(row, key.clone(), tombstone, skip_value)
    }

    /// Decodes the fields after the key (`key`, already checked against the row).
    fn decode_fields(
        row: &[u8],
        key: Bytes,
        tombstone: bool,
        skip_value: bool,
    ) -> Result<Self, MvccError> {
        if tombstone {
            return Ok(Self::tombstone(key));
        }
        let at = KEY_HEADER_BYTES + key.len();
        let LiveFields { create_revision, version, lease } = live_fields(row, at)?;
        let value = if skip_value {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(row.get(at + LIVE_FIELDS_BYTES..).unwrap_or_default())
        };
        Ok(Self { key, tombstone: false, create_revision, version, lease, value })
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
    fn version_row_keys_sort_by_revision_and_round_trip() {
        let revs = [
            Revision { main: 1, sub: 0 },
            Revision { main: 1, sub: 7 },
            Revision { main: 2, sub: 0 },
            Revision { main: 256, sub: 0 },
            Revision { main: i64::MAX, sub: u32::MAX },
        ];
        for a in &revs {
            assert_eq!(parse_rev_key(&rev_key(*a)).expect("valid"), *a);
            assert!(rev_key(*a).as_slice() < REV_END);
            for b in &revs {
                assert_eq!(a.cmp(b), rev_key(*a).cmp(&rev_key(*b)), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn records_and_counters_round_trip_and_reject_garbage() {
        let rec = VersionRecord {
            key: Bytes::from_static(b"k\x00ey"),
            tombstone: false,
            create_revision: 3,
            version: 2,
            lease: 99,
            value: Bytes::from_static(b"hello"),
        };
        assert_eq!(VersionRecord::decode(&rec.encode(), false).expect("ok"), rec);
        let no_value = VersionRecord::decode(&rec.encode(), true).expect("ok");
        assert_eq!(no_value, VersionRecord { value: Bytes::new(), ..rec.clone() });
        let known = VersionRecord::decode_known(&rec.encode(), &rec.key, false).expect("ok");
        assert_eq!(known, rec);
        let other = Bytes::from_static(b"other");
        assert!(VersionRecord::decode_known(&rec.encode(), &other, false).is_err());
        let tomb = VersionRecord::tombstone(Bytes::from_static(b"gone"));
        assert_eq!(VersionRecord::decode(&tomb.encode(), false).expect("ok"), tomb);
        assert_eq!(version_key_of(&tomb.encode()).expect("ok"), (&b"gone"[..], true));
        assert!(VersionRecord::decode(&[0, 1, 2], false).is_err());
        assert!(VersionRecord::decode(&[1, 0], false).is_err());
        assert!(VersionRecord::decode(&[], false).is_err());
        // Empty key, key length past the end, live row cut short, tombstone with a tail.
        assert!(VersionRecord::decode(&[1, 0, 0, 0, 0], false).is_err());
        assert!(VersionRecord::decode(&[0, 9, 0, 0, 0, b'k'], false).is_err());
        assert!(VersionRecord::decode(&[0, 1, 0, 0, 0, b'k', 1, 2], false).is_err());
        assert!(VersionRecord::decode(&[1, 1, 0, 0, 0, b'k', 0], false).is_err());
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(b"k");
        assert!(VersionRecord::decode(&huge, false).is_err());

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
        // A store of layout 1 (versions keyed by user key) is refused, not misread.
        bad[..4].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            Sys::decode(&bad),
            Err(MvccError::UnsupportedLayout { found: 1, supported: 2 })
        ));
        assert!(Sys::decode(&bad[1..]).is_err());
        assert!(parse_rev_key(b"r123").is_err());
    }
}
