//! [`MemStore`]: the MVCC store in memory, for the simulator and unit tests.
//!
//! Rules this backend keeps:
//! - Deterministic: a `BTreeMap`, no hashing, no clock, no threads.
//! - A write transaction holds the store's write lock and changes the map in place, keeping
//!   an undo log; dropping it without commit rolls the map back. Readers wait for it.
//! - The key index sits beside the map (lock order: map, then index); it changes only at
//!   commit, while the map's write lock is held, so readers here always see the two agree.
//! - Images share the map (`Arc`): taking one costs nothing, and the next write transaction
//!   copies the map once if the image is still alive (copy on write).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{RwLock, RwLockWriteGuard};
use quorumkv_core::LogIndex;

use super::codec::Sys;
use super::engine::{self, Row, RowImage, Rows, RowsMut, TxnState};
use super::index::SharedIndex;
use super::{
    CommitResult, EventBatch, ImageInfo, ImageRecord, ImageSource, KeyValue, MvccError, MvccStore,
    MvccTxn, RangeOptions, RangeResult, Replaced, SealResult, StoreStats,
};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Borrowed bounds of a byte range.
type ByteBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn bounds<'a>(lo: &'a [u8], hi: &'a [u8]) -> Option<ByteBounds<'a>> {
    // BTreeMap::range panics on an inverted range; an empty one yields nothing.
    (lo < hi).then_some((Bound::Included(lo), Bound::Excluded(hi)))
}

impl Rows for Map {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        Ok(bounds(lo, hi)
            .map(|b| {
                self.range::<[u8], _>(b)
                    .take(rows_max)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Rows for Arc<Map> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        Rows::get(&**self, key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        (**self).scan(lo, hi, rows_max)
    }
}

impl RowsMut for Map {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        self.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<Option<usize>, MvccError> {
        Ok(BTreeMap::remove(self, key).map(|old| old.len()))
    }
}

/// The map of a transaction, recording what each first change of a row overwrote.
struct UndoRows<'a> {
    map: &'a mut Map,
    undo: &'a mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Rows for UndoRows<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        Rows::get(&*self.map, key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        self.map.scan(lo, hi, rows_max)
    }
}

impl RowsMut for UndoRows<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        let old = self.map.insert(key.to_vec(), value.to_vec());
        self.undo.push((key.to_vec(), old));
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<Option<usize>, MvccError> {
        let old = self.map.remove(key);
        let len = old.as_ref().map(Vec::len);
        if let Some(old) = old {
            self.undo.push((key.to_vec(), Some(old)));
        }
        Ok(len)
    }
}

struct Inner {
    rows: Arc<Map>,
    sys: Sys,
}

/// The MVCC store in memory. Cheap to create; everything is lost when it is dropped.
pub struct MemStore {
    inner: RwLock<Inner>,
    index: SharedIndex,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("MemStore")
            .field("rows", &inner.rows.len())
            .field("sys", &inner.sys)
            .finish()
    }
}

impl MemStore {
    /// An empty store at revision 1, applied index 0.
    pub fn new() -> Self {
        Self {
            inner: RwLock::new(Inner { rows: Arc::new(Map::new()), sys: Sys::default() }),
            index: SharedIndex::default(),
        }
    }
}

/// A point-in-time image of a [`MemStore`] (shares the map until the next write).
pub struct MemImage(RowImage<Arc<Map>>);

impl ImageSource for MemImage {
    fn info(&self) -> ImageInfo {
        self.0.info()
    }

    fn next_records(
        &mut self,
        bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError> {
        self.0.next_records(bytes_max, out)
    }
}

/// A write transaction on a [`MemStore`].
pub struct MemTxn<'a> {
    guard: RwLockWriteGuard<'a, Inner>,
    index: &'a SharedIndex,
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    state: Option<TxnState>,
}

impl MemTxn<'_> {
    fn parts(&mut self) -> Result<(UndoRows<'_>, &SharedIndex, &mut TxnState), MvccError> {
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| MvccError::Corrupt("transaction used after commit".into()))?;
        let rows = UndoRows { map: Arc::make_mut(&mut self.guard.rows), undo: &mut self.undo };
        Ok((rows, self.index, state))
    }

    fn state(&self) -> Result<&TxnState, MvccError> {
        self.state
            .as_ref()
            .ok_or_else(|| MvccError::Corrupt("transaction used after commit".into()))
    }
}

