//! The deterministic simulator: `quorumkv sim`.
//!
//! One thread, virtual time, one `u64` seed. The seed picks the cluster size (3 or 5), a mix
//! of faults (swarm testing), the workload and the Raft tunables, and then drives every random
//! choice of the run: message loss, delay, duplication and reordering; partitions of every
//! shape; crashes that lose or tear what was not fsynced (also in the middle of a group
//! fsync); pauses; disk faults; clock skew and drift; membership changes with wiped nodes
//! re-added under new ids; leadership transfers. The production Raft code runs unchanged
//! inside it, and so does the production storage: every machine owns a `SimDisk` that
//! outlives its process, holding the real write-ahead log and snapshot files ([`store`]), and
//! a restart recovers from them exactly as a node would.
//!
//! Disk faults, and what the simulator expects of the node:
//! - `bitflip`: a bit flips in a durable WAL record, and the machine crashes. Its restart must
//!   refuse with a corruption error naming that file and an offset at or before the bit; the
//!   machine then stays down (counted in [`RunReport::corruptions_detected`], not a
//!   violation) until the nemesis wipes it and re-adds it under a new node id. Starting on
//!   the damaged disk, or reporting the damage elsewhere, is a violation. At most one machine
//!   is damaged at a time, and no other membership change starts meanwhile, so the others
//!   keep a quorum.
//! - `fsync-fail`: the machine's next sync fails. The WAL refuses all work after a failed
//!   fsync, so the process stops at once (crash-stop) and restarts a little later from what
//!   is durable ([`RunReport::fsync_failures`]).
//! - `disk-full`: for a while, every write that needs space is rejected. The process stops at
//!   the first rejection (crash-stop: it acknowledges nothing that is not durable, and does
//!   not try to limp on with a log it cannot extend) and starts again when space is back;
//!   recovery then yields everything written before ([`RunReport::disk_full_episodes`]).
//!   This is the simplest behaviour that is obviously correct; a node that keeps serving
//!   reads on a full disk is a later refinement.
//!
//! Any other storage error, and any WAL recovery failure after a plain crash, is reported as
//! a violation: it is a bug in the storage or in how the simulator drives it.
//!
//! A run has a fault phase under client load, then a heal phase: every fault is removed and
//! the cluster must commit a new write within a bounded virtual time (liveness). White-box
//! invariants ([`invariants`]) are checked as events happen; at the end the clients' history
//! is checked for linearizability by `quorumkv-check`. The same seed replays the same run,
//! event for event ([`RunReport::digest`]).

pub mod faults;
pub mod invariants;
pub mod kv;
pub mod net;
pub mod node;
pub mod store;
pub mod trace;
pub mod world;

use std::time::{Duration, Instant};

use quorumkv_check::checker::{CheckOptions, CheckOutcome, check_history};
use quorumkv_check::history::History;
use quorumkv_check::model::ModelKind;
use quorumkv_core::rng::Rng;

pub use faults::{FaultKind, parse_faults};

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed of this run.
    pub seed: u64,
    /// Cluster size; `None` lets the seed choose 3 or 5.
    pub nodes: Option<usize>,
    /// Faults the seed may choose from; `None` = all.
    pub faults: Option<Vec<FaultKind>>,
    /// Length of the fault phase, virtual seconds.
    pub fault_secs: u64,
    /// Keep the whole trace as text.
    pub trace: bool,
    /// Check the history for linearizability.
    pub check_history: bool,
}

impl SimOptions {
    /// Defaults for `seed`: seed-chosen size and faults, 10 s of faults.
    pub fn new(seed: u64) -> Self {
        Self { seed, nodes: None, faults: None, fault_secs: 10, trace: false, check_history: true }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!("quorumkv sim --seed {}", self.seed);
        if let Some(n) = self.nodes {
            cmd.push_str(&format!(" --nodes {n}"));
        }
        if let Some(f) = &self.faults {
            let names: Vec<&str> = f.iter().map(|f| f.name()).collect();
            cmd.push_str(&format!(" --faults {}", names.join(",")));
        }
        if self.fault_secs != 10 {
            cmd.push_str(&format!(" --time {}", self.fault_secs));
        }
        cmd
    }
}

