//! RedbStore beyond the conformance suite: crash recovery to a consistent prefix (simulated
//! power loss at many points, and a real killed process), durability modes, and reads that do
//! not wait for a writer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorumkv_storage::disk::{CrashMode, Disk, RealDisk, SimDisk};
use quorumkv_storage::mvcc::{
    ALL_FROM_KEY, CommitDurability, MvccStore, MvccTxn, RangeOptions, RedbOptions, RedbStore,
    SINGLE_KEY,
};

const DB: &str = "/data/state.redb";
const KEYS: u64 = 10;

fn options(durability: CommitDurability) -> RedbOptions {
    RedbOptions { durability, cache_bytes: 4 << 20 }
}

fn sim_disk(seed: u64) -> SimDisk {
    let disk = SimDisk::new(seed);
    disk.create_dir_all(Path::new("/data")).expect("mkdir");
    disk
}

/// Applies entry `index`: puts `k{index % KEYS}` = index and records it in the metadata too.
fn apply(store: &RedbStore, index: u64) -> Result<(), quorumkv_storage::mvcc::MvccError> {
    let mut txn = store.write_txn()?;
    let key = format!("k{}", index % KEYS);
    txn.put(key.as_bytes(), &index.to_le_bytes(), 0)?;
    txn.set_meta(b"last", &index.to_le_bytes())?;
    txn.commit(index)?;
    Ok(())
}

/// Asserts that the store holds exactly the effects of entries `1..=applied_index()`.
fn assert_consistent(store: &RedbStore) -> u64 {
    let applied = store.applied_index();
    assert_eq!(store.current_revision(), applied as i64 + 1, "one revision per entry");
    let meta = store.get_meta(b"last").expect("meta");
    if applied == 0 {
        assert_eq!(meta, None);
    } else {
        assert_eq!(meta.as_deref(), Some(&applied.to_le_bytes()[..]));
    }
    let all = store.range(b"\0", ALL_FROM_KEY, &RangeOptions::default()).expect("range");
    assert_eq!(all.count, applied.min(KEYS));
    for kv in &all.kvs {
        let index = u64::from_le_bytes(kv.value.as_ref().try_into().expect("8-byte value"));
        assert!(index <= applied, "data from entry {index} beyond applied {applied}");
        assert!(index + KEYS > applied, "entry {index} was overwritten later");
        assert_eq!(kv.key.as_ref(), format!("k{}", index % KEYS).as_bytes());
        assert_eq!(kv.mod_revision, index as i64 + 1);
    }
    applied
}

#[test]
fn power_loss_at_any_point_recovers_a_consistent_prefix() {
    let deferred = CommitDurability::Deferred { sync_every_commits: 4 };
    // Count the disk mutations of a full run, then cut the power at points spread over it.
    let total = {
        let disk = sim_disk(1);
        let store = RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(deferred))
            .expect("open");
        for index in 1..=24 {
            apply(&store, index).expect("apply");
        }
        disk.stats().mutations
    };
    let mut recovered = Vec::new();
    for (n, cut) in (0..total).step_by((total as usize / 40).max(1)).enumerate() {
        let disk = sim_disk(n as u64 + 100);
        let mut synced = 0;
        {
            let store = RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(deferred))
                .expect("open");
            disk.power_off_after(cut);
            for index in 1..=24 {
                if apply(&store, index).is_err() {
                    break;
                }
                if index % 4 == 0 {
                    synced = index;
                }
            }
            // The process dies with the power: the store is dropped with the disk dead.
        }
        disk.crash_with(CrashMode::Random);
        let store =
            RedbStore::open(Arc::new(disk), Path::new(DB), options(deferred)).expect("reopen");
        let applied = assert_consistent(&store);
        assert!(
            applied >= synced,
            "cut at mutation {cut}: applied {applied} lost a synced commit {synced}"
        );
        recovered.push(applied);
        // The recovered store keeps working.
        apply(&store, applied + 1).expect("apply after recovery");
        assert_consistent(&store);
    }
    // The cuts landed at different places: some early, some late.
    assert!(recovered.iter().any(|&a| a < 8) && recovered.iter().any(|&a| a >= 16));
}

#[test]
fn deferred_commits_are_lost_only_back_to_the_last_sync() {
    let disk = sim_disk(3);
    let deferred = CommitDurability::Deferred { sync_every_commits: 0 };
    {
        let store = RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(deferred))
            .expect("open");
        for index in 1..=10 {
            apply(&store, index).expect("apply");
        }
        store.sync().expect("sync");
        for index in 11..=15 {
            apply(&store, index).expect("apply");
        }
        disk.crash_with(CrashMode::LoseUnsynced);
    }
    let store = RedbStore::open(Arc::new(disk), Path::new(DB), options(deferred)).expect("reopen");
    assert_eq!(assert_consistent(&store), 10);
}

