//! The MVCC logic, written once over an ordered byte map ([`Rows`] / [`RowsMut`]) that each
//! backend provides: reads at a revision, puts, deletes, compaction, watches from the past,
//! and image export/import for snapshots.
//!
//! Rules this module keeps:
//! - It never caches rows: each backend's map is the only truth, so a backend that passes
//!   the conformance suite for its map primitives is correct for everything built on them.
//! - Counters ([`Sys`]) change only inside a transaction and are written with its commit.
//! - Scans read rows in bounded batches, so one read never holds more than
//!   [`SCAN_BATCH_ROWS`] rows it does not need.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use quorumkv_core::LogIndex;

use super::codec::{
    self, REV_END, Revision, SYS_KEY, Sys, VERSION_END, VersionRecord, meta_key, meta_name,
    parse_rev_key, prefix_end, rev_key, row_cost, split_version_key, user_key_of_prefix,
    version_key_from_prefix, version_prefix,
};
use super::{
    CommitResult, Event, EventBatch, EventKind, ImageInfo, ImageRecord, ImageSource, KeyValue,
    MvccError, RangeOptions, RangeResult, SealResult,
};

/// Rows fetched per primitive scan call.
pub(crate) const SCAN_BATCH_ROWS: usize = 256;
/// Once this many versions of one key at or below the read revision have been walked, the
/// rest of that key is resolved with one point lookup instead (deep, uncompacted history).
const DEEP_HISTORY_VERSIONS: usize = 32;

/// One row of the ordered map: key and value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// Called once per key by [`scan_latest`] with (key prefix, revision, row value).
type EmitFn<'a> = dyn FnMut(&[u8], Revision, &[u8]) -> Result<bool, MvccError> + 'a;

/// Read access to an ordered byte map. Ranges are half-open `[lo, hi)`; an empty or inverted
/// range yields nothing.
pub(crate) trait Rows {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError>;
    /// The last row in `[lo, hi)`.
    fn last_in(&self, lo: &[u8], hi: &[u8]) -> Result<Option<Row>, MvccError>;
    /// Up to `rows_max` rows of `[lo, hi)`, in key order.
    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError>;
}

/// Write access to an ordered byte map.
pub(crate) trait RowsMut: Rows {
    /// Inserts or replaces a row.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError>;
    /// Removes a row if present.
    fn remove(&mut self, key: &[u8]) -> Result<(), MvccError>;
}

/// The counters stored in `rows` (those of an empty store if there are none yet).
pub(crate) fn load_sys<R: Rows + ?Sized>(rows: &R) -> Result<Sys, MvccError> {
    match rows.get(SYS_KEY)? {
        Some(row) => Sys::decode(&row),
        None => Ok(Sys::default()),
    }
}

/// The row range `[lo, hi)` holding the versions of the keys in an etcd key range, or `None`
/// if the range is empty.
fn version_bounds(key: &[u8], range_end: &[u8]) -> Result<Option<Row>, MvccError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let lo = version_prefix(key);
    let hi = match range_end {
        [] => prefix_end(&lo),
        [0] => VERSION_END.to_vec(),
        end if end <= key => return Ok(None),
        end => version_prefix(end),
    };
    Ok(Some((lo, hi)))
}

/// True if `k` is in the etcd key range `(key, range_end)`.
fn in_key_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

fn resolve_read_revision(requested: i64, current: i64, compacted: i64) -> Result<i64, MvccError> {
    if requested <= 0 {
        return Ok(current);
    }
    if requested < compacted {
        return Err(MvccError::Compacted { requested, compacted });
    }
    if requested > current {
        return Err(MvccError::FutureRevision { requested, current });
    }
    Ok(requested)
}

fn to_kv(key: &[u8], mod_revision: i64, rec: VersionRecord) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: rec.create_revision,
        mod_revision,
        version: rec.version,
        lease: rec.lease,
        value: rec.value,
    }
}

