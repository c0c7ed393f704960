//! The MVCC logic, written once over an ordered byte map ([`Rows`] / [`RowsMut`]) that each
//! backend provides, plus the in-memory key index ([`SharedIndex`]) both backends keep: reads
//! at a revision, puts, deletes, compaction, watches from the past, and image export/import
//! for snapshots.
//!
//! Rules this module keeps:
//! - Rows are the truth; the only thing cached is the key index (key → revisions, see
//!   `index.rs`), which is derived from the version rows and cannot disagree with them:
//!   it is rebuilt from the rows on open and from the image on restore, a transaction's
//!   revisions enter it only around the engine commit that writes their rows (taken out again
//!   if that commit fails), and a compaction's removals leave it only after the commit that
//!   removed the rows. Values, counters and metadata are always read from the rows.
//! - A reader pairs an engine snapshot with the index by [`read_consistent`]: the index may
//!   hold revisions above the snapshot (filtered by the read revision) and, for a moment
//!   after a compaction commit, versions the snapshot no longer has (never the answer to a
//!   read at or above the compacted revision); if the index has applied a compaction above
//!   the read revision, or was replaced by a restore, the reader retries on a fresh snapshot.
//! - Counters ([`Sys`]) change only inside a transaction and are written with its commit.
//! - Scans read rows in bounded batches, so one read never holds more than
//!   [`SCAN_BATCH_ROWS`] rows it does not need.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::RwLockReadGuard;
use quorumkv_core::LogIndex;

use super::codec::{
    self, REV_END, Revision, SYS_KEY, Sys, VersionRecord, indexed_rev_of, meta_key, meta_name,
    parse_rev_key, rev_key, row_cost, version_key_of,
};
use super::index::{IndexedRev, KeyIndex, LiveFields, Overlay, SharedIndex, key_bounds, latest_of};
use super::{
    CommitResult, Event, EventBatch, EventKind, ImageInfo, ImageRecord, ImageSource, KeyValue,
    MvccError, RangeOptions, RangeResult, Replaced, SealResult,
};

/// Rows fetched per primitive scan call.
pub(crate) const SCAN_BATCH_ROWS: usize = 256;

/// One row of the ordered map: key and value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// Read access to an ordered byte map. Ranges are half-open `[lo, hi)`; an empty or inverted
/// range yields nothing.
pub(crate) trait Rows {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError>;
    /// Up to `rows_max` rows of `[lo, hi)`, in key order.
    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError>;
}

impl<T: Rows + ?Sized> Rows for &T {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        (**self).get(key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        (**self).scan(lo, hi, rows_max)
    }
}

/// Write access to an ordered byte map.
pub(crate) trait RowsMut: Rows {
    /// Inserts or replaces a row.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError>;
    /// Removes a row if present; returns the length of the value it held.
    fn remove(&mut self, key: &[u8]) -> Result<Option<usize>, MvccError>;
}

/// The counters stored in `rows` (those of an empty store if there are none yet).
pub(crate) fn load_sys<R: Rows + ?Sized>(rows: &R) -> Result<Sys, MvccError> {
    match rows.get(SYS_KEY)? {
        Some(row) => Sys::decode(&row),
        None => Ok(Sys::default()),
    }
}

