//! RedbStore beyond the conformance suite: crash recovery to a consistent prefix (simulated
//! power loss at many points, and a real killed process), durability modes (the node's mode
//! too: batches of sealed entries per transaction, no fsync on commit, a sync now and then),
//! reads that do not wait for a writer, and the in-memory key index (rebuilt on reopen, left
//! untouched by a failed commit, consistent for readers racing writers and compactions).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorumkv_storage::disk::{CrashMode, Disk, RealDisk, SimDisk};
use quorumkv_storage::mvcc::{
    ALL_FROM_KEY, CommitDurability, MemStore, MvccError, MvccStore, MvccTxn, RangeOptions,
    RedbOptions, RedbStore, Replaced, SINGLE_KEY, conformance,
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

/// Applies entries `first..=last` in one transaction, each sealed as its own command, as a
/// state machine applies a batch of log entries.
fn apply_batch(
    store: &RedbStore,
    first: u64,
    last: u64,
) -> Result<(), quorumkv_storage::mvcc::MvccError> {
    let mut txn = store.write_txn()?;
    for index in first..=last {
        let key = format!("k{}", index % KEYS);
        txn.put(key.as_bytes(), &index.to_le_bytes(), 0)?;
        txn.set_meta(b"last", &index.to_le_bytes())?;
        let sealed = txn.seal()?;
        assert_eq!(sealed.revision, index as i64 + 1, "one revision per entry");
    }
    txn.commit(last)?;
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

/// Cuts the power at ~40 points spread over the disk mutations of `run` (which records in
/// its second argument the last entry a sync made durable), recovers, and calls `check` with
/// the cut, the recovered store, its consistent applied index and the last synced entry.
/// Returns the applied indexes recovered.
fn at_every_power_cut(
    mode: CommitDurability,
    seed: u64,
    run: impl Fn(&RedbStore, &mut u64),
    check: impl Fn(u64, &RedbStore, u64, u64),
) -> Vec<u64> {
    // Count the disk mutations of a full run, then cut the power at points spread over it.
    let total = {
        let disk = sim_disk(seed);
        let store =
            RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(mode)).expect("open");
        run(&store, &mut 0);
        assert_consistent(&store);
        disk.stats().mutations
    };
    let mut recovered = Vec::new();
    for (n, cut) in (0..total).step_by((total as usize / 40).max(1)).enumerate() {
        let disk = sim_disk(seed + 100 + n as u64);
        let mut synced = 0;
        {
            let store = RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(mode))
                .expect("open");
            disk.power_off_after(cut);
            run(&store, &mut synced);
            // The process dies with the power: the store is dropped with the disk dead.
        }
        disk.crash_with(CrashMode::Random);
        let store = RedbStore::open(Arc::new(disk), Path::new(DB), options(mode)).expect("reopen");
        let applied = assert_consistent(&store);
        assert!(
            applied >= synced,
            "cut at mutation {cut}: applied {applied} lost what was synced up to {synced}"
        );
        check(cut, &store, applied, synced);
        recovered.push(applied);
    }
    recovered
}

#[test]
fn power_loss_at_any_point_recovers_a_consistent_prefix() {
    let run = |store: &RedbStore, synced: &mut u64| {
        for index in 1..=24 {
            if apply(store, index).is_err() {
                return;
            }
            if index % 4 == 0 {
                *synced = index;
            }
        }
    };
    let recovered = at_every_power_cut(
        CommitDurability::Deferred { sync_every_commits: 4 },
        1,
        run,
        |_, store, applied, _| {
            // The recovered store keeps working.
            apply(store, applied + 1).expect("apply after recovery");
            assert_consistent(store);
        },
    );
    // The cuts landed at different places: some early, some late.
    assert!(recovered.iter().any(|&a| a < 8) && recovered.iter().any(|&a| a >= 16));
}