/// The version of the key with `prefix` that is live just below `below` (exclusive), if any.
fn version_below<R: Rows + ?Sized>(
    rows: &R,
    prefix: &[u8],
    below: Revision,
    keys_only: bool,
) -> Result<Option<(Revision, VersionRecord)>, MvccError> {
    let hi = version_key_from_prefix(prefix, below);
    match rows.last_in(prefix, &hi)? {
        None => Ok(None),
        Some((row_key, row)) => {
            let (_, rev) = split_version_key(&row_key)?;
            let rec = VersionRecord::decode(&row, keys_only)?;
            Ok((!rec.tombstone).then_some((rev, rec)))
        }
    }
}

/// Calls `emit(prefix, revision, row)` once per key in `[lo, hi)` with its latest version at
/// or below `read_rev` (tombstones included; keys with no such version are skipped), in key
/// order, until `emit` returns `false`.
fn scan_latest<R: Rows + ?Sized>(
    rows: &R,
    lo: &[u8],
    hi: &[u8],
    read_rev: i64,
    emit: &mut EmitFn<'_>,
) -> Result<(), MvccError> {
    // The key being walked, its best version so far and how many of its versions were walked.
    let mut cur_prefix: Vec<u8> = Vec::new();
    let mut best: Option<(Revision, Vec<u8>)> = None;
    let mut walked = 0usize;
    let mut cursor = lo.to_vec();
    loop {
        let batch = rows.scan(&cursor, hi, SCAN_BATCH_ROWS)?;
        let full = batch.len() == SCAN_BATCH_ROWS;
        let Some((last_key, _)) = batch.last() else {
            break;
        };
        // Where the next batch starts: right after the last row, or past a key whose
        // remaining versions cannot matter.
        let mut next = last_key.clone();
        next.push(0);
        let mut past_read_rev = false;
        for (row_key, row) in batch {
            let (prefix, rev) = split_version_key(&row_key)?;
            if prefix != cur_prefix.as_slice() {
                if let Some((best_rev, best_row)) = best.take()
                    && !emit(&cur_prefix, best_rev, &best_row)?
                {
                    return Ok(());
                }
                cur_prefix.clear();
                cur_prefix.extend_from_slice(prefix);
                walked = 0;
            }
            past_read_rev = rev.main > read_rev;
            if !past_read_rev {
                best = Some((rev, row));
                walked += 1;
            }
        }
        if !full {
            break;
        }
        if past_read_rev {
            // Every later version of this key is newer still: skip straight past the key.
            next = prefix_end(&cur_prefix);
        } else if walked >= DEEP_HISTORY_VERSIONS {
            let below = Revision { main: read_rev.saturating_add(1), sub: 0 };
            let hi_key = version_key_from_prefix(&cur_prefix, below);
            if let Some((row_key, row)) = rows.last_in(&cur_prefix, &hi_key)? {
                let (_, rev) = split_version_key(&row_key)?;
                best = Some((rev, row));
            }
            next = prefix_end(&cur_prefix);
        }
        cursor = next;
    }
    if let Some((best_rev, best_row)) = best.take() {
        emit(&cur_prefix, best_rev, &best_row)?;
    }
    Ok(())
}

