//! [`RedbStore`]: the MVCC store on disk, in one redb table, with file I/O through the
//! [`Disk`] trait (so the simulator can run it over `SimDisk` and crash it).
//!
//! Rules this backend keeps:
//! - Data, metadata, counters and the applied index live in one table and change in one redb
//!   write transaction: whatever redb recovers after a crash is one whole committed
//!   transaction, so the applied index always describes the data next to it.
//! - With [`CommitDurability::Deferred`] commits do not fsync (the write-ahead log already
//!   holds the entries); every `sync_every_commits`-th commit and every [`MvccStore::sync`]
//!   does ([`CommitDurability::ON_SYNC_ONLY`]: only `sync`), and after a crash the store is
//!   at the last synced commit or a later one, never between two. `restore` always syncs.
//!   An unsynced commit cannot overwrite a page the last synced state uses (redb frees such
//!   pages only at the next synced commit), which is what makes the crash rule hold; the
//!   price is that the file can grow between syncs by the pages rewritten since.
//! - Reads and images use redb read transactions: they see one committed state and never wait
//!   for a writer (only, for the time of a lookup, for the key index's lock, which a writer
//!   holds briefly at commit; see `engine::read_consistent`).
//! - The key index is rebuilt on open by one scan of the version rows, checked against the
//!   counters. Writers are serialized by a mutex held for a transaction's whole life (redb
//!   serializes them too, but the index must be cleaned up after a failed commit before the
//!   next writer can reuse its revisions).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use quorumkv_core::LogIndex;
use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, StorageBackend,
    Table, TableDefinition, WriteTransaction,
};

use super::codec::Sys;
use super::engine::{self, Row, RowImage, Rows, RowsMut, TxnState};
use super::index::SharedIndex;
use super::{
    CommitResult, EventBatch, ImageInfo, ImageRecord, ImageSource, KeyValue, MvccError, MvccStore,
    MvccTxn, RangeOptions, RangeResult, Replaced, SealResult, StoreStats,
};
use crate::disk::{Disk, DiskFile, OpenMode};

/// The one table every row lives in.
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quorumkv_mvcc");

/// When a commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitDurability {
    /// Every commit is fsynced before it returns.
    Immediate,
    /// Commits are not fsynced, except every `sync_every_commits`-th one (0 = only on
    /// [`MvccStore::sync`]). Right when the write-ahead log is fsynced and replayed from
    /// the store's applied index on restart.
    Deferred {
        /// Fsync every this many commits; 0 = only when asked.
        sync_every_commits: u32,
    },
}

impl CommitDurability {
    /// Commits never fsync; only [`MvccStore::sync`] (and `restore`) do. The mode of a node
    /// whose write-ahead log is fsynced and is the source of durability: the store only
    /// bounds how much of the log a restart replays, and the node syncs it when it takes a
    /// snapshot (before the log below the snapshot may go). After a crash the store is at the
    /// last sync or a later commit, never between two commits. The same as
    /// `Deferred { sync_every_commits: 0 }`, named for the reader.
    pub const ON_SYNC_ONLY: CommitDurability = CommitDurability::Deferred { sync_every_commits: 0 };
}

/// Settings of a [`RedbStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// When commits reach the disk.
    pub durability: CommitDurability,
    /// Memory redb may use to cache pages, in bytes.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durability: CommitDurability::Deferred { sync_every_commits: 64 },
            cache_bytes: 64 << 20,
        }
    }
}

fn engine_err(e: impl std::error::Error + Send + Sync + 'static) -> MvccError {
    MvccError::Engine(Box::new(e))
}

/// A redb storage backend over a [`DiskFile`].
struct DiskBackend {
    file: Arc<Mutex<Box<dyn DiskFile>>>,
}

impl fmt::Debug for DiskBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DiskBackend")
    }
}

impl StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.lock().len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.lock().read_exact_at(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.lock().truncate(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.lock().sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.lock().write_at(offset, data)
    }
}

/// A row as a redb range yields it.
type RedbRow<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);

