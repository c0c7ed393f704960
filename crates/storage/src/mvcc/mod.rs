//! The MVCC state-machine store of CP keyspaces: etcd v3's data model (revisions, per-key
//! versions, leases, history, compaction) over one ordered byte map whose version rows are
//! keyed by revision, plus an in-memory key index (key → revisions, like etcd's treeIndex),
//! with two backends that pass one conformance suite: [`MemStore`] (in memory,
//! deterministic, for the simulator) and [`RedbStore`] (on disk, redb).
//!
//! Rules the store keeps:
//! - The store-wide revision starts at 1 for the empty store and grows by exactly one per
//!   command that changed a key; each change inside it gets a sub-revision, from 0. A write
//!   transaction is one command, or several closed one by one with [`MvccTxn::seal`] (a
//!   state machine applying many log entries in one engine transaction); either way every
//!   command gets exactly the revision, sub-revisions, events and checks it would get in a
//!   transaction of its own. A command that changes no key (metadata only, a delete that
//!   matched nothing, a compaction) leaves the revision alone.
//! - Per key: `create_revision` (revision of the put that created it), `mod_revision`
//!   (revision of its last change), `version` (1 on create, +1 per put, gone with a delete)
//!   and `lease` (0 = none) — the etcd `KeyValue`.
//! - The applied log index, the metadata (lease table, client sessions, …) and the data are
//!   committed in one engine transaction: after a crash the store is at some committed
//!   transaction, never between two, and the log is replayed from `applied_index() + 1`.
//! - Reads at a revision below the compacted revision fail with [`MvccError::Compacted`],
//!   reads above the current one with [`MvccError::FutureRevision`].
//! - `compact(c)` keeps every version with revision >= `c` and, per key, the version live
//!   at `c - 1` (needed to answer reads at `c` and the `prev_kv` of the first change at or
//!   after `c`); tombstones below `c` go. So reads at every revision >= `c` and watches
//!   from any revision >= `c` give exactly what they gave before the compaction.
//! - Limits on keys and values are enforced at the API edge; the store only rejects an empty
//!   key, which etcd's model has no place for.

mod codec;
pub mod conformance;
mod engine;
mod index;
mod mem;
mod redb_store;

use bytes::Bytes;
use quorumkv_core::LogIndex;

pub use codec::Revision;
pub use mem::{MemImage, MemStore, MemTxn};
pub use redb_store::{CommitDurability, RedbImage, RedbOptions, RedbStore, RedbTxn};

/// One version of a key, as the etcd v3 API returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The key (never empty).
    pub key: Bytes,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// 1 on create, +1 per put; 0 in a delete event.
    pub version: i64,
    /// Lease id attached to the key, 0 for none.
    pub lease: i64,
    /// The value (empty with `keys_only`).
    pub value: Bytes,
}

/// The version a put replaced, as the key index knows it (no value: reading that takes a
/// row read, which a put spares itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Revision of the replaced version.
    pub mod_revision: i64,
    /// Revision at which the key was created.
    pub create_revision: i64,
    /// Its version number.
    pub version: i64,
    /// Its lease, 0 for none.
    pub lease: i64,
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A put created or updated the key.
    Put,
    /// A delete removed the key.
    Delete,
}

/// One change, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// After a put: the new version. After a delete: only `key` and `mod_revision` are set,
    /// as etcd reports deletes.
    pub kv: KeyValue,
    /// The version this change replaced, if the key existed before it.
    pub prev_kv: Option<KeyValue>,
}

/// Options of a range read. The etcd request's sort order and revision filters are applied
/// above the store, on the result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Revision to read at; 0 (or negative) reads the current revision.
    pub revision: i64,
    /// At most this many keys in `kvs`; 0 means no limit. `count` still counts them all.
    pub limit: u64,
    /// Return only the count, no key-values.
    pub count_only: bool,
    /// Leave values empty.
    pub keys_only: bool,
}

