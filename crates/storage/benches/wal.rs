//! WAL benchmarks on the real disk (a temporary directory under /tmp).
//!
//! - `wal_append/<size>B/<n>appenders_window<w>`: entries/s through the group-commit writer,
//!   one fsync per round. Window 1: each appender waits for its entry to be durable before
//!   sending the next (a Raft group waiting for its append); window w: up to w submissions in
//!   flight per appender (a pipelining leader). After each case a line reports MB/s, entries per
//!   fsync and the mean fsync time.
//! - `wal_reserve/{reserved,growing}`: one appender, 100-byte entries, window 1, into segments
//!   reserved when created (the default) and into segments that grow with each append.
//! - `wal_recovery/<MiB>`: time to open a log of that size (default 64 MiB; set
//!   `QUORUMKV_WAL_BENCH_RECOVERY_MIB=1024` for 1 GiB). The files are in the page cache.
//!
//! Run: `cargo bench -p quorumkv-storage --bench wal`. `QUORUMKV_WAL_BENCH_DIR` picks another
//! base directory (e.g. `/dev/shm`, where fsync costs nothing, to see the CPU ceiling). Every case is bounded: few samples and
//! short measurement windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use quorumkv_core::{Entry, EntryKind, SnapshotMeta};
use quorumkv_storage::disk::RealDisk;
use quorumkv_storage::wal::{Wal, WalError, WalOp, WalOptions, WalWriter, WriterOptions};

fn bench_dir(tag: &str) -> PathBuf {
    let base =
        std::env::var_os("QUORUMKV_WAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("qkv-wal-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Each appender owns one group and appends `count` entries, keeping at most `window`
/// submissions in flight (1: wait for each entry to be durable before sending the next, like a
/// group waiting for its append; more: a pipelining Raft leader). It compacts now and then so
/// old segments are collected as in a running node.
fn appender(
    writer: &WalWriter,
    group: u64,
    next_index: &mut u64,
    count: u64,
    data: &Bytes,
    window: u64,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Result<u64, WalError>>();
    let mut in_flight = 0u64;
    for _ in 0..count {
        if in_flight == window {
            rx.recv().expect("completion").expect("durable");
            in_flight -= 1;
        }
        let index = *next_index;
        let entry = Entry { index, term: 1, kind: EntryKind::Normal, data: data.clone() };
        let mut ops = vec![WalOp::Append { group, entries: vec![entry] }];
        if index & 4095 == 0 {
            ops.push(WalOp::Compact {
                group,
                meta: SnapshotMeta { index: index - 1, term: 1, ..Default::default() },
            });
        }
        let tx = tx.clone();
        writer
            .submit(ops, move |result| {
                let _ = tx.send(result);
            })
            .expect("submit");
        in_flight += 1;
        *next_index += 1;
    }
    for _ in 0..in_flight {
        rx.recv().expect("completion").expect("durable");
    }
}

/// A benchmark group with the short sampling every appender case uses (each sample fsyncs).
fn short_group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

fn bench_append(c: &mut Criterion) {
    let mut group = short_group(c, "wal_append");
    let cases = [(1u64, 1u64), (16, 1), (256, 1), (16, 16), (256, 8)];
    for size in [100usize, 4096] {
        for (appenders, window) in cases {
            let id = BenchmarkId::new(
                format!("{size}B"),
                format!("{appenders}appenders_window{window}"),
            );
            append_case(&mut group, id, WalOptions::default(), size, appenders, window);
        }
    }
    group.finish();
}

/// One appender waiting for each 100-byte entry, into segments reserved at creation (the
/// node's default) and into segments that grow with every append: what the reservation saves
/// per fsync.
fn bench_reserve(c: &mut Criterion) {
    let mut group = short_group(c, "wal_reserve");
    for (name, preallocate) in [("reserved", true), ("growing", false)] {
        let opts = WalOptions { preallocate, ..WalOptions::default() };
        append_case(&mut group, BenchmarkId::from_parameter(name), opts, 100, 1, 1);
    }
    group.finish();
}

/// Runs one append case on a fresh log and prints its throughput and fsync figures.
fn append_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    opts: WalOptions,
    size: usize,
    appenders: u64,
    window: u64,
) {
    let reserved = opts.preallocate;
    let dir = bench_dir(&format!("append-{size}-{appenders}-{window}-{reserved}"));
    let (wal, _) = Wal::open(Arc::new(RealDisk::new()), &dir, opts).expect("open");
    let writer = Arc::new(
        WalWriter::start(wal, WriterOptions { queue_capacity: 1024, ..Default::default() })
            .expect("start"),
    );
    let data = Bytes::from(vec![0xABu8; size]);
    let next: Arc<Vec<parking_lot::Mutex<u64>>> =
        Arc::new((0..appenders).map(|_| parking_lot::Mutex::new(1)).collect());
    let mut total_entries = 0u64;
    let mut total_time = Duration::ZERO;
    let before = writer.stats();
    group.throughput(Throughput::Elements(1));
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(appenders).max(1);
            let start = Instant::now();
            std::thread::scope(|s| {
                for g in 0..appenders {
                    let writer = writer.clone();
                    let data = data.clone();
                    let next = next.clone();
                    s.spawn(move || {
                        let mut index = next[g as usize].lock();
                        appender(&writer, g, &mut index, per, &data, window);
                    });
                }
            });
            let elapsed = start.elapsed();
            total_entries += per * appenders;
            total_time += elapsed;
            // Report time per entry as criterion expects for `iters` iterations.
            elapsed.mul_f64(iters as f64 / (per * appenders) as f64)
        });
    });
    let after = writer.stats();
    let fsyncs = after.fsyncs - before.fsyncs;
    let entries = after.entries - before.entries;
    let secs = total_time.as_secs_f64().max(1e-9);
    if total_entries > 0 {
        // (Zero: filtered out on the command line.)
        eprintln!(
            "    {size} B x {appenders} appenders, window {window}, reserved {}: {:.0} entries/s, \
             {:.1} MB/s, {:.1} entries/fsync, mean fsync {:.0} us, max {} entries in one fsync",
            reserved,
            total_entries as f64 / secs,
            total_entries as f64 * size as f64 / secs / 1e6,
            entries as f64 / fsyncs.max(1) as f64,
            (after.fsync_nanos_total - before.fsync_nanos_total) as f64
                / fsyncs.max(1) as f64
                / 1e3,
            after.entries_per_fsync_max,
        );
    }
    drop(Arc::into_inner(writer));
    let _ = std::fs::remove_dir_all(&dir);
}