/// The table type a read transaction opens.
type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Rows of a redb table (read side).
struct ReadRows<T>(T);

fn collect_row(
    item: Result<RedbRow<'_>, redb::StorageError>,
) -> Result<(Vec<u8>, Vec<u8>), MvccError> {
    let (k, v) = item.map_err(engine_err)?;
    Ok((k.value().to_vec(), v.value().to_vec()))
}

fn table_get<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, MvccError> {
    Ok(table.get(key).map_err(engine_err)?.map(|v| v.value().to_vec()))
}

fn table_scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    lo: &[u8],
    hi: &[u8],
    rows_max: usize,
) -> Result<Vec<Row>, MvccError> {
    if lo >= hi {
        return Ok(Vec::new());
    }
    table.range::<&[u8]>(lo..hi).map_err(engine_err)?.take(rows_max).map(collect_row).collect()
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Rows for ReadRows<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        table_get(&self.0, key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        table_scan(&self.0, lo, hi, rows_max)
    }
}

/// Rows of a redb table opened in a write transaction.
struct WriteRows<'a, 't>(&'a mut Table<'t, &'static [u8], &'static [u8]>);

impl Rows for WriteRows<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        table_get(&*self.0, key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        table_scan(&*self.0, lo, hi, rows_max)
    }
}

impl RowsMut for WriteRows<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        self.0.insert(key, value).map_err(engine_err)?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<Option<usize>, MvccError> {
        Ok(self.0.remove(key).map_err(engine_err)?.map(|old| old.value().len()))
    }
}

/// The MVCC store on disk, in a redb database file.
pub struct RedbStore {
    db: Database,
    file: Arc<Mutex<Box<dyn DiskFile>>>,
    options: RedbOptions,
    /// Counters of the last commit, for the cheap getters; reads use their own snapshot.
    sys: Mutex<Sys>,
    /// Deferred commits since the last fsync.
    unsynced_commits: Mutex<u32>,
    /// Key → revisions, derived from the version rows.
    index: SharedIndex,
    /// Held by a write transaction (and a restore) from start to end, index updates included.
    writer: Mutex<()>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("options", &self.options)
            .field("sys", &*self.sys.lock())
            .finish()
    }
}

impl RedbStore {
    /// Opens the store in the file at `path` on `disk`, creating it if missing. A store that
    /// crashed is recovered to its last durable commit (redb repairs its file on open).
    pub fn open(disk: Arc<dyn Disk>, path: &Path, options: RedbOptions) -> Result<Self, MvccError> {
        let existed = disk.exists(path).map_err(engine_err)?;
        let file = disk.open(path, OpenMode::ReadWrite).map_err(engine_err)?;
        if !existed {
            // The new file's name must survive a crash before anything in it matters.
            if let Some(dir) = path.parent() {
                disk.sync_dir(dir).map_err(engine_err)?;
            }
        }
        let file = Arc::new(Mutex::new(file));
        let backend = DiskBackend { file: Arc::clone(&file) };
        let db = Builder::new()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(backend)
            .map_err(engine_err)?;
        // Make sure the table exists, so read transactions can always open it.
        let txn = db.begin_write().map_err(engine_err)?;
        let (sys, index) = {
            let table = txn.open_table(DATA).map_err(engine_err)?;
            let rows = ReadRows(table);
            let sys = engine::load_sys(&rows)?;
            (sys, engine::rebuild_index(&rows, &sys)?)
        };
        txn.commit().map_err(engine_err)?;
        Ok(Self {
            db,
            file,
            options,
            sys: Mutex::new(sys),
            unsynced_commits: Mutex::new(0),
            index: SharedIndex::new(index),
            writer: Mutex::new(()),
        })
    }

    fn read_table(&self) -> Result<ReadRows<ReadTable>, MvccError> {
        let txn = self.db.begin_read().map_err(engine_err)?;
        let table = txn.open_table(DATA).map_err(engine_err)?;
        Ok(ReadRows(table))
    }

