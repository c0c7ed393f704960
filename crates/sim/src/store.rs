//! A process's durable storage in the simulator: the production write-ahead log
//! ([`quorumkv_storage::wal::Wal`]) and snapshot file store
//! ([`quorumkv_storage::snapshot::SnapshotFileStore`]) over the machine's
//! [`quorumkv_storage::disk::SimDisk`].
//!
//! The simulated disk holds the WAL in [`WAL_DIR`] and the state machine's snapshots in
//! [`SNAP_DIR`], one file per snapshot named by its index and term. The synchronous `Wal` is
//! used directly (not the threaded `WalWriter`): the simulator is one thread, and it decides
//! itself when the group fsync happens (an event in virtual time).
//!
//! Rules this module keeps:
//! - A snapshot's file is durable (written, fsynced, renamed into place, directory fsynced)
//!   before the WAL records the compaction that names it, so whichever compaction recovery
//!   finds, its file is there.
//! - A snapshot file is deleted only after a successful WAL sync made a newer compaction
//!   durable: never the file the durable log still names.
//! - Nothing here retries or hides an error: every failure goes back to the caller, which
//!   stops the process (the WAL refuses all work after a failed fsync anyway).
//!
//! One gap between the Raft contract and the WAL remains, and is left as the WAL defines it:
//! a snapshot received from the leader "replaces the whole log", but `Wal::compact` to an
//! index below the log's last index keeps the entries after it, and the WAL has no record
//! that drops them atomically (remove-group + compact + hard state could be torn after the
//! removal, which would forget the vote). Until the next append from the leader truncates
//! them, a crash may recover those stale entries after the snapshot. They are harmless: they
//! were appended after a different entry at the snapshot index, so no leader's log matches
//! them and their last term cannot win an election; and the recovered commit index never
//! covers them (a hard state recorded after the install follows the append that replaced
//! them). The simulator kept exactly these semantics before it used the WAL.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quorumkv_core::{Entry, GroupId, HardState, LogIndex, Snapshot, Term};
use quorumkv_raft::RestoreState;
use quorumkv_storage::disk::{Disk, SimDisk};
use quorumkv_storage::snapshot::{SnapshotError, SnapshotFileInfo, SnapshotFileStore};
use quorumkv_storage::wal::{TornTail, Wal, WalError, WalOptions};

/// Directory of the write-ahead log on every simulated disk.
pub const WAL_DIR: &str = "/qkv/wal";
/// Directory of the snapshot files on every simulated disk.
pub const SNAP_DIR: &str = "/qkv/snap";

/// Why storage refused to work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Stored data is damaged: the node must not start on this disk.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// The full error, for the trace.
        message: String,
    },
    /// The disk is full: the write was rejected and nothing of it kept.
    DiskFull(String),
    /// Anything else: a failed fsync, a failed write, a log that does not hold together.
    Failed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt { message, .. }
            | StoreError::DiskFull(message)
            | StoreError::Failed(message) => f.write_str(message),
        }
    }
}