/// A range read over `rows` whose current revision is `current`.
pub(crate) fn range<R: Rows + ?Sized>(
    rows: &R,
    current: i64,
    compacted: i64,
    key: &[u8],
    range_end: &[u8],
    opts: &RangeOptions,
) -> Result<RangeResult, MvccError> {
    let read_rev = resolve_read_revision(opts.revision, current, compacted)?;
    let mut res = RangeResult { revision: current, ..RangeResult::default() };
    let Some((lo, hi)) = version_bounds(key, range_end)? else {
        return Ok(res);
    };
    let skip_values = opts.keys_only || opts.count_only;
    if range_end.is_empty() {
        // One key: one backward seek to its latest version at `read_rev`, however long its
        // history (a forward walk would read every version of the key).
        let below = Revision { main: read_rev.saturating_add(1), sub: 0 };
        if let Some((rev, rec)) = version_below(rows, &lo, below, skip_values)? {
            res.count = 1;
            if !opts.count_only {
                res.kvs.push(to_kv(key, rev.main, rec));
            }
        }
        return Ok(res);
    }
    scan_latest(rows, &lo, &hi, read_rev, &mut |prefix, rev, row| {
        let rec = VersionRecord::decode(row, skip_values)?;
        if rec.tombstone {
            return Ok(true);
        }
        res.count += 1;
        if opts.count_only {
            return Ok(true);
        }
        if opts.limit == 0 || (res.kvs.len() as u64) < opts.limit {
            let user_key = user_key_of_prefix(prefix)?;
            res.kvs.push(to_kv(&user_key, rev.main, rec));
        } else {
            res.more = true;
        }
        Ok(true)
    })?;
    Ok(res)
}

/// Changes from `start` on (see `MvccStore::events_since`).
pub(crate) fn events_since<R: Rows + ?Sized>(
    rows: &R,
    sys: &Sys,
    start: i64,
    key: &[u8],
    range_end: &[u8],
    limit: usize,
) -> Result<EventBatch, MvccError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if start <= 0 {
        // etcd's "watch from now": nothing in the past, resume after the current revision.
        return Ok(EventBatch { events: Vec::new(), next_revision: sys.current_revision + 1 });
    }
    if start < sys.compacted_revision {
        return Err(MvccError::Compacted { requested: start, compacted: sys.compacted_revision });
    }
    let mut batch = EventBatch { events: Vec::new(), next_revision: sys.current_revision + 1 };
    if start > sys.current_revision {
        batch.next_revision = start;
        return Ok(batch);
    }
    let mut cursor = rev_key(Revision { main: start, sub: 0 });
    let mut last_main = 0;
    loop {
        let index_rows = rows.scan(&cursor, REV_END, SCAN_BATCH_ROWS)?;
        let full = index_rows.len() == SCAN_BATCH_ROWS;
        for (index_key, user_key) in &index_rows {
            let rev = parse_rev_key(index_key)?;
            if limit > 0 && batch.events.len() >= limit && rev.main != last_main {
                batch.next_revision = rev.main;
                return Ok(batch);
            }
            last_main = rev.main;
            if !in_key_range(user_key, key, range_end) {
                continue;
            }
            let prefix = version_prefix(user_key);
            let row_key = version_key_from_prefix(&prefix, rev);
            let row = rows.get(&row_key)?.ok_or_else(|| {
                MvccError::Corrupt(format!("revision index names a missing version {rev:?}"))
            })?;
            let rec = VersionRecord::decode(&row, false)?;
            let prev_kv = version_below(rows, &prefix, rev, false)?
                .map(|(prev_rev, prev)| to_kv(user_key, prev_rev.main, prev));
            let (kind, kv) = if rec.tombstone {
                let kv = KeyValue {
                    key: Bytes::copy_from_slice(user_key),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                };
                (EventKind::Delete, kv)
            } else {
                (EventKind::Put, to_kv(user_key, rev.main, rec))
            };
            batch.events.push(Event { kind, kv, prev_kv });
        }
        match index_rows.last() {
            Some((last, _)) if full => {
                cursor = last.clone();
                cursor.push(0);
            }
            _ => break,
        }
    }
    Ok(batch)
}

/// A compaction a command asked for, carried out when the command is sealed: until then it
/// can still be rolled back for free, and reads see its effect already (they check the
/// compacted revision, and history below it answers nothing they may ask).
#[derive(Clone, Copy, Debug)]
struct PendingCompaction {
    /// The compacted revision before this command's compaction (where the scan starts).
    from: i64,
    /// The revision to compact at.
    until: i64,
}