/// Builds the key index from the version rows (on open): one scan in revision order.
/// Checks the rows against the counters, so a store whose rows went missing is refused.
pub(crate) fn rebuild_index<R: Rows + ?Sized>(rows: &R, sys: &Sys) -> Result<KeyIndex, MvccError> {
    let mut index = KeyIndex::new(sys.compacted_revision);
    let mut versions = 0u64;
    let mut cursor = rev_key(Revision::default()).to_vec();
    loop {
        let batch = rows.scan(&cursor, REV_END, SCAN_BATCH_ROWS)?;
        for (row_key, row) in &batch {
            let rev = parse_rev_key(row_key)?;
            let (key, entry, fields) = indexed_rev_of(row, rev)?;
            index.push(key, entry, fields)?;
            versions += 1;
        }
        match batch.last() {
            Some((last, _)) if batch.len() == SCAN_BATCH_ROWS => {
                cursor = last.clone();
                cursor.push(0);
            }
            _ => break,
        }
    }
    let live = index.live_key_count();
    if versions != sys.version_count || live != sys.key_count {
        return Err(MvccError::Corrupt(format!(
            "the counters promise {} keys in {} versions, the rows hold {live} in {versions}",
            sys.key_count, sys.version_count
        )));
    }
    Ok(index)
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

/// The bound below which a read at `read_rev` looks (everything at or below it).
fn below_read(read_rev: i64) -> Revision {
    Revision { main: read_rev.saturating_add(1), sub: 0 }
}

fn to_kv(rec: VersionRecord, mod_revision: i64) -> KeyValue {
    KeyValue {
        key: rec.key,
        create_revision: rec.create_revision,
        mod_revision,
        version: rec.version,
        lease: rec.lease,
        value: rec.value,
    }
}

/// The version of `key` at `rev`, which the key index says exists.
fn load_version<R: Rows + ?Sized>(
    rows: &R,
    key: &Bytes,
    rev: Revision,
    skip_value: bool,
) -> Result<VersionRecord, MvccError> {
    let row = rows.get(&rev_key(rev))?.ok_or_else(|| {
        MvccError::Corrupt(format!(
            "the key index names version {}.{} of a key, but there is no such row",
            rev.main, rev.sub
        ))
    })?;
    VersionRecord::decode_known(&row, key, skip_value)
}

/// A reader's engine snapshot with its counters, and the index generation it was opened in.
pub(crate) struct Snapshot<'i, R> {
    /// The rows as of the snapshot.
    pub rows: R,
    /// The counters as of the snapshot.
    pub sys: Sys,
    index: &'i SharedIndex,
    epoch: u64,
}

impl<R> Snapshot<'_, R> {
    /// The index, if it can answer reads at `revision` for this snapshot; `None` means retry
    /// on a fresh snapshot. The rule: the index must be the one the snapshot was opened with
    /// (no restore since) and must not have applied a compaction above `revision` (it
    /// would lack versions that reads at `revision` need). Anything else it may hold beyond
    /// the snapshot is harmless: revisions above the snapshot are above every read revision,
    /// and versions a just-committed compaction removed are never the answer at or above it.
    fn index_at(&self, revision: i64) -> Option<RwLockReadGuard<'_, KeyIndex>> {
        let index = self.index.read();
        (index.epoch() == self.epoch && index.compacted() <= revision).then_some(index)
    }
}