impl From<WalError> for StoreError {
    fn from(e: WalError) -> Self {
        match &e {
            WalError::Corrupt { path, offset, .. } => {
                StoreError::Corrupt { path: path.clone(), offset: *offset, message: e.to_string() }
            }
            WalError::DiskFull { .. } => StoreError::DiskFull(e.to_string()),
            WalError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                StoreError::DiskFull(e.to_string())
            }
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

impl From<SnapshotError> for StoreError {
    fn from(e: SnapshotError) -> Self {
        let full = match &e {
            SnapshotError::Io(io) => io.kind() == io::ErrorKind::StorageFull,
            SnapshotError::File { source, .. } => {
                matches!(&**source, SnapshotError::Io(io) if io.kind() == io::ErrorKind::StorageFull)
            }
            _ => false,
        };
        let message = format!("snapshot store: {e}");
        if full { StoreError::DiskFull(message) } else { StoreError::Failed(message) }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        let message = format!("disk: {e}");
        if e.kind() == io::ErrorKind::StorageFull {
            StoreError::DiskFull(message)
        } else {
            StoreError::Failed(message)
        }
    }
}

/// What opening the storage gives a starting process.
#[derive(Debug)]
pub struct Opened {
    /// The open storage.
    pub store: NodeStore,
    /// The recovered state for `Raft::new`.
    pub state: RestoreState,
    /// A torn write the WAL found at its end and cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// The storage a running process holds open.
pub struct NodeStore {
    disk: SimDisk,
    wal: Wal,
    snaps: SnapshotFileStore,
    group: GroupId,
    /// The snapshot files on disk (kept here so collecting them needs no directory listing).
    snapshot_files: Vec<SnapshotFileInfo>,
    /// A compaction was logged since snapshot files were last collected.
    snapshot_gc_due: bool,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore").field("wal", &self.wal).field("group", &self.group).finish()
    }
}

impl NodeStore {
    /// Opens the WAL and the snapshot files on `disk` and recovers `group`'s state for
    /// `Raft::new`: hard state, snapshot (with its data read back from its file), the entries
    /// after it; applied = the snapshot index. An empty disk gives an empty state.
    pub fn open(disk: &SimDisk, group: GroupId, opts: &WalOptions) -> Result<Opened, StoreError> {
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let (wal, mut recovered) = Wal::open(Arc::clone(&shared), WAL_DIR, opts.clone())?;
        // Old snapshots are deleted by this module only (see the module rules), never by the
        // store's own "keep the newest n" policy, which knows nothing of the WAL.
        let snaps = SnapshotFileStore::open(shared, Path::new(SNAP_DIR), usize::MAX)?;
        let snapshot_files = snaps.list()?;
        let g = recovered.groups.remove(&group).unwrap_or_default();
        let snapshot_data = match &g.snapshot {
            Some(meta) => Some(read_snapshot(&snapshot_files, disk, meta.index, meta.term)?),
            None => None,
        };
        let applied = g.snapshot.as_ref().map_or(0, |m| m.index);
        let state = RestoreState {
            hard_state: g.hard_state.unwrap_or_default(),
            snapshot: g.snapshot,
            snapshot_data,
            entries: g.entries,
            applied,
        };
        let store = NodeStore {
            disk: disk.clone(),
            wal,
            snaps,
            group,
            snapshot_files,
            snapshot_gc_due: true,
        };
        Ok(Opened { store, state, torn_tail: recovered.torn_tail })
    }

    /// Writes the initial state of a new group member durably (the bootstrap entry and hard
    /// state), as the first start of a fresh machine would.
    pub fn bootstrap(
        disk: &SimDisk,
        group: GroupId,
        opts: &WalOptions,
        state: &RestoreState,
    ) -> Result<(), StoreError> {
        let mut store = Self::open(disk, group, opts)?.store;
        store.log(None, &state.entries, Some(state.hard_state))?;
        store.sync()
    }

    /// Logs one ready's durable parts in the order the contract gives (snapshot, entries, hard
    /// state). A snapshot's file is made durable at once; the WAL records are buffered until
    /// [`NodeStore::sync`].
    pub fn log(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), StoreError> {
        if let Some(s) = snapshot {
            self.save_snapshot(s)?;
        }
        if !entries.is_empty() {
            self.wal.append(self.group, entries)?;
        }
        if let Some(hs) = hard_state {
            self.wal.set_hard_state(self.group, hs)?;
        }
        Ok(())
    }

    /// Writes the snapshot's file durably, then logs the compaction to it (buffered).
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = &snapshot.meta;
        let mut file = self.snaps.create(meta.index, meta.term)?;
        quorumkv_storage::snapshot::ChunkSink::write_chunk(&mut file, 0, &snapshot.data)?;
        let info = file.finish()?;
        // A snapshot received again replaces its file under the same name.
        self.snapshot_files.retain(|f| f.path != info.path);
        self.snapshot_files.push(info);
        self.wal.compact(self.group, meta.clone())?;
        self.snapshot_gc_due = true;
        Ok(())
    }

    /// The group fsync: makes everything logged so far durable, then deletes snapshot files
    /// the durable log no longer names. An error leaves the process unusable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.wal.sync()?;
        if let Some(reason) = self.wal.failure() {
            // Rotation or segment collection after the fsync failed: the data is durable, but
            // the WAL refuses further work.
            return Err(StoreError::Failed(format!("WAL stopped after a sync: {reason}")));
        }
        if self.snapshot_gc_due {
            self.collect_snapshots()?;
            self.snapshot_gc_due = false;
        }
        Ok(())
    }