/// What a write transaction has done so far, beside the rows it wrote.
///
/// A transaction is a run of commands, each closed by [`seal`]; the last one is closed by
/// [`commit`]. Per command it keeps what a transaction of its own would: the next
/// sub-revision, the events, and enough to undo the command ([`rollback_to_seal`]).
#[derive(Debug)]
pub(crate) struct TxnState {
    /// Counters, kept current as changes are made; written at commit. `current_revision` is
    /// the revision before the current command (moved on by each seal that changed data).
    pub sys: Sys,
    /// Counters at the last seal (or the start), restored by a rollback.
    sealed_sys: Sys,
    /// Next sub-revision to hand out in the current command.
    next_sub: u32,
    /// Changes of the current command.
    events: Vec<Event>,
    /// Metadata rows the current command overwrote or removed, with what they held before
    /// (oldest first). Version and index rows need no such record: every row the command
    /// wrote carries its revision, so a rollback finds them through the revision index.
    meta_undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The current command's compaction, done at its seal.
    pending_compaction: Option<PendingCompaction>,
}

impl TxnState {
    /// A transaction over a store with counters `sys`.
    pub(crate) fn new(sys: Sys) -> Self {
        Self {
            sys,
            sealed_sys: sys,
            next_sub: 0,
            events: Vec::new(),
            meta_undo: Vec::new(),
            pending_compaction: None,
        }
    }

    /// The revision the current command's changes get.
    pub(crate) fn revision(&self) -> i64 {
        self.sys.current_revision + 1
    }

    /// The revision reads inside the transaction see as current.
    pub(crate) fn visible_revision(&self) -> i64 {
        if self.events.is_empty() { self.sys.current_revision } else { self.revision() }
    }

    /// The compacted revision reads inside the transaction see (compactions in it included).
    pub(crate) fn compacted_revision(&self) -> i64 {
        self.sys.compacted_revision
    }

    fn next_revision(&mut self) -> Result<Revision, MvccError> {
        let sub = self.next_sub;
        self.next_sub =
            sub.checked_add(1).ok_or(MvccError::TooManyChanges { max: u64::from(u32::MAX) })?;
        Ok(Revision { main: self.revision(), sub })
    }
}

fn write_version<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    prefix: &[u8],
    key: &[u8],
    rev: Revision,
    rec: &VersionRecord,
) -> Result<(), MvccError> {
    let row_key = version_key_from_prefix(prefix, rev);
    let row = rec.encode();
    rows.put(&row_key, &row)?;
    let index_key = rev_key(rev);
    rows.put(&index_key, key)?;
    st.sys.version_count += 1;
    st.sys.approx_bytes +=
        row_cost(row_key.len(), row.len()) + row_cost(index_key.len(), key.len());
    Ok(())
}

/// A range read inside a transaction: sees its own changes.
pub(crate) fn txn_range<R: Rows + ?Sized>(
    rows: &R,
    st: &TxnState,
    key: &[u8],
    range_end: &[u8],
    opts: &RangeOptions,
) -> Result<RangeResult, MvccError> {
    range(rows, st.visible_revision(), st.sys.compacted_revision, key, range_end, opts)
}

/// Puts `value` under `key`.
pub(crate) fn put<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<Option<KeyValue>, MvccError> {
    if key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let prefix = version_prefix(key);
    let latest = Revision { main: i64::MAX, sub: u32::MAX };
    let prev = version_below(rows, &prefix, latest, false)?.map(|(r, rec)| to_kv(key, r.main, rec));
    let rev = st.next_revision()?;
    let rec = VersionRecord {
        tombstone: false,
        create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        lease,
        value: Bytes::copy_from_slice(value),
    };
    write_version(rows, st, &prefix, key, rev, &rec)?;
    if prev.is_none() {
        st.sys.key_count += 1;
    }
    st.events.push(Event {
        kind: EventKind::Put,
        kv: to_kv(key, rev.main, rec),
        prev_kv: prev.clone(),
    });
    Ok(prev)
}