/// Runs `read` on a fresh snapshot (`open`) until it gets an answer: `read` returns `None`
/// when [`Snapshot::index_at`] refuses (a compaction or restore committed after the snapshot
/// was opened); the next snapshot then sees that commit too, so the loop ends as soon as no
/// new one slips in between. Readers never wait for a write transaction: they take the
/// index's read lock only for the time of a lookup.
pub(crate) fn read_consistent<R, T>(
    index: &SharedIndex,
    mut open: impl FnMut() -> Result<(R, Sys), MvccError>,
    mut read: impl FnMut(Snapshot<'_, R>) -> Result<Option<T>, MvccError>,
) -> Result<T, MvccError> {
    loop {
        // The epoch is read before the snapshot opens: a restore committing in between makes
        // the check fail and the read retry, never pairs old rows with a new index.
        let epoch = index.epoch();
        let (rows, sys) = open()?;
        if let Some(answer) = read(Snapshot { rows, sys, index, epoch })? {
            return Ok(answer);
        }
    }
}

/// The keys a range read picked under the index lock: (key, revision) of the live versions
/// to fetch, the count, and whether the limit cut the result.
struct Picked {
    kvs: Vec<(Bytes, Revision)>,
    count: u64,
    more: bool,
}

/// Finds the latest version at or below `read_rev` of every key in the range (the
/// transaction's own revisions included with `overlay`), honouring limit and count.
fn pick_latest(
    index: &KeyIndex,
    overlay: Option<&Overlay>,
    read_rev: i64,
    key: &[u8],
    range_end: &[u8],
    opts: &RangeOptions,
) -> Result<Picked, MvccError> {
    let mut picked = Picked { kvs: Vec::new(), count: 0, more: false };
    let Some(bounds) = key_bounds(key, range_end) else {
        return Ok(picked);
    };
    let below = below_read(read_rev);
    if range_end.is_empty() {
        // One key: a map lookup, not a range walk.
        let added = overlay.map_or(&[][..], |o| o.added(key));
        let (stored, base) = index.entry(key).map_or((None, &[][..]), |(k, b)| (Some(k), b));
        if let Some(latest) = latest_of(base, added, below)
            && !latest.tombstone
        {
            picked.count = 1;
            if !opts.count_only {
                // The index's copy of the key is shared, not copied.
                let k = stored.cloned().unwrap_or_else(|| Bytes::copy_from_slice(key));
                picked.kvs.push((k, latest.rev()));
            }
        }
        return Ok(picked);
    }
    index.walk(overlay, bounds, &mut |k, base, added| {
        match latest_of(base, added, below) {
            Some(latest) if !latest.tombstone => {
                picked.count += 1;
                if opts.count_only {
                    return Ok(true);
                }
                if opts.limit == 0 || (picked.kvs.len() as u64) < opts.limit {
                    picked.kvs.push((k.clone(), latest.rev()));
                } else {
                    picked.more = true;
                }
            }
            _ => {}
        }
        Ok(true)
    })?;
    Ok(picked)
}

/// Fetches the picked versions from `rows` into a result at `current`.
fn fetch<R: Rows + ?Sized>(
    rows: &R,
    picked: Picked,
    current: i64,
    opts: &RangeOptions,
) -> Result<RangeResult, MvccError> {
    let skip_values = opts.keys_only || opts.count_only;
    let mut res = RangeResult {
        kvs: Vec::with_capacity(picked.kvs.len()),
        count: picked.count,
        more: picked.more,
        revision: current,
    };
    for (key, rev) in picked.kvs {
        res.kvs.push(to_kv(load_version(rows, &key, rev, skip_values)?, rev.main));
    }
    Ok(res)
}

/// A range read on a reader's snapshot; `None`: retry (see [`read_consistent`]).
pub(crate) fn range<R: Rows>(
    snap: &Snapshot<'_, R>,
    key: &[u8],
    range_end: &[u8],
    opts: &RangeOptions,
) -> Result<Option<RangeResult>, MvccError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let (current, compacted) = (snap.sys.current_revision, snap.sys.compacted_revision);
    let read_rev = resolve_read_revision(opts.revision, current, compacted)?;
    let picked = {
        let Some(index) = snap.index_at(read_rev) else {
            return Ok(None);
        };
        pick_latest(&index, None, read_rev, key, range_end, opts)?
    };
    fetch(&snap.rows, picked, current, opts).map(Some)
}

/// Changes from `start` on (see `MvccStore::events_since`); `None`: retry.
pub(crate) fn events_since<R: Rows>(
    snap: &Snapshot<'_, R>,
    start: i64,
    key: &[u8],
    range_end: &[u8],
    limit: usize,
) -> Result<Option<EventBatch>, MvccError> {
    let sys = &snap.sys;
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if start <= 0 {
        // etcd's "watch from now": nothing in the past, resume after the current revision.
        return Ok(Some(EventBatch {
            events: Vec::new(),
            next_revision: sys.current_revision + 1,
        }));
    }
    if start < sys.compacted_revision {
        return Err(MvccError::Compacted { requested: start, compacted: sys.compacted_revision });
    }
    let mut batch = EventBatch { events: Vec::new(), next_revision: sys.current_revision + 1 };
    if start > sys.current_revision {
        batch.next_revision = start;
        return Ok(Some(batch));
    }
    let mut cursor = rev_key(Revision { main: start, sub: 0 }).to_vec();
    let mut last_main = 0;
    loop {
        let rows = snap.rows.scan(&cursor, REV_END, SCAN_BATCH_ROWS)?;
        let full = rows.len() == SCAN_BATCH_ROWS;
        let mut changes: Vec<(Revision, VersionRecord)> = Vec::new();
        let mut stop_at = None;
        for (row_key, row) in &rows {
            let rev = parse_rev_key(row_key)?;
            if limit > 0 && batch.events.len() + changes.len() >= limit && rev.main != last_main {
                stop_at = Some(rev.main);
                break;
            }
            last_main = rev.main;
            if in_key_range(version_key_of(row)?.0, key, range_end) {
                changes.push((rev, VersionRecord::decode(row, false)?));
            }
        }
        // Each change's prev_kv is the key's version just below it. Every change is at or
        // above `start`, so an index compacted at most to `start` has it.
        let prevs: Vec<Option<IndexedRev>> = {
            let Some(index) = snap.index_at(start) else {
                return Ok(None);
            };
            changes.iter().map(|(rev, rec)| index.latest_below(&rec.key, *rev)).collect()
        };
        for ((rev, rec), prev) in changes.into_iter().zip(prevs) {
            let prev_kv = match prev {
                Some(p) if !p.tombstone => {
                    Some(to_kv(load_version(&snap.rows, &rec.key, p.rev(), false)?, p.main))
                }
                _ => None,
            };
            let (kind, kv) = if rec.tombstone {
                let kv = KeyValue { key: rec.key, mod_revision: rev.main, ..KeyValue::default() };
                (EventKind::Delete, kv)
            } else {
                (EventKind::Put, to_kv(rec, rev.main))
            };
            batch.events.push(Event { kind, kv, prev_kv });
        }
        if let Some(main) = stop_at {
            batch.next_revision = main;
            return Ok(Some(batch));
        }
        match rows.last() {
            Some((last, _)) if full => {
                cursor = last.clone();
                cursor.push(0);
            }
            _ => break,
        }
    }
    Ok(Some(batch))
}