    /// True if records are buffered that no fsync has covered yet.
    pub fn has_unsynced(&self) -> bool {
        self.wal.has_unsynced()
    }

    /// A crash that strikes while the group fsync is under way: the power goes off after
    /// `mutations` more disk operations (the write may reach the page cache, the fsync may
    /// not complete), so the crash that follows can tear the batch.
    pub fn sync_until_power_off(mut self, mutations: u64) {
        self.disk.power_off_after(mutations);
        // The outcome does not matter: the process is dying and the disk crashes next.
        let _ = self.wal.sync();
    }

    /// Deletes every snapshot file except the one the (durable) WAL names.
    fn collect_snapshots(&mut self) -> Result<(), StoreError> {
        let keep = self.wal.snapshot_meta(self.group).map(|m| (m.index, m.term));
        let (kept, doomed): (Vec<SnapshotFileInfo>, Vec<SnapshotFileInfo>) =
            std::mem::take(&mut self.snapshot_files)
                .into_iter()
                .partition(|f| Some((f.index, f.term)) == keep);
        self.snapshot_files = kept;
        for info in &doomed {
            self.disk.remove(&info.path)?;
        }
        if !doomed.is_empty() {
            self.disk.sync_dir(Path::new(SNAP_DIR))?;
        }
        Ok(())
    }
}

/// Reads back the data of the snapshot at (`index`, `term`), which must exist.
fn read_snapshot(
    files: &[SnapshotFileInfo],
    disk: &SimDisk,
    index: LogIndex,
    term: Term,
) -> Result<bytes::Bytes, StoreError> {
    let info = files.iter().find(|i| i.index == index && i.term == term).ok_or_else(|| {
        StoreError::Failed(format!(
            "the WAL names snapshot {index}@t{term} but {SNAP_DIR} holds no file for it"
        ))
    })?;
    Ok(bytes::Bytes::from(disk.read_all(&info.path)?))
}