/// Deletes every live key in the range.
pub(crate) fn delete_range<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    key: &[u8],
    range_end: &[u8],
) -> Result<Vec<KeyValue>, MvccError> {
    let Some((lo, hi)) = version_bounds(key, range_end)? else {
        return Ok(Vec::new());
    };
    let mut live = Vec::new();
    scan_latest(&*rows, &lo, &hi, i64::MAX, &mut |prefix, rev, row| {
        let rec = VersionRecord::decode(row, false)?;
        if !rec.tombstone {
            live.push(to_kv(&user_key_of_prefix(prefix)?, rev.main, rec));
        }
        Ok(true)
    })?;
    for kv in &live {
        let rev = st.next_revision()?;
        let prefix = version_prefix(&kv.key);
        write_version(rows, st, &prefix, &kv.key, rev, &VersionRecord::tombstone())?;
        st.sys.key_count = st.sys.key_count.saturating_sub(1);
        st.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: kv.key.clone(), mod_revision: rev.main, ..KeyValue::default() },
            prev_kv: Some(kv.clone()),
        });
    }
    Ok(live)
}

/// Sets a metadata entry.
pub(crate) fn set_meta<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    name: &[u8],
    value: &[u8],
) -> Result<(), MvccError> {
    let key = meta_key(name);
    let old = rows.get(&key)?;
    if let Some(old) = &old {
        st.sys.approx_bytes = st.sys.approx_bytes.saturating_sub(row_cost(key.len(), old.len()));
    }
    rows.put(&key, value)?;
    st.sys.approx_bytes += row_cost(key.len(), value.len());
    st.meta_undo.push((key, old));
    Ok(())
}

/// Removes a metadata entry.
pub(crate) fn delete_meta<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    name: &[u8],
) -> Result<(), MvccError> {
    let key = meta_key(name);
    if let Some(old) = rows.get(&key)? {
        st.sys.approx_bytes = st.sys.approx_bytes.saturating_sub(row_cost(key.len(), old.len()));
        rows.remove(&key)?;
        st.meta_undo.push((key, Some(old)));
    }
    Ok(())
}

/// Reads a metadata entry.
pub(crate) fn get_meta<R: Rows + ?Sized>(
    rows: &R,
    name: &[u8],
) -> Result<Option<Bytes>, MvccError> {
    Ok(rows.get(&meta_key(name))?.map(Bytes::from))
}

/// Drops history below `revision` (see the module rules of `mvcc`). The checks and the new
/// compacted revision take effect now; the rows go when the command is sealed.
pub(crate) fn compact(st: &mut TxnState, revision: i64) -> Result<(), MvccError> {
    if revision <= st.sys.compacted_revision {
        return Err(MvccError::Compacted {
            requested: revision,
            compacted: st.sys.compacted_revision,
        });
    }
    // At most the revision before the current command, as if it ran in its own transaction.
    if revision > st.sys.current_revision {
        return Err(MvccError::FutureRevision {
            requested: revision,
            current: st.sys.current_revision,
        });
    }
    let from = match st.pending_compaction {
        // A second compaction in one command: one pass from the first one's start covers both.
        Some(pending) => pending.from,
        None => st.sys.compacted_revision,
    };
    st.pending_compaction = Some(PendingCompaction { from, until: revision });
    st.sys.compacted_revision = revision;
    Ok(())
}