/// The node's mode: batches of entries per transaction, no fsync on any commit, a `sync` every
/// few batches (as when the node takes a snapshot). Power cut anywhere: the store comes back
/// at a whole batch no older than the last sync, with data and applied index agreeing.
#[test]
fn power_loss_without_commit_fsyncs_recovers_a_consistent_prefix() {
    const BATCH: u64 = 5;
    const BATCHES: u64 = 12;
    let run = |store: &RedbStore, synced: &mut u64| {
        for b in 0..BATCHES {
            let (first, last) = (b * BATCH + 1, (b + 1) * BATCH);
            if apply_batch(store, first, last).is_err() {
                return;
            }
            if b % 3 == 2 {
                if store.sync().is_err() {
                    return;
                }
                *synced = last;
            }
        }
    };
    let recovered =
        at_every_power_cut(CommitDurability::ON_SYNC_ONLY, 21, run, |cut, store, applied, _| {
            assert_eq!(applied % BATCH, 0, "cut at mutation {cut}: recovered inside a batch");
            apply_batch(store, applied + 1, applied + BATCH).expect("apply after recovery");
            assert_consistent(store);
        });
    assert!(recovered.iter().any(|&a| a < 20) && recovered.iter().any(|&a| a >= 40));
}

/// Without a sync, unsynced batches are all lost together, back to the last sync, and the
/// store replays from there.
#[test]
fn unsynced_batches_are_lost_back_to_the_last_sync() {
    let disk = sim_disk(22);
    let mode = CommitDurability::ON_SYNC_ONLY;
    {
        let store =
            RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(mode)).expect("open");
        apply_batch(&store, 1, 16).expect("batch");
        apply_batch(&store, 17, 20).expect("batch");
        store.sync().expect("sync");
        apply_batch(&store, 21, 40).expect("batch");
        apply_batch(&store, 41, 41).expect("batch");
        assert_eq!(assert_consistent(&store), 41);
        disk.crash_with(CrashMode::LoseUnsynced);
    }
    let store = RedbStore::open(Arc::new(disk), Path::new(DB), options(mode)).expect("reopen");
    assert_eq!(assert_consistent(&store), 20);
    apply_batch(&store, 21, 30).expect("replay");
    assert_eq!(assert_consistent(&store), 30);
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

/// Child side of [`killed_process_without_commit_fsyncs_recovers_a_consistent_prefix`]:
/// batches of 8 sealed entries, no fsync on commit, a sync every 4 batches; until killed.
#[test]
fn crash_child_batch_writer() {
    let Ok(path) = std::env::var("QKV_MVCC_CRASH_CHILD_BATCH_DB") else {
        return; // Only runs as the child of the kill test.
    };
    let store = RedbStore::open(
        Arc::new(RealDisk::new()),
        Path::new(&path),
        options(CommitDurability::ON_SYNC_ONLY),
    )
    .expect("open");
    let started = Instant::now();
    // Bounded: the parent kills it long before either limit.
    for batch in 0..20_000u64 {
        let (first, last) = (batch * 8 + 1, (batch + 1) * 8);
        apply_batch(&store, first, last).expect("apply");
        if batch % 4 == 3 {
            store.sync().expect("sync");
            println!("synced {last}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
}

/// Runs the child test `name` with `env` naming the database, reads its "synced N" lines
/// until N >= `enough`, kills it, and returns the last N.
fn run_child_until_killed(name: &str, env: &str, db: &Path, enough: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, db)
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
            if synced >= enough {
                break;
            }
        }
    }
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    assert!(synced >= enough, "the child stopped before writing enough");
    synced
}