/// The WAL segment files on `disk` with their current lengths, oldest first.
pub fn segment_files(disk: &SimDisk) -> Vec<(PathBuf, u64)> {
    let dir = Path::new(WAL_DIR);
    let names = disk.list(dir).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| quorumkv_storage::wal::codec::parse_segment_file_name(n).is_some())
        .filter_map(|n| {
            let path = dir.join(n);
            // Up to the last non-zero byte: a segment reserved when created ends in zeros no
            // record has reached yet (a record may end in zero bytes, which this leaves out).
            let content = disk.file_content(&path)?;
            let used = content.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
            Some((path, used as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quorumkv_core::{EntryKind, SnapshotMeta};
    use quorumkv_storage::disk::CrashMode;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 9]) }
    }

    fn small() -> WalOptions {
        WalOptions { segment_bytes_max: 512, preallocate: false }
    }

    #[test]
    fn synced_state_and_snapshot_survive_a_crash_and_unsynced_records_do_not() {
        let disk = SimDisk::new(5);
        let boot = RestoreState::bootstrap(&[1, 2, 3]);
        NodeStore::bootstrap(&disk, 1, &small(), &boot).unwrap();
        let Opened { mut store, state, .. } = NodeStore::open(&disk, 1, &small()).unwrap();
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.hard_state, boot.hard_state);
        let entries: Vec<Entry> = (2..=40).map(|i| ent(i, 2)).collect();
        let hs = HardState { term: 2, vote: Some(1), commit: 1 };
        store.log(None, &entries, Some(hs)).unwrap();
        store.sync().unwrap();
        let meta = SnapshotMeta { index: 30, term: 2, conf_state: Default::default() };
        store
            .save_snapshot(&Snapshot { meta: meta.clone(), data: Bytes::from_static(b"S30") })
            .unwrap();
        store.sync().unwrap();
        // Logged but never synced: lost with the crash.
        store.log(None, &[ent(41, 2)], None).unwrap();
        drop(store);
        disk.crash_with(CrashMode::LoseUnsynced);
        let state = NodeStore::open(&disk, 1, &small()).unwrap().state;
        assert_eq!(state.hard_state, hs);
        let (snap_meta, data) =
            state.snapshot.zip(state.snapshot_data).expect("snapshot recovered");
        assert_eq!((snap_meta, &data[..]), (meta, &b"S30"[..]));
        assert_eq!(state.applied, 30);
        let idx: Vec<u64> = state.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, (31..=40).collect::<Vec<_>>());
        assert!(!segment_files(&disk).is_empty());
    }

    #[test]
    fn a_snapshot_file_outlives_every_unsynced_newer_compaction() {
        let disk = SimDisk::new(6);
        let mut store = NodeStore::open(&disk, 1, &small()).unwrap().store;
        let entries: Vec<Entry> = (1..=20).map(|i| ent(i, 1)).collect();
        store.log(None, &entries, None).unwrap();
        let snap = |i: u64| Snapshot {
            meta: SnapshotMeta { index: i, term: 1, conf_state: Default::default() },
            data: Bytes::from(i.to_string()),
        };
        store.save_snapshot(&snap(5)).unwrap();
        store.sync().unwrap();
        // Two newer snapshots before the next sync: the durable log still names 5.
        store.save_snapshot(&snap(10)).unwrap();
        store.save_snapshot(&snap(15)).unwrap();
        drop(store);
        disk.crash_with(CrashMode::LoseUnsynced);
        let Opened { mut store, state, .. } = NodeStore::open(&disk, 1, &small()).unwrap();
        assert_eq!(state.snapshot_data, Some(Bytes::from("5")));
        store.sync().unwrap();
        let left: Vec<u64> = store.snaps.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(store.snapshot_files.len(), 1);
        assert_eq!(left, vec![5], "stale snapshot files are collected after a sync");
    }

    #[test]
    fn a_crash_during_the_group_fsync_keeps_a_prefix_of_the_batch() {
        // Entries 1..=3 are durable; one batch then logs 4..=6 and a vote for term 3, and the
        // power goes off somewhere in its fsync. Whatever survives is a prefix of the batch in
        // log order: never a gap, never the vote without every entry before it.
        let mut torn = 0;
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let disk = SimDisk::new(seed);
            disk.set_zero_filled_tears(true);
            let mut store = NodeStore::open(&disk, 1, &small()).unwrap().store;
            let base: Vec<Entry> = (1..=3).map(|i| ent(i, 1)).collect();
            store.log(None, &base, Some(HardState { term: 1, vote: None, commit: 0 })).unwrap();
            store.sync().unwrap();
            let batch: Vec<Entry> = (4..=6).map(|i| ent(i, 3)).collect();
            let vote = HardState { term: 3, vote: Some(2), commit: 3 };
            store.log(None, &batch, Some(vote)).unwrap();
            store.sync_until_power_off(seed % 4);
            disk.crash();
            let opened = NodeStore::open(&disk, 1, &small())
                .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
            torn += usize::from(opened.torn_tail.is_some());
            let last = opened.state.entries.last().map_or(0, |e| e.index);
            let voted = opened.state.hard_state == vote;
            assert!(last == 3 || last == 6, "seed {seed}: one record holds the whole run");
            assert!(!voted || last == 6, "seed {seed}: the vote survived without its entries");
            outcomes.insert((last, voted));
        }
        assert!(torn > 10, "crashes during the fsync tear the batch: {torn}");
        assert_eq!(outcomes.len(), 3, "every prefix happens: {outcomes:?}");
    }
}