/// Removes the rows a compaction at `p.until` drops.
fn compact_rows<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    p: PendingCompaction,
) -> Result<(), MvccError> {
    // Versions below the previous compaction are already one per key; only keys changed
    // since then can have versions to drop.
    let from = Revision { main: p.from.max(1), sub: 0 };
    let until = Revision { main: p.until, sub: 0 };
    let until_key = rev_key(until);
    let mut touched: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut cursor = rev_key(from);
    loop {
        let index_rows = rows.scan(&cursor, &until_key, SCAN_BATCH_ROWS)?;
        for (_, user_key) in &index_rows {
            touched.insert(user_key.clone());
        }
        match index_rows.last() {
            Some((last, _)) if index_rows.len() == SCAN_BATCH_ROWS => {
                cursor = last.clone();
                cursor.push(0);
            }
            _ => break,
        }
    }
    for user_key in &touched {
        let prefix = version_prefix(user_key);
        let hi = version_key_from_prefix(&prefix, until);
        let mut below: Vec<Row> = Vec::new();
        let mut cursor = prefix.clone();
        loop {
            let batch = rows.scan(&cursor, &hi, SCAN_BATCH_ROWS)?;
            let full = batch.len() == SCAN_BATCH_ROWS;
            if let Some((last, _)) = batch.last() {
                cursor = last.clone();
                cursor.push(0);
            }
            below.extend(batch);
            if !full {
                break;
            }
        }
        // Keep the last version below `revision` unless it is a tombstone.
        if let Some((_, last_row)) = below.last()
            && !VersionRecord::decode(last_row, true)?.tombstone
        {
            below.pop();
        }
        for (row_key, row) in &below {
            let (_, rev) = split_version_key(row_key)?;
            let index_key = rev_key(rev);
            rows.remove(row_key)?;
            rows.remove(&index_key)?;
            st.sys.version_count = st.sys.version_count.saturating_sub(1);
            let cost =
                row_cost(row_key.len(), row.len()) + row_cost(index_key.len(), user_key.len());
            st.sys.approx_bytes = st.sys.approx_bytes.saturating_sub(cost);
        }
    }
    Ok(())
}

/// Closes the current command: carries out its compaction, and if it changed data, moves the
/// revision on. Returns the command's revision (the store's revision after it) and events.
pub(crate) fn seal<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
) -> Result<SealResult, MvccError> {
    if let Some(pending) = st.pending_compaction.take() {
        compact_rows(rows, st, pending)?;
    }
    if !st.events.is_empty() {
        st.sys.current_revision += 1;
    }
    st.next_sub = 0;
    st.meta_undo.clear();
    st.sealed_sys = st.sys;
    Ok(SealResult { revision: st.sys.current_revision, events: std::mem::take(&mut st.events) })
}

/// Undoes every change of the current command: its versions and revision-index rows, its
/// metadata changes, its compaction and its counters.
pub(crate) fn rollback_to_seal<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
) -> Result<(), MvccError> {
    if st.next_sub > 0 {
        // Every row the command wrote is named by a revision-index row at its revision.
        let lo = rev_key(Revision { main: st.revision(), sub: 0 });
        let hi = rev_key(Revision { main: st.revision().saturating_add(1), sub: 0 });
        loop {
            let index_rows = rows.scan(&lo, &hi, SCAN_BATCH_ROWS)?;
            if index_rows.is_empty() {
                break;
            }
            for (index_key, user_key) in &index_rows {
                let rev = parse_rev_key(index_key)?;
                rows.remove(&version_key_from_prefix(&version_prefix(user_key), rev))?;
                rows.remove(index_key)?;
            }
        }
    }
    // Newest first, so a row changed twice ends with what it held before the command.
    for (key, old) in std::mem::take(&mut st.meta_undo).into_iter().rev() {
        match old {
            Some(value) => rows.put(&key, &value)?,
            None => rows.remove(&key)?,
        }
    }
    st.sys = st.sealed_sys;
    st.next_sub = 0;
    st.events.clear();
    st.pending_compaction = None;
    Ok(())
}