impl Drop for MemTxn<'_> {
    fn drop(&mut self) {
        if self.undo.is_empty() {
            return;
        }
        // Not committed (or the commit failed): put back what each change overwrote, newest
        // first, so a row changed twice ends with its original value.
        let map = Arc::make_mut(&mut self.guard.rows);
        for (key, old) in self.undo.drain(..).rev() {
            match old {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
    }
}

impl MvccTxn for MemTxn<'_> {
    fn revision(&self) -> i64 {
        self.state.as_ref().map_or(0, TxnState::revision)
    }

    fn compacted_revision(&self) -> i64 {
        self.state.as_ref().map_or(0, TxnState::compacted_revision)
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        engine::txn_range(&*self.guard.rows, self.index, self.state()?, key, range_end, opts)
    }

    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<Replaced>, MvccError> {
        let (mut rows, index, state) = self.parts()?;
        engine::put(&mut rows, index, state, key, value, lease)
    }

    fn set_events_carry_prev_kv(&mut self, on: bool) {
        if let Some(state) = self.state.as_mut() {
            state.events_carry_prev_kv = on;
        }
    }

    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        let (mut rows, index, state) = self.parts()?;
        engine::delete_range(&mut rows, index, state, key, range_end)
    }

    fn set_meta(&mut self, name: &[u8], value: &[u8]) -> Result<(), MvccError> {
        let (mut rows, _, state) = self.parts()?;
        engine::set_meta(&mut rows, state, name, value)
    }

    fn delete_meta(&mut self, name: &[u8]) -> Result<(), MvccError> {
        let (mut rows, _, state) = self.parts()?;
        engine::delete_meta(&mut rows, state, name)
    }

    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError> {
        engine::get_meta(&*self.guard.rows, name)
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        // Only counters change now (the rows go at the seal): no need to touch the map.
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| MvccError::Corrupt("transaction used after commit".into()))?;
        engine::compact(state, revision)
    }

    fn seal(&mut self) -> Result<SealResult, MvccError> {
        let (mut rows, index, state) = self.parts()?;
        engine::seal(&mut rows, index, state)
    }

    fn rollback_to_seal(&mut self) -> Result<(), MvccError> {
        let (mut rows, _, state) = self.parts()?;
        engine::rollback_to_seal(&mut rows, state)
    }

    fn commit(mut self, applied_index: LogIndex) -> Result<CommitResult, MvccError> {
        let state = self
            .state
            .take()
            .ok_or_else(|| MvccError::Corrupt("transaction committed twice".into()))?;
        let mut rows = UndoRows { map: Arc::make_mut(&mut self.guard.rows), undo: &mut self.undo };
        let committed = engine::commit(&mut rows, self.index, state, applied_index)?;
        let (guard, undo) = (&mut self.guard, &mut self.undo);
        engine::publish(self.index, &committed.overlay, || {
            // The map holds the changes already; committing is forgetting how to undo them.
            guard.sys = committed.sys;
            undo.clear();
            Ok(())
        })?;
        Ok(committed.result)
    }
}

impl MvccStore for MemStore {
    type Txn<'a> = MemTxn<'a>;
    type Image = MemImage;

    fn write_txn(&self) -> Result<MemTxn<'_>, MvccError> {
        let guard = self.inner.write();
        let state = TxnState::new(guard.sys);
        Ok(MemTxn { guard, index: &self.index, undo: Vec::new(), state: Some(state) })
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let inner = self.inner.read();
        engine::read_consistent(
            &self.index,
            || Ok((&*inner.rows, inner.sys)),
            |snap| engine::range(&snap, key, range_end, opts),
        )
    }

    fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        limit: usize,
    ) -> Result<EventBatch, MvccError> {
        let inner = self.inner.read();
        engine::read_consistent(
            &self.index,
            || Ok((&*inner.rows, inner.sys)),
            |snap| engine::events_since(&snap, start_revision, key, range_end, limit),
        )
    }

    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError> {
        engine::get_meta(&*self.inner.read().rows, name)
    }

    fn current_revision(&self) -> i64 {
        self.inner.read().sys.current_revision
    }

    fn compacted_revision(&self) -> i64 {
        self.inner.read().sys.compacted_revision
    }

    fn applied_index(&self) -> LogIndex {
        self.inner.read().sys.applied_index
    }

    fn stats(&self) -> Result<StoreStats, MvccError> {
        let sys = self.inner.read().sys;
        Ok(StoreStats {
            key_count: sys.key_count,
            version_count: sys.version_count,
            approx_bytes: sys.approx_bytes,
            file_bytes: None,
            revision: sys.current_revision,
            compacted_revision: sys.compacted_revision,
            applied_index: sys.applied_index,
        })
    }

    fn sync(&self) -> Result<(), MvccError> {
        Ok(())
    }

    fn image(&self) -> Result<Self::Image, MvccError> {
        let inner = self.inner.read();
        let image = engine::image(&self.index, || Ok((Arc::clone(&inner.rows), inner.sys)))?;
        Ok(MemImage(image))
    }

    fn restore(&self, source: &mut dyn ImageSource) -> Result<(), MvccError> {
        // Build the new map aside and swap it in: on error the store is untouched.
        let mut map = Map::new();
        let (sys, index) = engine::restore_rows(&mut map, source)?;
        let mut inner = self.inner.write();
        inner.rows = Arc::new(map);
        inner.sys = sys;
        self.index.replace(&mut self.index.write(), index);
        Ok(())
    }
}