/// The answer to a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// Key-values in key order (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, regardless of `limit`.
    pub count: u64,
    /// True if `limit` cut the result short.
    pub more: bool,
    /// The store's current revision when the read ran (etcd's header revision).
    pub revision: i64,
}

/// The outcome of a committed write transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitResult {
    /// The store's revision after the commit: the new one if data changed, else unchanged.
    pub revision: i64,
    /// Every change of the transaction's last command (all of it if it was never sealed),
    /// in sub-revision order (empty if none); sealed commands' changes came with their seals.
    pub events: Vec<Event>,
}

/// The outcome of one command closed with [`MvccTxn::seal`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealResult {
    /// The revision after the command: a new one if it changed data, else unchanged.
    pub revision: i64,
    /// Every change of the command, in sub-revision order (empty if none).
    pub events: Vec<Event>,
}

/// A batch of past changes, for a watch that starts in the past.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// Changes in revision order, each with its `prev_kv` when the key existed before.
    pub events: Vec<Event>,
    /// Resume from here: every revision below it has been looked at.
    pub next_revision: i64,
}

/// Size and position of the store, for the Status API and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys that exist at the current revision.
    pub key_count: u64,
    /// Versions kept, history included.
    pub version_count: u64,
    /// Approximate bytes of all data, history and metadata (logical size, no engine overhead).
    pub approx_bytes: u64,
    /// Bytes the engine's file takes on disk, where there is one.
    pub file_bytes: Option<u64>,
    /// Current revision.
    pub revision: i64,
    /// Compacted revision (0 if never compacted).
    pub compacted_revision: i64,
    /// Last applied log index.
    pub applied_index: LogIndex,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// An empty key was given where a key is required.
    #[error("the key is empty: every key needs at least one byte")]
    EmptyKey,
    /// The requested revision is below the compacted revision.
    #[error(
        "revision {requested} has been compacted (the oldest readable revision is {compacted}); \
         read at a later revision, or restart the watch from {compacted}"
    )]
    Compacted {
        /// Revision asked for.
        requested: i64,
        /// The store's compacted revision.
        compacted: i64,
    },
    /// The requested revision is above the current revision.
    #[error(
        "revision {requested} is in the future (the current revision is {current}); \
         read at or below {current}"
    )]
    FutureRevision {
        /// Revision asked for.
        requested: i64,
        /// The store's current revision.
        current: i64,
    },
    /// A commit gave an applied index below the one already stored.
    #[error(
        "applied index would go backwards from {current} to {given}: entries must be applied \
         in log order, and each at most once"
    )]
    AppliedIndexRegression {
        /// Applied index in the store.
        current: LogIndex,
        /// Applied index the commit gave.
        given: LogIndex,
    },
    /// A transaction made more changes than sub-revisions can number.
    #[error("a transaction made more than {max} changes: split it into smaller transactions")]
    TooManyChanges {
        /// The maximum number of changes per transaction.
        max: u64,
    },
    /// Stored data does not decode: the files were damaged or written by a broken build.
    #[error(
        "the state-machine store is corrupt ({0}); stop this node and rebuild its state from a \
         snapshot or a peer"
    )]
    Corrupt(String),
    /// The store was written with a row layout this build does not know.
    #[error(
        "the state-machine store has layout version {found}, this build reads version \
         {supported}: run a build that knows it, or rebuild this node's state from a peer; if \
         its data is not needed (a demo cluster's ./quorumkv-data), remove the data directory"
    )]
    UnsupportedLayout {
        /// Layout version found in the store.
        found: u32,
        /// Layout version this build reads.
        supported: u32,
    },
    /// An image handed to `restore` is inconsistent (out-of-order or impossible records).
    #[error(
        "the snapshot image is invalid ({0}); the store was left unchanged: fetch a new snapshot"
    )]
    InvalidImage(String),
    /// The image source failed while `restore` read it (e.g. a checksum mismatch).
    #[error("reading the snapshot image failed; the store was left unchanged: {0}")]
    ImageSource(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The storage engine failed (I/O error, full disk, damaged file).
    #[error("the storage engine failed: {0}; check the disk and the data directory")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl MvccError {
    /// True if every replica applying the same command fails the same way, so the error can go
    /// back to the client; false for I/O and corruption errors, after which a replica must
    /// stop rather than diverge.
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            MvccError::EmptyKey
                | MvccError::Compacted { .. }
                | MvccError::FutureRevision { .. }
                | MvccError::TooManyChanges { .. }
        )
    }
}