/// Writes the counters and returns the outcome; the caller commits the engine transaction.
/// The changes after the last seal are sealed as one more command.
pub(crate) fn commit<W: RowsMut + ?Sized>(
    rows: &mut W,
    mut st: TxnState,
    applied_index: LogIndex,
) -> Result<(CommitResult, Sys), MvccError> {
    if applied_index < st.sys.applied_index {
        return Err(MvccError::AppliedIndexRegression {
            current: st.sys.applied_index,
            given: applied_index,
        });
    }
    let last = seal(rows, &mut st)?;
    let mut sys = st.sys;
    sys.applied_index = applied_index;
    rows.put(SYS_KEY, &sys.encode())?;
    Ok((CommitResult { revision: last.revision, events: last.events }, sys))
}

/// The image header of a store with counters `sys`.
pub(crate) fn image_info(sys: &Sys) -> ImageInfo {
    ImageInfo {
        applied_index: sys.applied_index,
        revision: sys.current_revision,
        compacted_revision: sys.compacted_revision,
        key_count: sys.key_count,
        version_count: sys.version_count,
    }
}

/// Which rows a [`RowImage`] reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImagePhase {
    Meta,
    Versions,
    Done,
}

/// A point-in-time image read from a frozen view of the rows.
pub(crate) struct RowImage<R: Rows> {
    rows: R,
    info: ImageInfo,
    phase: ImagePhase,
    cursor: Vec<u8>,
    /// Rows read but not yet handed out.
    pending: VecDeque<Row>,
}

impl<R: Rows> RowImage<R> {
    /// An image of `rows`, a view that no longer changes, whose counters are `sys`.
    pub(crate) fn new(rows: R, sys: &Sys) -> Self {
        Self {
            rows,
            info: image_info(sys),
            phase: ImagePhase::Meta,
            cursor: vec![codec::META_PREFIX],
            pending: VecDeque::new(),
        }
    }
}

impl<R: Rows> RowImage<R> {
    /// Reads the next batch of rows into `pending`, moving through the phases.
    fn refill(&mut self) -> Result<(), MvccError> {
        while self.pending.is_empty() {
            let hi = match self.phase {
                ImagePhase::Meta => codec::META_END,
                ImagePhase::Versions => VERSION_END,
                ImagePhase::Done => return Ok(()),
            };
            let batch = self.rows.scan(&self.cursor, hi, SCAN_BATCH_ROWS)?;
            if let Some((last, _)) = batch.last() {
                self.cursor = last.clone();
                self.cursor.push(0);
            }
            if batch.len() < SCAN_BATCH_ROWS {
                self.phase = match self.phase {
                    ImagePhase::Meta => {
                        self.cursor = vec![codec::VERSION_PREFIX];
                        ImagePhase::Versions
                    }
                    _ => ImagePhase::Done,
                };
            }
            self.pending.extend(batch);
        }
        Ok(())
    }
}

impl<R: Rows> ImageSource for RowImage<R> {
    fn info(&self) -> ImageInfo {
        self.info
    }