/// A compaction a command asked for, carried out when the command is sealed: until then it
/// can still be rolled back for free, and reads see its effect already (they check the
/// compacted revision, and history below it answers nothing they may ask).
#[derive(Clone, Copy, Debug)]
struct PendingCompaction {
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
    /// (oldest first). Version rows need no such record: every row the command wrote is
    /// keyed by its revision, so a rollback finds them by one scan.
    meta_undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The current command's compaction, done at its seal.
    pending_compaction: Option<PendingCompaction>,
    /// The transaction's changes to the key index, published at commit.
    overlay: Overlay,
    /// Whether put events carry the version they replaced (see `MvccTxn::put`).
    pub events_carry_prev_kv: bool,
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
            overlay: Overlay::default(),
            events_carry_prev_kv: true,
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

/// The latest version of `key` as the transaction sees it (its own changes included).
/// The transaction is the only writer, so the committed index does not move under it, and
/// versions a compaction in it removed are never the latest (tombstones aside, which need
/// no row).
fn txn_latest(index: &SharedIndex, st: &TxnState, key: &[u8]) -> Option<(IndexedRev, LiveFields)> {
    st.overlay.latest(key).or_else(|| index.read().latest(key))
}

fn write_version<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
    rev: Revision,
    rec: &VersionRecord,
) -> Result<(), MvccError> {
    let row_key = rev_key(rev);
    let row = rec.encode();
    rows.put(&row_key, &row)?;
    st.overlay.add(&rec.key, IndexedRev::new(rev, rec.tombstone), LiveFields::of(rec));
    st.sys.version_count += 1;
    st.sys.approx_bytes += row_cost(row_key.len(), row.len());
    Ok(())
}

/// A range read inside a transaction: sees its own changes.
pub(crate) fn txn_range<R: Rows + ?Sized>(
    rows: &R,
    index: &SharedIndex,
    st: &TxnState,
    key: &[u8],
    range_end: &[u8],
    opts: &RangeOptions,
) -> Result<RangeResult, MvccError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let current = st.visible_revision();
    let read_rev = resolve_read_revision(opts.revision, current, st.sys.compacted_revision)?;
    let picked = pick_latest(&index.read(), Some(&st.overlay), read_rev, key, range_end, opts)?;
    fetch(rows, picked, current, opts)
}