/// Header of a point-in-time image of a store (what a snapshot carries besides records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// Applied index of the image.
    pub applied_index: LogIndex,
    /// Current revision of the image.
    pub revision: i64,
    /// Compacted revision of the image.
    pub compacted_revision: i64,
    /// Keys that exist at `revision`.
    pub key_count: u64,
    /// Version records the image holds.
    pub version_count: u64,
}

/// One record of an image: a metadata entry or one version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRecord {
    /// A metadata entry set with [`MvccTxn::set_meta`].
    Meta {
        /// Entry name.
        name: Bytes,
        /// Entry value.
        value: Bytes,
    },
    /// One version of one key (a tombstone for a delete).
    Version {
        /// The key.
        key: Bytes,
        /// Revision of the change.
        revision: Revision,
        /// True for a delete marker; the fields below are then zero/empty.
        tombstone: bool,
        /// Revision at which the key was created.
        create_revision: i64,
        /// The key's version.
        version: i64,
        /// Lease id, 0 for none.
        lease: i64,
        /// The value.
        value: Bytes,
    },
}

/// A source of image records: a store's point-in-time image, or a snapshot being decoded.
/// Records come metadata first (by name), then versions (by key, then revision).
pub trait ImageSource {
    /// The image's header.
    fn info(&self) -> ImageInfo;
    /// Appends about `bytes_max` bytes worth of records (at least one while any remain) to
    /// `out`. Returns `false` once the source is exhausted and, for a decoder, verified.
    fn next_records(
        &mut self,
        bytes_max: usize,
        out: &mut Vec<ImageRecord>,
    ) -> Result<bool, MvccError>;
}

/// A write transaction: reads see the transaction's own changes; nothing is visible to others
/// until [`MvccTxn::commit`]; dropping it without commit discards everything.
///
/// One transaction can carry several commands (say, the log entries of one Raft `Ready`):
/// make each command's changes, then [`MvccTxn::seal`] it. Each sealed command gets the
/// revision, sub-revisions, events and checks a transaction of its own would have given it;
/// only the commit (one engine commit, one applied index) is shared. A command that fails
/// part-way can be undone with [`MvccTxn::rollback_to_seal`] without losing the commands
/// sealed before it.
pub trait MvccTxn {
    /// The revision the current command's changes get (the revision before it, plus one).
    fn revision(&self) -> i64;
    /// The compacted revision as reads inside the transaction see it: the store's, or that
    /// of a compaction made in the transaction.
    fn compacted_revision(&self) -> i64;
    /// Range read inside the transaction (for the compares of an etcd Txn): sees every change
    /// made so far, sealed or not.
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError>;
    /// The current version of `key`, if it exists.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        let res = self.range(key, &[], &RangeOptions::default())?;
        Ok(res.kvs.into_iter().next())
    }
    /// Puts `value` under `key` with `lease` (0 = none); returns what the key index knows of
    /// the version it replaced (read the key first for its value).
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<Replaced>, MvccError>;
    /// Whether the events of later puts carry the version they replaced (`prev_kv`): on by
    /// default; off spares each put of an existing key a row read, and whoever needs the
    /// previous version reads it at `mod_revision - 1` (as etcd's watch does).
    fn set_events_carry_prev_kv(&mut self, on: bool);
    /// Deletes every key in the range (etcd `range_end` conventions); returns what it deleted.
    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, MvccError>;
    /// Sets a metadata entry, committed atomically with the data.
    fn set_meta(&mut self, name: &[u8], value: &[u8]) -> Result<(), MvccError>;
    /// Removes a metadata entry (no error if absent).
    fn delete_meta(&mut self, name: &[u8]) -> Result<(), MvccError>;
    /// Reads a metadata entry, including this transaction's changes.
    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError>;
    /// Drops history below `revision` (see the module rules). `revision` must be above the
    /// compacted revision and at most the revision before the current command. Reads see the
    /// new compacted revision at once; the history goes when the command is sealed.
    fn compact(&mut self, revision: i64) -> Result<(), MvccError>;
    /// Closes the current command. If it changed data, the transaction's revision becomes
    /// the command's revision and its events are returned; the next changes belong to the
    /// revision after it, with sub-revisions from 0 again. A command without data changes
    /// returns the unchanged revision and no events.
    fn seal(&mut self) -> Result<SealResult, MvccError>;
    /// Undoes every change made since the last seal (or the start): data, metadata,
    /// compaction and counters, as if the current command had never run. Sealed commands
    /// stay. After an engine error (not a deterministic one) drop the transaction instead.
    fn rollback_to_seal(&mut self) -> Result<(), MvccError>;
    /// Commits every command, recording `applied_index` atomically with them; the changes
    /// after the last seal count as one more command (the result is its revision and
    /// events). The applied index must not be below the stored one; a transaction without
    /// changes still advances it.
    fn commit(self, applied_index: LogIndex) -> Result<CommitResult, MvccError>;
}