#[test]
fn killed_process_without_commit_fsyncs_recovers_a_consistent_prefix() {
    let dir = temp_dir("mvcc-kill-batch");
    let db = dir.join("state.redb");
    let synced = run_child_until_killed(
        "crash_child_batch_writer",
        "QKV_MVCC_CRASH_CHILD_BATCH_DB",
        &db,
        400,
    );
    let store =
        RedbStore::open(Arc::new(RealDisk::new()), &db, options(CommitDurability::ON_SYNC_ONLY))
            .expect("reopen after kill");
    let applied = assert_consistent(&store);
    assert!(applied >= synced, "applied {applied} lost synced batch ending at {synced}");
    assert_eq!(applied % 8, 0, "recovered inside a batch");
    drop(store);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn killed_process_recovers_a_consistent_prefix() {
    let dir = temp_dir("mvcc-kill");
    let db = dir.join("state.redb");
    let synced = run_child_until_killed("crash_child_writer", "QKV_MVCC_CRASH_CHILD_DB", &db, 200);
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

/// More history on top of `conformance::populated_store`: puts, deletes and a compaction.
/// Adds puts, deletes and a compaction; returns what each put replaced (the key index's
/// record of the previous version).
fn more_history<S: MvccStore>(store: &S) -> Vec<Option<Replaced>> {
    let mut index = store.applied_index();
    let mut replaced = Vec::new();
    for i in 0..20u32 {
        index += 1;
        let mut txn = store.write_txn().expect("txn");
        let key = format!("key/{:02}", i % 5);
        replaced.push(txn.put(key.as_bytes(), &i.to_le_bytes(), 0).expect("put"));
        if i % 6 == 5 {
            txn.delete_range(b"key/01", SINGLE_KEY).expect("delete");
        }
        txn.commit(index).expect("commit");
    }
    store.compact(store.current_revision() - 10).expect("compact");
    replaced
}

/// The key index is derived from the rows: a reopened store (index rebuilt by one scan) answers
/// every read, watch, image and compaction exactly as a store that never closed.
#[test]
fn reopen_rebuilds_the_key_index() {
    let disk = sim_disk(30);
    let open = || {
        RedbStore::open(
            Arc::new(disk.clone()),
            Path::new(DB),
            options(CommitDurability::ON_SYNC_ONLY),
        )
        .expect("open")
    };
    let store = conformance::populated_store(&open);
    store.sync().expect("sync");
    drop(store);
    let reference = conformance::populated_store(&MemStore::new);
    let store = open();
    conformance::assert_same_stores(&store, &reference);
    // It keeps working: new history and a compaction over the rebuilt index, each put
    // deriving its version, create revision and replaced lease from the rebuilt entries.
    let replaced = more_history(&store);
    assert!(replaced.iter().any(|r| r.is_some_and(|r| r.lease != 0)), "leased keys overwritten");
    assert_eq!(replaced, more_history(&reference));
    conformance::assert_same_stores(&store, &reference);
    store.sync().expect("sync");
    drop(store);
    let store = open();
    conformance::assert_same_stores(&store, &reference);
}

const IMMEDIATE: CommitDurability = CommitDurability::Immediate;

/// A commit whose engine commit fails (a failed fsync) changes nothing readers see: not the
/// data, not the key index (its new revisions are taken out again; a failed compaction's
/// removals are never applied). redb then refuses writes until reopened; the reopened store
/// goes on from the last good commit. (`engine::tests` checks the index itself.)
#[test]
fn failed_commit_changes_nothing_readers_see() {
    let disk = sim_disk(31);
    let open = || {
        RedbStore::open(Arc::new(disk.clone()), Path::new(DB), options(IMMEDIATE)).expect("open")
    };
    let store = open();
    for index in 1..=3 {
        apply(&store, index).expect("apply");
    }
    let at = |revision| RangeOptions { revision, ..RangeOptions::default() };
    disk.fail_next_sync();
    let mut txn = store.write_txn().expect("txn");
    txn.put(b"fresh", b"x", 0).expect("put");
    txn.put(b"k1", b"x", 0).expect("put");
    txn.compact(2).expect("compact");
    assert!(txn.commit(4).is_err(), "the injected fsync failure fails the commit");
    assert_eq!(assert_consistent(&store), 3);
    assert_eq!(store.compacted_revision(), 0);
    assert_eq!(store.range(b"fresh", SINGLE_KEY, &at(0)).expect("get").count, 0);
    let k1_at2 = store.range(b"k1", SINGLE_KEY, &at(2)).expect("read at 2");
    assert_eq!(k1_at2.kvs[0].value.as_ref(), &1u64.to_le_bytes()[..]);
    let events = store.events_since(2, b"\0", ALL_FROM_KEY, 0).expect("events");
    assert_eq!(events.events.len(), 3);
    assert_eq!(events.next_revision, 5);
    assert!(store.compact(3).is_err(), "redb refuses writes after an I/O error");
    assert_eq!(store.range(b"k1", SINGLE_KEY, &at(2)).expect("read at 2").count, 1);
    drop(store);
    let store = open();
    assert_eq!(assert_consistent(&store), 3);
    apply(&store, 4).expect("apply after reopening");
    assert_eq!(assert_consistent(&store), 4);
    assert_eq!(store.range(b"fresh", SINGLE_KEY, &at(0)).expect("get").count, 0);
    store.compact(5).expect("compact");
    assert_eq!(assert_consistent(&store), 4);
}

/// Readers on other threads, while one writer commits batches (holding each transaction open
/// a while) and compacts behind them: every read sees one whole committed revision, reads at
/// an explicit revision either see it or fail with `Compacted`, watches carry the right
/// `prev_kv`, and images restore into an equal, valid store.
#[test]
fn reads_stay_consistent_during_writes_and_compactions() {
    const KEYS: u64 = 8;
    const TXNS: u64 = 800;
    let disk = sim_disk(32);
    let store =
        RedbStore::open(Arc::new(disk), Path::new(DB), options(CommitDurability::ON_SYNC_ONLY))
            .expect("open");
    // Transaction i sets every key to i: revision r holds value r - 1 everywhere.
    let write = |i: u64| {
        let mut txn = store.write_txn().expect("txn");
        for k in 0..KEYS {
            txn.put(format!("k{k}").as_bytes(), &i.to_le_bytes(), 0).expect("put");
            if k == KEYS / 2 {
                std::thread::yield_now(); // readers run while the transaction is open
            }
        }
        txn.commit(i).expect("commit");
    };
    write(1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let value = |kv: &quorumkv_storage::mvcc::KeyValue| {
        u64::from_le_bytes(kv.value.as_ref().try_into().expect("8-byte value"))
    };
    let check_at = |res: &quorumkv_storage::mvcc::RangeResult, rev: i64| {
        assert_eq!((res.count, res.kvs.len()), (KEYS, KEYS as usize), "all keys at {rev}");
        for kv in &res.kvs {
            assert_eq!(kv.mod_revision, rev, "{kv:?}");
            assert_eq!(value(kv), rev as u64 - 1, "{kv:?}");
            assert_eq!(kv.version, rev - 1, "{kv:?}");
        }
    };
    let (mut reads, mut compacted, mut images) = (0u64, 0u64, 0u64);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for i in 2..=TXNS {
                write(i);
                if i % 3 == 0 {
                    // Right at the revisions the readers ask for, to race them.
                    store.compact(store.current_revision() - 2).expect("compact");
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let read = || {
            let (mut reads, mut compacted, mut images) = (0u64, 0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 50 {
                let now = store.range(b"k", b"l", &RangeOptions::default()).expect("range");
                check_at(&now, now.kvs[0].mod_revision);
                let rev = (store.current_revision() - 2).max(2);
                let opts = RangeOptions { revision: rev, ..RangeOptions::default() };
                match store.range(b"k", b"l", &opts) {
                    Ok(res) => check_at(&res, rev),
                    Err(MvccError::Compacted { .. }) => compacted += 1,
                    Err(e) => panic!("read at {rev}: {e}"),
                }
                match store.events_since(rev, b"k", b"l", 0) {
                    Ok(batch) => {
                        // Revision 2 created the keys; every later one changed them all.
                        for e in batch.events.iter().filter(|e| e.kv.mod_revision > 2) {
                            let prev = e.prev_kv.as_ref().expect("every key existed before");
                            assert_eq!(prev.mod_revision, e.kv.mod_revision - 1, "{e:?}");
                            assert_eq!(value(prev), value(&e.kv) - 1, "{e:?}");
                        }
                    }
                    Err(MvccError::Compacted { .. }) => compacted += 1,
                    Err(e) => panic!("events from {rev}: {e}"),
                }
                if reads % 64 == 0 {
                    let mut image = store.image().expect("image");
                    let copy = MemStore::new();
                    copy.restore(&mut image).expect("an image restores");
                    let res = copy.range(b"k", b"l", &RangeOptions::default()).expect("range");
                    check_at(&res, copy.current_revision());
                    images += 1;
                }
                reads += 1;
            }
            (reads, compacted, images)
        };
        let readers = [scope.spawn(read), scope.spawn(read)];
        writer.join().expect("writer");
        for reader in readers {
            let (r, c, i) = reader.join().expect("reader");
            (reads, compacted, images) = (reads + r, compacted + c, images + i);
        }
    });
    assert!(reads >= 100 && images > 0, "reads {reads}, images {images}");
    // Reads at a revision a compaction just passed fail; how often depends on timing.
    let _ = compacted;
    let last = store.range(b"k", b"l", &RangeOptions::default()).expect("range");
    check_at(&last, TXNS as i64 + 1);
}
