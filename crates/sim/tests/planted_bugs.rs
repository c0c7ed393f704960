//! Each planted bug (a cargo feature of quorumkv-raft, passed through by this crate) must make
//! the sweep report violations on many seeds. This is what shows the simulator, its
//! invariants and the linearizability checker can fail. Run with, e.g.,
//! `cargo test -p quorumkv-sim --features bug-double-vote --test planted_bugs`.
//!
//! Without a bug feature this file compiles to nothing: the normal sweep lives in sweep.rs.

#![cfg(any(
    feature = "bug-commit-old-term",
    feature = "bug-double-vote",
    feature = "bug-stale-read"
))]

use quorumkv_sim::{HistoryVerdict, RunReport, SimOptions, run};

/// The default sweep (every fault kind in the swarm mix) over seeds 1..=count.
fn sweep(count: u64) -> Vec<RunReport> {
    (1..=count).map(|seed| run(&SimOptions::new(seed))).collect()
}

#[cfg(feature = "bug-double-vote")]
#[test]
fn double_vote_is_caught_by_election_safety() {
    let reports = sweep(100);
    let caught = reports
        .iter()
        .filter(|r| r.violations.iter().any(|v| v.starts_with("election safety")))
        .count();
    assert!(caught >= 5, "only {caught} of 100 seeds saw two leaders in one term");
}

#[cfg(feature = "bug-stale-read")]
#[test]
fn stale_follower_read_is_caught_by_the_linearizability_checker() {
    let reports = sweep(100);
    let caught =
        reports.iter().filter(|r| matches!(r.history, HistoryVerdict::Violation(_))).count();
    assert!(caught >= 5, "only {caught} of 100 seeds produced a non-linearizable history");
    // The white-box invariants cannot see this bug: it is the checker that catches it.
    assert!(reports.iter().all(|r| r.violations.is_empty()));
}

#[cfg(feature = "bug-commit-old-term")]
#[test]
fn committing_an_old_term_entry_by_count_is_caught() {
    // A new leader that replicates an old-term entry apart from its own no-op (one entry per
    // message) commits it by count: the current-term commit invariant sees that at once. The
    // full hazard (a later leader overwriting the entry, Figure 3.7) needs leader churn and is
    // rarer; the history and the other invariants catch that one when it happens.
    let reports = sweep(100);
    let caught = reports
        .iter()
        .filter(|r| r.violations.iter().any(|v| v.starts_with("current-term commit")))
        .count();
    assert!(caught >= 5, "only {caught} of 100 seeds caught the old-term commit");
}