/// Verdict on the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryVerdict {
    /// Linearizable.
    Linearizable,
    /// Not linearizable: the checker's explanation.
    Violation(String),
    /// The checker's budget ran out.
    Unknown(String),
    /// Not checked.
    Skipped,
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The options of the run (the seed among them).
    pub options: SimOptions,
    /// Cluster size.
    pub nodes: usize,
    /// Faults enabled.
    pub faults: Vec<FaultKind>,
    /// White-box invariant violations.
    pub violations: Vec<String>,
    /// Linearizability verdict.
    pub history: HistoryVerdict,
    /// Virtual ms from heal to the first new committed write; `None` = liveness failure.
    pub recovered_ms: Option<u64>,
    /// Client operations that completed (ok or fail).
    pub ops: u64,
    /// Operations with unknown outcome.
    pub ops_info: u64,
    /// Events processed.
    pub events: u64,
    /// Elections, snapshot installs and crashes seen.
    pub elections: u64,
    /// Snapshots installed on followers.
    pub snapshot_installs: u64,
    /// Images taken because a leader asked for one (`Ready::snapshot_wanted`).
    pub images_on_request: u64,
    /// The run compacted logs without images (the node's mode).
    pub lazy_images: bool,
    /// Crashes injected.
    pub crashes: u64,
    /// Starts refused because a flipped bit was found in the WAL (the expected outcome of a
    /// `bitflip` fault; the machine is then wiped and re-added).
    pub corruptions_detected: u64,
    /// Processes stopped by a failed fsync (`fsync-fail`).
    pub fsync_failures: u64,
    /// Disk-full episodes injected (`disk-full`).
    pub disk_full_episodes: u64,
    /// Processes stopped by a write the full disk rejected.
    pub disk_full_stops: u64,
    /// Torn writes WAL recovery found at the end of the log and cut off.
    pub torn_tails: u64,
    /// Digest of the whole trace.
    pub digest: u64,
    /// The trace, if kept.
    pub trace: Option<String>,
    /// The last events of each node.
    pub recent: String,
    /// The recorded history (JSON lines).
    pub history_lines: Vec<u8>,
    /// Wall time of the simulation (excluding the history check).
    pub sim_wall: Duration,
    /// Wall time of the history check.
    pub check_wall: Duration,
}

impl RunReport {
    /// True if nothing went wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.recovered_ms.is_some()
            && !matches!(self.history, HistoryVerdict::Violation(_))
    }

    /// Everything that went wrong, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.violations.clone();
        if self.recovered_ms.is_none() {
            out.push("liveness: no write committed within the heal phase".into());
        }
        if let HistoryVerdict::Violation(v) = &self.history {
            out.push(format!("linearizability: {v}"));
        }
        out
    }
}

/// Runs one seed.
pub fn run(options: &SimOptions) -> RunReport {
    let started = Instant::now();
    let mut rng = Rng::new(options.seed);
    let plan_seed = rng.next_u64();
    let world_seed = rng.next_u64();
    let plan = world::plan(
        &mut Rng::new(plan_seed),
        options.nodes,
        options.faults.as_deref(),
        options.fault_secs * 1_000_000,
    );
    let (nodes, faults) = (plan.nodes, plan.faults.clone());
    // A panic inside the protocol (an assertion a broken build trips) is a finding, not a
    // crash of the sweep.
    let outcome = match std::panic::catch_unwind(move || {
        world::World::new(world_seed, plan, options.trace).run()
    }) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            world::Outcome::panicked(what)
        }
    };
    let sim_wall = started.elapsed();
    let checked = Instant::now();
    let history =
        if options.check_history { verdict(&outcome.history) } else { HistoryVerdict::Skipped };
    RunReport {
        options: options.clone(),
        nodes,
        faults,
        violations: outcome.violations,
        history,
        recovered_ms: outcome.recovered_after.map(|us| us / 1000),
        ops: outcome.ops_completed,
        ops_info: outcome.ops_info,
        events: outcome.events,
        elections: outcome.elections,
        snapshot_installs: outcome.snapshot_installs,
        images_on_request: outcome.images_on_request,
        lazy_images: outcome.lazy_images,
        crashes: outcome.crashes,
        corruptions_detected: outcome.corruptions_detected,
        fsync_failures: outcome.fsync_failures,
        disk_full_episodes: outcome.disk_full_episodes,
        disk_full_stops: outcome.disk_full_stops,
        torn_tails: outcome.torn_tails,
        digest: outcome.digest,
        trace: outcome.trace_text,
        recent: outcome.recent,
        history_lines: outcome.history,
        sim_wall,
        check_wall: checked.elapsed(),
    }
}

fn verdict(lines: &[u8]) -> HistoryVerdict {
    let text = String::from_utf8_lossy(lines);
    let history = match History::parse(&text) {
        Ok(h) => h,
        Err(e) => return HistoryVerdict::Violation(format!("recorded history is malformed: {e}")),
    };
    let options =
        CheckOptions { max_configs_per_key: 2_000_000, time_limit: Some(Duration::from_secs(60)) };
    match check_history(&history, ModelKind::Kv, &options) {
        Ok(report) => match report.outcome {
            CheckOutcome::Linearizable => HistoryVerdict::Linearizable,
            CheckOutcome::NotLinearizable(v) => HistoryVerdict::Violation(v.explanation.clone()),
            CheckOutcome::Unknown { reason } => HistoryVerdict::Unknown(reason),
        },
        Err(e) => HistoryVerdict::Violation(format!("history does not fit the kv model: {e}")),
    }
}
