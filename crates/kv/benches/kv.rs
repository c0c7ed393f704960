//! Benchmarks of the state machine: apply throughput (puts through `StateMachine::apply` on
//! `MemStore`, with and without client sessions, and 10-op txns), batched apply throughput
//! (`StateMachine::apply_batch` with 1, 16 and 128 entries per store transaction, on
//! `MemStore` and on `RedbStore` without fsync on commit, as a node runs it) and watch fan-out
//! (one hub with 10,000 watchers). Short measurement windows keep a full run around two
//! minutes.
//!
//! `cargo bench -p quorumkv-kv --bench kv`; `-- --test` runs each once (CI).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quorumkv_kv::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use quorumkv_kv::{
    Config, Request, StateMachine, WatchConfig, WatchHub, WatchSpec, command, encode_command,
};
use quorumkv_storage::disk::RealDisk;
use quorumkv_storage::mvcc::{
    CommitDurability, Event, EventKind, KeyValue, MemStore, MvccStore, RedbOptions, RedbStore,
};

const BATCH: u64 = 1_000;

/// The watch benches' watchers ask for no prev_kv, so the hub never reads this store.
static NO_STORE: std::sync::LazyLock<MemStore> = std::sync::LazyLock::new(MemStore::new);

fn put_cmd(session: u64, seq: u64, i: u64) -> Vec<u8> {
    let req = PutRequest {
        key: Bytes::from(format!("key/{:06}", i % 10_000)),
        value: Bytes::from(vec![b'v'; 100]),
        ..PutRequest::default()
    };
    encode_command(&command(session, seq, Request::Put(req)))
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(BATCH));
    for (name, sessions) in [("put_100b", false), ("put_100b_session", true)] {
        let cmds: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| if sessions { put_cmd(1 + i % 64, 1 + i / 64, i) } else { put_cmd(0, 0, i) })
            .collect();
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || StateMachine::open(Arc::new(MemStore::new()), Config::default()).expect("open"),
                |mut sm| {
                    for (i, cmd) in cmds.iter().enumerate() {
                        sm.apply(i as u64 + 1, cmd).expect("apply");
                    }
                    sm
                },
                BatchSize::PerIteration,
            );
        });
    }
    let txn: Vec<u8> = {
        let ops = (0..10)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from(format!("t/{i}")),
                    value: Bytes::from_static(b"value"),
                    ..PutRequest::default()
                })),
            })
            .collect();
        encode_command(&command(
            0,
            0,
            Request::Txn(TxnRequest { compare: vec![], success: ops, failure: vec![] }),
        ))
    };
    g.throughput(Throughput::Elements(BATCH / 10));
    g.bench_function("txn_10_puts", |bench| {
        bench.iter_batched(
            || StateMachine::open(Arc::new(MemStore::new()), Config::default()).expect("open"),
            |mut sm| {
                for i in 0..BATCH / 10 {
                    sm.apply(i + 1, &txn).expect("apply");
                }
                sm
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// Entries per measured iteration of the batched benchmarks.
const BATCHED_ENTRIES: u64 = 1_024;

/// A fresh redb store in its own directory, committing without fsync (the node's mode: the
/// write-ahead log makes entries durable). The directory goes with the returned guard.
struct RedbBench {
    store: Arc<RedbStore>,
    dir: PathBuf,
}

impl RedbBench {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qkv-kv-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let options = RedbOptions {
            durability: CommitDurability::Deferred { sync_every_commits: 0 },
            cache_bytes: 64 << 20,
        };
        let store = RedbStore::open(Arc::new(RealDisk::new()), &dir.join("state.redb"), options)
            .expect("open redb");
        Self { store: Arc::new(store), dir }
    }
}

impl Drop for RedbBench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Applies `cmds` (entries 1, 2, ...) in batches of `batch`.
fn apply_in_batches<S: MvccStore>(sm: &mut StateMachine<S>, cmds: &[Vec<u8>], batch: usize) {
    let entries: Vec<(u64, &[u8])> =
        cmds.iter().enumerate().map(|(i, c)| (i as u64 + 1, c.as_slice())).collect();
    for chunk in entries.chunks(batch) {
        for outcome in sm.apply_batch(chunk).expect("apply batch") {
            outcome.expect("entry applies");
        }
    }
}

fn apply_batched(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_batch");
    g.throughput(Throughput::Elements(BATCHED_ENTRIES));
    // Puts from 64 client sessions, as a loaded node sees them: each entry also updates its
    // session's stored reply and bucket.
    let cmds: Vec<Vec<u8>> =
        (0..BATCHED_ENTRIES).map(|i| put_cmd(1 + i % 64, 1 + i / 64, i)).collect();
    for batch in [1usize, 16, 128] {
        g.bench_function(format!("mem_put_session/{batch}"), |bench| {
            bench.iter_batched(
                || StateMachine::open(Arc::new(MemStore::new()), Config::default()).expect("open"),
                |mut sm| {
                    apply_in_batches(&mut sm, &cmds, batch);
                    sm
                },
                BatchSize::PerIteration,
            );
        });
        g.bench_function(format!("redb_no_fsync_put_session/{batch}"), |bench| {
            bench.iter_batched(
                || {
                    let redb = RedbBench::new();
                    let sm = StateMachine::open(Arc::clone(&redb.store), Config::default())
                        .expect("open");
                    (sm, redb)
                },
                |(mut sm, redb)| {
                    apply_in_batches(&mut sm, &cmds, batch);
                    (sm, redb)
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

fn watch_fanout(c: &mut Criterion) {
    const WATCHERS: u64 = 10_000;
    const COMMITS: i64 = 100;
    let mut g = c.benchmark_group("watch");
    // Half the watchers on one hot key, half on prefixes that contain it; every event goes to
    // all 10,000.
    g.throughput(Throughput::Elements(WATCHERS * COMMITS as u64));
    g.bench_function("fanout_10k_watchers", |bench| {
        bench.iter_batched(
            || {
                let mut hub = WatchHub::new(1, WatchConfig { max_buffered_events: 1024 });
                for id in 0..WATCHERS {
                    let spec = if id % 2 == 0 {
                        WatchSpec { key: Bytes::from_static(b"hot/key"), ..WatchSpec::default() }
                    } else {
                        let p = ["h", "ho", "hot", "hot/"][(id % 4) as usize];
                        let mut end = p.as_bytes().to_vec();
                        if let Some(last) = end.last_mut() {
                            *last += 1;
                        }
                        WatchSpec {
                            key: Bytes::from(p),
                            range_end: Bytes::from(end),
                            ..WatchSpec::default()
                        }
                    };
                    hub.watch(id, spec).expect("watch");
                }
                hub
            },
            |mut hub| {
                let mut delivered = 0usize;
                for rev in 2..2 + COMMITS {
                    let ev = Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: Bytes::from_static(b"hot/key"),
                            create_revision: 2,
                            mod_revision: rev,
                            version: rev - 1,
                            lease: 0,
                            value: Bytes::from_static(b"v"),
                        },
                        prev_kv: None,
                    };
                    hub.on_commit(&*NO_STORE, rev, std::slice::from_ref(&ev));
                    if rev % 10 == 0 {
                        delivered += hub.poll(1024).iter().map(|b| b.events.len()).sum::<usize>();
                    }
                }
                delivered += hub.poll(1024).iter().map(|b| b.events.len()).sum::<usize>();
                assert_eq!(delivered as u64, WATCHERS * COMMITS as u64);
                hub
            },
            BatchSize::PerIteration,
        );
    });
    // Matching cost alone: 10,000 watchers on distinct keys and ranges, events hitting one.
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("match_1k_events_10k_sparse_watchers", |bench| {
        let mut hub = WatchHub::new(1, WatchConfig::default());
        for id in 0..WATCHERS {
            let k = format!("k/{id:05}");
            let spec = if id % 2 == 0 {
                WatchSpec { key: Bytes::from(k), ..WatchSpec::default() }
            } else {
                WatchSpec {
                    key: Bytes::from(k),
                    range_end: Bytes::from(format!("k/{:05}", id + 3)),
                    ..WatchSpec::default()
                }
            };
            hub.watch(id, spec).expect("watch");
        }
        let mut rev = 1;
        bench.iter(|| {
            for i in 0..1_000u64 {
                rev += 1;
                let ev = Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: Bytes::from(format!("k/{:05}", (i * 7919) % WATCHERS)),
                        mod_revision: rev,
                        ..KeyValue::default()
                    },
                    prev_kv: None,
                };
                hub.on_commit(&*NO_STORE, rev, std::slice::from_ref(&ev));
            }
            hub.poll(usize::MAX).len()
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = apply, apply_batched, watch_fanout
}
criterion_main!(benches);