/// Puts `value` under `key`.
pub(crate) fn put<W: RowsMut + ?Sized>(
    rows: &mut W,
    index: &SharedIndex,
    st: &mut TxnState,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<Option<Replaced>, MvccError> {
    if key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let key = Bytes::copy_from_slice(key);
    // The index entry has what the new version derives from the old one; the old row is
    // read only when the events must carry it.
    let prev = txn_latest(index, st, &key).filter(|(p, _)| !p.tombstone);
    let prev_kv = match prev {
        Some((p, _)) if st.events_carry_prev_kv => {
            Some(to_kv(load_version(&*rows, &key, p.rev(), false)?, p.main))
        }
        _ => None,
    };
    let rev = st.next_revision()?;
    let rec = VersionRecord {
        key,
        tombstone: false,
        create_revision: prev.map_or(rev.main, |(_, f)| f.create_revision),
        version: prev.map_or(1, |(_, f)| f.version + 1),
        lease,
        value: Bytes::copy_from_slice(value),
    };
    write_version(rows, st, rev, &rec)?;
    if prev.is_none() {
        st.sys.key_count += 1;
    }
    st.events.push(Event { kind: EventKind::Put, kv: to_kv(rec, rev.main), prev_kv });
    Ok(prev.map(|(p, f)| Replaced {
        mod_revision: p.main,
        create_revision: f.create_revision,
        version: f.version,
        lease: f.lease,
    }))
}

/// Deletes every live key in the range.
pub(crate) fn delete_range<W: RowsMut + ?Sized>(
    rows: &mut W,
    index: &SharedIndex,
    st: &mut TxnState,
    key: &[u8],
    range_end: &[u8],
) -> Result<Vec<KeyValue>, MvccError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let read_rev = i64::MAX - 1;
    let picked = pick_latest(
        &index.read(),
        Some(&st.overlay),
        read_rev,
        key,
        range_end,
        &RangeOptions::default(),
    )?;
    let mut live = Vec::with_capacity(picked.kvs.len());
    for (k, rev) in picked.kvs {
        live.push(to_kv(load_version(&*rows, &k, rev, false)?, rev.main));
    }
    for kv in &live {
        let rev = st.next_revision()?;
        write_version(rows, st, rev, &VersionRecord::tombstone(kv.key.clone()))?;
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
    st.pending_compaction = Some(PendingCompaction { until: revision });
    st.sys.compacted_revision = revision;
    Ok(())
}

/// The revisions of one key a compaction at `until` drops, given its committed revisions
/// and those the transaction added: every one below `until` but the latest, which stays
/// unless it is a tombstone.
fn compaction_drops(base: &[IndexedRev], added: &[IndexedRev], until: i64) -> Vec<Revision> {
    let nb = base.partition_point(|r| r.main < until);
    let na = added.partition_point(|r| r.main < until);
    let last = match na.checked_sub(1) {
        Some(i) => added.get(i),
        None => nb.checked_sub(1).and_then(|i| base.get(i)),
    };
    let drop = match last {
        None => 0,
        Some(last) if last.tombstone => nb + na,
        Some(_) => nb + na - 1,
    };
    base[..nb].iter().chain(&added[..na]).take(drop).map(|r| r.rev()).collect()
}

/// Removes the rows a compaction at `p.until` drops, found by one walk of the key index
/// (like etcd's treeIndex compaction: every key is looked at, a binary search each). The
/// index itself changes only after the commit.
fn compact_rows<W: RowsMut + ?Sized>(
    rows: &mut W,
    index: &SharedIndex,
    st: &mut TxnState,
    p: PendingCompaction,
) -> Result<(), MvccError> {
    let mut drops: Vec<(Bytes, Vec<Revision>)> = Vec::new();
    index.read().walk(
        Some(&st.overlay),
        (Bound::Unbounded, Bound::Unbounded),
        &mut |key, base, added| {
            let revs = compaction_drops(base, added, p.until);
            if !revs.is_empty() {
                drops.push((key.clone(), revs));
            }
            Ok(true)
        },
    )?;
    let mut keys = BTreeSet::new();
    for (key, revs) in drops {
        for rev in revs {
            // An earlier compaction in this transaction may have removed the row already
            // (the committed index still lists it until commit): count each row once.
            if let Some(len) = rows.remove(&rev_key(rev))? {
                st.sys.version_count = st.sys.version_count.saturating_sub(1);
                let cost = row_cost(1 + codec::REV_BYTES, len);
                st.sys.approx_bytes = st.sys.approx_bytes.saturating_sub(cost);
            }
        }
        keys.insert(key);
    }
    st.overlay.record_compaction(keys, p.until);
    Ok(())
}

/// Closes the current command: carries out its compaction, and if it changed data, moves the
/// revision on. Returns the command's revision (the store's revision after it) and events.
pub(crate) fn seal<W: RowsMut + ?Sized>(
    rows: &mut W,
    index: &SharedIndex,
    st: &mut TxnState,
) -> Result<SealResult, MvccError> {
    if let Some(pending) = st.pending_compaction.take() {
        compact_rows(rows, index, st, pending)?;
    }
    if !st.events.is_empty() {
        st.sys.current_revision += 1;
    }
    st.next_sub = 0;
    st.meta_undo.clear();
    st.overlay.seal();
    st.sealed_sys = st.sys;
    Ok(SealResult { revision: st.sys.current_revision, events: std::mem::take(&mut st.events) })
}

/// Undoes every change of the current command: its version rows and index entries, its
/// metadata changes, its compaction and its counters.
pub(crate) fn rollback_to_seal<W: RowsMut + ?Sized>(
    rows: &mut W,
    st: &mut TxnState,
) -> Result<(), MvccError> {
    if st.next_sub > 0 {
        // Every version the command wrote is keyed by a revision of the command.
        let lo = rev_key(Revision { main: st.revision(), sub: 0 });
        let hi = rev_key(Revision { main: st.revision().saturating_add(1), sub: 0 });
        loop {
            let batch = rows.scan(&lo, &hi, SCAN_BATCH_ROWS)?;
            if batch.is_empty() {
                break;
            }
            for (row_key, _) in &batch {
                rows.remove(row_key)?;
            }
        }
        st.overlay.rollback(st.revision());
    }
    // Newest first, so a row changed twice ends with what it held before the command.
    for (key, old) in std::mem::take(&mut st.meta_undo).into_iter().rev() {
        match old {
            Some(value) => rows.put(&key, &value)?,
            None => {
                rows.remove(&key)?;
            }
        }
    }
    st.sys = st.sealed_sys;
    st.next_sub = 0;
    st.events.clear();
    st.pending_compaction = None;
    Ok(())
}

/// What [`commit`] hands back to the backend, which commits the engine transaction with
/// [`publish`].
pub(crate) struct Committed {
    /// The outcome for the caller.
    pub result: CommitResult,
    /// The counters written.
    pub sys: Sys,
    /// The index changes to publish around the engine commit.
    pub overlay: Overlay,
}

/// Writes the counters and returns the outcome; the caller commits the engine transaction
/// through [`publish`]. The changes after the last seal are sealed as one more command.
pub(crate) fn commit<W: RowsMut + ?Sized>(
    rows: &mut W,
    index: &SharedIndex,
    mut st: TxnState,
    applied_index: LogIndex,
) -> Result<Committed, MvccError> {
    if applied_index < st.sys.applied_index {
        return Err(MvccError::AppliedIndexRegression {
            current: st.sys.applied_index,
            given: applied_index,
        });
    }
    let last = seal(rows, index, &mut st)?;
    let mut sys = st.sys;
    sys.applied_index = applied_index;
    rows.put(SYS_KEY, &sys.encode())?;
    Ok(Committed {
        result: CommitResult { revision: last.revision, events: last.events },
        sys,
        overlay: st.overlay,
    })
}

/// Runs the engine commit `engine_commit` with the index changes around it: the new
/// revisions go into the index before it (readers cannot see them until the commit, their
/// snapshots are older), and out again if it fails; a compaction's removals are applied only
/// after it succeeded (until then readers may still need them). The caller must still be the
/// only writer until this returns.
pub(crate) fn publish(
    index: &SharedIndex,
    overlay: &Overlay,
    engine_commit: impl FnOnce() -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let appended = (!overlay.is_empty()).then(|| index.write().append(overlay));
    if let Err(e) = engine_commit() {
        if let Some(appended) = appended {
            index.write().unappend(overlay, appended);
        }
        return Err(e);
    }
    if let Some((keys, revision)) = overlay.compaction() {
        index.write().compact(keys, revision);
    }
    Ok(())
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

/// A point-in-time image read from a frozen view of the rows: the metadata rows by a scan,
/// then the versions by point lookups in the (key, revision) order copied from the key index
/// when the image was taken.
pub(crate) struct RowImage<R: Rows> {
    rows: R,
    info: ImageInfo,
    /// Where the metadata scan goes on; `None` once it is done.
    meta_cursor: Option<Vec<u8>>,
    /// Versions still to read, in image order.
    versions: std::vec::IntoIter<(Bytes, Revision)>,
    /// Records read but not yet handed out.
    pending: VecDeque<ImageRecord>,
}

/// Takes a point-in-time image: opens a snapshot and copies the versions it holds, in key
/// order, out of the index under its read lock (see [`read_consistent`]; the index must not
/// be compacted past the snapshot, which would leave versions out).
pub(crate) fn image<R: Rows>(
    index: &SharedIndex,
    open: impl FnMut() -> Result<(R, Sys), MvccError>,
) -> Result<RowImage<R>, MvccError> {
    read_consistent(index, open, |snap| {
        let versions = {
            let Some(index) = snap.index_at(snap.sys.compacted_revision) else {
                return Ok(None);
            };
            index.versions_up_to(snap.sys.current_revision)
        };
        Ok(Some(RowImage {
            info: image_info(&snap.sys),
            rows: snap.rows,
            meta_cursor: Some(vec![codec::META_PREFIX]),
            versions: versions.into_iter(),
            pending: VecDeque::new(),
        }))
    })
}

impl<R: Rows> RowImage<R> {
    /// Reads the next records into `pending`, if any remain.
    fn refill(&mut self) -> Result<(), MvccError> {
        while self.pending.is_empty() {
            if let Some(cursor) = &self.meta_cursor {
                let batch = self.rows.scan(cursor, codec::META_END, SCAN_BATCH_ROWS)?;
                self.meta_cursor = match batch.last() {
                    Some((last, _)) if batch.len() == SCAN_BATCH_ROWS => {
                        let mut next = last.clone();
                        next.push(0);
                        Some(next)
                    }
                    _ => None,
                };
                for (row_key, row) in batch {
                    self.pending.push_back(ImageRecord::Meta {
                        name: Bytes::copy_from_slice(meta_name(&row_key)?),
                        value: Bytes::from(row),
                    });
                }
                continue;
            }
            let Some((key, revision)) = self.versions.next() else {
                return Ok(());
            };
            let Some(row) = self.rows.get(&rev_key(revision))? else {
                // A compaction committed in the snapshot, its removals not yet applied to
                // the index when the image copied it: the version is not in the image.
                if revision.main < self.info.compacted_revision {
                    continue;
                }
                return Err(MvccError::Corrupt(format!(
                    "the key index names version {}.{} of a key, but there is no such row",
                    revision.main, revision.sub
                )));
            };
            let rec = VersionRecord::decode(&row, false)?;
            if rec.key != key {
                return Err(MvccError::Corrupt(format!(
                    "the row of version {}.{} holds another key than the key index says",
                    revision.main, revision.sub
                )));
            }
            self.pending.push_back(ImageRecord::Version {
                key: rec.key,
                revision,
                tombstone: rec.tombstone,
                create_revision: rec.create_revision,
                version: rec.version,
                lease: rec.lease,
                value: rec.value,
            });
        }
        Ok(())
    }
}

/// What a record counts against `next_records`' byte budget: the size of the row(s) it was
/// in layout 1 (escaped key + revision as row key; flags, three counters and value as row
/// value). Kept so that snapshot chunk boundaries, and so a snapshot's bytes, are the same
/// whatever the row layout (the snapshot format fixture checks them byte for byte).
fn record_budget_bytes(record: &ImageRecord) -> usize {
    match record {
        ImageRecord::Meta { name, value } => 1 + name.len() + value.len(),
        ImageRecord::Version { key, tombstone, value, .. } => {
            let escaped = key.len() + key.iter().filter(|&&b| b == 0).count() + 2;
            let row = if *tombstone { 1 } else { 25 + value.len() };
            1 + escaped + codec::REV_BYTES + row
        }
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
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            bytes += record_budget_bytes(&record);
            out.push(record);
        }
        self.refill()?;
        Ok(!self.pending.is_empty())
    }
}

fn invalid(reason: impl Into<String>) -> MvccError {
    MvccError::InvalidImage(reason.into())
}

/// Fills `rows`, which must be empty, from `source`, checking that the image is consistent.
/// Returns the counters it wrote and the key index of the new contents.
pub(crate) fn restore_rows<W: RowsMut + ?Sized>(
    rows: &mut W,
    source: &mut dyn ImageSource,
) -> Result<(Sys, KeyIndex), MvccError> {
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
    let mut index = KeyIndex::new(info.compacted_revision);
    let mut last_meta: Option<Bytes> = None;
    let mut last_version: Option<(Bytes, Revision)> = None;
    let mut batch = Vec::new();
    loop {
        let more = source.next_records(1 << 20, &mut batch)?;
        for record in batch.drain(..) {
            match record {
                ImageRecord::Meta { name, value } => {
                    if last_version.is_some() {
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
                    if last_version
                        .as_ref()
                        .is_some_and(|(k, r)| (k.as_ref(), *r) >= (key.as_ref(), revision))
                    {
                        return Err(invalid("version records are out of order"));
                    }
                    let row_key = rev_key(revision);
                    if rows.get(&row_key)?.is_some() {
                        return Err(invalid(format!(
                            "two versions share revision {}.{}",
                            revision.main, revision.sub
                        )));
                    }
                    let rec = if tombstone {
                        VersionRecord::tombstone(key.clone())
                    } else {
                        VersionRecord {
                            key: key.clone(),
                            tombstone,
                            create_revision,
                            version,
                            lease,
                            value,
                        }
                    };
                    let row = rec.encode();
                    rows.put(&row_key, &row)?;
                    index
                        .push(&key, IndexedRev::new(revision, rec.tombstone), LiveFields::of(&rec))
                        .map_err(|_| invalid("version records are out of order"))?;
                    sys.version_count += 1;
                    sys.approx_bytes += row_cost(row_key.len(), row.len());
                    last_version = Some((key, revision));
                }
            }
        }
        if !more {
            break;
        }
    }
    sys.key_count = index.live_key_count();
    if sys.key_count != info.key_count || sys.version_count != info.version_count {
        return Err(invalid(format!(
            "the header promises {} keys in {} versions, the records hold {} in {}",
            info.key_count, info.version_count, sys.key_count, sys.version_count
        )));
    }
    rows.put(SYS_KEY, &sys.encode())?;
    Ok((sys, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64, sub: u32) -> IndexedRev {
        IndexedRev::new(Revision { main, sub }, false)
    }

    fn all(index: &SharedIndex) -> Vec<(Bytes, Revision)> {
        index.read().versions_up_to(i64::MAX)
    }

    /// New revisions are in the index while the engine commits (before readers can see the
    /// commit), out again if it fails; a compaction applies only after a successful commit.
    #[test]
    fn a_failed_engine_commit_leaves_the_index_as_before() {
        let mut base = KeyIndex::new(0);
        let fields = |version| LiveFields { create_revision: 2, version, lease: 0 };
        for (key, r, v) in [(&b"a"[..], rev(2, 0), 1), (b"a", rev(3, 0), 2), (b"b", rev(3, 1), 1)] {
            base.push(key, r, fields(v)).expect("push");
        }
        let index = SharedIndex::new(base);
        let before = all(&index);
        let (a, c) = (Bytes::from_static(b"a"), Bytes::from_static(b"c"));
        let mut overlay = Overlay::default();
        overlay.add(&a, rev(4, 0), fields(3));
        overlay.add(&c, rev(4, 1), fields(1));
        overlay.record_compaction([a.clone()].into_iter().collect(), 4);
        let failed = publish(&index, &overlay, || {
            let top = Revision { main: i64::MAX, sub: 0 };
            assert_eq!(index.read().latest_below(b"c", top), Some(rev(4, 1)));
            Err(MvccError::Corrupt("injected engine failure".into()))
        });
        assert!(matches!(failed, Err(MvccError::Corrupt(_))));
        assert_eq!(all(&index), before);
        assert_eq!(index.read().latest(b"a"), Some((rev(3, 0), fields(2))), "fields restored");
        assert_eq!(index.read().compacted(), 0);
        publish(&index, &overlay, || Ok(())).expect("publish");
        let revision = |main, sub| Revision { main, sub };
        assert_eq!(
            all(&index),
            vec![
                (a.clone(), revision(3, 0)),
                (a, revision(4, 0)),
                (Bytes::from_static(b"b"), revision(3, 1)),
                (c, revision(4, 1)),
            ]
        );
        assert_eq!(index.read().compacted(), 4);
    }
}
