//! The disk faults against the production WAL: a sweep restricted to them passes, and each
//! fault really fires (a sweep whose faults never happen would pass vacuously).
//!
//! `QUORUMKV_SIM_DISK_SEEDS` overrides the number of seeds of the sweep (default 100).

use quorumkv_sim::{FaultKind, RunReport, SimOptions, run};

fn disk_faults() -> Vec<FaultKind> {
    vec![FaultKind::Bitflip, FaultKind::FsyncFail, FaultKind::DiskFull, FaultKind::Crash]
}

/// Runs seeds `1..=count` with `faults`, spread over a few threads.
fn sweep(count: u64, faults: Vec<FaultKind>) -> Vec<RunReport> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64;
    let mut reports: Vec<RunReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let faults = faults.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = 1 + w;
                    while seed <= count {
                        let mut o = SimOptions::new(seed);
                        o.faults = Some(faults.clone());
                        out.push(run(&o));
                        seed += workers;
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    reports.sort_by_key(|r| r.options.seed);
    reports
}

fn failures(reports: &[RunReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "seed {}: {:?}\n  replay: {}\n{}",
                r.options.seed,
                r.problems(),
                r.options.replay_command(),
                r.recent
            )
        })
        .collect()
}

#[test]
fn disk_fault_sweep_has_no_failures_and_every_fault_fires() {
    let count =
        std::env::var("QUORUMKV_SIM_DISK_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let reports = sweep(count, disk_faults());
    let bad = failures(&reports);
    assert!(bad.is_empty(), "{} failing seeds:\n{}", bad.len(), bad.join("\n"));
    let total = |f: fn(&RunReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(total(|r| r.ops) > 0, "no client operation completed");
    assert!(total(|r| r.corruptions_detected) > 0, "no flipped bit was ever detected");
    assert!(total(|r| r.fsync_failures) > 0, "no fsync ever failed");
    assert!(total(|r| r.disk_full_episodes) > 0, "the disk never filled up");
    assert!(total(|r| r.disk_full_stops) > 0, "a full disk never stopped a process");
    assert!(total(|r| r.torn_tails) > 0, "WAL recovery never met a torn write");
}

#[test]
fn a_flipped_bit_is_detected_and_the_cluster_stays_safe() {
    let reports = sweep(12, vec![FaultKind::Bitflip]);
    let bad = failures(&reports);
    assert!(bad.is_empty(), "{} failing seeds:\n{}", bad.len(), bad.join("\n"));
    assert!(
        reports.iter().any(|r| r.corruptions_detected > 0),
        "no seed detected a corruption: {:?}",
        reports.iter().map(|r| r.corruptions_detected).collect::<Vec<_>>()
    );
    for r in &reports {
        assert!(r.violations.is_empty(), "seed {}: {:?}", r.options.seed, r.violations);
    }
}
