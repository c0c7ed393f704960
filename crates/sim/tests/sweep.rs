//! The simulation sweep as a test: many seeds, every fault mixed in, zero violations.
//!
//! `QUORUMKV_SIM_SEEDS` overrides the number of seeds (CI runs at least 200).

use quorumkv_sim::{HistoryVerdict, SimOptions, run};

fn seeds() -> u64 {
    std::env::var("QUORUMKV_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

#[test]
fn sweep_has_no_safety_linearizability_or_liveness_failures() {
    let count = seeds();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64;
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    let mut seed = 1 + w;
                    while seed <= count {
                        let r = run(&SimOptions::new(seed));
                        if !r.passed() {
                            bad.push(format!(
                                "seed {seed}: {:?}\n  replay: {}\n{}",
                                r.problems(),
                                r.options.replay_command(),
                                r.recent
                            ));
                        }
                        assert!(r.ops > 0, "seed {seed} ran no client operation");
                        assert!(
                            !matches!(r.history, HistoryVerdict::Skipped),
                            "seed {seed}: history not checked"
                        );
                        seed += workers;
                    }
                    bad
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    assert!(failures.is_empty(), "{} failing seeds:\n{}", failures.len(), failures.join("\n"));
}
