//! MVCC store throughput: puts (1 and 100 per transaction, 256-byte values), commands of one
//! put each sealed in transactions of 1, 16 and 128 commands (one revision per command, as a
//! state machine applies a batch of log entries), point gets, and snapshot create + restore,
//! for MemStore and RedbStore (real files in a temp directory).
//!
//! Bounded: every benchmark samples for about two seconds. Run with
//! `cargo bench -p quorumkv-storage --bench mvcc`; `-- --test` runs each once as a smoke test.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use quorumkv_core::SnapshotMeta;
use quorumkv_core::rng::Rng;
use quorumkv_storage::disk::RealDisk;
use quorumkv_storage::mvcc::{
    CommitDurability, MemStore, MvccStore, MvccTxn, RangeOptions, RedbOptions, RedbStore,
    SINGLE_KEY,
};
use quorumkv_storage::snapshot::{SnapshotDecoder, encode_to_vec, install};

const VALUE_BYTES: usize = 256;
/// Keys the put benchmarks cycle through (so history grows like a real workload's).
const KEYSPACE: u64 = 100_000;
/// Keys preloaded for the get and snapshot benchmarks.
const PRELOAD_KEYS: u64 = 10_000;

fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn redb(name: &str, durability: CommitDurability) -> (RedbStore, PathBuf) {
    let dir = bench_dir(name);
    let options = RedbOptions { durability, cache_bytes: 256 << 20 };
    let store =
        RedbStore::open(Arc::new(RealDisk::new()), &dir.join("state.redb"), options).expect("open");
    (store, dir)
}

const NO_FSYNC: CommitDurability = CommitDurability::Deferred { sync_every_commits: 0 };

fn key(i: u64) -> Vec<u8> {
    format!("bench/key/{:08}", i % KEYSPACE).into_bytes()
}

/// Commits `batch` puts per transaction, cycling through the keyspace.
fn put_batch<S: MvccStore>(store: &S, next: &mut u64, batch: u64, value: &[u8]) {
    let mut txn = store.write_txn().expect("txn");
    for _ in 0..batch {
        txn.put(&key(*next), value, 0).expect("put");
        *next += 1;
    }
    txn.commit(*next).expect("commit");
}

/// Commits `batch` commands of one put each, every command sealed as its own revision.
fn sealed_batch<S: MvccStore>(store: &S, next: &mut u64, batch: u64, value: &[u8]) {
    let mut txn = store.write_txn().expect("txn");
    for _ in 0..batch {
        txn.put(&key(*next), value, 0).expect("put");
        txn.seal().expect("seal");
        *next += 1;
    }
    txn.commit(*next).expect("commit");
}

fn sealed(c: &mut Criterion) {
    let value = vec![42u8; VALUE_BYTES];
    let mut group = c.benchmark_group("mvcc_sealed_commands");
    for batch in [1u64, 16, 128] {
        group.throughput(Throughput::Elements(batch));
        let mem = MemStore::new();
        let mut next = 0;
        group.bench_function(BenchmarkId::new("mem", batch), |b| {
            b.iter(|| sealed_batch(&mem, &mut next, batch, &value));
        });
        let (store, dir) = redb("sealed", NO_FSYNC);
        let mut next = 0;
        group.bench_function(BenchmarkId::new("redb_no_fsync", batch), |b| {
            b.iter(|| sealed_batch(&store, &mut next, batch, &value));
        });
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();
}

/// Puts every one of the `PRELOAD_KEYS` keys `versions` times (1,000 puts per transaction).
fn preload<S: MvccStore>(store: &S, versions: u64) {
    let value = vec![7u8; VALUE_BYTES];
    let mut index = 0;
    for _ in 0..versions {
        for first in (0..PRELOAD_KEYS).step_by(1000) {
            let mut txn = store.write_txn().expect("txn");
            for i in first..(first + 1000).min(PRELOAD_KEYS) {
                txn.put(&key(i), &value, 0).expect("put");
            }
            index += 1;
            txn.commit(index).expect("commit");
        }
    }
    store.sync().expect("sync");
}

fn puts(c: &mut Criterion) {
    let value = vec![42u8; VALUE_BYTES];
    let mut group = c.benchmark_group("mvcc_put");
    for batch in [1u64, 100] {
        group.throughput(Throughput::Elements(batch));
        let mem = MemStore::new();
        let mut next = 0;
        group.bench_function(BenchmarkId::new("mem", batch), |b| {
            b.iter(|| put_batch(&mem, &mut next, batch, &value));
        });
        let (store, dir) = redb("put", NO_FSYNC);
        let mut next = 0;
        group.bench_function(BenchmarkId::new("redb_no_fsync", batch), |b| {
            b.iter(|| put_batch(&store, &mut next, batch, &value));
        });
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
        let (store, dir) = redb("put_sync", CommitDurability::Immediate);
        let mut next = 0;
        group.bench_function(BenchmarkId::new("redb_fsync_each_commit", batch), |b| {
            b.iter(|| put_batch(&store, &mut next, batch, &value));
        });
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();
}

fn get_random<S: MvccStore>(store: &S, rng: &mut Rng) {
    let k = format!("bench/key/{:08}", rng.range(0, PRELOAD_KEYS)).into_bytes();
    let res = store.range(&k, SINGLE_KEY, &RangeOptions::default()).expect("get");
    black_box(res);
}

fn gets(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_get");
    group.throughput(Throughput::Elements(1));
    let mem = MemStore::new();
    preload(&mem, 1);
    let mut rng = Rng::new(1);
    group.bench_function("mem", |b| b.iter(|| get_random(&mem, &mut rng)));
    let (store, dir) = redb("get", NO_FSYNC);
    preload(&store, 1);
    group.bench_function("redb", |b| b.iter(|| get_random(&store, &mut rng)));
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    // A get must not slow down with the key's history (it seeks to the latest version).
    let (store, dir) = redb("get_deep", NO_FSYNC);
    preload(&store, 32);
    group.bench_function("redb_32_versions_per_key", |b| {
        b.iter(|| get_random(&store, &mut rng));
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta { index, ..SnapshotMeta::default() }
}

fn snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_snapshot");
    let mem = MemStore::new();
    preload(&mem, 1);
    let (store, dir) = redb("snap", NO_FSYNC);
    preload(&store, 1);
    let bytes =
        encode_to_vec(mem.image().expect("image"), meta(mem.applied_index())).expect("encode");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("mem_create", |b| {
        b.iter(|| {
            encode_to_vec(mem.image().expect("image"), meta(mem.applied_index())).expect("encode")
        });
    });
    group.bench_function("redb_create", |b| {
        b.iter(|| {
            encode_to_vec(store.image().expect("image"), meta(store.applied_index()))
                .expect("encode")
        });
    });
    let target = MemStore::new();
    group.bench_function("mem_restore", |b| {
        b.iter(|| {
            install(&target, &mut SnapshotDecoder::new(&bytes[..]).expect("decoder"))
                .expect("install")
        });
    });
    let (redb_target, target_dir) = redb("snap_target", NO_FSYNC);
    group.bench_function("redb_restore", |b| {
        b.iter(|| {
            install(&redb_target, &mut SnapshotDecoder::new(&bytes[..]).expect("decoder"))
                .expect("install")
        });
    });
    group.finish();
    drop(store);
    drop(redb_target);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(target_dir);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = puts, sealed, gets, snapshots
}
criterion_main!(benches);