fn build_log(dir: &Path, mib: u64) -> u64 {
    let (mut wal, _) =
        Wal::open(Arc::new(RealDisk::new()), dir, WalOptions::default()).expect("open");
    let data = Bytes::from(vec![0x5Au8; 100]);
    let groups = 64u64;
    let mut next = vec![1u64; groups as usize];
    let mut entries = 0u64;
    let target = mib << 20;
    let mut batch = Vec::with_capacity(16);
    while wal.stats().bytes_written < target {
        for g in 0..groups {
            batch.clear();
            let i = &mut next[g as usize];
            for _ in 0..16 {
                batch.push(Entry {
                    index: *i,
                    term: 1,
                    kind: EntryKind::Normal,
                    data: data.clone(),
                });
                *i += 1;
            }
            wal.append(g, &batch).expect("append");
            entries += batch.len() as u64;
        }
        wal.sync().expect("sync");
    }
    entries
}

fn bench_recovery(c: &mut Criterion) {
    let mib: u64 = std::env::var("QUORUMKV_WAL_BENCH_RECOVERY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = bench_dir("recovery");
    let entries = build_log(&dir, mib);
    let mut group = c.benchmark_group("wal_recovery");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(mib << 20));
    group.bench_function(BenchmarkId::from_parameter(format!("{mib}MiB")), |b| {
        b.iter(|| {
            let (_, recovered) =
                Wal::open(Arc::new(RealDisk::new()), &dir, WalOptions::default()).expect("recover");
            let got: usize = recovered.groups.values().map(|g| g.entries.len()).sum();
            assert_eq!(got as u64, entries);
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_append, bench_reserve, bench_recovery);
criterion_main!(benches);