#[test]
fn immediate_commits_survive_losing_unsynced_writes() {
    let disk = sim_disk(4);
    {
        let store = RedbStore::open(
            Arc::new(disk.clone()),
            Path::new(DB),
            options(CommitDurability::Immediate),
        )
        .expect("open");
        for index in 1..=12 {
            apply(&store, index).expect("apply");
        }
        disk.crash_with(CrashMode::LoseUnsynced);
    }
    let store =
        RedbStore::open(Arc::new(disk), Path::new(DB), options(CommitDurability::Immediate))
            .expect("reopen");
    assert_eq!(assert_consistent(&store), 12);
}

#[test]
fn reads_and_images_do_not_wait_for_a_writer() {
    let disk = sim_disk(5);
    let store =
        RedbStore::open(Arc::new(disk), Path::new(DB), options(CommitDurability::Immediate))
            .expect("open");
    apply(&store, 1).expect("apply");
    let (opened_tx, opened_rx) = mpsc::channel();
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let store_ref = &store;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let store = store_ref;
            let mut txn = store.write_txn().expect("txn");
            txn.put(b"k1", b"uncommitted", 0).expect("put");
            opened_tx.send(()).expect("signal");
            // Hold the transaction open until the reader is done (bounded wait).
            read_rx.recv_timeout(Duration::from_secs(20)).expect("reader finished");
            txn.commit(2).expect("commit");
        });
        opened_rx.recv_timeout(Duration::from_secs(20)).expect("writer started");
        let started = Instant::now();
        let res = store.range(b"k1", SINGLE_KEY, &RangeOptions::default()).expect("range");
        assert_eq!(res.kvs[0].value.as_ref(), &1u64.to_le_bytes()[..]);
        assert!(store.image().is_ok());
        assert!(started.elapsed() < Duration::from_secs(5));
        read_tx.send(()).expect("signal");
        writer.join().expect("writer");
    });
    let res = store.range(b"k1", SINGLE_KEY, &RangeOptions::default()).expect("range");
    assert_eq!(res.kvs[0].value.as_ref(), b"uncommitted");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Child side of [`killed_process_recovers_a_consistent_prefix`]: writes until killed.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("QKV_MVCC_CRASH_CHILD_DB") else {
        return; // Only runs as the child of the kill test.
    };
    let deferred = CommitDurability::Deferred { sync_every_commits: 16 };
    let store = RedbStore::open(Arc::new(RealDisk::new()), Path::new(&path), options(deferred))
        .expect("open");
    let started = Instant::now();
    // Bounded: the parent kills it long before either limit.
    for index in 1..=100_000u64 {
        apply(&store, index).expect("apply");
        if index % 16 == 0 {
            println!("synced {index}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
}

#[test]
fn killed_process_recovers_a_consistent_prefix() {
    let dir = temp_dir("mvcc-kill");
    let db = dir.join("state.redb");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
        .env("QKV_MVCC_CRASH_CHILD_DB", &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut synced = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(n) = line.strip_prefix("synced ") {
            synced = n.trim().parse().expect("index");
            if synced >= 200 {
                break;
            }
        }
    }
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    assert!(synced >= 200, "the child stopped before writing enough");
    let store =
        RedbStore::open(Arc::new(RealDisk::new()), &db, options(CommitDurability::Immediate))
            .expect("reopen after kill");
    let applied = assert_consistent(&store);
    assert!(applied >= synced, "applied {applied} lost synced commit {synced}");
    drop(store);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn clean_reopen_keeps_everything_and_stats_report_the_file() {
    let disk = sim_disk(6);
    let deferred = CommitDurability::Deferred { sync_every_commits: 3 };
    {
        let store = RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(deferred))
            .expect("open");
        for index in 1..=20 {
            apply(&store, index).expect("apply");
        }
        store.compact(15).expect("compact");
        store.sync().expect("sync");
        let stats = store.stats().expect("stats");
        assert!(stats.file_bytes.is_some_and(|b| b > 0));
        assert_eq!(stats.key_count, KEYS);
    }
    disk.crash_with(CrashMode::LoseUnsynced);
    let store = RedbStore::open(Arc::new(disk), Path::new(DB), options(deferred)).expect("reopen");
    assert_eq!(assert_consistent(&store), 20);
    assert_eq!(store.compacted_revision(), 15);
}