/// An MVCC state-machine store. Reads take `&self` and, where the engine allows, do not wait
/// for a write transaction in progress.
pub trait MvccStore: Send + Sync {
    /// The write transaction type.
    type Txn<'a>: MvccTxn
    where
        Self: 'a;
    /// A point-in-time image for snapshots; writes go on while it is read.
    type Image: ImageSource + Send + 'static;

    /// Starts a write transaction (one at a time: a second waits for the first to finish).
    fn write_txn(&self) -> Result<Self::Txn<'_>, MvccError>;
    /// Range read with etcd's `range_end` conventions: empty = the single key `key`; `\0` =
    /// every key >= `key`; otherwise `[key, range_end)`.
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult, MvccError>;
    /// Every change from `start_revision` on, in revision order, for keys in the range; stops
    /// once `limit` (0 = none) events are collected, but never in the middle of a revision.
    /// `start_revision <= 0` means "from now" (no events; resume after the current revision).
    fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        limit: usize,
    ) -> Result<EventBatch, MvccError>;
    /// Reads a committed metadata entry.
    fn get_meta(&self, name: &[u8]) -> Result<Option<Bytes>, MvccError>;
    /// Compacts in a transaction of its own, leaving the applied index where it is.
    fn compact(&self, revision: i64) -> Result<(), MvccError> {
        let applied = self.applied_index();
        let mut txn = self.write_txn()?;
        txn.compact(revision)?;
        txn.commit(applied).map(|_| ())
    }
    /// The current revision.
    fn current_revision(&self) -> i64;
    /// The compacted revision (0 if never compacted).
    fn compacted_revision(&self) -> i64;
    /// Index of the last log entry applied.
    fn applied_index(&self) -> LogIndex;
    /// Size and position.
    fn stats(&self) -> Result<StoreStats, MvccError>;
    /// Makes every committed transaction durable (a no-op where commits already are).
    fn sync(&self) -> Result<(), MvccError>;
    /// A consistent point-in-time image of everything (history above the compacted revision,
    /// metadata, counters).
    fn image(&self) -> Result<Self::Image, MvccError>;
    /// Replaces the whole contents with the image, atomically: on any error the store is left
    /// as it was. The result is durable when this returns.
    fn restore(&self, source: &mut dyn ImageSource) -> Result<(), MvccError>;
}

/// An empty `range_end`, meaning "just this key".
pub const SINGLE_KEY: &[u8] = &[];
/// The `range_end` meaning "every key from `key` on".
pub const ALL_FROM_KEY: &[u8] = &[0];