    /// A read snapshot with its counters.
    fn snapshot(&self) -> Result<(ReadRows<ReadTable>, Sys), MvccError> {
        let rows = self.read_table()?;
        let sys = engine::load_sys(&rows)?;
        Ok((rows, sys))
    }

    /// Commits `txn`, fsyncing it if the durability policy says so now.
    fn finish(&self, mut txn: WriteTransaction, force_sync: bool) -> Result<(), MvccError> {
        let mut unsynced = self.unsynced_commits.lock();
        let sync_now = force_sync
            || match self.options.durability {
                CommitDurability::Immediate => true,
                CommitDurability::Deferred { sync_every_commits } => {
                    sync_every_commits > 0 && *unsynced + 1 >= sync_every_commits
                }
            };
        let durability = if sync_now { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(engine_err)?;
        txn.commit().map_err(engine_err)?;
        *unsynced = if sync_now { 0 } else { *unsynced + 1 };
        Ok(())
    }
}

/// A point-in-time image of a [`RedbStore`]: a redb read transaction, so writers go on.
pub struct RedbImage(RowImage<ReadRows<ReadTable>>);

impl ImageSource for RedbImage {
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

/// The data table, opened in a write transaction.
type DataTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

self_cell::self_cell!(
    /// A redb write transaction with its data table held open for the transaction's life:
    /// opening the table is a lookup in redb's table tree and a lock, which every command
    /// of an applied batch used to pay again (about 5% of a put's server CPU).
    struct OpenTxn {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: DataTable,
    }
);

/// A write transaction on a [`RedbStore`]: a redb write transaction plus the MVCC state.
pub struct RedbTxn<'a> {
    store: &'a RedbStore,
    txn: OpenTxn,
    state: TxnState,
    /// Declared last: released after the redb transaction is gone.
    _writer: MutexGuard<'a, ()>,
}

/// Read-only view of the open data table (for reads inside a write transaction).
struct TableRows<'a, 't>(&'a DataTable<'t>);

impl Rows for TableRows<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        table_get(self.0, key)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], rows_max: usize) -> Result<Vec<Row>, MvccError> {
        table_scan(self.0, lo, hi, rows_max)
    }
}

impl RedbTxn<'_> {
    fn with_rows<R>(
        &mut self,
        f: impl FnOnce(&mut WriteRows<'_, '_>, &SharedIndex, &mut TxnState) -> Result<R, MvccError>,
    ) -> Result<R, MvccError> {
        let (index, state) = (&self.store.index, &mut self.state);
        self.txn.with_dependent_mut(|_, table| f(&mut WriteRows(table), index, state))
    }

    fn read_rows<R>(
        &self,
        f: impl FnOnce(&TableRows<'_, '_>, &SharedIndex, &TxnState) -> Result<R, MvccError>,
    ) -> Result<R, MvccError> {
        self.txn.with_dependent(|_, table| f(&TableRows(table), &self.store.index, &self.state))
    }
}

impl MvccTxn for RedbTxn<'_> {
    fn revision(&self) -> i64 {
        self.state.revision()
    }

    fn compacted_revision(&self) -> i64 {
        self.state.compacted_revision()
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.read_rows(|rows, index, st| engine::txn_range(rows, index, st, key, range_end, opts))
    }

    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<Replaced>, MvccError> {
        self.with_rows(|rows, index, st| engine::put(rows, index, st, key, value, lease))
    }

    fn set_events_carry_prev_kv(&mut self, on: bool) {
        self.state.events_carry_prev_kv = on;
    }

    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        self.with_rows(|rows, index, st| engine::delete_range(rows, index, st, key, range_end))
    }

    fn set_meta(&mut self, name: &[u8], value: &[u8]) -> Result<(), MvccError> {
        self.with_rows(|rows, _, st| engine::set_meta(rows, st, name, value))
    }

    fn delete_meta(&mut self, name: &[u8]) -> Result<(), MvccError> {
        self.with_rows(|rows, _, st| engine::delete_meta(rows, st, name))
    }

    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError> {
        self.read_rows(|rows, _, _| engine::get_meta(rows, name))
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        engine::compact(&mut self.state, revision)
    }

    fn seal(&mut self) -> Result<SealResult, MvccError> {
        self.with_rows(|rows, index, st| engine::seal(rows, index, st))
    }

    fn rollback_to_seal(&mut self) -> Result<(), MvccError> {
        self.with_rows(|rows, _, st| engine::rollback_to_seal(rows, st))
    }

    fn commit(self, applied_index: LogIndex) -> Result<CommitResult, MvccError> {
        let RedbTxn { store, mut txn, state, _writer } = self;
        let committed = txn.with_dependent_mut(|_, table| {
            engine::commit(&mut WriteRows(table), &store.index, state, applied_index)
        })?;
        // The table is closed here, before the commit.
        let txn = txn.into_owner();
        engine::publish(&store.index, &committed.overlay, || store.finish(txn, false))?;
        *store.sys.lock() = committed.sys;
        // `_writer` is released here, after the index is settled either way.
        Ok(committed.result)
    }
}

