//! How long the linearizability checker takes on a 10,000-operation history from 20
//! concurrent clients (read / write / cas, 2% info, 2% fail), generated from a fixed seed.
//! Target: well under a second per check.
//!
//! Run with `cargo bench -p quorumkv-check`.

use criterion::{Criterion, criterion_group, criterion_main};
use quorumkv_check::generate::{GenConfig, generate};
use quorumkv_check::{CheckOptions, CheckOutcome, History, ModelKind, check_history};

/// The benchmark's history; `keys` 0 means one register without a key field.
fn history(keys: usize) -> History {
    let config = GenConfig {
        seed: 0x5eed,
        operations: 10_000,
        processes: 20,
        keys,
        values: 10,
        weights: [5, 3, 2, 0],
        info_percent: 2,
        fail_percent: 2,
        timed: true,
    };
    History::from_events(generate(&config)).expect("generated histories are well formed")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("check 10k ops, 20 processes");
    group.sample_size(20);
    for (name, keys, model) in
        [("kv, 4 keys", 4, ModelKind::Kv), ("register, 1 key", 0, ModelKind::Register)]
    {
        let history = history(keys);
        let options = CheckOptions::default();
        // A benchmark of a wrong answer would be worthless.
        let outcome = check_history(&history, model, &options).expect("known ops").outcome;
        assert_eq!(outcome, CheckOutcome::Linearizable, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| check_history(&history, model, &options).expect("known ops"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