    fn next_records(
        &mut self,
        bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError> {
        let mut bytes = 0usize;
        while bytes < bytes_max.max(1) {
            self.refill()?;
            let Some((row_key, row)) = self.pending.pop_front() else {
                break;
            };
            bytes += row_key.len() + row.len();
            out.push(row_to_record(&row_key, row)?);
        }
        self.refill()?;
        Ok(!self.pending.is_empty())
    }
}

fn row_to_record(row_key: &[u8], row: Vec<u8>) -> Result<ImageRecord, MvccError> {
    if row_key.first() == Some(&codec::META_PREFIX) {
        return Ok(ImageRecord::Meta {
            name: Bytes::copy_from_slice(meta_name(row_key)?),
            value: Bytes::from(row),
        });
    }
    let (prefix, revision) = split_version_key(row_key)?;
    let rec = VersionRecord::decode(&row, false)?;
    Ok(ImageRecord::Version {
        key: Bytes::from(user_key_of_prefix(prefix)?),
        revision,
        tombstone: rec.tombstone,
        create_revision: rec.create_revision,
        version: rec.version,
        lease: rec.lease,
        value: rec.value,
    })
}

fn invalid(reason: impl Into<String>) -> MvccError {
    MvccError::InvalidImage(reason.into())
}

/// Fills `rows`, which must be empty, from `source`, checking that the image is consistent.
/// Returns the counters it wrote.
pub(crate) fn restore_rows<W: RowsMut + ?Sized>(
    rows: &mut W,
    source: &mut dyn ImageSource,
) -> Result<Sys, MvccError> {
    let info = source.info();
    if info.revision < 1 || info.compacted_revision < 0 || info.compacted_revision > info.revision {
        return Err(invalid(format!(
            "revision {} and compacted revision {} are impossible together",
            info.revision, info.compacted_revision
        )));
    }
    let mut sys = Sys {
        current_revision: info.revision,
        compacted_revision: info.compacted_revision,
        applied_index: info.applied_index,
        ..Sys::default()
    };
    let mut last_meta: Option<Bytes> = None;
    let mut last_row: Option<Vec<u8>> = None;
    let mut cur_prefix: Vec<u8> = Vec::new();
    let mut cur_live = false;
    let mut batch = Vec::new();
    loop {
        let more = source.next_records(1 << 20, &mut batch)?;
        for record in batch.drain(..) {
            match record {
                ImageRecord::Meta { name, value } => {
                    if last_row.is_some() {
                        return Err(invalid("a metadata record follows the versions"));
                    }
                    if last_meta.as_ref().is_some_and(|last| *last >= name) {
                        return Err(invalid("metadata records are out of order"));
                    }
                    let key = meta_key(&name);
                    rows.put(&key, &value)?;
                    sys.approx_bytes += row_cost(key.len(), value.len());
                    last_meta = Some(name);
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
                    if key.is_empty() {
                        return Err(invalid("a version has an empty key"));
                    }
                    if revision.main < 1 || revision.main > info.revision {
                        return Err(invalid(format!(
                            "a version has revision {} outside 1..={}",
                            revision.main, info.revision
                        )));
                    }
                    if !tombstone
                        && (version < 1 || create_revision < 1 || create_revision > revision.main)
                    {
                        return Err(invalid(format!(
                            "version {version} created at {create_revision} cannot exist at \
                             revision {}",
                            revision.main
                        )));
                    }
                    let prefix = version_prefix(&key);
                    let row_key = version_key_from_prefix(&prefix, revision);
                    if last_row.as_ref().is_some_and(|last| *last >= row_key) {
                        return Err(invalid("version records are out of order"));
                    }
                    let index_key = rev_key(revision);
                    if rows.get(&index_key)?.is_some() {
                        return Err(invalid(format!(
                            "two versions share revision {}.{}",
                            revision.main, revision.sub
                        )));
                    }
                    if prefix != cur_prefix {
                        sys.key_count += u64::from(cur_live);
                        cur_prefix = prefix;
                    }
                    cur_live = !tombstone;
                    let rec = if tombstone {
                        VersionRecord::tombstone()
                    } else {
                        VersionRecord { tombstone, create_revision, version, lease, value }
                    };
                    let row = rec.encode();
                    rows.put(&row_key, &row)?;
                    rows.put(&index_key, &key)?;
                    sys.version_count += 1;
                    sys.approx_bytes +=
                        row_cost(row_key.len(), row.len()) + row_cost(index_key.len(), key.len());
                    last_row = Some(row_key);
                }
            }
        }
        if !more {
            break;
        }
    }
    sys.key_count += u64::from(cur_live);
    if sys.key_count != info.key_count || sys.version_count != info.version_count {
        return Err(invalid(format!(
            "the header promises {} keys in {} versions, the records hold {} in {}",
            info.key_count, info.version_count, sys.key_count, sys.version_count
        )));
    }
    rows.put(SYS_KEY, &sys.encode())?;
    Ok(sys)
}