impl MvccStore for RedbStore {
    type Txn<'a> = RedbTxn<'a>;
    type Image = RedbImage;

    fn write_txn(&self) -> Result<RedbTxn<'_>, MvccError> {
        let writer = self.writer.lock();
        let txn = self.db.begin_write().map_err(engine_err)?;
        let txn = OpenTxn::try_new(txn, |txn| txn.open_table(DATA)).map_err(engine_err)?;
        let sys = txn.with_dependent(|_, table| engine::load_sys(&TableRows(table)))?;
        Ok(RedbTxn { store: self, txn, state: TxnState::new(sys), _writer: writer })
    }

    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        engine::read_consistent(
            &self.index,
            || self.snapshot(),
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
        engine::read_consistent(
            &self.index,
            || self.snapshot(),
            |snap| engine::events_since(&snap, start_revision, key, range_end, limit),
        )
    }

    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError> {
        engine::get_meta(&self.read_table()?, name)
    }

    fn current_revision(&self) -> i64 {
        self.sys.lock().current_revision
    }

    fn compacted_revision(&self) -> i64 {
        self.sys.lock().compacted_revision
    }

    fn applied_index(&self) -> LogIndex {
        self.sys.lock().applied_index
    }

    fn stats(&self) -> Result<StoreStats, MvccError> {
        let sys = *self.sys.lock();
        let file_bytes = self.file.lock().len().map_err(engine_err)?;
        Ok(StoreStats {
            key_count: sys.key_count,
            version_count: sys.version_count,
            approx_bytes: sys.approx_bytes,
            file_bytes: Some(file_bytes),
            revision: sys.current_revision,
            compacted_revision: sys.compacted_revision,
            applied_index: sys.applied_index,
        })
    }

    fn sync(&self) -> Result<(), MvccError> {
        // An empty transaction committed with immediate durability persists every earlier
        // non-durable commit along with it.
        let txn = self.db.begin_write().map_err(engine_err)?;
        self.finish(txn, true)
    }

    fn image(&self) -> Result<Self::Image, MvccError> {
        Ok(RedbImage(engine::image(&self.index, || self.snapshot())?))
    }

    fn restore(&self, source: &mut dyn ImageSource) -> Result<(), MvccError> {
        let _writer = self.writer.lock();
        let txn = self.db.begin_write().map_err(engine_err)?;
        txn.delete_table(DATA).map_err(engine_err)?;
        let (sys, new_index) = {
            let mut table = txn.open_table(DATA).map_err(engine_err)?;
            engine::restore_rows(&mut WriteRows(&mut table), source)?
        };
        // Dropping `txn` on any error above aborts it: the old contents stay. The index is
        // locked across the commit and swapped (with a new epoch) before readers go on, so a
        // reader never pairs the new rows with the old index or the other way round.
        let mut index = self.index.write();
        self.finish(txn, true)?;
        self.index.replace(&mut index, new_index);
        *self.sys.lock() = sys;
        Ok(())
    }
}
